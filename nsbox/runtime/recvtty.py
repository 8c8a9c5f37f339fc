"""Receive container consoles on a unix socket: the other end of --console-socket.

    python -m nsbox.runtime.recvtty SOCKET_PATH [--mode single|null] [--pid-file FILE]

single: accept one console, copy its output to our stdout and our stdin to
        it, exit when the container side closes (the master reads EOF/EIO).
null:   accept consoles forever and discard what they print (so writers
        never block); stop with SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import selectors
import signal
import socket
import stat
import sys

from nsbox.runtime.console import recv_console_fd

log = logging.getLogger("nsbox.recvtty")


def listen(path: str) -> socket.socket:
    """Bind and listen on `path`, replacing a stale socket file left there."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.bind(path)
    sock.listen(16)
    return sock


def _read_master(fd: int) -> bytes | None:
    """Read from a pty master: b"" once the container side is gone, None if nothing yet."""
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None
    except OSError as err:
        # Linux reports a hung-up slave as EIO on the master.
        if err.errno == errno.EIO:
            return b""
        raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def run_single(listener: socket.socket) -> int:
    master, name = recv_console_fd(listener)
    listener.close()
    log.debug("received console %s", name)
    stdin_fd, stdout_fd = sys.stdin.fileno(), sys.stdout.fileno()
    saved_tty = _make_raw(stdin_fd)
    sel = selectors.DefaultSelector()
    try:
        sel.register(master, selectors.EVENT_READ)
        with contextlib.suppress(ValueError, OSError):
            sel.register(stdin_fd, selectors.EVENT_READ)
        while True:
            for key, _ in sel.select():
                if key.fd == master:
                    data = _read_master(master)
                    if data is None:
                        continue
                    if not data:
                        return 0
                    _write_all(stdout_fd, data)
                else:
                    data = os.read(stdin_fd, 65536)
                    if not data:
                        # Our input ended; the container keeps running.
                        sel.unregister(stdin_fd)
                        continue
                    _write_all(master, data)
    finally:
        sel.close()
        os.close(master)
        _restore_tty(stdin_fd, saved_tty)


def run_null(listener: socket.socket) -> int:
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    masters: set[int] = set()
    try:
        while True:
            for key, _ in sel.select():
                if key.fileobj is listener:
                    try:
                        master, name = recv_console_fd(listener)
                    except Exception as err:  # a bad client must not stop the others
                        log.warning("console socket: %s", err)
                        continue
                    log.debug("received console %s", name)
                    os.set_blocking(master, False)
                    masters.add(master)
                    sel.register(master, selectors.EVENT_READ)
                    continue
                data = _read_master(key.fd)
                if data is not None and not data:
                    sel.unregister(key.fd)
                    masters.discard(key.fd)
                    os.close(key.fd)
    finally:
        sel.close()
        for fd in masters:
            os.close(fd)


def _make_raw(fd: int) -> list | None:
    import termios
    import tty

    if not os.isatty(fd):
        return None
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    return saved


def _restore_tty(fd: int, saved: list | None) -> None:
    if saved is not None:
        import termios

        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _stop(signum: int, _frame: object) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recvtty", description=__doc__.splitlines()[0])
    parser.add_argument("socket_path")
    parser.add_argument("--mode", choices=("single", "null"), default="single")
    parser.add_argument("--pid-file", help="write our pid here once the socket listens")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="recvtty: %(message)s")

    signal.signal(signal.SIGTERM, _stop)
    listener = listen(args.socket_path)
    try:
        if args.pid_file:
            tmp = f"{args.pid_file}.tmp"
            with open(tmp, "w") as f:
                f.write(f"{os.getpid()}\n")
            os.rename(tmp, args.pid_file)
        if args.mode == "single":
            return run_single(listener)
        return run_null(listener)
    except KeyboardInterrupt:
        return 0
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.socket_path)


if __name__ == "__main__":
    sys.exit(main())
