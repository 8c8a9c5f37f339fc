"""The container's side of `create`: the two forked stages.

stage 1 joins the namespaces given by path, creates the user namespace (the
runtime writes its id maps), unshares the other new namespaces and forks
stage 2.  The fork is what puts stage 2 into the new PID and time
namespaces: it becomes the container's PID 1.  Stage 1 reports stage 2's pid
and exits.

Stage 1 forks only once the runtime has moved it into the container's
cgroups (the runtime does that while stage 1 sets up namespaces, since a v1
cgroup move is slow), so stage 2 is born there and unshares the cgroup
namespace, builds the root filesystem, and waits on the exec fifo
for `start` before it execve()s the user process.

Both run in a forked copy of the runtime, so they read the same Python
objects; the Channel carries only the synchronisation and errors.

Without a user or time namespace one process does it all (`init_direct`):
the runtime forks the init straight into its new pid namespace, and the
init does stage 1's namespace work itself before going on as stage 2.  A
Python fork and a child's copy-on-write faults fewer: ~1 ms of `create`.

Where the runtime need not act during the set-up (no user namespace, no
hooks, a new pid namespace) the init is not even a fork: it shares the
runtime's memory until its execve (`init_in_runtime_memory`, through
syscalls.clone_init), runs this module's code with the runtime's own
interpreter while the runtime waits, and leaves the wait for `start` and
the execve to C.  No page is copied, and execve tears nothing down:
~2 ms of a `run`.
"""

from __future__ import annotations

import os

from nsbox import _json
from nsbox._lazylog import get_logger
from nsbox._lite import suppress
from nsbox._record import record
from nsbox.errors import KernelError, NsboxError, SecurityError
from nsbox.runtime import cgroups
from nsbox.runtime import channel as ch
from nsbox.runtime import namespaces as nsmod
from nsbox.runtime import process as procmod
from nsbox.runtime import syscalls as sc
from nsbox.runtime.spec import Spec

log = get_logger(__name__)


@record
class InitContext:
    """Everything the forked stages need; built by the runtime before forking."""

    container_id: str
    spec: Spec
    rootfs: str
    bundle: str
    ns_plan: nsmod.NamespacePlan
    fifo_fd: int  # the exec fifo, opened O_RDWR by the runtime: start's byte in, our error out
    no_pivot: bool = False
    no_new_keyring: bool = False
    preserve_fds: int = 0
    console_sock_fd: int = -1  # where to send the pty master, when terminal
    seccomp_bpf: bytes | None = None
    seccomp_agent_fd: int = -1  # connected to linux.seccomp.listenerPath, for notify rules
    runtime_exe: tuple[int, int] = (0, 0)
    extra_env: dict[str, str] | None = None
    cgroup_paths: dict[str, str] | None = None  # stage 1 joins their v1 hierarchies itself
    mount_trees: dict[int, int] | None = None  # detached bind sources, taken by stage 1
    hook_stop: bool = True  # stop before pivot_root for the runtime: needs_hook_stop()
    # The container's state with the init's pid, from the runtime at the hook stop:
    # what createContainer/startContainer hooks and a seccomp agent read (each of
    # them makes the init stop, so it is there before any of them runs).
    state_json: str = ""


def stage1(ctx: InitContext, chan: ch.Channel) -> None:
    """Runs in the first forked child; never returns."""
    code = 1
    try:
        sc.set_pdeathsig(9)  # SIGKILL: die with the runtime during setup
        _stage1(ctx, chan)
        code = 0
    except NsboxError as exc:
        _report(chan, str(exc))
    except Exception as exc:  # noqa: BLE001 - the child must report, never unwind into the CLI
        _report(chan, f"container init: {exc.__class__.__name__}: {exc}")
        log.debug("container init failed", exc_info=True)
    finally:
        os._exit(code)


def _report(chan: ch.Channel, message: str, fifo_fd: int = -1) -> None:
    try:
        chan.send(ch.ERROR, message=message)
        return
    except OSError:
        pass
    # After `created` nobody listens on the channel: `start` reads the
    # message from the exec fifo once we are gone (Runtime.start).
    if fifo_fd >= 0:
        with suppress(OSError):
            os.write(fifo_fd, message.encode()[:4000])
            return
    with suppress(OSError):
        os.write(2, f"nsbox-runtime: {message}\n".encode())


def preload(spec: Spec) -> None:
    """Import, before forking, every module the init needs after pivot_root.

    Once the container's root is in place the host's Python library is out
    of reach, so a lazy import there would fail.
    """
    from nsbox.runtime.security import capabilities, lsm  # noqa: F401

    if spec.linux.seccomp is not None:
        from nsbox.runtime.security import seccomp  # noqa: F401
    if any(k.startswith("org.nsbox.landlock") for k in spec.annotations):
        from nsbox.runtime.security import landlock  # noqa: F401
    if spec.process is not None and spec.process.terminal:
        import fcntl  # noqa: F401
        import socket  # noqa: F401

        from nsbox.runtime import console  # noqa: F401
    if spec.hooks.get("createContainer") or spec.hooks.get("startContainer"):
        from nsbox.runtime import hooks  # noqa: F401

        hooks.preload()
    if spec.has_new_namespace("mount"):
        # Here rather than in stage 1: a forked child pays for every page its
        # imports touch (copy-on-write), which made the same imports take
        # ~1.5 ms there against ~0.6 ms here.
        from nsbox.runtime import rootfs

        rootfs.load()


def needs_hook_stop(spec: Spec, seccomp_agent: bool) -> bool:
    """Whether the init stops before pivot_root until the runtime says go on.

    The runtime runs the prestart and createRuntime hooks there, and sends the
    state with the init's pid that createContainer and startContainer hooks
    and a seccomp agent read.  Without any of them the stop is one round trip
    of the channel for nothing (two context switches and a state to encode,
    ~0.1 ms of every `run`).
    """
    return seccomp_agent or any(spec.hooks.get(kind) for kind in (
        "prestart", "createRuntime", "createContainer", "startContainer"))


def single_stage_ok(spec: Spec, plan: nsmod.NamespacePlan) -> bool:
    """Whether one fork can make the init (`init_direct`), without stage 1.

    Only stage 1's user and time namespaces (and joins of user, pid and time
    namespaces) need a process that forks again: the user namespace's id
    maps are written between its unshare and the others', and the pid and
    time namespaces only take children.  A new pid namespace alone is given
    to the init at birth (clone3 with CLONE_NEWPID).  Idmapped mounts take
    their trees in stage 1 too.
    """
    if plan.has("user") or plan.has("time") or plan.joins("pid"):
        return False
    if spec.mounts and plan.creates("mount"):
        from nsbox.runtime.rootfs import sources

        return not any(sources.wants_idmap(m) for m in spec.mounts)
    return True


def init_direct(ctx: InitContext, chan: ch.Channel) -> None:
    """The init, forked by the runtime itself into its new pid namespace; never returns.

    Does stage 1's namespace work itself (without its fork), then stage 2's.
    Runs only where single_stage_ok() said so.  No PR_SET_PDEATHSIG as in
    stage 1: it would outlive execve and kill the container when `create`
    exits; should the runtime die during set-up, the channel's end-of-file
    stops us at the next message.
    """
    try:
        _namespaces(ctx, chan, born_in=sc.CLONE_NEWPID)
    except NsboxError as exc:
        _report(chan, str(exc))
        os._exit(1)
    except Exception as exc:  # noqa: BLE001 - the child must report, never unwind into the CLI
        _report(chan, f"container init: {exc.__class__.__name__}: {exc}")
        os._exit(1)
    stage2(ctx, chan)


def shares_runtime_memory(spec: Spec, plan: nsmod.NamespacePlan, ctx: InitContext) -> bool:
    """Whether the init can be a child that shares the runtime's memory (clone_init).

    A forked init copies every page of the runtime it writes to, and its
    execve then tears that copy down: ~2 ms of a `run` here, a seventh of
    it.  The shared child does init_direct's work with the runtime's own
    interpreter while the runtime waits, so the runtime cannot act in
    between: not for hooks or a seccomp agent (the stop before
    pivot_root), startContainer hooks (Python after `start`), or a user
    namespace (id maps written by the runtime; the kernel refuses one to
    a process sharing memory anyway).  It is born in a new pid namespace
    only: as that namespace's init it ignores signals it has no handler
    for, so only SIGKILL can stop it while it holds the interpreter.
    """
    return (sc.can_clone_init() and single_stage_ok(spec, plan) and plan.creates("pid")
            and not ctx.hook_stop and not spec.hooks.get("startContainer"))


def init_in_runtime_memory(ctx: InitContext, chan: ch.Channel, runtime_fd: int) -> tuple | None:
    """clone_init's SETUP: init_direct up to `created`, in the runtime's memory.

    Returns (exec fifo, path, argv, envp) for the C code that waits for
    `start` and execs, or None once a failure is reported.  Never exits
    nor lets an exception out: the interpreter goes back to the runtime.
    Everything here is the runtime's too: our fds are our own (a copy of
    its table), but the Python objects are shared, so RUNTIME_FD, the
    runtime's end of the channel, is closed by number, not through its
    Channel.
    """
    try:
        os.close(runtime_fd)
        _namespaces(ctx, chan, born_in=sc.CLONE_NEWPID)
        sc.set_dumpable(False)  # as stage2: for the runtime too, whose memory this is
        return _stage2(ctx, chan, hand_back=True)
    except NsboxError as exc:
        _report(chan, str(exc), ctx.fifo_fd)
    except OSError as exc:
        _report(chan, f"container init: {exc}", ctx.fifo_fd)
    except Exception as exc:  # noqa: BLE001 - the interpreter must go back whole
        _report(chan, f"container init: {exc.__class__.__name__}: {exc}", ctx.fifo_fd)
    except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt: the runtime's SIGINT, run here
        _report(chan, f"container init: interrupted ({exc.__class__.__name__})", ctx.fifo_fd)
    return None


def _stage1(ctx: InitContext, chan: ch.Channel) -> None:
    _namespaces(ctx, chan)
    pid = os.fork()
    if pid == 0:
        stage2(ctx, chan)
    chan.send(ch.INIT_PID, pid=pid)


def _namespaces(ctx: InitContext, chan: ch.Channel, born_in: int = 0) -> None:
    """Stage 1's work up to the runtime's `go`: cgroups, namespaces joined and created.

    BORN_IN: the namespaces (CLONE_NEW*) the caller was already born in.
    """
    plan = ctx.ns_plan
    linux = ctx.spec.linux
    if ctx.cgroup_paths:
        # First, while still in the host's namespaces; the runtime moves us
        # into the cgroup2 hierarchy meanwhile (cgroups.join_v1 says why).
        cgroups.join_v1(ctx.cgroup_paths)
    if ctx.spec.mounts and plan.creates("mount"):
        # Still the host's root in the host's namespaces: take the bind sources the
        # container's user namespace may not reach, and idmap mounts (rootfs/sources.py).
        from nsbox.runtime import rootfs

        ctx.mount_trees = rootfs.open_mount_sources(ctx.spec, ctx.bundle, plan.has("user"))
    for ns_type, path in plan.join:
        if ns_type in ("mount", "cgroup"):
            continue  # joined by stage 2: mount changes our root, cgroup must follow placement
        nsmod.join(ns_type, path)
    if plan.creates("user"):
        nsmod.unshare(sc.CLONE_NEWUSER)
        chan.send(ch.NEED_IDMAP)
        chan.expect(ch.IDMAP_DONE)
    # A joined user namespace too: our host ids may have no mapping there, and
    # files we create (a tmpfs mountpoint, a device) need an owner it knows.
    in_user_ns = plan.creates("user") or any(t == "user" for t, _ in plan.join)
    # A new user namespace without mappings stays unmapped: there is no uid 0 to become.
    if in_user_ns and not (plan.creates("user") and not linux.uid_mappings):
        try:
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
        except OSError as exc:
            raise KernelError(f"become root in the user namespace: {exc.strerror}", exc.errno) from None
    others = plan.new_flags & ~(sc.CLONE_NEWUSER | sc.CLONE_NEWCGROUP | born_in)
    if others:
        nsmod.unshare(others)
        if others & sc.CLONE_NEWNET:
            # Like runc: a network namespace we create gets its loopback up
            # (one joined by path is left as its owner made it).
            try:
                sc.interface_up("lo")
            except OSError as exc:
                raise KernelError(f"bring up lo in the new network namespace: {exc.strerror}",
                                  exc.errno) from None
    if linux.time_offsets:
        # setresuid() above made us non-dumpable, which hands /proc/self to the
        # host's root: unwritable from the new user namespace until undone.
        if in_user_ns:
            sc.set_dumpable(True)
        nsmod.write_time_offsets(linux.time_offsets)
        if in_user_ns:
            sc.set_dumpable(False)
    chan.expect(ch.GO)  # we are in the container's cgroups: stage 2 inherits them


def stage2(ctx: InitContext, chan: ch.Channel) -> None:
    """The container's init; never returns."""
    code = 1
    try:
        # Non-dumpable: a container process cannot open /proc/<us>/exe (the host
        # interpreter) while we set up.  execve() restores it.
        sc.set_dumpable(False)
        _stage2(ctx, chan)
    except NsboxError as exc:
        _report(chan, str(exc), ctx.fifo_fd)
    except OSError as exc:
        _report(chan, f"container init: {exc}", ctx.fifo_fd)
        log.debug("container init failed", exc_info=True)
    except Exception as exc:  # noqa: BLE001
        _report(chan, f"container init: {exc.__class__.__name__}: {exc}", ctx.fifo_fd)
        log.debug("container init failed", exc_info=True)
    finally:
        os._exit(code)


def _stage2(ctx: InitContext, chan: ch.Channel, hand_back: bool = False) -> tuple | None:
    """The init's set-up; with HAND_BACK, what is left for clone_init's C
    (exec fifo, execve's arguments) once `created` is sent, else on to execve."""
    spec, plan = ctx.spec, ctx.ns_plan
    process = spec.process
    assert process is not None
    os.setsid()  # like runc: the init leads its own session and process group
    joined = dict(plan.join)
    if "cgroup" in joined:
        nsmod.join("cgroup", joined["cgroup"])
    elif plan.creates("cgroup"):
        nsmod.unshare(sc.CLONE_NEWCGROUP)
    root_fd = -1
    if not plan.creates("mount"):
        # The root is the bundle's, even in a mount namespace joined by path that cannot
        # see it: take it before joining (rootfs.enter_root chroots into it).
        root_fd = os.open(ctx.rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    if "mount" in joined:
        nsmod.join("mount", joined["mount"])

    def before_pivot() -> None:
        if not ctx.hook_stop:
            return
        chan.send(ch.RUN_HOOKS)
        ctx.state_json = _json.dumps(chan.expect(ch.HOOKS_DONE)["state"])
        if spec.hooks.get("createContainer"):
            from nsbox.runtime import hooks

            hooks.run_hooks("createContainer", spec.hooks["createContainer"], _state(ctx))

    if plan.creates("mount"):
        from nsbox.runtime import rootfs

        rootfs.prepare_rootfs(spec, ctx.rootfs, no_pivot=ctx.no_pivot, before_pivot=before_pivot,
                              bundle=ctx.bundle, trees=ctx.mount_trees)
    else:
        # The mount namespace is joined by path or the runtime's own: chroot, as runc does.
        from nsbox.runtime import rootfs

        before_pivot()
        rootfs.enter_root(root_fd, ctx.rootfs)
    if plan.creates("uts") or "uts" in joined:
        if spec.hostname:
            sc.sethostname(spec.hostname)
        if spec.domainname:
            sc.setdomainname(spec.domainname)
    _write_sysctls(spec.linux.sysctl)
    if plan.creates("mount"):
        from nsbox.runtime import rootfs

        # Like runc, create a missing cwd; after the pivot, so it stays inside
        # the root, and before a read-only root is locked.
        try:
            os.makedirs(process.cwd, 0o755, exist_ok=True)
        except OSError as exc:
            raise KernelError(f"create cwd {process.cwd!r}: {exc.strerror}", exc.errno) from None
        rootfs.finalize_rootfs(spec)
    if not ctx.no_new_keyring:
        try:
            sc.join_session_keyring(ctx.container_id)
        except OSError as exc:
            log.debug("session keyring not created: %s", exc)
    procmod.write_oom_score_adj(process.oom_score_adj)
    if process.terminal:
        _setup_terminal(ctx, process)
    agent = None
    if ctx.seccomp_agent_fd >= 0:
        state = _state(ctx)
        agent = procmod.SeccompAgent(ctx.seccomp_agent_fd, state, lambda: state["pid"])
    os.set_blocking(ctx.fifo_fd, True)  # read after the seccomp filter: no poll() then
    # Like runc, everything up to execve happens before we report ready, so a
    # failure (rlimits, user, capabilities, cwd, a missing program, seccomp)
    # is create's error.  From the seccomp filter on, only write, read, close
    # and execve (and startContainer hooks) are left.
    arguments = procmod.prepare_process(spec, process, preserve_fds=ctx.preserve_fds,
                                        seccomp_bpf=ctx.seccomp_bpf, runtime_exe=ctx.runtime_exe,
                                        extra_env=ctx.extra_env, seccomp_agent=agent)
    chan.send(ch.CREATED)
    chan.close()
    if hand_back:
        return (ctx.fifo_fd, *arguments)
    _wait_for_start(ctx.fifo_fd)
    if spec.hooks.get("startContainer"):
        from nsbox.runtime import hooks

        hooks.run_hooks("startContainer", spec.hooks["startContainer"], _state(ctx))
    # The fifo stays open (close-on-exec) until execve: `start` waits for
    # that, and reads our error from it if execve fails.
    procmod.exec_process(*arguments)
    return None


def _state(ctx: InitContext) -> dict:
    return _json.loads(ctx.state_json)


def _write_sysctls(sysctl: dict[str, str]) -> None:
    for key, value in sysctl.items():
        rel = key.replace(".", "/")
        if ".." in rel.split("/"):
            raise SecurityError(f"sysctl {key}: invalid name")
        try:
            with open(f"/proc/sys/{rel}", "w") as f:
                f.write(value)
        except OSError as exc:
            raise KernelError(f"sysctl {key}={value}: {exc.strerror}", exc.errno) from None


def _setup_terminal(ctx: InitContext, process) -> None:
    import socket

    from nsbox.runtime import console

    master, slave, name = console.open_pty()
    if process.console_size:
        rows, cols = process.console_size
        console.set_window_size(slave, rows, cols)
    sock = socket.socket(fileno=ctx.console_sock_fd)
    try:
        console.send_console_fd(sock, master, name)
    finally:
        sock.close()
        os.close(master)
    console.give_tty_to(slave, process.user.uid)
    console.make_controlling_tty(slave)


def _wait_for_start(fifo_fd: int) -> None:
    """Block until `start` writes a byte into the exec fifo.

    A plain blocking read(2), since the seccomp filter may already be loaded.
    We hold the fifo read-write (see Runtime._create), so it never reads EOF.
    """
    while True:
        try:
            if os.read(fifo_fd, 1):
                return
        except InterruptedError:
            continue
        raise KernelError("exec fifo closed without a start")
