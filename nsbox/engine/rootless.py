"""Rootless mode: the engine run by an unprivileged user, as rootless Podman is.

Every command of one user runs inside the same user namespace and mount
namespace, which a small pause process (a /bin/sh loop named `nsbox-pause`,
_PAUSE_SCRIPT) keeps alive between commands; it ends on SIGTERM once no
other process is left in those namespaces.  Inside, uid and gid 0 are the user's own ids and 1..N the
user's ranges from /etc/subuid and /etc/subgid; the kernel lets an
unprivileged process map only its own id, so the setuid helpers
newuidmap and newgidmap (Debian's uidmap package) write the maps.  There
the engine is root over its own files: it unpacks image layers with their
owners, mounts overlayfs (metadata in user.* xattrs, `userxattr`) and runs
nsbox-runtime, whose containers share this user namespace.

Cgroups follow the user only as far as the host delegates them.  The v1
hierarchies and an undelegated cgroup2 tree belong to the host's root:
rootless containers then run without cgroups, and a resource limit is
refused with a message saying so.  On a cgroup v2 host that delegates a
subtree to the user (a writable cgroup free of processes above the user's
own, as systemd's user@.service is), each container gets its cgroup there
and limits work (delegated_parent).

Paths: images and containers under $XDG_DATA_HOME/nsbox (~/.local/share/nsbox),
run state under $XDG_RUNTIME_DIR/nsbox or /tmp/nsbox-run-<uid>.
"""

from __future__ import annotations

import os

from nsbox.errors import ConfigError, KernelError, NsboxError

PAUSE_NAME = "nsbox-pause"  # the pause process's argv[0]
_SHELL = "/bin/sh"
PAUSE_PID_FILE = "pause.pid"
PAUSE_LOCK_FILE = "pause.lock"
# The pause process: a shell blocked in `read` on a pipe whose writing end it
# holds itself (fd 3), so it never reads anything and needs no child.  On
# SIGTERM it takes pause.lock (fd 4, the lock `enter` holds from finding the
# pause process to joining it, so no command can be half-way in) and exits
# only when no other process shares its user or mount namespace: no
# container, monitor or nsbox command of the user is left.  A zombie still
# shows the user namespace of its credentials until it is reaped: it does
# not count.  Otherwise the
# TERM is ignored, as a container's namespaces must outlive a stray signal.
# $1 is flock(1), or empty when it is missing (then no lock is taken).
_PAUSE_SCRIPT = r"""trap on_term TERM
lock=$1
alone() {
  for p in /proc/[0-9]*; do
    [ "$p" = "/proc/$$" ] && continue
    [ "$p/ns/mnt" -ef "/proc/$$/ns/mnt" ] && return 1
    [ "$p/ns/user" -ef "/proc/$$/ns/user" ] || continue
    read -r stat 2>/dev/null <"$p/stat" || continue
    state=${stat##*) }
    case $state in Z*|X*) continue ;; esac
    return 1
  done
  return 0
}
on_term() {
  [ -z "$lock" ] || "$lock" 4
  alone && exit 0
  [ -z "$lock" ] || "$lock" -u 4
}
while :; do read -r _; done
"""


class RootlessError(NsboxError):
    """Rootless mode cannot be set up (no subordinate ids, no newuidmap, ...)."""


def _first_map_line(kind: str) -> list[str]:
    with open(f"/proc/self/{kind}_map") as f:
        return f.readline().split()


def in_user_namespace() -> bool:
    """Whether this process runs in a user namespace other than the host's."""
    try:
        line = _first_map_line("uid")
    except OSError:
        return False
    return line != ["0", "0", "4294967295"]


def active() -> bool:
    """Rootless mode: not root, or root only inside a user namespace."""
    return os.geteuid() != 0 or in_user_namespace()


def host_uid() -> int:
    """The host uid this process runs as (its uid 0 maps to it when inside)."""
    return _host_id("uid", os.geteuid())


def host_gid() -> int:
    """The host gid this process runs as (its gid 0 maps to it when inside)."""
    return _host_id("gid", os.getegid())


def _host_id(kind: str, own: int) -> int:
    if os.geteuid() != 0:
        return own
    line = _first_map_line(kind)
    return int(line[1]) if line and line[0] == "0" else 0


def default_root() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "nsbox")


def default_run_root() -> str:
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir and os.path.isdir(runtime_dir):
        return os.path.join(runtime_dir, "nsbox")
    return f"/tmp/nsbox-run-{host_uid()}"


def enter(run_root: str) -> None:
    """Join this user's rootless namespaces, starting the pause process first if needed.

    Must be called while the process has a single thread (setns into a user
    namespace requires it).  Root, and a process already inside, return at once.
    """
    if os.geteuid() == 0:
        return
    import fcntl

    os.makedirs(run_root, mode=0o700, exist_ok=True)
    _check_private(run_root)
    lock_path = os.path.join(run_root, PAUSE_LOCK_FILE)
    lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        pid = _running_pause(run_root)
        if pid == 0:
            pid = _start_pause(run_root, lock_path)
        try:
            _join(pid)
        except KernelError:
            if _running_pause(run_root) == pid:
                raise
            # Killed between the look-up and the join (SIGKILL: a TERM waits for the lock).
            _join(_start_pause(run_root, lock_path))
    finally:
        os.close(lock_fd)


def _check_private(path: str) -> None:
    """PATH must be our own directory, closed to others: under /tmp anyone may make it first."""
    import stat

    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise RootlessError(f"rootless: {path} is not a directory only this user can use "
                            "(someone else made it, or its mode is open); remove it or set "
                            "XDG_RUNTIME_DIR")


def _running_pause(run_root: str) -> int:
    try:
        with open(os.path.join(run_root, PAUSE_PID_FILE)) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if f.read().split(b"\0")[0] != PAUSE_NAME.encode():
                return 0
        if os.stat(f"/proc/{pid}").st_uid != os.geteuid():
            return 0
        return pid
    except (OSError, ValueError):
        return 0


def pause_pid(run_root: str) -> int:
    """The pid of this user's pause process, or 0 if none runs."""
    return _running_pause(run_root)


def end_pause(pid: int) -> int:
    """Kill the pause process PID (from pause_pid, for `system reset`); PID, or 0 if none.

    SIGKILL, not TERM: the caller is itself in the namespaces, so the pause
    process would stay.  They go when the caller's last process exits.
    """
    import signal
    import time

    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return pid
        for _ in range(200):  # its parent (init) reaps it
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                        break
            except OSError:
                break
            time.sleep(0.01)
    return pid


def _join(pid: int) -> None:
    from nsbox.runtime import syscalls as sc

    fds = []
    try:
        for name in ("user", "mnt"):
            fds.append(os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC))
        sc.setns(fds[0], sc.CLONE_NEWUSER)
        sc.setns(fds[1], sc.CLONE_NEWNS)
    except OSError as exc:
        raise KernelError(f"rootless: joining the namespaces of {PAUSE_NAME} ({pid}): "
                          f"{exc.strerror}", exc.errno) from None
    finally:
        for fd in fds:
            os.close(fd)
    # The working directory still points into the old mount namespace: look it up again.
    try:
        os.chdir(os.getcwd())
    except OSError:
        os.chdir("/")


def _subid_range(path: str, what: str) -> tuple[int, int]:
    import pwd

    from nsbox.engine.userns import subid_ranges

    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    ranges = subid_ranges(path, name) or subid_ranges(path, str(uid))
    if not ranges:
        raise RootlessError(
            f"rootless: no subordinate {what} range for user {name} in {path}; ask root to add "
            f"one, e.g. `usermod --add-sub{what}s 100000-165535 {name}`")
    return max(ranges, key=lambda r: r[1])


def _start_pause(run_root: str, lock_path: str) -> int:
    """Fork the pause process into new user and mount namespaces and map its ids."""
    import shutil
    import subprocess

    from nsbox.runtime import syscalls as sc

    tools = {name: shutil.which(name) for name in ("newuidmap", "newgidmap")}
    missing = [name for name, path in tools.items() if not path]
    if missing:
        raise RootlessError(f"rootless: {' and '.join(missing)} not found: install the uidmap package")
    sub_uid = _subid_range("/etc/subuid", "uid")
    sub_gid = _subid_range("/etc/subgid", "gid")
    flock = shutil.which("flock") or ""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the pause process
        code = 1
        try:
            os.close(ready_r)
            os.close(go_w)
            os.setsid()
            sc.unshare(sc.CLONE_NEWUSER | sc.CLONE_NEWNS)
            os.write(ready_w, b"u")
            if os.read(go_r, 1) != b"g":
                os._exit(1)
            sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
            os.write(ready_w, b"r")
            # fd 0: a pipe nobody writes to (its writing end stays open as
            # fd 3), 1 and 2: /dev/null, 4: the lock file (_PAUSE_SCRIPT).
            lock = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            pipe_r, pipe_w = os.pipe()
            devnull = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
            fds = [os.dup(fd) for fd in (pipe_r, devnull, devnull, pipe_w, lock)]
            for target, fd in enumerate(fds):
                os.dup2(fd, target, inheritable=True)
            sc.close_range(5)
            os.chdir("/")
            import signal

            # Ignored signals stay ignored across execve (a shell cannot
            # trap them): a terminal's hangup must not end every
            # container's namespaces.  TERM is the script's to handle.
            for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
                signal.signal(signum, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            # Holding the namespaces needs no Python: a shell blocked in
            # `read` costs a fraction of this interpreter's memory.
            os.execv(_SHELL, [PAUSE_NAME, "-c", _PAUSE_SCRIPT, PAUSE_NAME, flock])
        except BaseException:  # noqa: BLE001 - report nothing, just fail the handshake
            pass
        os._exit(code)
    os.close(ready_w)
    os.close(go_r)
    try:
        if os.read(ready_r, 1) != b"u":
            raise RootlessError("rootless: the pause process could not create a user namespace "
                                "(are unprivileged user namespaces disabled?)")
        uid, gid = os.getuid(), os.getgid()
        for tool, own, (start, count) in (("newuidmap", uid, sub_uid), ("newgidmap", gid, sub_gid)):
            result = subprocess.run([tools[tool], str(pid), "0", str(own), "1", "1", str(start),
                                     str(count)], capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise RootlessError(f"rootless: {tool} failed: "
                                    f"{(result.stderr or result.stdout).strip() or result.returncode}")
        os.write(go_w, b"g")
        if os.read(ready_r, 1) != b"r":
            raise RootlessError("rootless: the pause process failed to set up its mount namespace")
    except BaseException:
        import signal

        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(ready_r)
        os.close(go_w)
    tmp = os.path.join(run_root, PAUSE_PID_FILE + ".tmp")
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.replace(tmp, os.path.join(run_root, PAUSE_PID_FILE))
    return pid


def check_resources(spec) -> None:  # noqa: ANN001 - model.ContainerSpec
    """Refuse a resource limit: for a rootless container without a cgroup (no delegated_parent)."""
    asked = sorted(name for name, value in (spec.resources or {}).items() if value)
    if asked:
        raise ConfigError(
            f"rootless: resource limits ({', '.join(asked)}) need cgroups, and no cgroup2 "
            f"subtree is delegated to uid {host_uid()} here (a writable cgroup free of "
            "processes above this one, as systemd's user@.service is); run without "
            "limits, or as root")


def cgroups_usable() -> bool:
    """Whether containers get cgroups: as root, and rootless under a delegated subtree."""
    return not active() or delegated_parent() is not None


def delegated_parent() -> str | None:
    """Where rootless containers get their cgroups, if cgroup delegation allows: a directory.

    The highest cgroup2 ancestor of our own cgroup that we may write and
    that holds no process itself.  cgroup v2 lets only a cgroup free of
    processes pass controllers to its children, and moves a process only
    by someone who may write the cgroup.procs of the two cgroups' common
    ancestor: so a container's cgroup goes next to ours, below that one.
    """
    from nsbox.runtime import cgroups

    try:
        if cgroups.mode() != "v2":
            return None
        unified = _unified()
        own = cgroups.own_cgroups().get(cgroups.UNIFIED, "/")
        path = os.path.normpath(os.path.join(unified.mountpoint,
                                             os.path.relpath(own, unified.root)))
        found = None
        while path != unified.mountpoint and path.startswith(unified.mountpoint + "/"):
            if not (os.access(path, os.W_OK)
                    and os.access(os.path.join(path, "cgroup.procs"), os.W_OK)):
                break
            with open(os.path.join(path, "cgroup.procs")) as f:
                if not f.read().strip():
                    found = path
            path = os.path.dirname(path)
        return found
    except (OSError, StopIteration):
        return None


def _unified():  # noqa: ANN202 - cgroups.Hierarchy
    from nsbox.runtime import cgroups

    return next(h for h in cgroups.hierarchies() if h.key == cgroups.UNIFIED)


def delegated_cgroups_path(directory: str, name: str) -> str:
    """The OCI cgroupsPath of cgroup NAME in the delegated cgroup2 DIRECTORY."""
    unified = _unified()
    return os.path.normpath(os.path.join(unified.root, os.path.relpath(directory, unified.mountpoint),
                                         name))


def report() -> dict:
    """Rootless facts for `nsbox info`."""
    if not active():
        return {"Enabled": False}
    from nsbox.engine.network.netns import slirp_unavailable

    why = slirp_unavailable()
    # Bridge networks live in a network namespace of the user's own, behind one
    # slirp4netns (network/usernet.py): they need what slirp4netns needs.
    return {"Enabled": True, "HostUID": host_uid(), "Cgroups": delegated_parent() or "",
            "Network": "slirp4netns" if not why else "",
            "BridgeNetworks": not why, "NetworkUnavailable": why}


def report_line(facts: dict) -> str:
    if not facts.get("Enabled"):
        return "Rootless: no"
    network = facts["Network"] or f"loopback only, {facts['NetworkUnavailable']}"
    if facts.get("BridgeNetworks"):
        network += "; bridge networks in the user's own network namespace"
    cgroups = (f"cgroups under {facts['Cgroups']}" if facts["Cgroups"]
               else "no delegated cgroup, so resource limits are refused")
    return f"Rootless: yes (uid {facts['HostUID']}; {cgroups}; network: {network})"


class KeepId:
    """`--userns=keep-id`: the container's own user namespace, where the user keeps their ids.

    Inside, the user's uid and gid are the same numbers as on the host and
    map to this user namespace's 0 (the user); 0..uid-1 map to the first
    subordinate ids and the ids above the user's to themselves, so root and
    the image's other owners stay distinct.  The image's layers are used as
    chowned copies (Storage.set_shifted), since the layers' filesystem does
    not allow idmapped mounts from here, and the container's /etc/passwd and
    /etc/group get an entry for the user.
    """

    def __init__(self) -> None:
        if not active():
            raise ConfigError("--userns=keep-id is for rootless mode (nsbox run by an "
                              "unprivileged user); as root, use --userns=remap or auto")
        self.uid, self.gid = host_uid(), host_gid()
        self.uid_map = _keep_id_map(self.uid, _inside_ids("/proc/self/uid_map"))
        self.gid_map = _keep_id_map(self.gid, _inside_ids("/proc/self/gid_map"))

    def ours(self, uid: int, gid: int) -> tuple[int, int]:
        """Our ids for the container's UID and GID."""
        from nsbox.engine.userns import map_id

        return map_id(self.uid_map, uid), map_id(self.gid_map, gid)

    def write_account_files(self, userdata: str, layer_dirs: list[str]) -> dict[str, str]:
        """passwd and group of the image plus the user's entries: target -> file in USERDATA."""
        import pwd

        try:
            entry = pwd.getpwuid(self.uid)
            name, home = entry.pw_name, entry.pw_dir
        except KeyError:
            name, home = f"user{self.uid}", "/"
        out = {}
        for base, line, key in (
                ("passwd", f"{name}:x:{self.uid}:{self.gid}:{name}:{home}:/bin/sh\n", self.uid),
                ("group", f"{name}:x:{self.gid}:\n", self.gid)):
            text = ""
            for layer in layer_dirs:
                path = os.path.join(layer, "etc", base)
                if os.path.isfile(path) and not os.path.islink(path):
                    with open(path, errors="replace") as f:
                        text = f.read()
                    break
            if not any(fields[2:3] == [str(key)] for fields in
                       (row.split(":") for row in text.splitlines())):
                text = (text + "\n" if text and not text.endswith("\n") else text) + line
            path = os.path.join(userdata, base)
            with open(path, "w") as f:
                f.write(text)
            out[f"/etc/{base}"] = path
        return out


def _inside_ids(path: str) -> int:
    """How many ids this user namespace has (0..N-1): the user and the subordinate range."""
    with open(path) as f:
        return max(int(inside) + int(size) for inside, _, size in
                   (line.split() for line in f if line.strip()))


def _keep_id_map(own: int, count: int) -> list[list[int]]:
    """[container id, our id, size] triples: OWN -> 0, the rest onto 1..COUNT-1."""
    subordinate = count - 1
    if own <= subordinate:
        maps = [[0, 1, own], [own, 0, 1]]
        if subordinate > own:
            maps.append([own + 1, own + 1, subordinate - own])
        return [m for m in maps if m[2] > 0]
    return [[0, 1, subordinate], [own, 0, 1]]
