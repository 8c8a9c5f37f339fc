"""The files behind user-mode networking: a container's network namespace kept as a
bind mount of its nsfs file at <run_root>/netns/<id>, and /dev/net/tun.

Below slirp.py and pasta.py (and what rootless mode reports): both programs
enter that namespace and both need the tun device; nothing here imports them.
"""

from __future__ import annotations

import os

from nsbox.errors import NsboxError

TUN = "/dev/net/tun"


def slirp_unavailable() -> str:
    """Why slirp4netns cannot run for this user, or "" when it can."""
    import shutil
    if shutil.which("slirp4netns") is None:
        return "the slirp4netns program is not installed"
    return tun_problem()


def tun_problem() -> str:
    """Why this user cannot use /dev/net/tun (slirp4netns, pasta), or ""."""
    if not os.access(TUN, os.R_OK | os.W_OK):
        try:
            mode = f"mode {os.stat(TUN).st_mode & 0o777:04o}"
        except OSError:
            return f"{TUN} does not exist"
        return (f"{TUN} is {mode} here; it must be readable and writable by this user "
                "- Debian's udev rules make it 0666")
    return ""


def netns_path(run_root: str, cid: str) -> str:
    """Where CID's network namespace is kept (a bind mount of its nsfs file)."""
    return os.path.join(run_root, "netns", cid)


def make_netns(run_root: str, cid: str) -> str:
    """A new network namespace, bind-mounted at netns_path() for the runtime to join.

    The engine makes it, not the runtime: slirp4netns must enter it before the
    container's process runs, and the container's init cannot be entered
    through /proc/PID/ns then (it is not dumpable until its execve).
    """
    from nsbox.runtime import syscalls as sc

    path = netns_path(run_root, cid)
    unmount_netns(path)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            sc.unshare(sc.CLONE_NEWNET)
            sc.mount("/proc/self/ns/net", path, None, sc.MS_BIND)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise NsboxError(f"could not create the network namespace at {path}")
    return path


def links_named(prefix: str = "") -> list[str]:
    """Names of this namespace's links starting with PREFIX, from /proc/thread-self/net/dev
    (no netlink socket, no import)."""
    with open("/proc/thread-self/net/dev") as f:
        lines = f.read().splitlines()[2:]
    names = (line.split(":", 1)[0].strip() for line in lines if ":" in line)
    return [n for n in names if n.startswith(prefix)]


def wait_gone(pid: int, timeout: float = 2.0) -> None:
    """Until PID has exited (a zombie counts: it may not be ours to reap)."""
    import time

    from nsbox.engine.procs import pid_alive

    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.005)


def unmount_netns(path: str) -> None:
    from nsbox.runtime import syscalls as sc

    try:
        sc.umount2(path, sc.MNT_DETACH)
    except OSError:
        pass  # not mounted
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
