"""`run` and `exec` with process.terminal and no --console-socket.

Like runc, the runtime then receives the pty master itself and copies
between it and its own stdin/stdout until the process exits.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import tempfile

from nsbox.runtime import console


def _listen() -> tuple[socket.socket, str, str]:
    tmpdir = tempfile.mkdtemp(prefix="nsbox-tty-")
    path = os.path.join(tmpdir, "console.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    return listener, path, tmpdir


def _cleanup(listener: socket.socket, path: str, tmpdir: str) -> None:
    listener.close()
    with contextlib.suppress(OSError):
        os.unlink(path)
    with contextlib.suppress(OSError):
        os.rmdir(tmpdir)


def run_with_terminal(rt, container_id: str, opts, keep: bool = False) -> int:
    from nsbox.runtime import syscalls as sc
    from nsbox.runtime.container import wait_forwarding_signals

    listener, path, tmpdir = _listen()
    try:
        opts.console_socket = path
        sc.set_child_subreaper(True)
        state = rt.create(container_id, opts)
        master, _name = console.recv_console_fd(listener)
    finally:
        _cleanup(listener, path, tmpdir)
    try:
        rt.start(container_id)
        status = _proxy(master, state.pid)
        if status is None:
            status = wait_forwarding_signals(state.pid)
    finally:
        os.close(master)
        if not keep:
            rt.delete(container_id, force=True)
    return status


def exec_with_terminal(rt, container_id: str, opts) -> int:
    from nsbox.runtime.container import wait_forwarding_signals

    listener, path, tmpdir = _listen()
    try:
        opts.console_socket = path
        pid = rt.exec_spawn(container_id, opts)
        master, _name = console.recv_console_fd(listener)
    finally:
        _cleanup(listener, path, tmpdir)
    try:
        status = _proxy(master, pid)
        if status is None:
            status = wait_forwarding_signals(pid)
    finally:
        os.close(master)
    return status


def _proxy(master: int, pid: int) -> int | None:
    """Copy stdin->master and master->stdout until the pty closes; then reap PID."""
    import termios
    import tty

    stdin_tty = os.isatty(0)
    saved = termios.tcgetattr(0) if stdin_tty else None

    def resize(_signum=None, _frame=None) -> None:
        if stdin_tty:
            with contextlib.suppress(OSError):
                rows, cols = os.get_terminal_size(0).lines, os.get_terminal_size(0).columns
                console.set_window_size(master, rows, cols)

    old_winch = signal.signal(signal.SIGWINCH, resize)
    resize()
    if stdin_tty:
        tty.setraw(0)
    try:
        poller = select.poll()
        poller.register(master, select.POLLIN)
        poller.register(0, select.POLLIN)
        stdin_open = True
        while True:
            try:
                events = poller.poll()
            except InterruptedError:
                continue
            for fd, ev in events:
                if fd == master:
                    try:
                        data = os.read(master, 65536)
                    except OSError:
                        data = b""
                    if not data:
                        return None
                    os.write(1, data)
                elif stdin_open:
                    data = os.read(0, 65536) if ev & (select.POLLIN | select.POLLHUP) else b""
                    if not data:
                        poller.unregister(0)
                        stdin_open = False
                    else:
                        os.write(master, data)
    finally:
        signal.signal(signal.SIGWINCH, old_winch)
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
