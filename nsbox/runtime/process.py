"""The last steps before a container process execve()s its program.

Shared by the container's init and by `exec`.  The order matters:
rlimits and oom_score_adj while privileged; every fd outside the preserved
range marked close-on-exec (CVE-2024-21626) before any seccomp filter;
seccomp early only when no_new_privs is off (loading it is then a privileged
operation); the bounding set dropped before the identity change; capabilities
set after it; the cwd checked to be inside the root (CVE-2024-21626);
no_new_privs and then seccomp as late as possible.  `prepare_process` does
all of that, before the process is reported ready; `exec_process` is the
execve alone.
"""

from __future__ import annotations

import errno
import os
import stat

from nsbox._lazylog import get_logger
from nsbox._record import record
from nsbox.errors import BundleError, ConfigError, KernelError, SecurityError
from nsbox.runtime import syscalls as sc
from nsbox.runtime.spec import PERSONALITY_DOMAINS, Process, Spec
from nsbox.runtime.syscalls import SIGPIPE, SIGXFSZ

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

log = get_logger(__name__)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def env_dict(env: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in env:
        key, _, value = item.partition("=")
        out[key] = value
    return out


def lookup_executable(name: str, env: dict[str, str], cwd: str) -> str:
    """Resolve argv[0] the way execvp would, inside the current root."""
    if "/" in name:
        path = name if name.startswith("/") else os.path.join(cwd, name)
        candidates = [path]
    else:
        candidates = [os.path.join(d or ".", name) for d in env.get("PATH", DEFAULT_PATH).split(":")]
    for path in candidates:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and os.access(path, os.X_OK):
            return path
        if "/" in name:
            raise BundleError(f"exec {name!r}: permission denied or not a regular file")
    if "/" in name:
        raise BundleError(f"exec {name!r}: no such file or directory")
    raise BundleError(f"exec {name!r}: executable file not found in $PATH")


def refuse_runtime_binary(path: str, runtime_exe: tuple[int, int]) -> None:
    """Never let the container execute the runtime's own interpreter (CVE-2019-5736).

    A target that is our executable, or a script whose interpreter chain
    reaches it (for example "#!/proc/self/exe"), would hand the container a
    process whose /proc/self/exe is the host's binary.
    """
    for _ in range(5):  # the kernel follows at most 4 interpreter levels
        st = os.stat(path)
        if (st.st_dev, st.st_ino) == runtime_exe:
            raise SecurityError(f"exec {path}: refusing to execute the runtime's own binary")
        try:
            with open(path, "rb") as f:
                head = f.read(256)
        except OSError:
            return
        if not head.startswith(b"#!"):
            return
        interp = head[2:].split(b"\n", 1)[0].strip().split(None, 1)
        if not interp:
            return
        path = os.fsdecode(interp[0])


def runtime_exe_identity() -> tuple[int, int]:
    st = os.stat("/proc/self/exe")
    return (st.st_dev, st.st_ino)


def home_from_passwd(uid: int) -> str:
    try:
        with open("/etc/passwd") as f:
            for line in f:
                parts = line.rstrip("\n").split(":")
                if len(parts) >= 6 and parts[2] == str(uid):
                    return parts[5] or "/"
    except OSError:
        pass
    return "/"


def apply_rlimits(process: Process) -> None:
    if not process.rlimits:
        return
    for rl in process.rlimits:
        res = sc.RLIMITS.get(rl.type)
        if res is None:
            raise ConfigError(f"config.json: unknown rlimit {rl.type}")
        what = f"setrlimit {rl.type} soft={rl.soft} hard={rl.hard}"
        if rl.soft > rl.hard:
            raise KernelError(f"{what}: the soft limit exceeds the hard limit")
        try:
            sc.setrlimit(res, min(rl.soft, _RLIM_INFINITY), min(rl.hard, _RLIM_INFINITY))
        except OSError as exc:
            raise KernelError(f"{what}: {os.strerror(exc.errno)}", exc.errno) from None


_RLIM_INFINITY = 2**64 - 1


def write_oom_score_adj(value: int | None, pid: int | str = "self") -> None:
    if value is None:
        return
    try:
        with open(f"/proc/{pid}/oom_score_adj", "w") as f:
            f.write(str(value))
    except OSError as exc:
        raise KernelError(f"set oom_score_adj {value}: {exc.strerror}", exc.errno) from None


def switch_user(process: Process, setgroups_allowed: bool = True) -> None:
    user = process.user
    try:
        if setgroups_allowed:
            os.setgroups(user.additional_gids)
        elif user.additional_gids:
            raise ConfigError("additionalGids cannot be set: setgroups is denied in this user namespace")
        os.setresgid(user.gid, user.gid, user.gid)
        os.setresuid(user.uid, user.uid, user.uid)
    except OSError as exc:
        if _unmapped_root(user):
            return  # nothing to switch to: the ids stay the overflow id
        raise KernelError(f"switch to uid {user.uid} gid {user.gid}: {exc.strerror}", exc.errno) from None


def _unmapped_root(user) -> bool:
    """True for the default user (uid and gid 0) in a user namespace without mappings."""
    if user.uid or user.gid or user.additional_gids:
        return False
    try:
        with open("/proc/self/uid_map") as f:
            return not f.read().strip()
    except OSError:
        return False


def setgroups_allowed() -> bool:
    try:
        with open("/proc/self/setgroups") as f:
            return f.read().strip() == "allow"
    except OSError:
        return True


@record
class SeccompAgent:
    """Where a filter with SCMP_ACT_NOTIFY rules hands its notify fd."""

    sock_fd: int  # connected to linux.seccomp.listenerPath by the runtime
    state: dict  # the container state sent along
    pid: Callable[[], int]  # the host pid of the process loading the filter


def finish_and_exec(spec: Spec, process: Process, *, preserve_fds: int, seccomp_bpf: bytes | None,
                    runtime_exe: tuple[int, int], extra_env: dict[str, str] | None = None,
                    seccomp_agent: SeccompAgent | None = None) -> None:
    """Apply the process attributes and execve it; only returns by raising."""
    exec_process(*prepare_process(spec, process, preserve_fds=preserve_fds, seccomp_bpf=seccomp_bpf,
                                  runtime_exe=runtime_exe, extra_env=extra_env,
                                  seccomp_agent=seccomp_agent))


def prepare_process(spec: Spec, process: Process, *, preserve_fds: int, seccomp_bpf: bytes | None,
                    runtime_exe: tuple[int, int], extra_env: dict[str, str] | None = None,
                    seccomp_agent: SeccompAgent | None = None) -> ExecArguments:
    """Everything before execve that can fail; returns execve's arguments.

    The caller runs this before it reports the process ready, so each failure is
    the error of `create` (or `exec`), as with runc.  Once the seccomp filter is
    loaded only the caller's last messages (write, read, close) and execve
    remain: a filter written before close_range, openat2 or faccessat2 existed
    must not stop the runtime, so nothing here uses them after it.
    """
    from nsbox.runtime.security import capabilities, lsm

    env = env_dict(process.env)
    if extra_env:
        env.update(extra_env)
    if "HOME" not in env:
        env["HOME"] = home_from_passwd(process.user.uid)
    # Python ignores SIGPIPE and SIGXFSZ for itself, and an ignored signal
    # stays ignored across execve: the program gets them as under runc.
    for signum in (SIGPIPE, SIGXFSZ):
        sc.default_signal_action(signum)
    apply_rlimits(process)
    if process.user.umask is not None:
        os.umask(process.user.umask)
    else:
        os.umask(0o022)
    # Everything the runtime has open is closed at execve; the caller's
    # preserved fds (3 .. 3+N-1) are the only ones the program inherits.
    # Marked now, before any seccomp filter: whatever the runtime opens from
    # here on is close-on-exec anyway (Python's default).
    mark_fds_cloexec(3, preserve_fds)
    ruleset = None
    if any(k.startswith("org.nsbox.landlock") for k in spec.annotations):
        # Built while still root, so every path of the plan can be opened.
        from nsbox.runtime.security import landlock
        ruleset = landlock.prepare(spec.annotations)
    seccomp_section = spec.linux.seccomp or {}
    if seccomp_bpf is not None and not process.no_new_privileges:
        _load_seccomp(seccomp_bpf, seccomp_section, seccomp_agent)
        seccomp_bpf = None
    # Like runc: enter the cwd while still root, so a directory only root can
    # enter works; once more after the identity change if root was refused.
    chdir_pending = not _chdir(process.cwd, retry_as_user=True)
    bounding = capabilities.drop_bounding(process.capabilities)
    capabilities.prepare_identity_change()
    switch_user(process, setgroups_allowed())
    capabilities.apply_sets(process.capabilities, bounding)
    if chdir_pending:
        _chdir(process.cwd, retry_as_user=False)
    try:
        outside = os.getcwd().startswith("(unreachable)")
    except FileNotFoundError:
        outside = True  # glibc turns an "(unreachable)" cwd into ENOENT
    if outside:
        raise SecurityError(f"cwd {process.cwd!r} is outside the container root")
    path = lookup_executable(process.args[0], env, process.cwd)
    refuse_runtime_binary(path, runtime_exe)
    lsm.apply_process_labels(process.apparmor_profile, process.selinux_label)
    if spec.linux.personality is not None:
        sc.personality(PERSONALITY_DOMAINS[spec.linux.personality["domain"]])
    if process.no_new_privileges:
        sc.set_no_new_privs()
    if ruleset is not None:
        ruleset.enforce()  # after the identity change, before the seccomp filter
    arguments = exec_arguments(path, process.args, env)
    if seccomp_bpf is not None:
        _load_seccomp(seccomp_bpf, seccomp_section, seccomp_agent)
    return arguments


ExecArguments = tuple[bytes, list[bytes], list[bytes]]  # path, argv, envp (b"NAME=value")


def exec_arguments(path: str, args: list[str], env: dict[str, str]) -> ExecArguments:
    """execve's arguments as the kernel takes them, refused here (before the
    process is reported ready) where os.execve would refuse them at the last step."""
    envp = []
    for name, value in env.items():
        if not name:
            raise BundleError("process.env: a variable without a name")
        envp.append(os.fsencode(f"{name}={value}"))
    encoded = (os.fsencode(path), [os.fsencode(arg) for arg in args], envp)
    if any(b"\0" in item for item in (encoded[0], *encoded[1], *envp)):
        raise BundleError("process: a NUL byte in process.args or process.env")
    return encoded


def exec_process(path: bytes, argv: list[bytes], envp: list[bytes]) -> None:
    """execve; only returns by raising."""
    try:
        os.execve(path, argv, dict(item.split(b"=", 1) for item in envp))
    except OSError as exc:
        raise KernelError(f"exec {os.fsdecode(path)}: {exc.strerror}", exc.errno) from None


def _chdir(cwd: str, retry_as_user: bool) -> bool:
    """chdir(cwd); False if it was refused and should be tried again as the user."""
    try:
        os.chdir(cwd)
    except PermissionError:
        if retry_as_user:
            return False
        raise BundleError(f"chdir to cwd {cwd!r} set in config.json failed: permission denied") from None
    except OSError as exc:
        raise BundleError(f"chdir to cwd {cwd!r} set in config.json failed: {exc.strerror}") from None
    return True


def mark_fds_cloexec(first: int, preserve_fds: int = 0) -> None:
    """Mark every fd from first + preserve_fds on close-on-exec; make the preserved ones inheritable.

    close_range(CLOSE_RANGE_CLOEXEC) needs Linux 5.11 and may be filtered
    (the runtime itself can run under a seccomp profile that predates it);
    then, like runc, walk /proc/self/fd with fcntl(F_SETFD).
    """
    for fd in range(first, first + preserve_fds):
        try:
            os.set_inheritable(fd, True)
        except OSError:
            pass
    start = first + preserve_fds
    try:
        sc.close_range(start, 0xFFFFFFFF, sc.CLOSE_RANGE_CLOEXEC)
        return
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOSYS, errno.EINVAL):
            raise KernelError(f"close_range: {exc.strerror}", exc.errno) from None
    try:
        names = os.listdir("/proc/self/fd")
    except OSError as exc:
        raise KernelError(f"list /proc/self/fd to close the runtime's fds: {exc.strerror}",
                          exc.errno) from None
    for name in names:
        fd = int(name)
        if fd >= start:
            try:
                os.set_inheritable(fd, False)
            except OSError as exc:
                if exc.errno != errno.EBADF:  # the listing's own fd, closed by now
                    raise KernelError(f"mark fd {fd} close-on-exec: {exc.strerror}",
                                      exc.errno) from None


def _load_seccomp(bpf: bytes, section: dict, agent: SeccompAgent | None) -> None:
    from nsbox.runtime.security import seccomp

    notify_fd = seccomp.load_filter(bpf, section.get("flags") or [])
    if notify_fd is None:
        return
    try:
        if agent is None:
            raise SecurityError("seccomp: SCMP_ACT_NOTIFY rules need linux.seccomp.listenerPath")
        seccomp.send_to_agent(agent.sock_fd, notify_fd, pid=agent.pid(), state=agent.state,
                              metadata=section.get("listenerMetadata"))
    finally:
        os.close(notify_fd)
