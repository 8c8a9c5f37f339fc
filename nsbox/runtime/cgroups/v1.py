"""The cgroup v1 side: freezer, statistics and OOM notification.

Limits are written through resources.apply_writes; what is here reads the
controllers back and drives the ones that are not plain value files.
"""

from __future__ import annotations

import errno
import os
import time

from nsbox.errors import KernelError
from nsbox.runtime.cgroups import _files

FROZEN, FREEZING, THAWED = "FROZEN", "FREEZING", "THAWED"


# ---------------------------------------------------------------- freezer
def freezer_state(path: str) -> str | None:
    text = _files.read(os.path.join(path, "freezer.state"))
    return text.strip() if text is not None else None


def set_frozen(path: str, frozen: bool, timeout: float = 5.0) -> None:
    """Freeze or thaw the freezer cgroup PATH and wait until the kernel says it is done.

    A freeze can stay in FREEZING while a task sits in an uninterruptible
    sleep; writing FROZEN again retries the tasks that were not caught yet.
    """
    target = FROZEN if frozen else THAWED
    state_file = os.path.join(path, "freezer.state")
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while True:
        try:
            _files.write(state_file, target)
        except OSError as exc:
            raise KernelError(f"write {target} to {state_file}: {exc.strerror}", exc.errno) from None
        state = freezer_state(path)
        if state == target:
            return
        if time.monotonic() > deadline:
            if frozen:
                _files.write(state_file, THAWED)  # never leave a half-frozen container
            raise KernelError(f"{state_file} stayed {state} instead of {target}", errno.ETIMEDOUT)
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


# ---------------------------------------------------------------- stats
def _blkio_entries(path: str) -> list[dict]:
    """Lines "MAJ:MIN Op Value" (the Total line is skipped)."""
    out = []
    for line in (_files.read(path) or "").splitlines():
        parts = line.split()
        if len(parts) != 3 or ":" not in parts[0]:
            continue
        major, _, minor = parts[0].partition(":")
        try:
            out.append({"major": int(major), "minor": int(minor), "op": parts[1],
                        "value": int(parts[2])})
        except ValueError:
            continue
    return out


def _memory_entry(path: str, prefix: str) -> dict:
    def get(name: str) -> int:
        return _files.read_int(os.path.join(path, f"{prefix}.{name}")) or 0

    return {"limit": get("limit_in_bytes"), "usage": get("usage_in_bytes"),
            "max": get("max_usage_in_bytes"), "failcnt": get("failcnt")}


def cpu_stats(cpu_dir: str | None, cpuacct_dir: str | None) -> dict:
    usage: dict = {"total": 0, "kernel": 0, "user": 0}
    if cpuacct_dir:
        usage["total"] = _files.read_int(os.path.join(cpuacct_dir, "cpuacct.usage")) or 0
        usage["percpu"] = _files.read_ints(os.path.join(cpuacct_dir, "cpuacct.usage_percpu"))
        usage["percpu_kernel"] = _files.read_ints(os.path.join(cpuacct_dir, "cpuacct.usage_percpu_sys"))
        usage["percpu_user"] = _files.read_ints(os.path.join(cpuacct_dir, "cpuacct.usage_percpu_user"))
        user = _files.read_int(os.path.join(cpuacct_dir, "cpuacct.usage_user"))
        system = _files.read_int(os.path.join(cpuacct_dir, "cpuacct.usage_sys"))
        if user is None or system is None:
            # Older kernels: only clock ticks in cpuacct.stat.
            ticks = _files.read_keyed(os.path.join(cpuacct_dir, "cpuacct.stat"))
            hz = os.sysconf("SC_CLK_TCK")
            user = ticks.get("user", 0) * 1_000_000_000 // hz
            system = ticks.get("system", 0) * 1_000_000_000 // hz
        usage["user"], usage["kernel"] = user, system
    throttling = {}
    if cpu_dir:
        stat = _files.read_keyed(os.path.join(cpu_dir, "cpu.stat"))
        throttling = {"periods": stat.get("nr_periods", 0),
                      "throttledPeriods": stat.get("nr_throttled", 0),
                      "throttledTime": stat.get("throttled_time", 0)}
    return {"usage": usage, "throttling": throttling}


def memory_stats(path: str) -> dict:
    raw = _files.read_keyed(os.path.join(path, "memory.stat"))
    oom = _files.read_keyed(os.path.join(path, "memory.oom_control"))
    out = {
        "cache": raw.get("cache", 0),
        "usage": _memory_entry(path, "memory"),
        "swap": _memory_entry(path, "memory.memsw"),
        "kernel": _memory_entry(path, "memory.kmem"),
        "kernelTCP": _memory_entry(path, "memory.kmem.tcp"),
        "raw": raw,
        # Not in runc's shape: how often the OOM killer struck in this cgroup.
        "oom_kill": oom.get("oom_kill", 0),
        "under_oom": oom.get("under_oom", 0),
    }
    return out


def pids_stats(path: str) -> dict:
    limit = _files.read_int(os.path.join(path, "pids.max"))
    return {"current": _files.read_int(os.path.join(path, "pids.current")) or 0,
            "limit": 0 if limit in (None, -1) else limit}


def blkio_stats(path: str) -> dict:
    # The throttle layer sees every bio; the CFQ/BFQ files only count I/O
    # under those schedulers, so they are the fallback.
    for prefix in ("blkio.throttle.", "blkio.", "blkio.bfq."):
        service = _blkio_entries(os.path.join(path, f"{prefix}io_service_bytes_recursive"))
        serviced = _blkio_entries(os.path.join(path, f"{prefix}io_serviced_recursive"))
        if service or serviced:
            return {"ioServiceBytesRecursive": service, "ioServicedRecursive": serviced}
    return {}


def hugetlb_stats(path: str, sizes: list[str]) -> dict:
    out = {}
    for size in sizes:
        base = os.path.join(path, f"hugetlb.{size}.")
        if not os.path.exists(base + "usage_in_bytes"):
            continue
        out[size] = {"usage": _files.read_int(base + "usage_in_bytes") or 0,
                     "max": _files.read_int(base + "max_usage_in_bytes") or 0,
                     "failcnt": _files.read_int(base + "failcnt") or 0}
    return out


def cpuset_stats(path: str, suffix: str = "") -> dict:
    """The cpus and mems of a cpuset cgroup as sorted lists (v2 passes ".effective")."""
    from nsbox.runtime.cgroups import convert as cv

    out = {}
    for name in ("cpus", "mems"):
        text = _files.read(os.path.join(path, f"cpuset.{name}{suffix}"))
        if text is not None:
            out[name] = sorted(cv.parse_cpu_list(text))
    return out


def oom_kill_count(memory_dir: str) -> int | None:
    values = _files.read_keyed(os.path.join(memory_dir, "memory.oom_control"))
    return values.get("oom_kill") if values else None


# ---------------------------------------------------------------- OOM events
class OomWatcher:
    """OOM notifications of one v1 memory cgroup through cgroup.event_control.

    The kernel signals the eventfd once per OOM in the cgroup (or below),
    and once more when the cgroup is removed.
    """

    poll_mask = 0x001  # POLLIN

    def __init__(self, memory_dir: str) -> None:
        self.memory_dir = memory_dir
        self.efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            ofd = os.open(os.path.join(memory_dir, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
            try:
                _files.write(os.path.join(memory_dir, "cgroup.event_control"), f"{self.efd} {ofd}")
            finally:
                os.close(ofd)  # the kernel holds its own reference
        except OSError as exc:
            os.close(self.efd)
            raise KernelError(f"watch OOM events of {memory_dir}: {exc.strerror}", exc.errno) from None

    def fileno(self) -> int:
        return self.efd

    def drain(self) -> int:
        """OOM events since the last call (0 if none, or if the cgroup is gone)."""
        try:
            count = os.eventfd_read(self.efd)
        except BlockingIOError:
            return 0
        if not os.path.isdir(self.memory_dir):
            return 0  # the wake-up was the cgroup's removal
        return count

    def gone(self) -> bool:
        return not os.path.isdir(self.memory_dir)

    def close(self) -> None:
        if self.efd >= 0:
            os.close(self.efd)
            self.efd = -1
