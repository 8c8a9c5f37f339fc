"""Typed messages between the runtime and the processes it forks.

Each message is one SOCK_SEQPACKET datagram holding a JSON object with a "type"; the child
reports failures as {"type": "error", "message": ...} so the runtime can
print one line and clean up.
"""

from __future__ import annotations

import _socket

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
    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock

    @classmethod
    def pair(cls) -> tuple[Channel, Channel]:
        # _socket, not socket: the socket module's enum set-up is slow to import.
        a, b = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
        return cls(a), cls(b)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, msg_type: str, **fields) -> None:
        fields["type"] = msg_type
        try:
            self.sock.send(_json.dumps(fields).encode())
        except (BrokenPipeError, ConnectionResetError):
            # The peer is gone; if it said why before exiting, that is the error to report.
            self._raise_pending_error()
            raise

    def _raise_pending_error(self) -> None:
        self.sock.setblocking(False)
        try:
            while data := self.sock.recv(65536):
                msg = _json.loads(data)
                if msg.get("type") == ERROR:
                    raise ChildFailed(msg.get("message", "unknown error"))
        except OSError:
            pass
        finally:
            self.sock.setblocking(True)

    def recv(self) -> dict:
        data = self.sock.recv(65536)
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

    def close(self) -> None:
        self.sock.close()


