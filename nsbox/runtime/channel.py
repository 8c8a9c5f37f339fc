"""Typed messages between the runtime and the processes it forks.

Each message is one SOCK_SEQPACKET datagram holding a JSON object with a "type"; the child
reports failures as {"type": "error", "message": ...} so the runtime can
print one line and clean up.
"""

from __future__ import annotations

import os

from nsbox import _json
from nsbox.errors import KernelError, NsboxError

# child -> parent
NEED_IDMAP = "need_idmap"
INIT_PID = "init_pid"
RUN_HOOKS = "run_hooks"
CREATED = "created"
ERROR = "error"
# parent -> child
IDMAP_DONE = "idmap_done"
GO = "go"
HOOKS_DONE = "hooks_done"


class ChildFailed(NsboxError):
    """The forked process reported an error."""


class Channel:
    """One end of a SOCK_SEQPACKET socketpair, as a plain fd read and written with
    read(2)/write(2): no socket object, so no socket module to load."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def pair(cls) -> tuple[Channel, Channel]:
        # syscalls, which create and exec load anyway, rather than _socket
        # (socketpair_seqpacket says why); `start` never loads either.
        from nsbox.runtime import syscalls as sc

        a, b = sc.socketpair_seqpacket()
        return cls(a), cls(b)

    def fileno(self) -> int:
        return self.fd

    def send(self, msg_type: str, **fields) -> None:
        fields["type"] = msg_type
        try:
            # write(2), not send(2): the init and the exec process send their
            # last messages with the container's seccomp filter loaded, and
            # any profile must let a process write to an fd.
            os.write(self.fd, _json.dumps(fields).encode())
        except (BrokenPipeError, ConnectionResetError):
            # The peer is gone; if it said why before exiting, that is the error to report.
            self._raise_pending_error()
            raise

    def _recv_raw(self) -> bytes:
        """One datagram (b"" at end-of-file).

        A peer that exits with messages of ours unread makes the kernel report
        ECONNRESET once, and for SOCK_SEQPACKET ahead of the datagrams the
        peer sent before it went (its error message, typically): read on.
        """
        try:
            return os.read(self.fd, 65536)  # one datagram, as recv(2) would return it
        except ConnectionResetError:
            return os.read(self.fd, 65536)

    def _raise_pending_error(self) -> None:
        os.set_blocking(self.fd, False)
        try:
            while data := self._recv_raw():
                msg = _json.loads(data)
                if msg.get("type") == ERROR:
                    raise ChildFailed(msg.get("message", "unknown error"))
        except OSError:
            pass
        finally:
            os.set_blocking(self.fd, True)

    def recv(self) -> dict:
        data = self._recv_raw()
        if not data:
            raise KernelError("the container process exited during setup")
        return _json.loads(data)

    def expect(self, msg_type: str) -> dict:
        msg = self.recv()
        if msg["type"] == ERROR:
            raise ChildFailed(msg["message"])
        if msg["type"] != msg_type:
            raise KernelError(f"container setup: expected {msg_type}, got {msg['type']}")
        return msg

    def recv_until_exec(self, pid: int, before: tuple[int, int] | None) -> dict | None:
        """After the process reported ready: None once it has execve()d (our
        close-on-exec socket reaches EOF), or the message it sent instead
        (an error).  `pid` (whose exe is BEFORE until it execs) is checked as well, in case a fork elsewhere in this
        process keeps a copy of the peer socket open."""
        done = wait_for_exec(self.fd, POLLIN, pid, before)
        if not done:
            return None
        os.set_blocking(self.fd, False)
        try:
            data = self._recv_raw()
        except OSError:
            return None
        finally:
            os.set_blocking(self.fd, True)
        return _json.loads(data) if data else None

    def close(self) -> None:
        if self.fd >= 0:  # idempotent, like socket.close(): the fd number may be reused
            os.close(self.fd)
            self.fd = -1


POLLIN, POLLERR, POLLHUP = 0x001, 0x008, 0x010


def exe_identity(pid: int | str) -> tuple[int, int] | None:
    try:
        st = os.stat(f"/proc/{pid}/exe")
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def wait_for_exec(fd: int, events: int, pid: int, before: tuple[int, int] | None,
                  unknown_limit: float = 10.0) -> bool:
    """Wait until the process `pid` has execve()d or died.

    The fast path is FD: the other end of a pipe or socket that only the
    process holds, close-on-exec, so it reports POLLERR/POLLHUP (or EVENTS:
    data, an error message) the moment the process execs or exits.  Every
    50 ms the process's /proc/<pid>/exe is compared with BEFORE, its
    identity before the exec (`exe_identity`), in case a stray fork elsewhere holds a copy of that end.  Returns
    True when FD became ready (read it for a message), False when the
    process was seen to have exec'd or gone first.  Where /proc/<pid>/exe
    cannot be read (rootless), it gives up after `unknown_limit` seconds.
    """
    import time

    from nsbox.runtime import syscalls as sc  # its poll: the select module costs a dlopen

    deadline = time.monotonic() + unknown_limit
    while True:
        if sc.poll(fd, events, 50):
            return True
        now = exe_identity(pid)
        if before is not None:
            if now != before:  # exec'd, or gone
                return bool(sc.poll(fd, events, 0))
        elif time.monotonic() > deadline:
            return bool(sc.poll(fd, events, 0))
