"""forkd PTY relay (runs in the guest, started by the agent for a process with a terminal).

Usage: ptyrelay.py COLS ROWS PROGRAM [ARG...]. Runs PROGRAM on a new pseudo-terminal (its own session,
the terminal as controlling tty) and relays: our stdin to the terminal, the terminal to our stdout,
and "COLS ROWS" lines on fd 3 to the terminal's window size. Node has no PTY of its own; Python's pty
module is in every guest with Python. Exits as the program did (same code, or the same signal).
"""
import errno
import fcntl
import os
import pty
import select
import signal
import struct
import sys
import termios


def set_size(fd, cols, rows):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def write_all(fd, data):
    while data:
        try:
            data = data[os.write(fd, data) :]
        except OSError as e:
            if e.errno == errno.EAGAIN:
                select.select([], [fd], [], 1)
                continue
            raise


def main():
    cols, rows, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    pid, master = pty.fork()
    if pid == 0:
        try:
            os.execvp(argv[0], argv)
        except OSError as e:
            os.write(2, ("%s: %s\r\n" % (argv[0], e.strerror)).encode())
            os._exit(127)
    set_size(master, cols, rows)
    # What the agent sends us is meant for the program (its group gets our signals too, but the program
    # has a session of its own).
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(s, lambda signum, frame: os.kill(pid, signum))
    control = 3 if os.path.exists("/proc/self/fd/3") else None
    watch = [master, 0] + ([control] if control is not None else [])
    pending = b""
    while True:
        try:
            ready, _, _ = select.select(watch, [], [])
        except InterruptedError:
            continue
        if master in ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                data = b""  # EIO: the program and everything on its terminal are gone
            if not data:
                break
            write_all(1, data)
        if 0 in ready:
            data = os.read(0, 65536)
            if data:
                write_all(master, data)
            else:
                watch.remove(0)  # stdin closed: the terminal stays, as a closed keyboard would
        if control is not None and control in ready:
            data = os.read(control, 4096)
            if not data:
                watch.remove(control)
                control = None
                continue
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                try:
                    c, r = (int(x) for x in line.split())
                    set_size(master, c, r)
                    os.kill(pid, signal.SIGWINCH)
                except (ValueError, OSError):
                    pass
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    sys.exit(os.WEXITSTATUS(status))


if __name__ == "__main__":
    main()
