"""`create`: the runtime's side of making a container, up to its init waiting on the exec fifo.

Runtime.create (container.py) calls `create` here, so that `start`,
`delete` and the other commands, which import container.py, do not load
this half of the lifecycle (init.py has the container's side, and
architecture.md "The create flow" the order of it all).
"""

from __future__ import annotations

import os

from nsbox._lazylog import get_logger
from nsbox._lite import suppress
from nsbox.errors import ConfigError, KernelError, NsboxError
from nsbox.runtime import cgroups
from nsbox.runtime.security import seccomp_agent_fd
from nsbox.runtime.state import (
    CREATED,
    EXEC_FIFO,
    ContainerState,
    StateStore,
    now_rfc3339,
    process_start_time,
    wait_gone,
    write_pid_file,
)

TYPE_CHECKING = False  # typing's own constant costs an import of typing
if TYPE_CHECKING:
    from nsbox.runtime.container import Runtime
    from nsbox.runtime.namespaces import NamespacePlan
    from nsbox.runtime.spec import Spec

log = get_logger(__name__)

SIGKILL = 9


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


def create(rt: Runtime, container_id: str, opts: CreateOptions) -> ContainerState:
    """Runtime.create: the container's init waits on the exec fifo when this returns."""
    from nsbox.runtime import namespaces as nsmod
    from nsbox.runtime.spec import load_bundle_config

    spec, rootfs = load_bundle_config(opts.bundle)
    _validate_for_create(spec, os.path.abspath(opts.bundle))
    rt._guard_exe(spec.process)
    plan = nsmod.plan(spec.linux)
    if spec.process.terminal and not opts.console_socket:
        raise ConfigError("cannot allocate a pseudo-TTY without --console-socket; "
                          "set process.terminal to false or pass --console-socket")
    cgroup_paths = {}
    cgroup_plan = None
    if rt.use_cgroups:
        cgroup_paths = cgroups.resolve(spec.linux.cgroups_path, container_id,
                                       systemd=rt.systemd_cgroup or opts.systemd_cgroup)
        cgroup_plan = _cgroup_plan(spec, cgroup_paths)
    bundle = os.path.abspath(opts.bundle)
    state = ContainerState(
        id=container_id, bundle=bundle, rootfs=rootfs, created=now_rfc3339(),
        owner="", annotations=spec.annotations, config=spec.raw,
        cgroup_paths=cgroup_paths, systemd_cgroup=rt.systemd_cgroup,
    )
    seccomp_bpf = None
    if spec.linux.seccomp is not None:
        from nsbox.runtime.security import seccomp_compile

        seccomp_bpf = seccomp_compile.compiled_filter(spec.linux.seccomp, rt.seccomp_cache_dir)
    rt.store.reserve(container_id)
    cleanup = _Cleanup(rt.store, container_id)
    try:
        _create(rt, state, spec, rootfs, plan, opts, seccomp_bpf, cleanup,
                cgroup_plan=cgroup_plan)
    except BaseException:
        rt.store.release_held_lock(container_id)
        cleanup.run()
        raise
    return state


def _create(rt: Runtime, state: ContainerState, spec: Spec, rootfs: str, plan: NamespacePlan,
            opts: CreateOptions, seccomp_bpf: bytes | None, cleanup: _Cleanup,
            cgroup_plan=None) -> None:
    from nsbox.runtime import channel as ch
    from nsbox.runtime import init as initmod
    from nsbox.runtime import namespaces as nsmod
    from nsbox.runtime import process as procmod

    initmod.preload(spec)
    sdir = rt.store.dir(state.id)
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
        bundle=state.bundle, no_pivot=opts.no_pivot,
        no_new_keyring=opts.no_new_keyring, preserve_fds=preserve,
        console_sock_fd=console_fd, seccomp_bpf=seccomp_bpf, seccomp_agent_fd=agent_fd,
        runtime_exe=procmod.runtime_exe_identity(), extra_env=extra_env or None,
        cgroup_paths=state.cgroup_paths,
        hook_stop=initmod.needs_hook_stop(spec, seccomp_agent=agent_fd >= 0),
    )
    created_cgroups = cgroups.create(state.cgroup_paths)
    state.cgroup_created = created_cgroups
    cleanup.cgroup_dirs = created_cgroups
    cleanup.cgroup_paths = state.cgroup_paths
    parent_chan, child_chan = ch.Channel.pair()
    cleanup.closers.append(parent_chan)
    if initmod.shares_runtime_memory(spec, plan, ctx):
        pid = _clone_init(state, created_cgroups, cgroup_plan, ctx, plan, parent_chan, child_chan,
                          rt.store.dir(state.id))
        if pid:
            cleanup.init_pid = pid
            _await_init(parent_chan, pid, cleanup, ch.CREATED)
            state.pid = pid
            state.pid_start_time = process_start_time(pid) or 0
            _created(rt, state, opts, cleanup, pid, shared=True)
            return
    # One fork where it suffices (init.single_stage_ok): the init itself,
    # born in its pid namespace; else stage 1, which forks the init.
    single = initmod.single_stage_ok(spec, plan)
    if single:
        try:
            pid, born_in_unified = cgroups.fork_into(
                state.cgroup_paths, ns_flags=plan.new_flags & nsmod.NAMESPACES["pid"][0])
        except OSError:
            single = False  # clone3 refused: stage 1 unshares and says why if it fails too
    if not single:
        pid, born_in_unified = cgroups.fork_into(state.cgroup_paths)
    if pid == 0:
        parent_chan.close()
        (initmod.init_direct if single else initmod.stage1)(ctx, child_chan)
    child_chan.close()
    stage1_pid = 0 if single else pid
    cleanup.stage1_pid = stage1_pid
    cleanup.init_pid = pid if single else 0
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
    # The init stops before pivot_root ("run_hooks") only when ctx.hook_stop
    # says so; else its next word is "created".  Stage 1's "init_pid" shares
    # the socket and races: stage 2 may get there before its parent reports it.
    init_pid = _await_init(parent_chan, 0 if stage1_pid else pid, cleanup,
                           ch.RUN_HOOKS if ctx.hook_stop else ch.CREATED)
    if stage1_pid:
        _reap(stage1_pid)
        cleanup.stage1_pid = 0
    state.pid = init_pid
    state.pid_start_time = process_start_time(init_pid) or 0
    if ctx.hook_stop:
        hook_state = state.oci_state(CREATED)
        if spec.hooks.get("prestart") or spec.hooks.get("createRuntime"):
            from nsbox.runtime import hooks

            for kind in ("prestart", "createRuntime"):
                if spec.hooks.get(kind):
                    hooks.run_hooks(kind, spec.hooks[kind], hook_state)
        parent_chan.send(ch.HOOKS_DONE, state=hook_state)  # now with the init's pid
        parent_chan.expect(ch.CREATED)
    _created(rt, state, opts, cleanup, init_pid)


def _clone_init(state: ContainerState, created_cgroups: list[str], cgroup_plan, ctx, plan,
                parent_chan, child_chan, state_dir: str) -> int:
    """The init as a child sharing our memory (init.shares_runtime_memory); 0
    if the kernel refuses that clone, and the caller forks instead.

    We wait while it runs, so what the forked init waits for comes first:
    the limits, and `go`.
    """
    from nsbox.runtime import channel as ch
    from nsbox.runtime import init as initmod
    from nsbox.runtime import namespaces as nsmod

    if cgroup_plan is not None:
        from nsbox.runtime.cgroups.manager import Manager

        Manager(state.cgroup_paths, created_cgroups).apply_plan(cgroup_plan)
    parent_chan.send(ch.GO)
    runtime_fd, init_fd = parent_chan.fd, child_chan.fd
    try:
        pid = cgroups.clone_init_into(
            state.cgroup_paths, plan.new_flags & nsmod.NAMESPACES["pid"][0],
            lambda: initmod.init_in_runtime_memory(ctx, child_chan, runtime_fd),
            state_dir, created_cgroups)
    except OSError as exc:
        log.debug("clone_init refused (%s): forking the init", exc)
        child_chan.recv()  # our `go`, unread: the forked init waits for its own
        return 0
    log.debug("container init %d ran in the runtime's memory", pid)
    # The init's Channel object is ours too (it may have closed it); our fd is still open.
    os.close(init_fd)
    child_chan.fd = -1
    return pid


def _created(rt: Runtime, state: ContainerState, opts: CreateOptions, cleanup: _Cleanup,
             init_pid: int, shared: bool = False) -> None:
    """The init has said `created`: record the container.

    SHARED: the init still shares our memory, until its execve.  A process
    `exec` puts into the container meanwhile, given CAP_SYS_PTRACE, could
    write to the init's memory, which is this process's: so the container's
    lock is taken before the container is visible, and held until that
    ends: by `run` through its `start` (the next lock() in this process),
    by `create` until it exits.  `exec` takes the lock before it enters the
    container.
    """
    from nsbox.runtime import namespaces as nsmod

    state.namespace_paths = nsmod.namespace_paths(init_pid)
    if shared:
        rt.store.hold_lock(state.id)
    rt.store.save(state)
    if opts.pid_file:
        write_pid_file(opts.pid_file, init_pid)
    cleanup.disarm()
    for c in cleanup.closers:
        c.close()
    for fd in cleanup.fds:
        os.close(fd)  # the exec fifo and the seccomp agent socket: the init has its own


def _await_init(chan, init_pid: int, cleanup: _Cleanup, until: str) -> int:
    """The init's pid (INIT_PID is 0 while stage 1 has not reported it), once
    the init's message UNTIL has arrived too; ChildFailed with its error."""
    from nsbox.runtime import channel as ch

    arrived = False
    while not (init_pid and arrived):
        msg = chan.recv()
        if msg["type"] == ch.INIT_PID:
            init_pid = msg["pid"]
            cleanup.init_pid = init_pid
        elif msg["type"] == until and not arrived:
            arrived = True
        elif msg["type"] == ch.ERROR:
            raise ch.ChildFailed(msg["message"])
        else:
            raise KernelError(f"container setup: unexpected message {msg['type']}")
    return init_pid


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
            # Our child (one-fork create) or stage 1's: reap it or wait until it is gone.
            with suppress(ChildProcessError):
                os.waitpid(self.init_pid, os.WNOHANG)
            wait_gone(self.init_pid, None)
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


def _reap(pid: int) -> int:
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue


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
