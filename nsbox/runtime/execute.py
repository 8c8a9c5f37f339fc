"""`exec`: start another process inside a running container.

The runtime forks; the child joins the container's cgroup, then each of the
init's namespaces (user first, mount last, cgroup after the cgroup move),
and forks again so the grandchild lands in the container's PID namespace.
The grandchild applies the process attributes and execve()s.
"""

from __future__ import annotations

import contextlib
import os
import signal

from nsbox._lazylog import get_logger
from nsbox.errors import KernelError, NsboxError
from nsbox.runtime import cgroups
from nsbox.runtime import channel as ch
from nsbox.runtime import namespaces as nsmod
from nsbox.runtime import process as procmod
from nsbox.runtime import syscalls as sc
from nsbox.runtime.spec import parse_spec
from nsbox.runtime.state import ContainerState

log = get_logger(__name__)


def spawn(st: ContainerState, opts, seccomp_cache_dir: str | None = None) -> int:
    """Start the process in the container; returns its host pid once it is about to exec."""
    spec = parse_spec(st.config)
    process = opts.process
    if process.terminal and not opts.console_socket:
        from nsbox.errors import ConfigError

        raise ConfigError("cannot allocate a pseudo-TTY without --console-socket")
    seccomp_bpf = None
    if spec.linux.seccomp is not None:
        from nsbox.runtime.security import seccomp_compile

        seccomp_bpf = seccomp_compile.compiled_filter(spec.linux.seccomp, seccomp_cache_dir)
    from nsbox.runtime.security import capabilities

    capabilities.validate(process.capabilities, strict=False)
    # The grandchild execs from inside the container's mount namespace, where
    # the host's Python library is out of reach: import what it needs now.
    from nsbox.runtime import init as initmod

    initmod.preload(spec)
    # Which of the init's namespaces differ from ours: only those are joined.
    joins = []
    for ns_type in nsmod.JOIN_ORDER:
        proc_name = nsmod.PROC_NAMES[ns_type]
        path = f"/proc/{st.pid}/ns/{proc_name}"
        try:
            if os.stat(path).st_ino != os.stat(f"/proc/self/ns/{proc_name}").st_ino:
                joins.append((ns_type, path))
        except OSError as exc:
            raise KernelError(f"container {st.id}: cannot read {path}: {exc.strerror}") from None
    console_fd = -1
    csock = None
    if process.terminal:
        # console imports fcntl lazily, and the pty is opened inside the container
        # (preload saw the container's process, which may have no terminal).
        import fcntl  # noqa: F401

        from nsbox.runtime import console

        csock = console.connect_console_socket(opts.console_socket)
        console_fd = csock.fileno()
    from nsbox.runtime.security import seccomp_agent_fd

    agent_fd = seccomp_agent_fd(spec)
    opts.seccomp_agent_fd = agent_fd
    # Subreaper: the process is our grandchild and must be re-parented to us.
    sc.set_child_subreaper(True)
    runtime_exe = procmod.runtime_exe_identity()
    runtime_exe_now = ch.exe_identity("self")  # the process's /proc/<pid>/exe until it execs
    parent_chan, child_chan = ch.Channel.pair()
    pid, born_in_unified = cgroups.fork_into(st.cgroup_paths or {})
    if pid == 0:
        parent_chan.close()
        _child(st, spec, process, joins, child_chan, opts, seccomp_bpf, runtime_exe, console_fd,
               born_in_unified)
    child_chan.close()
    if csock is not None:
        csock.close()
    if agent_fd >= 0:
        os.close(agent_fd)
    target = 0
    try:
        # The child's "init_pid" and the grandchild's "created" share the socket and
        # race: the grandchild may report before its parent does.
        created = False
        while not (target and created):
            msg = parent_chan.recv()
            if msg["type"] == ch.ERROR:
                raise ch.ChildFailed(msg["message"])
            if msg["type"] == ch.INIT_PID:
                target = msg["pid"]
            elif msg["type"] == ch.CREATED:
                created = True
        # Ready; an execve that fails still has its say, until the socket
        # (close-on-exec in the process) reaches EOF.
        msg = parent_chan.recv_until_exec(target, runtime_exe_now)
        if msg is not None and msg.get("type") == ch.ERROR:
            raise ch.ChildFailed(msg["message"])
    except NsboxError:
        with contextlib.suppress(ProcessLookupError):
            if target:
                os.kill(target, signal.SIGKILL)
        _reap_any(pid)
        if target:
            _reap_any(target)
        raise
    finally:
        parent_chan.close()
    _reap_any(pid)
    if opts.pid_file:
        from nsbox.runtime.state import write_pid_file

        write_pid_file(opts.pid_file, target)
    return target


def _reap_any(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _child(st, spec, process, joins, chan, opts, seccomp_bpf, runtime_exe, console_fd,
           born_in_unified) -> None:
    code = 1
    try:
        sc.set_dumpable(False)
        sc.set_pdeathsig(signal.SIGKILL)
        if st.cgroup_paths:
            cgroups.join(st.cgroup_paths, born_in_unified)
        # Without a mount namespace of its own the init is chrooted (rootfs.enter_root):
        # share its root, taken before joining.
        root_fd = -1
        if not spec.has_new_namespace("mount"):
            root_fd = os.open(f"/proc/{st.pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        for ns_type, path in joins:
            nsmod.join(ns_type, path)
        if root_fd >= 0:
            os.fchdir(root_fd)
            os.chroot(".")
            os.close(root_fd)
        os.chdir("/")
        agent = None
        pid_pipe = None
        if opts.seccomp_agent_fd >= 0:
            # Only we see the grandchild's host pid, which the seccomp agent is owed.
            pid_pipe = os.pipe()
            agent = procmod.SeccompAgent(opts.seccomp_agent_fd, st.oci_state("running"),
                                         lambda: int(os.read(pid_pipe[0], 32)))
        pid = os.fork()
        if pid == 0:
            _grandchild(spec, process, chan, opts, seccomp_bpf, runtime_exe, console_fd, agent)
        if pid_pipe is not None:
            os.write(pid_pipe[1], str(pid).encode())
        chan.send(ch.INIT_PID, pid=pid)
        code = 0
    except NsboxError as exc:
        with contextlib.suppress(OSError):
            chan.send(ch.ERROR, message=str(exc))
    except Exception as exc:  # noqa: BLE001
        with contextlib.suppress(OSError):
            chan.send(ch.ERROR, message=f"exec: {exc}")
    finally:
        os._exit(code)


def _grandchild(spec, process, chan, opts, seccomp_bpf, runtime_exe, console_fd, agent) -> None:
    code = 1
    try:
        sc.set_dumpable(False)
        os.setsid()  # like runc: its own session and process group, with or without a tty
        procmod.write_oom_score_adj(process.oom_score_adj)
        if process.terminal:
            import socket

            from nsbox.runtime import console

            master, slave, name = console.open_pty()
            if process.console_size:
                console.set_window_size(slave, *process.console_size)
            sock = socket.socket(fileno=console_fd)
            console.send_console_fd(sock, master, name)
            sock.close()
            os.close(master)
            console.give_tty_to(slave, process.user.uid)
            console.make_controlling_tty(slave)
        # Everything that can fail happens before "created", so `exec` reports
        # it; the channel stays open (close-on-exec) to report a failing execve.
        arguments = procmod.prepare_process(spec, process, preserve_fds=opts.preserve_fds,
                                            seccomp_bpf=seccomp_bpf, runtime_exe=runtime_exe,
                                            extra_env=opts.extra_env or None, seccomp_agent=agent)
        chan.send(ch.CREATED)
        procmod.exec_process(*arguments)
    except NsboxError as exc:
        _report_late(chan, str(exc))
    except Exception as exc:  # noqa: BLE001
        _report_late(chan, f"exec: {exc}")
    finally:
        os._exit(127 if code else 0)


def _report_late(chan: ch.Channel, message: str) -> None:
    try:
        chan.send(ch.ERROR, message=message)
    except OSError:
        # The runtime is gone: the process's stderr is the only place left
        # to say why it did not start.
        with contextlib.suppress(OSError):
            os.write(2, f"nsbox-runtime: {message}\n".encode())


