"""The runtime's side of the container lifecycle: create, start, kill, delete, exec.

This is the Python API that `nsbox-runtime` is a thin shell over.
"""

from __future__ import annotations

import os
import time

from nsbox import _json
from nsbox._lazylog import get_logger
from nsbox._lite import suppress
from nsbox.errors import BundleError, ConfigError, InvalidState, KernelError, NsboxError
from nsbox.runtime import cgroups
from nsbox.runtime.security import seccomp_agent_fd
from nsbox.runtime.state import (
    CREATED,
    EXEC_FIFO,
    PAUSED,
    RUNNING,
    STOPPED,
    ContainerState,
    StateStore,
    now_rfc3339,
    process_start_time,
    write_pid_file,
)

TYPE_CHECKING = False  # typing's own constant costs an import of typing
if TYPE_CHECKING:
    from nsbox.runtime.namespaces import NamespacePlan
    from nsbox.runtime.spec import Process, Spec

log = get_logger(__name__)

# Signal numbers, so that start/delete need not import the signal module.
SIGKILL = 9
SIGTERM = 15


class CreateOptions:
    """The flags of `create` and `run`."""

    # Plain classes keep the dataclasses import off the start/delete path.
    def __init__(self, bundle: str = ".", pid_file: str | None = None,
                 console_socket: str | None = None, preserve_fds: int = 0,
                 no_pivot: bool = False, no_new_keyring: bool = False,
                 systemd_cgroup: bool = False) -> None:
        self.bundle = bundle
        self.pid_file = pid_file
        self.console_socket = console_socket
        self.preserve_fds = preserve_fds
        self.no_pivot = no_pivot
        self.no_new_keyring = no_new_keyring
        self.systemd_cgroup = systemd_cgroup


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


def _validate_for_create(spec: Spec, bundle: str) -> None:
    if spec.process is None:
        raise ConfigError("config.json: process is required to create a container")
    from nsbox.runtime.security import capabilities, lsm

    capabilities.validate(spec.process.capabilities, strict=False)
    lsm.validate_labels(spec.process.apparmor_profile, spec.process.selinux_label, spec.linux.mount_label)
    if spec.hostname and spec.linux.namespace("uts") is None:
        raise ConfigError("config.json: hostname needs a uts namespace (new or joined by path)")
    if spec.domainname and not spec.has_new_namespace("uts"):
        raise ConfigError("config.json: domainname needs a new uts namespace")
    if spec.linux.sysctl:
        from nsbox.runtime import sysctl

        sysctl.validate(spec)
    if spec.linux.seccomp is not None:
        from nsbox.runtime.security import seccomp

        seccomp.validate(spec.linux.seccomp)
    from nsbox.runtime import rootfs

    rootfs.check_mount_sources(spec, bundle=bundle)


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
        from nsbox.runtime import namespaces as nsmod
        from nsbox.runtime.spec import load_bundle_config

        spec, rootfs = load_bundle_config(opts.bundle)
        _validate_for_create(spec, os.path.abspath(opts.bundle))
        self._guard_exe(spec.process)
        plan = nsmod.plan(spec.linux)
        if spec.process.terminal and not opts.console_socket:
            raise ConfigError("cannot allocate a pseudo-TTY without --console-socket; "
                              "set process.terminal to false or pass --console-socket")
        cgroup_paths = {}
        cgroup_plan = None
        if self.use_cgroups:
            cgroup_paths = cgroups.resolve(spec.linux.cgroups_path, container_id,
                                           systemd=self.systemd_cgroup or opts.systemd_cgroup)
            cgroup_plan = _cgroup_plan(spec, cgroup_paths)
        bundle = os.path.abspath(opts.bundle)
        state = ContainerState(
            id=container_id, bundle=bundle, rootfs=rootfs, created=now_rfc3339(),
            owner="", annotations=spec.annotations, config=spec.raw,
            cgroup_paths=cgroup_paths, systemd_cgroup=self.systemd_cgroup,
        )
        seccomp_bpf = None
        if spec.linux.seccomp is not None:
            from nsbox.runtime.security import seccomp

            seccomp_bpf = seccomp.compiled_filter(spec.linux.seccomp, self.seccomp_cache_dir)
        self.store.reserve(container_id)
        cleanup = _Cleanup(self.store, container_id)
        try:
            self._create(state, spec, rootfs, plan, opts, seccomp_bpf, cleanup,
                         cgroup_plan=cgroup_plan)
        except BaseException:
            cleanup.run()
            raise
        return state

    def _create(self, state: ContainerState, spec: Spec, rootfs: str, plan: NamespacePlan,
                opts: CreateOptions, seccomp_bpf: bytes | None, cleanup: _Cleanup,
                cgroup_plan=None) -> None:
        from nsbox.runtime import channel as ch
        from nsbox.runtime import init as initmod
        from nsbox.runtime import namespaces as nsmod
        from nsbox.runtime import process as procmod

        initmod.preload(spec)
        sdir = self.store.dir(state.id)
        fifo = os.path.join(sdir, EXEC_FIFO)
        os.mkfifo(fifo, 0o600)
        # Read-write: the init reads start's byte from it and, should its
        # execve fail, writes the reason back for `start` to print.
        fifo_fd = os.open(fifo, os.O_RDWR | os.O_CLOEXEC)
        cleanup.fds.append(fifo_fd)
        console_fd = -1
        if spec.process.terminal:
            from nsbox.runtime import console

            csock = console.connect_console_socket(opts.console_socket)
            cleanup.closers.append(csock)
            console_fd = csock.fileno()
        agent_fd = seccomp_agent_fd(spec)
        if agent_fd >= 0:
            cleanup.fds.append(agent_fd)
        extra_env = _listen_fds_env(opts.preserve_fds)
        preserve = opts.preserve_fds + int(extra_env.get("LISTEN_FDS", "0")) if extra_env else opts.preserve_fds
        ctx = initmod.InitContext(
            container_id=state.id, spec=spec, rootfs=rootfs, ns_plan=plan, fifo_fd=fifo_fd,
            bundle=state.bundle, state_json=_json.dumps(state.oci_state(CREATED)), no_pivot=opts.no_pivot,
            no_new_keyring=opts.no_new_keyring, preserve_fds=preserve,
            console_sock_fd=console_fd, seccomp_bpf=seccomp_bpf, seccomp_agent_fd=agent_fd,
            runtime_exe=procmod.runtime_exe_identity(), extra_env=extra_env or None,
            cgroup_paths=state.cgroup_paths,
        )
        created_cgroups = cgroups.create(state.cgroup_paths)
        state.cgroup_created = created_cgroups
        cleanup.cgroup_dirs = created_cgroups
        cleanup.cgroup_paths = state.cgroup_paths
        parent_chan, child_chan = ch.Channel.pair()
        cleanup.closers.append(parent_chan)
        stage1_pid, born_in_unified = cgroups.fork_into(state.cgroup_paths)
        if stage1_pid == 0:
            parent_chan.close()
            initmod.stage1(ctx, child_chan)
        child_chan.close()
        cleanup.stage1_pid = stage1_pid
        if not born_in_unified:
            # Stage 1 joins its v1 cgroups itself and builds its namespaces
            # while we move it into the cgroup2 one.
            cgroups.add_process(state.cgroup_paths, stage1_pid, only_unified=True)
        if cgroup_plan is not None:
            # Limits are in place before stage 1 forks the init (on `go`).
            from nsbox.runtime.cgroups.manager import Manager

            Manager(state.cgroup_paths, created_cgroups).apply_plan(cgroup_plan)
        if plan.creates("user"):
            parent_chan.expect(ch.NEED_IDMAP)
            nsmod.write_id_maps(stage1_pid, spec.linux.uid_mappings, spec.linux.gid_mappings,
                                deny_setgroups=os.geteuid() != 0)
            parent_chan.send(ch.IDMAP_DONE)
        parent_chan.send(ch.GO)
        # Stage 1's "init_pid" and stage 2's "run_hooks" share the socket and
        # race: stage 2 may get there before its parent reports it.
        init_pid = 0
        hooks_due = False
        while not (init_pid and hooks_due):
            msg = parent_chan.recv()
            if msg["type"] == ch.INIT_PID:
                init_pid = msg["pid"]
                cleanup.init_pid = init_pid
            elif msg["type"] == ch.RUN_HOOKS:
                hooks_due = True
            elif msg["type"] == ch.ERROR:
                raise ch.ChildFailed(msg["message"])
            else:
                raise KernelError(f"container setup: unexpected message {msg['type']}")
        _reap(stage1_pid)
        cleanup.stage1_pid = 0
        state.pid = init_pid
        state.pid_start_time = process_start_time(init_pid) or 0
        state.namespace_paths = nsmod.namespace_paths(init_pid)
        hook_state = state.oci_state(CREATED)
        if spec.hooks.get("prestart") or spec.hooks.get("createRuntime"):
            from nsbox.runtime import hooks

            for kind in ("prestart", "createRuntime"):
                if spec.hooks.get(kind):
                    hooks.run_hooks(kind, spec.hooks[kind], hook_state)
        parent_chan.send(ch.HOOKS_DONE, state=hook_state)  # now with the init's pid
        parent_chan.expect(ch.CREATED)
        self.store.save(state)
        if opts.pid_file:
            write_pid_file(opts.pid_file, init_pid)
        cleanup.disarm()
        for c in cleanup.closers:
            c.close()
        for fd in cleanup.fds:
            os.close(fd)  # the exec fifo and the seccomp agent socket: the init has its own

    # ------------------------------------------------------------------ start
    def start(self, container_id: str) -> None:
        state = self.store.load(container_id)
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
        try:
            self.start(container_id)
        except NsboxError:
            self.delete(container_id, force=True)
            raise
        if detach:
            return 0
        status = wait_forwarding_signals(state.pid)
        if not keep:
            self.delete(container_id, force=True)
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
    def delete(self, container_id: str, force: bool = False) -> None:
        try:
            st = self.store.load(container_id)
        except NsboxError:
            if os.path.isdir(self.store.dir(container_id)) and not os.path.exists(
                    os.path.join(self.store.dir(container_id), "state.json")):
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
            _wait_gone(st.pid, st.pid_start_time)
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
class _Cleanup:
    """Undo a half-finished create: processes, cgroups, fds, state dir."""

    def __init__(self, store: StateStore, container_id: str) -> None:
        self.store, self.id = store, container_id
        self.stage1_pid = 0
        self.init_pid = 0
        self.fds: list[int] = []
        self.closers: list = []
        self.cgroup_dirs: list[str] = []
        self.cgroup_paths: dict[str, str] = {}
        self.armed = True

    def disarm(self) -> None:
        self.armed = False

    def run(self) -> None:
        if not self.armed:
            return
        for pid in (self.init_pid, self.stage1_pid):
            if pid:
                with suppress(ProcessLookupError):
                    os.kill(pid, SIGKILL)
        if self.stage1_pid:
            _reap(self.stage1_pid)
        if self.init_pid:
            # Not our child (stage 1 forked it): wait until it is gone.
            with suppress(ChildProcessError):
                os.waitpid(self.init_pid, os.WNOHANG)
            _wait_gone(self.init_pid, None)
        for c in self.closers:
            with suppress(OSError):
                c.close()
        for fd in self.fds:
            with suppress(OSError):
                os.close(fd)
        if self.cgroup_paths:
            try:
                cgroups.destroy(self.cgroup_paths, self.cgroup_dirs)
            except NsboxError as exc:
                log.warning("%s", exc)
        self.store.remove(self.id)


def _cgroup_plan(spec: Spec, cgroup_paths: dict[str, str]):
    """Validate linux.resources for these cgroups now, before anything exists."""
    if not spec.linux.resources or not cgroup_paths:
        return None
    from nsbox.runtime.cgroups.manager import Manager

    return Manager(cgroup_paths).validate(spec.linux.resources)


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


def _reap(pid: int) -> int:
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue


def _wait_gone(pid: int, start_time: int | None, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        st = process_start_time(pid)
        if st is None or (start_time is not None and st != start_time):
            return
        time.sleep(0.002)


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
        from nsbox.runtime import syscalls as sc

        sc.pidfd_send_signal(pidfd, sig)
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


def _listen_fds_env(preserve_fds: int) -> dict[str, str]:
    """Pass socket-activation fds through, as systemd's LISTEN_FDS protocol expects."""
    listen = os.environ.get("LISTEN_FDS")
    if not listen or not listen.isdigit() or int(listen) == 0:
        return {}
    # The fds are ours only if the activation was addressed to us; an
    # inherited LISTEN_FDS would otherwise leak unrelated fds into the container.
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return {}
    return {"LISTEN_FDS": listen, "LISTEN_PID": "1"}




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
