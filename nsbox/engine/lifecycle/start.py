"""Starting a container: handing it to a new monitor process, and following it (AttachedRun).

The monitor (monitor.py) is forked from this process when it has a single
thread (PreforkedMonitor; `nsbox run` forks it before it even makes the
container), or started as `python -m nsbox.engine.monitor` otherwise.  The
messages between the starter and the monitor are listed in docs/engine.md,
"The monitor hand-over".
"""

from __future__ import annotations

import os
import sys

from nsbox import _json
from nsbox._lite import suppress
from nsbox.engine.db import close_all_connections
from nsbox.engine.lifecycle.host import exit_file, single_threaded
from nsbox.engine.lifecycle.record import CREATING, STARTING, Container
from nsbox.engine.model import CREATED, EXITED, PAUSED, RESTARTING, RUNNING
from nsbox.engine.procs import crashpoint
from nsbox.errors import ConfigError, InvalidState, NsboxError

TYPE_CHECKING = False  # typing's own constant costs an import of typing
if TYPE_CHECKING:
    from collections.abc import Callable

    from nsbox.engine.lifecycle.state import EngineBase

# What a monitor and its helpers import to create and watch a container: a
# preforked monitor imports them while the engine is still making the container.
_MONITOR_MODULES = (
    "_sqlite3", "nsbox.engine.monitor", "nsbox.engine.monitor_log",
    "nsbox.engine.lifecycle.monitor_helpers",
    "nsbox.engine.storage", "nsbox.engine.oci", "nsbox.runtime.container", "nsbox.runtime.create",
    "nsbox.runtime.init",
    "nsbox.runtime.rootfs", "nsbox.runtime.process", "nsbox.runtime.cgroups.manager",
    "nsbox.runtime.cgroups.resources", "nsbox.runtime.cgroups.limits",
    "nsbox.runtime.security.capabilities",
    "nsbox.runtime.security.seccomp", "nsbox.runtime.security.seccomp_compile",
    "nsbox.runtime.security.lsm", "resource",
)

# What an attached starter needs to finish the container (AttachedRun.finish):
# imported while the monitor creates the container, on the other CPU.
_FINISH_MODULES = ("nsbox.engine.logs", "nsbox.runtime.syscalls", "nsbox.runtime.container")


def start(engine: EngineBase, ref: str, notify: bool = False,
          monitor: PreforkedMonitor | None = None) -> int | None:
    """Start the container under a new monitor; returns once its process runs (NsboxError if not).

    With NOTIFY the monitor stays a Python process for this run instead of
    handing over to its small C loop, and the return value is the read end
    of a pipe that reaches end-of-file when the monitor is done (the exit
    is recorded): what an attached `run` waits on.  Otherwise None.
    MONITOR: a prefork_monitor(NOTIFY) to use; this call takes it over.
    """
    try:
        fds = start_container(engine, engine.get(ref), notify, monitor, finish_here=False)
    finally:
        if monitor is not None:
            monitor.close()
    return fds[0] if fds is not None else None


def start_container(engine: EngineBase, c: Container, notify: bool,
                    monitor: PreforkedMonitor | None, finish_here: bool,
                    reader: bool = False) -> tuple[int, int] | None:
    """Record the start, hand C to a monitor; (done_r, ack_w) once it runs, None if it ran already.

    READER: this process reads the output to the end and then removes a
    --rm container itself (AttachedRun); its monitor leaves that to it
    while it lives.
    """
    if c.state in (RUNNING, RESTARTING):
        return None
    if c.state == PAUSED:
        raise InvalidState(f"container {c.name} is paused: unpause it")
    if c.phase == STARTING or (c.phase == CREATING and c.owner_pid != os.getpid()):
        raise InvalidState(f"container {c.name} is being {'started' if c.phase == STARTING else 'created'}")
    engine._wait_monitor_gone(c)
    # The record first, in the one write a start makes: `starting`, ours, and
    # the cgroup the runtime will make the container's below (the monitor's
    # is ours), so a crash from here on leaves what the next command needs
    # to undo it (lifecycle/recover.py).  The rootfs is mounted by the
    # monitor's start helper (monitor_start).
    with open("/proc/self/cgroup") as f:
        cgroup_parent = f.read()
    if not engine.db.update_container_if(
            c.id, (CREATED, EXITED, CREATING), state=STARTING, owner_pid=os.getpid(),
            reader_pid=os.getpid() if reader else 0,
            cgroup_parent=cgroup_parent, stopped_by_user=0, error="", oom_killed=0,
            exit_unknown=0):
        raise InvalidState(f"container {c.name} is being started or removed")
    crashpoint("start.after_record")
    if c.spec.publish or c.spec.publish_all:
        _publish_ports(engine, c)
    with suppress(FileNotFoundError):
        os.unlink(exit_file(engine.run_root, c.id))
    loop_bin = "" if notify else _loop_binary(engine)
    owned = None
    if monitor is None and single_threaded():
        monitor = owned = PreforkedMonitor(notify)
    try:
        return _hand_over(engine, c, notify, monitor, loop_bin, finish_here)
    except BaseException:
        if c.spec.publish or c.spec.publish_all:
            with suppress(Exception):
                _unpublish_ports(engine, c)
        raise
    finally:
        if owned is not None:
            owned.close()


def _publish_ports(engine: EngineBase, c: Container) -> None:
    """-p/-P: the host ports, DNATed to its address (network/ports.py); a port in use is a
    one-line error that leaves the container as it was (created or exited).  With
    slirp4netns (rootless) its own forwarding does it (network/slirp_ports.py)."""
    try:
        if c.spec.network_mode.startswith("slirp4netns") or c.spec.network_mode == "pasta":
            from nsbox.engine.network import slirp_ports
            slirp_ports.publish(engine, c)
        else:
            from nsbox.engine.network import ports
            ports.publish_container(engine, c)
    except BaseException:
        engine.db.update_container_if(c.id, (STARTING,), state=EXITED if c.state == EXITED
                                      else CREATED, owner_pid=0, reader_pid=0)
        raise


def _unpublish_ports(engine: EngineBase, c: Container) -> None:
    if c.spec.network_mode.startswith("slirp4netns") or c.spec.network_mode == "pasta":
        from nsbox.engine.network import slirp_ports
        slirp_ports.unpublish(engine, c.id)
    else:
        from nsbox.engine.network import ports
        ports.unpublish(engine, c.id)


def _hand_over(engine: EngineBase, c: Container, notify: bool, monitor: PreforkedMonitor | None,
               loop_bin: str, finish_here: bool) -> tuple[int, int]:
    """Give C to MONITOR (or a new monitor process) once it runs: (done_r, ack_w), -1 if unused.

    DONE_R reaches end-of-file when the monitor is gone (NOTIFY);
    ACK_W is the starter's end of the finish handover (FINISH_HERE).
    """
    spec = c.spec
    if monitor is not None:
        read_end, write_end = monitor.ready_r, monitor.ready_w
        done_r, done_w, ack_r, ack_w = monitor.done_r, monitor.done_w, monitor.ack_r, monitor.ack_w
        monitor.ready_r = monitor.done_r = monitor.ack_w = -1  # ours now
    else:
        read_end, write_end = os.pipe()
        done_r, done_w = os.pipe() if notify else (-1, -1)
        ack_r, ack_w = os.pipe() if notify else (-1, -1)
    if not finish_here and ack_w >= 0:
        os.close(ack_w)
        ack_w = -1
    args = (engine.root, engine.run_root, c.id, write_end, c.log_path, spec.log_driver,
            _parse_size(spec.log_opts.get("max-size")),
            int(spec.log_opts.get("max-file", "1")), spec.tty, loop_bin,
            done_w, ack_r if finish_here else -1)
    if monitor is not None:
        monitor.go(args)
        crashpoint("start.after_hand_over")
    else:
        reap_starter = _spawn_monitor(args)
        for fd in (write_end, done_w, ack_r):
            if fd >= 0:
                os.close(fd)
        reap_starter()
    if finish_here:
        for name in _FINISH_MODULES:
            __import__(name)
    # One line, not end-of-file: the monitor's start helper may hold the
    # pipe a little longer while it exits.
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.readline().decode(errors="replace").strip()
    if not answer.startswith("ok "):
        for fd in (done_r, ack_w):
            if fd >= 0:
                os.close(fd)
        message = answer.removeprefix("err ").strip()
        if not message:
            # End-of-file: the monitor and its helpers are all gone (each held
            # the pipe), so nothing of this start can go on; undo what it made.
            message = "the monitor failed to start"
            from nsbox.engine.lifecycle.recover import abandon
            abandon(engine, c.id, "the monitor died while starting the container",
                    states=(STARTING, RUNNING))
        raise NsboxError(f"cannot start container {c.name}: {message}")
    return done_r, ack_w


def _loop_binary(engine: EngineBase) -> str:
    """The compiled monitor loop (monitor.loop_binary), once per engine; "" for the Python loop."""
    if engine._loop_bin is None:
        from nsbox.engine.monitor import loop_binary
        engine._loop_bin = "" if os.environ.get("NSBOX_MONITOR_PYTHON") else \
            loop_binary(engine.run_root)
    return engine._loop_bin


class PreforkedMonitor:
    """A container monitor forked from this (single-threaded) process, before it has its arguments.

    A fork has everything imported already, so no second Python starts.
    Forking a monitor and importing the runtime into it still take ~10 ms
    on the way from `start` to the container's process: forked early (as
    `nsbox run` does), the child does that on the other CPU while the
    caller creates the container.  It then waits for start(...,
    monitor=this) to send its arguments; if they never come (the caller
    failed, or called cancel()), it exits.  start() without one forks one
    itself.  NOTIFY: the monitor will hold DONE_R's write end until it is
    done, and can be handed the finish of the container's exit (ACK_W).
    """

    def __init__(self, notify: bool) -> None:
        close_all_connections()  # none should be open yet; a fork must not share one
        self.ready_r, self.ready_w = os.pipe()
        self.done_r, self.done_w = os.pipe() if notify else (-1, -1)
        self.ack_r, self.ack_w = os.pipe() if notify else (-1, -1)
        args_r, self._args_w = os.pipe()
        env_path = _monitor_env_path()
        import gc
        # Both processes go on working: a collection walking the objects they
        # share would copy every page it touches.  close() undoes it, so a
        # long-lived program still collects what it had then.
        gc.freeze()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - child
            try:
                # Out of the starter's session and process group at once: a
                # Ctrl-C or hang-up meant for `nsbox run` must not reach the
                # monitor, which owns the container whatever befalls its starter.
                os.setsid()
                _forked_monitor_hygiene(keep=(args_r, self.ready_w, self.done_w, self.ack_r))
                os.environ["PYTHONPATH"] = env_path
                os.chdir("/")
                for name in _MONITOR_MODULES:
                    with suppress(ImportError):
                        __import__(name)
                chunks = []
                while chunk := os.read(args_r, 65536):
                    chunks.append(chunk)
                if chunks:
                    from nsbox.engine.monitor import detach_and_run, name_process
                    args = _json.loads(b"".join(chunks).decode())
                    name_process(args[2])  # found by name from now on (host.monitor_processes)
                    detach_and_run(*args)
                os._exit(0)
            finally:
                os._exit(1)
        os.close(args_r)
        os.close(self.ready_w)
        for fd in (self.done_w, self.ack_r):
            if fd >= 0:
                os.close(fd)

    def go(self, args: tuple) -> None:
        """Send the monitor its detach_and_run() arguments; it becomes the daemon.

        The child exits once it has forked the daemon; close() reaps it, later,
        so that waiting for that fork stays off the way to the container."""
        data = _json.dumps(list(args)).encode()
        while data:
            data = data[os.write(self._args_w, data):]
        os.close(self._args_w)
        self._args_w = -1

    def cancel(self) -> None:
        """Let the child go without a container (it exits), and reap it."""
        if self._args_w >= 0:
            os.close(self._args_w)
            self._args_w = -1
        if self.pid > 0:
            os.waitpid(self.pid, 0)
            self.pid = 0

    def close(self) -> None:
        """cancel(), and close the pipes nobody will read."""
        if self.pid > 0:
            import gc
            gc.unfreeze()
        self.cancel()
        for fd in (self.ready_r, self.done_r, self.ack_w):
            if fd >= 0:
                with suppress(OSError):
                    os.close(fd)
        self.ready_r = self.done_r = self.ack_w = -1


def prefork_monitor(notify: bool) -> PreforkedMonitor | None:
    """A PreforkedMonitor where forking is safe (a single thread), else None."""
    return PreforkedMonitor(notify) if single_threaded() else None


def _forked_monitor_hygiene(keep: tuple[int, ...]) -> None:
    """In a child forked to become a monitor: drop every inherited fd but 0-2 and KEEP.

    The engine may run in a threaded program (the Python API): at the fork
    another thread may hold a pipe the monitor must not keep open (its
    reader would never see end-of-file) or a store lock fd, whose flock
    would then outlive that thread's release.  The SQLite connections whose
    fds go too are never used again here, and the garbage collector is
    turned off so that none is finalized onto a reused fd number; the
    process only ever ends with os._exit or execve.
    """
    import gc
    gc.disable()
    low = 3
    for fd in sorted(fd for fd in keep if fd >= 3):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, _max_fd())


def _max_fd() -> int:
    try:
        return max(int(name) for name in os.listdir("/proc/self/fd")) + 1
    except (OSError, ValueError):
        return os.sysconf("SC_OPEN_MAX")


def _spawn_monitor(args: tuple) -> Callable[[], object]:
    """Start the monitor daemon as `python -m nsbox.engine.monitor`; a function that reaps its starter.

    For threaded programs (the Python API), which must not fork into more
    Python: another thread may hold a lock, an import among them, that the
    child would wait for forever.  A single-threaded caller forks instead
    (PreforkedMonitor).  ARGS are detach_and_run()'s.
    """
    import subprocess
    env = dict(os.environ, PYTHONPATH=_monitor_env_path())
    done_w, ack_r = args[10], args[11]
    keep = (args[3],) + tuple(fd for fd in (done_w, ack_r) if fd >= 0)
    argv = [sys.executable, "-m", "nsbox.engine.monitor", *map(str, args[:3]), str(args[3]),
            args[4], args[5], str(args[6]), str(args[7]), "1" if args[8] else "0", args[9],
            str(done_w), str(ack_r)]
    return subprocess.Popen(argv, pass_fds=keep, start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, cwd="/").wait


def _monitor_env_path() -> str:
    """PYTHONPATH for a monitor: the C loop's later `--resume` starts Python afresh and must find us."""
    return os.pathsep.join(p for p in [_package_parent(), os.environ.get("PYTHONPATH")] if p)


def _package_parent() -> str:
    import nsbox
    return os.path.dirname(os.path.dirname(os.path.abspath(nsbox.__file__)))


def _parse_size(text: str | None) -> int:
    from nsbox.engine.logs import parse_size
    try:
        return parse_size(text)
    except ValueError:
        raise ConfigError(f"invalid log max-size {text!r}") from None
