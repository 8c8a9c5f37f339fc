"""The runtime's side of the container lifecycle: create, start, kill, delete, exec.

This is the Python API that `nsbox-runtime` is a thin shell over.  The
work of `create` lives in create.py, which only `create` and `run` load.
"""

from __future__ import annotations

import os
import time

from nsbox import _json
from nsbox._lazylog import get_logger
from nsbox._lite import suppress
from nsbox.errors import (
    BundleError,
    ConfigError,
    ContainerNotFound,
    InvalidState,
    KernelError,
    NsboxError,
)
from nsbox.runtime import cgroups
from nsbox.runtime.state import (
    CREATED,
    EXEC_FIFO,
    PAUSED,
    RUNNING,
    STATE_FILE,
    STOPPED,
    ContainerState,
    StateStore,
    process_start_time,
    wait_gone,
)

TYPE_CHECKING = False  # typing's own constant costs an import of typing
if TYPE_CHECKING:
    from nsbox.runtime.create import CreateOptions
    from nsbox.runtime.spec import Process

log = get_logger(__name__)

# Signal numbers, so that start/delete need not import the signal module.
SIGKILL = 9
SIGTERM = 15


class ExecOptions:
    """The flags of `exec`, with the process to run."""

    def __init__(self, process: Process, console_socket: str | None = None,
                 pid_file: str | None = None, detach: bool = False, preserve_fds: int = 0,
                 extra_env: dict[str, str] | None = None) -> None:
        self.process = process
        self.console_socket = console_socket
        self.pid_file = pid_file
        self.detach = detach
        self.preserve_fds = preserve_fds
        self.extra_env = extra_env or {}
        self.seccomp_agent_fd = -1  # set by execute.spawn for SCMP_ACT_NOTIFY profiles


class Runtime:
    """One runtime root (`--root`): every container it knows."""

    def __init__(self, root: str | None = None, systemd_cgroup: bool = False,
                 use_cgroups: bool = True) -> None:
        from nsbox.runtime.state import DEFAULT_ROOT

        self.store = StateStore(root or DEFAULT_ROOT)
        self.systemd_cgroup = systemd_cgroup
        self.use_cgroups = use_cgroups
        # Set by the CLI: restarts the command from a sealed interpreter when a
        # container could reach our binary (security/exe_guard.py).
        self.reexec_sealed = None
        self.seccomp_cache_dir = os.path.join(self.store.root, ".seccomp-cache")

    # ------------------------------------------------------------------ create
    def create(self, container_id: str, opts: CreateOptions) -> ContainerState:
        """Create the container from opts.bundle; its init then waits for `start`."""
        from nsbox.runtime.create import create

        return create(self, container_id, opts)

    def start(self, container_id: str) -> None:
        self._start(self.store.load(container_id))

    def _start(self, state: ContainerState) -> None:
        container_id = state.id
        # In `run`, the lock create took and kept (create.py's _created): this ends it.
        with self.store.lock(container_id):
            status = self.store.status(state)
            if status != CREATED:
                raise InvalidState(f"cannot start a container that is {status}")
            fifo = os.path.join(self.store.dir(container_id), EXEC_FIFO)
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                raise InvalidState(f"cannot start container {container_id}: init is gone ({exc.strerror})") from None
            try:
                from nsbox.runtime import channel as ch

                before = ch.exe_identity(state.pid)  # the init's, until it execs
                os.write(fd, b"0")
                os.unlink(fifo)
                error = _await_exec(fd, state.pid, before)
            finally:
                os.close(fd)
            if error:
                raise ch.ChildFailed(error)
        hooks = state.config.get("hooks", {}).get("poststart")
        if hooks:
            from nsbox.runtime import hooks as hookmod
            from nsbox.runtime.spec import parse_spec

            spec = parse_spec(state.config)
            hookmod.run_hooks("poststart", spec.hooks["poststart"], state.oci_state(RUNNING))

    # ------------------------------------------------------------------ run
    def run(self, container_id: str, opts: CreateOptions, detach: bool = False,
            keep: bool = False) -> int:
        """create + start; without detach, wait and return the exit status.

        The container is deleted once it exits, unless keep is set.
        """
        from nsbox.runtime import syscalls as sc

        if not detach:
            # Become the subreaper so the container's init is re-parented to us.
            sc.set_child_subreaper(True)
        state = self.create(container_id, opts)
        # The state create just saved, rather than state.json read back and
        # parsed twice more (~0.15 ms each); the lock and the live status are
        # still checked, and delete still finds it gone if another command
        # deleted it meanwhile.
        try:
            self._start(state)
        except NsboxError:
            self.delete(container_id, force=True, state=state)
            raise
        if detach:
            return 0
        status = wait_forwarding_signals(state.pid)
        if not keep:
            self.delete(container_id, force=True, state=state)
        return status

    # ------------------------------------------------------------------ state
    def state(self, container_id: str) -> dict:
        st = self.store.load(container_id)
        return st.oci_state(self.store.status(st))

    def list(self) -> list[dict]:
        out = []
        for cid in self.store.ids():
            try:
                out.append(self.state(cid))
            except NsboxError:
                continue
        return out

    def pids(self, container_id: str) -> list[int]:
        st = self.store.load(container_id)
        if self.store.status(st) == STOPPED:
            return []
        return _container_pids(st)

    # ------------------------------------------------------------------ kill
    def kill(self, container_id: str, sig: int = SIGTERM, all_processes: bool = False) -> None:
        st = self.store.load(container_id)
        status = self.store.status(st)
        if status == STOPPED:
            raise InvalidState(f"container {container_id} is not running")
        if all_processes:
            if st.cgroup_paths:
                from nsbox.runtime.cgroups.manager import Manager

                Manager.from_paths(st.cgroup_paths, st.cgroup_created).signal_all(sig)
                return
            for pid in _container_pids(st):
                with suppress(ProcessLookupError):
                    os.kill(pid, sig)
            return
        _signal_init(st, sig)

    # ------------------------------------------------------------------ delete
    def delete(self, container_id: str, force: bool = False,
               state: ContainerState | None = None) -> None:
        """STATE: the container's state as this process saved it (`run`), read
        from state.json otherwise; either way the file must still be there."""
        try:
            if state is None:
                st = self.store.load(container_id)
            elif os.path.exists(os.path.join(self.store.dir(container_id), STATE_FILE)):
                st = state
            else:
                raise ContainerNotFound(f"container {container_id} does not exist")
        except NsboxError:
            if os.path.isdir(self.store.dir(container_id)) and not os.path.exists(
                    os.path.join(self.store.dir(container_id), STATE_FILE)):
                self.store.remove(container_id)  # left by a crashed create
                return
            raise
        status = self.store.status(st)
        if status in (RUNNING, PAUSED) and not force:
            raise InvalidState(f"cannot delete container {container_id} that is not stopped: {status}")
        if status != STOPPED:
            for pid in _container_pids(st):
                with suppress(ProcessLookupError):
                    os.kill(pid, SIGKILL)
            _signal_init(st, SIGKILL, missing_ok=True)
            if status == PAUSED:
                cgroups.thaw(st.cgroup_paths)  # a frozen v1 task dies of SIGKILL only once thawed
            wait_gone(st.pid, st.pid_start_time)
        try:
            cgroups.destroy(st.cgroup_paths, st.cgroup_created)
        except NsboxError as exc:
            log.warning("%s", exc)
        hooks = st.config.get("hooks", {}).get("poststop")
        self.store.remove(container_id)
        if hooks:
            from nsbox.runtime import hooks as hookmod
            from nsbox.runtime.spec import parse_spec

            spec = parse_spec(st.config)
            hookmod.run_hooks("poststop", spec.hooks["poststop"], st.oci_state(STOPPED))

    # ------------------------------------------------------------------ cgroups
    def _cgroup_manager(self, st: ContainerState):
        if not st.cgroup_paths:
            from nsbox.errors import UnsupportedError

            raise UnsupportedError(f"container {st.id} has no cgroups (created with "
                                   "--cgroup-manager disabled)")
        from nsbox.runtime.cgroups.manager import Manager

        return Manager.from_paths(st.cgroup_paths, st.cgroup_created)

    def pause(self, container_id: str) -> None:
        """Freeze every process of the container (freezer.state / cgroup.freeze)."""
        st = self.store.load(container_id)
        with self.store.lock(container_id):
            status = self.store.status(st)
            if status not in (RUNNING, CREATED):
                raise InvalidState(f"cannot pause container {container_id}: it is {status}")
            self._cgroup_manager(st).freeze()

    def resume(self, container_id: str) -> None:
        st = self.store.load(container_id)
        with self.store.lock(container_id):
            status = self.store.status(st)
            if status != PAUSED:
                raise InvalidState(f"cannot resume container {container_id}: it is {status}, "
                                   "not paused")
            self._cgroup_manager(st).thaw()

    def update(self, container_id: str, resources: dict) -> None:
        """Change the limits of a live container; the new values are kept in state.json."""
        st = self.store.load(container_id)
        with self.store.lock(container_id):
            status = self.store.status(st)
            if status == STOPPED:
                raise InvalidState(f"cannot update container {container_id}: it is stopped")
            mgr = self._cgroup_manager(st)
            linux = st.config.setdefault("linux", {})
            merged = _merge_resources(linux.get("resources") or {}, resources)
            # Values that go to one file together (cpu.max, memory.swap.max)
            # are rebuilt from the merged section, so a lone --cpu-period keeps the quota.
            partial = {name: merged[name] for name in resources if name in merged}
            mgr.apply(partial, updating=True)
            linux["resources"] = merged
            self.store.save(st)

    def stats(self, container_id: str) -> dict:
        """runc's `events --stats` data: cpu, memory, pids, blkio, hugetlb counters."""
        st = self.store.load(container_id)
        if self.store.status(st) == STOPPED:
            raise InvalidState(f"container {container_id} is not running")
        return self._cgroup_manager(st).stats()

    def oom_kills(self, container_id: str) -> int:
        """OOM kills in the container's memory cgroup so far, also after its init exited
        (until delete); 0 when unknown."""
        st = self.store.load(container_id)
        if not st.cgroup_paths:
            return 0
        return self._cgroup_manager(st).oom_kills() or 0

    def events(self, container_id: str, interval: float | None = 5.0):
        """Yield event dicts ({"type": "oom"|"stats", "id": ...}) until the container stops.

        OOMs come as they happen; with INTERVAL, a stats event every INTERVAL seconds.
        """
        import select

        st = self.store.load(container_id)
        if self.store.status(st) == STOPPED:
            raise InvalidState(f"container {container_id} is not running")
        mgr = self._cgroup_manager(st)
        watcher = None
        try:
            watcher = mgr.oom_watcher()
        except NsboxError as exc:
            log.warning("no OOM events: %s", exc)
        poller = select.poll()
        if watcher is not None:
            poller.register(watcher.fileno(), watcher.poll_mask)
        next_stats = time.monotonic() if interval else None
        try:
            while True:
                now = time.monotonic()
                if next_stats is not None and now >= next_stats:
                    yield {"type": "stats", "id": container_id, "data": mgr.stats()}
                    next_stats = now + interval
                wait = 1.0 if next_stats is None else min(1.0, max(next_stats - now, 0.0))
                poller.poll(int(wait * 1000))
                if watcher is not None:
                    for _ in range(watcher.drain()):
                        yield {"type": "oom", "id": container_id}
                if self.store.status(st) == STOPPED or (watcher is not None and watcher.gone()):
                    if watcher is not None:
                        for _ in range(watcher.drain()):
                            yield {"type": "oom", "id": container_id}
                    return
        finally:
            if watcher is not None:
                watcher.close()

    # ------------------------------------------------------------------ exec
    def exec(self, container_id: str, opts: ExecOptions) -> int:
        """Run a process in the container; its exit status, or 0 at once with opts.detach."""
        pid = self.exec_spawn(container_id, opts)
        return 0 if opts.detach else wait_forwarding_signals(pid)

    def _guard_exe(self, process: Process | None) -> None:
        if self.reexec_sealed is None:
            return
        from nsbox.runtime.security import exe_guard

        if exe_guard.needs_sealed_exe(process) and not exe_guard.running_sealed():
            self.reexec_sealed()

    def exec_spawn(self, container_id: str, opts: ExecOptions) -> int:
        """Start a process in the container without waiting; returns its host pid."""
        from nsbox.runtime import execute

        st = self.store.load(container_id)
        # Taken and given up: a `create` or `run` whose init still shares its
        # memory holds it until that ends (create.py's _created).
        with self.store.lock(container_id):
            status = self.store.status(st)
        if status not in (RUNNING, CREATED):
            raise InvalidState(f"cannot exec in a container that is {status}")
        self._guard_exe(opts.process)
        return execute.spawn(st, opts, self.seccomp_cache_dir)

    def process_from_file(self, path: str) -> Process:
        from nsbox.runtime.spec import parse_process

        try:
            with open(path, "rb") as f:
                data = _json.loads(f.read())
        except FileNotFoundError:
            raise BundleError(f"process file {path} does not exist") from None
        except ValueError as exc:
            raise ConfigError(f"process file {path}: not valid JSON: {exc}") from None
        return parse_process(data)


# ---------------------------------------------------------------------- helpers
def _merge_resources(old: dict, new: dict) -> dict:
    """OLD with NEW laid over it: objects merge key by key, anything else is replaced."""
    out = dict(old)
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge_resources(out[key], value)
        else:
            out[key] = value
    return out


def _await_exec(fifo_wfd: int, pid: int, before: tuple[int, int] | None) -> str:
    """After start's byte: "" once the init has execve()d, else why it did not.

    The init holds the fifo's only read end, close-on-exec: our write end
    sees POLLERR when it execs or exits.  If it failed, its message is in the
    fifo, which we read through a second, read-only open of our fd.
    """
    from nsbox.runtime import channel as ch

    if not ch.wait_for_exec(fifo_wfd, 0, pid, before):
        return ""
    try:
        rfd = os.open(f"/proc/self/fd/{fifo_wfd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        data = os.read(rfd, 65536)
    except BlockingIOError:
        data = b""
    finally:
        os.close(rfd)
    if data.startswith(b"0"):
        # Our own byte, unread: the init was gone before it took it.
        return "the container's init exited before its process started"
    return data.decode(errors="replace").strip()


def _signal_init(st: ContainerState, sig: int, missing_ok: bool = False) -> None:
    """Signal the init through a pidfd, after checking it is still our process."""
    try:
        pidfd = os.pidfd_open(st.pid)
    except ProcessLookupError:
        if missing_ok:
            return
        raise InvalidState(f"container {st.id} is not running") from None
    try:
        if process_start_time(st.pid) != st.pid_start_time:
            if missing_ok:
                return
            raise InvalidState(f"container {st.id} is not running")
        # The interpreter's own _signal (loaded at start-up) has the call: no
        # ctypes layer (~0.6 ms to load) for `kill` and `delete --force`.
        import _signal

        _signal.pidfd_send_signal(pidfd, sig)
    except OSError as exc:
        if not missing_ok:
            raise KernelError(f"kill container {st.id}: {exc.strerror}", exc.errno) from None
    finally:
        os.close(pidfd)


def _container_pids(st: ContainerState) -> list[int]:
    found = [p for p in cgroups.pids(st.cgroup_paths)] if st.cgroup_paths else []
    if found:
        return found
    # No cgroup to read: every process in the init's PID namespace.
    try:
        target = os.stat(f"/proc/{st.pid}/ns/pid").st_ino
    except OSError:
        return []
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with suppress(OSError):
                if os.stat(f"/proc/{name}/ns/pid").st_ino == target:
                    pids.append(int(name))
    return sorted(pids)


def wait_forwarding_signals(pid: int) -> int:
    """Wait for PID (our child or re-parented to us), forwarding signals to it."""
    def forward(signum, _frame):
        with suppress(ProcessLookupError):
            os.kill(pid, signum)

    import _signal  # the signal module wraps this in enums, slow to import

    forwarded = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT, _signal.SIGUSR1,
                 _signal.SIGUSR2, _signal.SIGWINCH)
    old = {s: _signal.signal(s, forward) for s in forwarded}
    try:
        while True:
            try:
                wpid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                return 0
            except InterruptedError:
                continue
            if wpid == pid:
                return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
    finally:
        for s, h in old.items():
            _signal.signal(s, h)


def __getattr__(name: str) -> object:
    # CreateOptions moved to create.py; callers that name it here still find it.
    if name == "CreateOptions":
        from nsbox.runtime.create import CreateOptions

        return CreateOptions
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
