"""The cgroup v2 side: enabling controllers, freezing, killing, statistics, OOM events, devices.

In cgroup2 a directory only has a controller's files when its parent lists
the controller in cgroup.subtree_control, and a cgroup that holds processes
(other than the root) may not enable controllers for its children.  So the
runtime enables what it needs from the nearest ancestor that already offers
it: for a cgroupsPath below the caller's own cgroup it never climbs above
that cgroup; for an absolute path elsewhere it climbs up to the hierarchy's
root, as runc, crun, Docker and Podman do (see climb_limit).
"""

from __future__ import annotations

import errno
import os
import time

from nsbox._lazylog import get_logger
from nsbox.errors import KernelError, UnsupportedError
from nsbox.runtime.cgroups import _files

log = get_logger(__name__)


def _controllers(path: str, name: str) -> set[str]:
    return set((_files.read(os.path.join(path, name)) or "").split())


def _parent(path: str) -> str:
    return os.path.dirname(path.rstrip("/"))


def _is_root(path: str) -> bool:
    # Every cgroup2 directory but the root has cgroup.type.
    return not os.path.exists(os.path.join(path, "cgroup.type"))


def _unified_mount():  # noqa: ANN202 - cgroups.Hierarchy or None
    from nsbox.runtime.cgroups.host import UNIFIED, hierarchies

    return next((h for h in hierarchies() if h.key == UNIFIED), None)


def own_dir() -> str | None:
    """The caller's own cgroup2 directory, or None without a visible cgroup2 mount."""
    from nsbox.runtime.cgroups.host import UNIFIED, own_cgroups

    mount = _unified_mount()
    if mount is None:
        return None
    own_rel = own_cgroups().get(UNIFIED, "/")
    if not own_rel.startswith(mount.root):
        return mount.mountpoint
    return os.path.normpath(os.path.join(mount.mountpoint, os.path.relpath(own_rel, mount.root)))


def root_dir(path: str) -> str:
    """The root of the cgroup2 hierarchy PATH is in (the mountpoint)."""
    mount = _unified_mount()
    if mount is not None:
        return os.path.normpath(mount.mountpoint)
    current = os.path.normpath(path)
    while not _is_root(current) and current != "/":
        current = _parent(current)
    return current


def climb_limit(path: str) -> str:
    """The highest directory whose subtree_control may change for PATH's sake.

    - PATH below the caller's own cgroup (a relative cgroupsPath, or an
      absolute one that points there): our own cgroup, never above it;
    - anywhere else (an absolute cgroupsPath such as /nsbox/ID): the
      hierarchy's root, as runc, crun, Docker and Podman do, so controllers
      are enabled top-down from the root (which is exempt from the
      no-internal-process rule) into each ancestor.  Not as root user (a
      delegated subtree), the climb stops below the first ancestor whose
      cgroup.subtree_control we may not write.
    """
    path = os.path.normpath(path)
    own = own_dir()
    if own is not None and (path == own or path.startswith(own.rstrip("/") + "/")):
        return own
    root = root_dir(path)
    current = _parent(path)
    while not os.path.isdir(current):
        current = _parent(current)
    if os.geteuid() == 0:
        return root
    while current != root and os.access(os.path.join(_parent(current), "cgroup.subtree_control"),
                                        os.W_OK):
        current = _parent(current)
    return current


def available_controllers(path: str, top: str | None = None) -> set[str]:
    """Controllers the cgroup PATH (existing or not) can be given: what TOP offers."""
    return _controllers(top or climb_limit(path), "cgroup.controllers")


def unavailable_reason(path: str, controller: str) -> str:
    """Why the cgroup2 directory PATH cannot get CONTROLLER (for error messages)."""
    top = climb_limit(path)
    root = root_dir(path)
    at_root = _controllers(root, "cgroup.controllers")
    if controller not in at_root:
        return (f"the kernel offers no {controller} controller on cgroup v2 (it is not in "
                f"{os.path.join(root, 'cgroup.controllers')}: {' '.join(sorted(at_root)) or 'none'})")
    if top != root:
        own = own_dir()
        if top == own:
            return (f"{controller} is available at the cgroup v2 root but not delegated to "
                    f"{top}, the caller's own cgroup (its parent does not list it in "
                    "cgroup.subtree_control), and a cgroupsPath below the caller's cgroup stays "
                    "below it; use an absolute cgroupsPath outside it (e.g. /nsbox/NAME), which "
                    "is taken from the root and gets the controllers enabled top-down")
        return (f"{controller} is available at the cgroup v2 root but not in {top}, the highest "
                "cgroup whose cgroup.subtree_control this user may write")
    return f"{controller} is not available in {top}"


def _holders(directory: str) -> str:
    pids = (_files.read(os.path.join(directory, "cgroup.procs")) or "").split()
    if not pids:
        return "processes"
    shown = " ".join(pids[:5]) + (" ..." if len(pids) > 5 else "")
    return f"{len(pids)} process{'es' if len(pids) > 1 else ''} (pid {shown})"


def enable_controllers(path: str, wanted: set[str], strict: bool = True,
                       top: str | None = None) -> set[str]:
    """Make WANTED controllers appear in the existing cgroup PATH; returns those that did.

    Walks up from PATH's parent only as far as the first directory whose
    cgroup.controllers already holds every wanted controller, and never past
    TOP (default: climb_limit(PATH), the root for a path outside our own
    cgroup); then writes cgroup.subtree_control top-down.  strict: raise
    when one cannot be enabled, saying why (absent from the kernel, not
    delegated to our own cgroup, or an intermediate cgroup that holds
    processes); otherwise skip it (placement still works without
    controllers).
    """
    top = os.path.normpath(top or climb_limit(path))
    have = _controllers(path, "cgroup.controllers")
    missing = wanted - have
    if not missing:
        return set(wanted)
    chain = []
    current = _parent(path)
    while True:
        chain.append(current)
        offered = _controllers(current, "cgroup.controllers")
        if missing <= offered or current == top or _is_root(current):
            break
        current = _parent(current)
    top_offers = _controllers(chain[-1], "cgroup.controllers")
    unavailable = missing - top_offers
    if unavailable and strict:
        reasons = "; ".join(unavailable_reason(path, c) for c in sorted(unavailable))
        raise UnsupportedError(f"cgroup v2 controller(s) {' '.join(sorted(unavailable))} "
                               f"unavailable for {path}: {reasons}")
    to_enable = missing - unavailable
    for directory in reversed(chain):
        already = _controllers(directory, "cgroup.subtree_control")
        needed = to_enable - already
        if not needed:
            continue
        control = os.path.join(directory, "cgroup.subtree_control")
        try:
            _files.write(control, " ".join(f"+{c}" for c in sorted(needed)))
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                message = (f"cannot enable {' '.join(sorted(needed))} in {directory}: it holds "
                           f"{_holders(directory)} itself, and cgroup v2 lets only the root and "
                           "cgroups without processes pass controllers to children (the "
                           "no-internal-process rule)")
                if directory == own_dir():
                    message += ("; it is the caller's own cgroup: use an absolute cgroupsPath "
                                "outside it (e.g. /nsbox/NAME), whose controllers are enabled "
                                "top-down from the root")
                else:
                    message += f"; move those processes into a leaf cgroup below {directory}"
            elif exc.errno in (errno.EACCES, errno.EPERM):
                message = (f"cannot enable {' '.join(sorted(needed))} in {directory}: "
                           f"{exc.strerror} (not delegated to this user)")
            else:
                message = f"enable {' '.join(sorted(needed))} in {control}: {exc.strerror}"
            if strict:
                raise KernelError(message, exc.errno) from None
            log.debug("%s", message)
            return _controllers(path, "cgroup.controllers") & wanted
    return _controllers(path, "cgroup.controllers") & wanted


# ---------------------------------------------------------------- freeze / kill
def is_frozen(path: str) -> bool:
    text = _files.read(os.path.join(path, "cgroup.freeze"))
    return text is not None and text.strip() == "1"


def set_frozen(path: str, frozen: bool, timeout: float = 5.0) -> None:
    """Write cgroup.freeze and wait until cgroup.events reports the new state."""
    control = os.path.join(path, "cgroup.freeze")
    try:
        _files.write(control, "1" if frozen else "0")
    except FileNotFoundError:
        raise UnsupportedError(f"{path} has no cgroup.freeze (kernel older than 5.2)") from None
    except OSError as exc:
        raise KernelError(f"write {control}: {exc.strerror}", exc.errno) from None
    wanted = 1 if frozen else 0
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while _files.read_keyed(os.path.join(path, "cgroup.events")).get("frozen", wanted) != wanted:
        if time.monotonic() > deadline:
            if frozen:
                _files.write(control, "0")
            raise KernelError(f"{path} did not {'freeze' if frozen else 'thaw'} in {timeout} s",
                              errno.ETIMEDOUT)
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def kill_all(path: str) -> bool:
    """SIGKILL every process in PATH and below through cgroup.kill; False if the kernel lacks it."""
    try:
        _files.write(os.path.join(path, "cgroup.kill"), "1")
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENODEV):
            return False
        raise KernelError(f"write {path}/cgroup.kill: {exc.strerror}", exc.errno) from None


# ---------------------------------------------------------------- devices
def apply_devices(path: str, rules: list[dict], replace: bool = False) -> None:
    """Enforce device RULES on PATH with a BPF device program (cgroup2 has no devices files)."""
    try:
        from nsbox.runtime.cgroups import devices_bpf
    except Exception as exc:  # noqa: BLE001 - any import failure means the same to the user
        raise UnsupportedError("linux.resources.devices: device rules on cgroup v2 need the BPF "
                               f"device filter, which is unavailable: {exc}") from None
    program = devices_bpf.program_for(rules)
    try:
        if replace:
            devices_bpf.replace(path, program)
        else:
            devices_bpf.attach(path, program)
    except OSError as exc:
        raise UnsupportedError(f"linux.resources.devices: cannot attach the BPF device filter "
                               f"to {path}: {exc.strerror}") from None


# ---------------------------------------------------------------- stats
def cpu_stats(path: str) -> dict:
    stat = _files.read_keyed(os.path.join(path, "cpu.stat"))
    return {
        "usage": {"total": stat.get("usage_usec", 0) * 1000,
                  "user": stat.get("user_usec", 0) * 1000,
                  "kernel": stat.get("system_usec", 0) * 1000},
        "throttling": {"periods": stat.get("nr_periods", 0),
                       "throttledPeriods": stat.get("nr_throttled", 0),
                       "throttledTime": stat.get("throttled_usec", 0) * 1000},
    }


_UNLIMITED = (1 << 64) - 1  # how runc reports "max" in its stats


def _limit(value: int | None) -> int:
    return _UNLIMITED if value in (None, -1) else value


def memory_stats(path: str) -> dict:
    raw = _files.read_keyed(os.path.join(path, "memory.stat"))
    events = _files.read_keyed(os.path.join(path, "memory.events"))
    usage = _files.read_int(os.path.join(path, "memory.current")) or 0
    limit = _files.read_int(os.path.join(path, "memory.max"))
    swap_usage = _files.read_int(os.path.join(path, "memory.swap.current"))
    swap_limit = _files.read_int(os.path.join(path, "memory.swap.max"))
    # runc's "swap" keeps v1's meaning, memory plus swap.
    swap_total = usage + (swap_usage or 0)
    if limit in (None, -1) or swap_limit in (None, -1):
        swap_total_limit = _UNLIMITED
    else:
        swap_total_limit = limit + swap_limit
    return {
        "cache": raw.get("file", 0),
        "usage": {"limit": _limit(limit), "usage": usage,
                  "max": _files.read_int(os.path.join(path, "memory.peak")) or 0,
                  "failcnt": events.get("max", 0)},
        "swap": {"limit": swap_total_limit, "usage": swap_total, "max": 0,
                 "failcnt": _files.read_keyed(os.path.join(path, "memory.swap.events")).get("max", 0)},
        "kernel": {"limit": 0, "usage": raw.get("kernel", 0), "max": 0, "failcnt": 0},
        "kernelTCP": {"limit": 0, "usage": raw.get("sock", 0), "max": 0, "failcnt": 0},
        "raw": raw,
        "oom_kill": events.get("oom_kill", 0),
        "oom": events.get("oom", 0),
    }


def pids_stats(path: str) -> dict:
    limit = _files.read_int(os.path.join(path, "pids.max"))
    return {"current": _files.read_int(os.path.join(path, "pids.current")) or 0,
            "limit": 0 if limit in (None, -1) else limit}


def io_stats(path: str) -> dict:
    service, serviced = [], []
    for line in (_files.read(os.path.join(path, "io.stat")) or "").splitlines():
        parts = line.split()
        if not parts or ":" not in parts[0]:
            continue
        major, _, minor = parts[0].partition(":")
        values = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        for op, bytes_key, ios_key in (("Read", "rbytes", "rios"), ("Write", "wbytes", "wios"),
                                       ("Discard", "dbytes", "dios")):
            if bytes_key in values:
                service.append({"major": int(major), "minor": int(minor), "op": op,
                                "value": int(values[bytes_key])})
            if ios_key in values:
                serviced.append({"major": int(major), "minor": int(minor), "op": op,
                                 "value": int(values[ios_key])})
    return {"ioServiceBytesRecursive": service, "ioServicedRecursive": serviced} if service else {}


def hugetlb_stats(path: str, sizes: list[str]) -> dict:
    out = {}
    for size in sizes:
        current = _files.read_int(os.path.join(path, f"hugetlb.{size}.current"))
        if current is None:
            continue
        events = _files.read_keyed(os.path.join(path, f"hugetlb.{size}.events"))
        out[size] = {"usage": current, "max": 0, "failcnt": events.get("max", 0)}
    return out


def cpuset_stats(path: str) -> dict:
    # cgroup v2 reports what is in force in the .effective files.
    from nsbox.runtime.cgroups import v1

    return v1.cpuset_stats(path, suffix=".effective")


def oom_count(path: str) -> int | None:
    events = _files.read_keyed(os.path.join(path, "memory.events"))
    if not events:
        return None
    return max(events.get("oom", 0), events.get("oom_kill", 0))


# ---------------------------------------------------------------- OOM events
class OomWatcher:
    """OOM events of one cgroup2 directory: memory.events changes wake poll() with POLLPRI."""

    poll_mask = 0x002 | 0x008  # POLLPRI | POLLERR

    def __init__(self, path: str) -> None:
        self.path = path
        events = os.path.join(path, "memory.events")
        try:
            self.fd = os.open(events, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise KernelError(f"watch OOM events of {path}: {exc.strerror} (is the memory "
                              "controller enabled for it?)", exc.errno) from None
        self.last = self._count()

    def _count(self) -> int:
        try:
            data = os.pread(self.fd, 4096, 0).decode()
        except OSError:
            return self.last if hasattr(self, "last") else 0
        values = {}
        for line in data.splitlines():
            key, _, value = line.partition(" ")
            if value.isdigit():
                values[key] = int(value)
        return max(values.get("oom", 0), values.get("oom_kill", 0))

    def fileno(self) -> int:
        return self.fd

    def drain(self) -> int:
        count = self._count()  # reading re-arms the POLLPRI notification
        new, self.last = max(count - self.last, 0), max(count, self.last)
        return new

    def gone(self) -> bool:
        return not os.path.isdir(self.path)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
