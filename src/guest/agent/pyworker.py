"""forkd warm Python interpreter (runs in the guest, started by the agent at parent boot).

Imports numpy before the snapshot so every child inherits it warm. Serves JSON lines on two channels,
one request at a time: the agent on fd 3 (requests) and fd 4 (replies), and the host directly on its own
virtio-serial port (HOST_PORT_NAME) when the machine has one. The direct port is the fast path of a
fresh child: under TCG every child translates again each guest instruction it runs for the first time,
and going through the agent's HTTP/2 stack first costs several times the Python work itself. The
user's own stdout/stderr are captured per eval.
"""
import ast
import base64
import contextlib
import fcntl
import gc
import hashlib
import io
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import time
import traceback

# Figures render to PNG for eval results: there is no display in a sandbox.
os.environ.setdefault("MPLBACKEND", "Agg")

try:
    import numpy

    NUMPY_VERSION = numpy.__version__
except Exception:  # numpy is optional: not every recipe has it
    numpy = None
    NUMPY_VERSION = None

RNDADDENTROPY = 0x40085203
RNDRESEEDCRNG = 0x5207
# Who this child is, for the agent's ping (identity.ts reads and writes it too).
SANDBOX_ID_FILE = "/run/forkd-sandbox-id"
# Words of Mersenne Twister state (Python random and numpy's legacy global generator).
MT_STATE_WORDS = 624

HOST_PORT_NAME = "org.forkd.python"
# The agent protocol's resync frames (src/protocol/resync.ts; a unit test checks they match). Kept as
# hex text so this file never contains the raw bytes.
HELLO = bytes.fromhex("f0726b64a9c31e57d40b8e22c16f9a4d3b7e05c8d2a1f649")
ACK = bytes.fromhex("f0726b64a9c31e57d40b8e22c16f9a4d3b7e05c8d2a1f64a")
STARTED = bytes.fromhex("f0726b64a9c31e57d40b8e22c16f9a4d3b7e05c8d2a1f64b")
NONCE_BYTES = 16
# One request line from the host: eval code included.
MAX_LINE = 64 << 20
# After an eval's timeout interrupted it, how long the code may take to give up before the process is
# ended (code that swallows the interrupt or sits in C); the agent then starts a fresh worker.
HARD_KILL_S = 5.0

contexts = {}


class EvalTimeout(BaseException):
    pass


def on_alarm(signum, frame):
    # The second expiry gets the default action (the kernel ends the process), whatever runs then.
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.setitimer(signal.ITIMER_REAL, HARD_KILL_S)
    raise EvalTimeout()


def arm_timeout(ms):
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, ms / 1000.0)


def disarm_timeout():
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, on_alarm)


class AgentChannel:
    """The agent's pipes (fd 3 in, fd 4 out)."""

    def __init__(self):
        self.rfd = 3
        self.replies = os.fdopen(4, "wb")
        self.buf = b""

    def lines(self):
        data = os.read(self.rfd, 1 << 20)
        if not data:
            sys.exit(0)  # the agent is gone
        self.buf += data
        out = self.buf.split(b"\n")
        self.buf = out.pop()
        return out

    def send(self, msg):
        self.replies.write(json.dumps(msg).encode() + b"\n")
        self.replies.flush()


def find_port(name, sys_dir="/sys/class/virtio-ports"):
    try:
        entries = os.listdir(sys_dir)
    except OSError:
        return None
    for e in entries:
        try:
            with open(os.path.join(sys_dir, e, "name")) as f:
                if f.read().strip() == name:
                    return os.path.join("/dev", e)
        except OSError:
            pass
    return None


class HostFrames:
    """Splits the host port's bytes into sessions and request lines (no I/O: the unit tests drive it).

    A session starts at HELLO+nonce and is answered ACK+nonce; bytes before it belong to an older
    connection (or none) and are dropped. The host resends its HELLO until it sees the ACK, so a HELLO
    repeating the current session's nonce is not a new session: it is dropped and gets no second ACK,
    which the host would otherwise read inside the session as a reply, unless the first ACK never left
    (`ack_lost`): then the repeat is answered, or the host would wait for it forever."""

    FRAME = len(HELLO) + NONCE_BYTES

    def __init__(self, max_line=MAX_LINE):
        self.max_line = max_line
        self.reset()

    @property
    def in_session(self):
        return self.nonce is not None

    def reset(self):
        """The host went away."""
        self.buf = bytearray()
        self.nonce = None  # the current session's, or None outside a session
        self.unacked = False  # the current session's ACK could not be written
        # Searched already: no HELLO starts before `scan`, no newline is before `line_scan`.
        self.scan = 0
        self.line_scan = 0

    def ack_lost(self):
        """The last ACK asked for was not written: answer the host's next repeat of its HELLO."""
        if self.in_session:
            self.unacked = True

    def feed(self, data):
        """Returns (acks, lines): the ACK frames to write, in order, and the session's complete lines.
        Linear in the input: a large eval arrives in many reads."""
        self.buf += data
        acks = []
        at = self.buf.find(HELLO, self.scan)
        while at >= 0 and len(self.buf) - at >= self.FRAME:
            nonce = bytes(self.buf[at + len(HELLO) : at + self.FRAME])
            if nonce == self.nonce:
                del self.buf[at : at + self.FRAME]
                self.line_scan = min(self.line_scan, at)
                if self.unacked:
                    self.unacked = False
                    acks.append(ACK + nonce)
            else:
                del self.buf[: at + self.FRAME]
                at = self.line_scan = 0
                self.nonce = nonce
                self.unacked = False
                acks.append(ACK + nonce)
            at = self.buf.find(HELLO, at)
        # A HELLO still arriving (its nonce not all here) is searched again from its start.
        self.scan = at if at >= 0 else max(0, len(self.buf) - (len(HELLO) - 1))
        if not self.in_session:
            del self.buf[: self.scan]  # keep only what may be the start of a HELLO
            self.scan = self.line_scan = 0
            return acks, []
        upto = at if at >= 0 else len(self.buf)
        last = self.buf.rfind(b"\n", self.line_scan, upto)
        lines = []
        if last >= 0:
            lines = bytes(self.buf[:last]).split(b"\n")
            del self.buf[: last + 1]
            self.scan = max(0, self.scan - (last + 1))
            upto -= last + 1
        self.line_scan = upto
        if len(self.buf) > self.max_line:
            self.reset()  # no host sends that: it resyncs
        return acks, lines


class HostChannel:
    """The host's own port (HostFrames parses it). While no host is connected the port polls as hung up,
    so it is not watched then: the kernel signals SIGIO when a host opens the port, and that signal wakes
    the loop (through Python's wakeup fd)."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        self.frames = HostFrames()
        self.connected = True
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGIO, lambda signum, frame: None)
        fcntl.fcntl(self.fd, fcntl.F_SETOWN, os.getpid())
        fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) | os.O_ASYNC)
        self.write_out(STARTED)

    def drain_wakeups(self):
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def lines(self):
        try:
            data = os.read(self.fd, 1 << 20)
        except BlockingIOError:
            return []
        if not data:
            self.connected = False
            self.frames.reset()
            return []
        acks, lines = self.frames.feed(data)
        for ack in acks:
            # A host that just connected can send its HELLO before this kernel has processed QEMU's
            # "host connected" message: the port then still polls as hung up and the ACK is dropped.
            if not self.write_out(ack):
                self.frames.ack_lost()
        return lines

    def send(self, msg):
        if self.frames.in_session:
            self.write_out(json.dumps(msg).encode() + b"\n")

    def write_out(self, data):
        """Returns whether all of `data` was written."""
        view = memoryview(data)
        poller = select.poll()
        poller.register(self.fd, select.POLLOUT)
        waited = 0
        while view:
            try:
                view = view[os.write(self.fd, view) :]
                continue
            except BlockingIOError:
                pass
            except OSError:
                return False  # the host went away: its session ended with it
            ev = poller.poll(100)
            waited = 0 if ev and ev[0][1] & select.POLLOUT else waited + 1
            if (ev and ev[0][1] & select.POLLHUP) or waited > 300:
                return False  # no host reads this (anymore); it resyncs on its next connection
        return True


def new_namespace():
    ns = {"__name__": "__main__", "__builtins__": __builtins__}
    if numpy is not None:
        ns["numpy"] = numpy
        ns["np"] = numpy
    return ns


def user_traceback(exc):
    # Drop this worker's own frames: the user sees only their code.
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


# The representations a notebook shows, by method (IPython's display protocol), and their MIME types.
REPR_METHODS = (
    ("_repr_html_", "text/html"),
    ("_repr_markdown_", "text/markdown"),
    ("_repr_svg_", "image/svg+xml"),
    ("_repr_png_", "image/png"),
    ("_repr_jpeg_", "image/jpeg"),
    ("_repr_latex_", "text/latex"),
    ("_repr_json_", "application/json"),
    ("_repr_javascript_", "application/javascript"),
)


def rich_formats(value):
    """A value's MIME bundle: its repr, plus what its _repr_*_ methods give (images as base64)."""
    out = {"text/plain": repr(value)}
    for attr, mime in REPR_METHODS:
        fn = getattr(value, attr, None)
        if not callable(fn) or isinstance(value, type):
            continue
        try:
            data = fn()
        except Exception:
            continue
        if isinstance(data, tuple):
            data = data[0]
        if data is None:
            continue
        if isinstance(data, bytes):
            data = base64.b64encode(data).decode()
        out[mime] = data
    return out


def open_figures():
    """matplotlib figures the code left open, as PNG bundles (what a notebook shows), then closed."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return []
    shown = []
    for num in plt.get_fignums():
        fig = plt.figure(num)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
        shown.append({"image/png": base64.b64encode(buf.getvalue()).decode(), "text/plain": repr(fig)})
    plt.close("all")
    return shown


def do_eval(msg):
    ns = contexts.setdefault(msg.get("context") or "default", new_namespace())
    if isinstance(msg.get("cwd"), str) and os.path.isdir(msg["cwd"]):
        os.chdir(msg["cwd"])
    env = msg.get("env") if isinstance(msg.get("env"), dict) else {}
    saved_env = {k: os.environ.get(k) for k in env}
    os.environ.update({str(k): str(v) for k, v in env.items()})
    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    reply = {"ok": True, "result": None}
    timeout_ms = msg.get("timeout_ms")
    try:
        if isinstance(timeout_ms, (int, float)) and timeout_ms > 0:
            arm_timeout(timeout_ms)
        tree = ast.parse(msg["code"], "<eval>", "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            exec(compile(tree, "<eval>", "exec"), ns)
            value = eval(compile(last, "<eval>", "eval"), ns) if last is not None else None
        if value is not None:
            reply["result"] = repr(value)
            try:
                reply["result_json"] = json.loads(json.dumps(value, allow_nan=False))
            except (TypeError, ValueError):
                pass
        if msg.get("rich"):
            if value is not None:
                reply["formats"] = rich_formats(value)
            reply["displays"] = open_figures()
    except BaseException as exc:  # a timeout arrives as EvalTimeout (host port) or KeyboardInterrupt (agent)
        timed_out = isinstance(exc, (KeyboardInterrupt, EvalTimeout))
        reply = {
            "ok": False,
            "result": None,
            "error": {
                "type": "Timeout" if timed_out else type(exc).__name__,
                "message": "evaluation interrupted (timeout)" if timed_out else str(exc),
                "traceback": user_traceback(exc),
            },
        }
    finally:
        disarm_timeout()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    reply["stdout"] = out.getvalue()
    reply["stderr"] = err.getvalue()
    reply["duration_ms"] = round((time.perf_counter() - t0) * 1000, 2)
    return reply


def do_identity(msg):
    """After a restore: new kernel RNG state, new user-space RNG seeds, hostname, wall clock."""
    t0 = time.perf_counter()
    seed = bytes.fromhex(msg["seed_hex"])
    res = {"kernel_rng_reseeded": False, "python_reseeded": False, "clock_set": False}
    try:
        with open("/dev/urandom", "wb") as f:
            fcntl.ioctl(f.fileno(), RNDADDENTROPY, struct.pack("ii", len(seed) * 8, len(seed)) + seed)
            fcntl.ioctl(f.fileno(), RNDRESEEDCRNG)
        res["kernel_rng_reseeded"] = True
    except OSError as e:
        res["kernel_rng_error"] = str(e)
    # New Mersenne Twister states for Python's and numpy's global generators, drawn whole from the kernel
    # RNG (reseeded just above): full-width states, and less guest code to run than seeding through
    # init_by_array, which each forked child's TCG would have to translate first.
    state = os.urandom(2 * MT_STATE_WORDS * 4)
    if not res["kernel_rng_reseeded"]:
        # Without the kernel's reseed its stream could repeat the parent's: the host seed decides.
        state = hashlib.shake_256(seed + state).digest(len(state))
    words = struct.unpack("%dI" % (2 * MT_STATE_WORDS), state)
    random.setstate((3, words[:MT_STATE_WORDS] + (MT_STATE_WORDS,), None))
    if numpy is not None:
        key = numpy.frombuffer(state[MT_STATE_WORDS * 4 :], dtype=numpy.uint32)
        numpy.random.set_state(("MT19937", key, MT_STATE_WORDS, 0, 0.0))
    res["python_reseeded"] = True
    host_ns = int(msg["time_unix_ns"])
    res["clock_skew_before_ms"] = round((time.time_ns() - host_ns) / 1e6, 3)
    try:
        time.clock_settime_ns(time.CLOCK_REALTIME, host_ns)
        res["clock_set"] = True
    except OSError as e:
        res["clock_error"] = str(e)
    name = msg["hostname"]
    socket.sethostname(name)
    if not os.path.islink("/etc/hostname"):  # normally a link to /proc/sys/kernel/hostname
        with open("/etc/hostname", "w") as f:
            f.write(name + "\n")
    res["hostname"] = socket.gethostname()
    with open(SANDBOX_ID_FILE, "w") as f:
        f.write(str(msg["sandbox_id"]))
    res["took_ms"] = round((time.perf_counter() - t0) * 1000, 2)
    return res


def do_settle():
    """Before the snapshot: collect garbage now, then freeze what is left (gc.freeze), so children
    neither run a collection over the parent's objects nor copy the pages such a pass would touch."""
    collected = gc.collect()
    gc.freeze()
    return {"ok": True, "collected": collected, "frozen": gc.get_freeze_count()}


def handle(line):
    try:
        msg = json.loads(line)
    except ValueError:
        return {"ok": False, "id": None, "error": {"type": "ValueError", "message": "request is not JSON", "traceback": ""}}
    if not isinstance(msg, dict):
        return {"ok": False, "id": None, "error": {"type": "ValueError", "message": "request is not an object", "traceback": ""}}
    op = msg.get("op")
    try:
        if op == "eval":
            reply = do_eval(msg)
        elif op == "identity":
            reply = do_identity(msg)
        elif op == "ping":
            reply = {"ok": True, "python": sys.version.split()[0], "numpy": NUMPY_VERSION, "pid": os.getpid()}
        elif op == "settle":
            reply = do_settle()
        elif op == "drop_context":
            reply = {"ok": True, "dropped": contexts.pop(str(msg.get("context")), None) is not None}
        else:
            reply = {"ok": False, "error": {"type": "ValueError", "message": "unknown op %r" % op, "traceback": ""}}
    except Exception as exc:  # a bad request (missing field, wrong type): that request fails, not the worker
        reply = {"ok": False, "error": {"type": type(exc).__name__, "message": str(exc), "traceback": ""}}
    reply["id"] = msg.get("id")
    return reply


def arm_agent_port():
    """Make the kernel signal the agent (our parent) with SIGIO when a host opens its port: Node cannot
    set O_ASYNC and an owner on a file itself, and this fd shares the agent's open file (port.ts)."""
    fd = os.environ.get("FORKD_AGENT_PORT_FD")
    if not fd:
        return
    try:
        fd = int(fd)
        fcntl.fcntl(fd, fcntl.F_SETOWN, os.getppid())
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)
        os.close(fd)
    except (OSError, ValueError):
        pass  # the agent keeps polling its port


def main():
    signal.signal(signal.SIGALRM, on_alarm)
    arm_agent_port()
    agent = AgentChannel()
    port_path = find_port(HOST_PORT_NAME)
    host = HostChannel(port_path) if port_path else None
    agent.send({"type": "ready", "python": sys.version.split()[0], "numpy": NUMPY_VERSION, "pid": os.getpid()})
    poller = select.poll()
    poller.register(agent.rfd, select.POLLIN)
    if host is not None:
        poller.register(host.wake_r, select.POLLIN)
    host_polled = False
    while True:
        try:
            if host is not None and host.connected != host_polled:
                # A host port without a host polls as readable (hangup) all the time: watch it only while
                # connected; otherwise a host's arrival is a signal, and a look every 5 s backs it up.
                if host.connected:
                    poller.register(host.fd, select.POLLIN)
                else:
                    poller.unregister(host.fd)
                host_polled = host.connected
            ready = poller.poll(None if host is None or host.connected else 5000)
            if host is not None and not host.connected and not ready:
                host.connected = True  # try a read: a connected host gives data or EAGAIN
            for fd, _ in ready:
                if host is not None and fd == host.wake_r:
                    host.drain_wakeups()
                    host.connected = True
                    continue
                channel = agent if fd == agent.rfd else host
                for line in channel.lines():
                    if line.strip():
                        channel.send(handle(line))
        except KeyboardInterrupt:
            continue  # a timeout that arrived between evals


if __name__ == "__main__":
    main()
