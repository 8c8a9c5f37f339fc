"""An attached `run`: start a container for a caller that follows it to its end.

The caller reads the output with AttachedRun.logs(), and AttachedRun.finish()
records the exit in the caller, which has the engine loaded already, rather
than in a helper of the monitor.  The hand-over of the finish (the done and
ack pipes) is listed in docs/engine.md, "The monitor hand-over".
"""

from __future__ import annotations

import os

from nsbox._lite import suppress
from nsbox.engine.lifecycle.finish import finish_exit, wait
from nsbox.engine.lifecycle.remove import remove as remove_container
from nsbox.engine.lifecycle.remove import remove_now
from nsbox.engine.lifecycle.start import PreforkedMonitor, start_container
from nsbox.engine.procs import crashpoint
from nsbox.errors import ContainerNotFound, InvalidState

TYPE_CHECKING = False  # typing's own constant costs an import of typing
if TYPE_CHECKING:
    from collections.abc import Iterator

    from nsbox.engine.lifecycle.state import EngineBase


def start_attached(engine: EngineBase, ref: str,
                   monitor: PreforkedMonitor | None = None) -> AttachedRun:
    """Start the container for a caller that follows it to its end (an attached `run`).

    The caller reads the output with AttachedRun.logs() and then calls
    AttachedRun.finish(), which records the exit here rather than in a
    helper of the monitor: the engine is loaded already.  A container
    with a restart policy or slirp4netns is finished by its monitor.
    """
    try:
        c = engine.get(ref)
        finish_here = (c.spec.restart.name == "no"
                       and not c.spec.network_mode.startswith("slirp4netns")
                       and c.spec.network_mode != "pasta")
        from nsbox.engine.events import emit_container
        emit_container(engine.root, c, "attach")  # Docker's order: create, attach, start
        fds = start_container(engine, c, True, monitor, finish_here, reader=True)
    finally:
        if monitor is not None:
            monitor.close()
    if fds is None:
        raise InvalidState(f"container {c.name} is already running")
    return AttachedRun(engine, c.id, *fds)


class AttachedRun:
    """A container started by Engine.start_attached(): follow logs(), then finish().

    When the monitor hands the finish over (see nsbox.engine.monitor), it
    says `exit CODE` on the done pipe once the output is in the log, and
    waits on the ack pipe for `done`.  The exit is recorded the moment it
    is heard, before the rest of the output is read (a slow reader of
    ours must not keep the container `running`), and then `done` is sent.
    Closing the ack pipe without it (close(), or the process dies) leaves
    the finish to the monitor.
    """

    def __init__(self, engine: EngineBase, cid: str, done_fd: int, ack_fd: int) -> None:
        self.engine = engine
        self.id = cid
        self._done_fd = done_fd
        self._ack_fd = ack_fd
        self._said = b""
        self._monitor_gone = False
        self.exit_code: int | None = None  # once the monitor has told it

    def _listen(self, timeout: float | None) -> None:
        """Take in what the monitor says on the done pipe within TIMEOUT seconds (None: until it does)."""
        if self._monitor_gone or self.exit_code is not None:
            return
        if timeout is not None:
            import select
            readable, _, _ = select.select([self._done_fd], [], [], timeout)
            if not readable:
                return
        try:
            chunk = os.read(self._done_fd, 64)
        except OSError:
            chunk = b""
        if not chunk:
            self._monitor_gone = True
            return
        self._said += chunk
        if self._said.startswith(b"exit ") and self._said.endswith(b"\n"):
            self._record(int(self._said[5:]))

    def _record(self, code: int) -> None:
        self.exit_code = code
        # No --rm removal yet: the log is still being read.
        finish_exit(self.engine, self.id, code, auto_remove=False)
        crashpoint("attached.after_exit_record")
        with suppress(OSError):  # a monitor that is gone already needs no answer
            os.write(self._ack_fd, b"done\n")

    def _following(self) -> bool:
        self._listen(0)
        return self.exit_code is None and not self._monitor_gone

    def logs(self) -> Iterator[tuple[str, str, bytes]]:
        """The container's output from the start until its process has exited."""
        if self._ack_fd < 0:  # the monitor finishes the container
            from nsbox.engine.lifecycle.query import logs as container_logs
            return container_logs(self.engine, self.id, follow=True, wake_fd=self._done_fd)
        from nsbox.engine.logs import read_logs
        c = self.engine._lookup(self.id)
        return read_logs(c.log_path, c.spec.log_driver, True, None, None, self._following,
                         sleep=self._listen)

    def finish(self, remove: bool | None = None) -> int:
        """Wait for the exit, record it (REMOVE: remove the container; None: if it is --rm); the exit code."""
        if remove is None:
            try:
                remove = self.engine._lookup(self.id).spec.auto_remove
            except ContainerNotFound:
                remove = False
        try:
            while self._ack_fd >= 0 and self.exit_code is None and not self._monitor_gone:
                self._listen(None)
            if self.exit_code is None:  # the monitor records it (or is gone)
                code = wait(self.engine, self.id, wake_fd=-1 if self._monitor_gone else self._done_fd)
                if remove:
                    with suppress(ContainerNotFound):  # a user's rm was first
                        remove_container(self.engine, self.id, force=True, volumes=True)
                return code
            if remove:
                crashpoint("attached.before_remove")
                remove_now(self.engine, self.id, volumes=True)
            return self.exit_code
        finally:
            self.close()

    def close(self) -> None:
        """Stop attending: the monitor records the exit itself."""
        for fd in (self._done_fd, self._ack_fd):
            if fd >= 0:
                with suppress(OSError):
                    os.close(fd)
        self._done_fd = self._ack_fd = -1
