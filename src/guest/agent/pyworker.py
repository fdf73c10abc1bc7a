"""forkd warm Python interpreter (runs in the guest, started by the agent at parent boot).

Imports numpy before the snapshot so every child inherits it warm. Speaks JSON lines with the agent on
fd 3 (requests) and fd 4 (replies); the user's own stdout/stderr are captured per eval.
"""
import ast
import contextlib
import fcntl
import gc
import io
import json
import os
import random
import socket
import struct
import sys
import time
import traceback

try:
    import numpy

    NUMPY_VERSION = numpy.__version__
except Exception:  # numpy is optional: not every recipe has it
    numpy = None
    NUMPY_VERSION = None

RNDADDENTROPY = 0x40085203
RNDRESEEDCRNG = 0x5207

requests = os.fdopen(3, "rb")
replies = os.fdopen(4, "wb")
contexts = {}


def send(msg):
    replies.write(json.dumps(msg).encode() + b"\n")
    replies.flush()


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


def do_eval(msg):
    ns = contexts.setdefault(msg.get("context") or "default", new_namespace())
    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    reply = {"ok": True, "result": None}
    try:
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
    except BaseException as exc:  # KeyboardInterrupt is how a timeout arrives
        reply = {
            "ok": False,
            "result": None,
            "error": {
                "type": type(exc).__name__ if not isinstance(exc, KeyboardInterrupt) else "Timeout",
                "message": str(exc) if not isinstance(exc, KeyboardInterrupt) else "evaluation interrupted (timeout)",
                "traceback": user_traceback(exc),
            },
        }
    reply["stdout"] = out.getvalue()
    reply["stderr"] = err.getvalue()
    reply["duration_ms"] = round((time.perf_counter() - t0) * 1000, 2)
    return reply


def do_identity(msg):
    """After a restore: new kernel RNG state, new user-space RNG seeds, hostname, wall clock."""
    seed = bytes.fromhex(msg["seed_hex"])
    res = {"kernel_rng_reseeded": False, "python_reseeded": False, "clock_set": False}
    try:
        with open("/dev/urandom", "wb") as f:
            fcntl.ioctl(f.fileno(), RNDADDENTROPY, struct.pack("ii", len(seed) * 8, len(seed)) + seed)
            fcntl.ioctl(f.fileno(), RNDRESEEDCRNG)
        res["kernel_rng_reseeded"] = True
    except OSError as e:
        res["kernel_rng_error"] = str(e)
    # Seed user-space generators from the (now unique) kernel RNG plus the host seed.
    mixed = os.urandom(32) + seed
    random.seed(mixed)
    if numpy is not None:
        numpy.random.seed(numpy.frombuffer(mixed[:32], dtype=numpy.uint32))
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
    return res


def do_settle():
    """Before the snapshot: collect garbage now, then freeze what is left (gc.freeze), so children
    neither run a collection over the parent's objects nor copy the pages such a pass would touch."""
    collected = gc.collect()
    gc.freeze()
    return {"ok": True, "collected": collected, "frozen": gc.get_freeze_count()}


def main():
    send({"type": "ready", "python": sys.version.split()[0], "numpy": NUMPY_VERSION, "pid": os.getpid()})
    while True:
        try:
            line = requests.readline()
            if not line:
                return
            msg = json.loads(line)
            op = msg.get("op")
            if op == "eval":
                reply = do_eval(msg)
            elif op == "identity":
                reply = do_identity(msg)
            elif op == "ping":
                reply = {"ok": True}
            elif op == "settle":
                reply = do_settle()
            else:
                reply = {"ok": False, "error": {"type": "ValueError", "message": "unknown op %r" % op, "traceback": ""}}
            reply["id"] = msg.get("id")
            send(reply)
        except KeyboardInterrupt:
            continue  # a timeout that arrived between evals


if __name__ == "__main__":
    main()
