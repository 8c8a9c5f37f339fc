"""A container's cgroups as the article's reader checks them (`nsbox cgroup C`).

    view(engine, "web") -> CgroupView
        .paths   hierarchy -> directory ("cpu", "memory", ... on v1, "unified"
                 for the cgroup2 one; a v2 host has only that)
        .limits  [Limit]: every limit in force (the bundle's linux.resources,
                 which is what the runtime wrote), with the `docker run` flag
                 it came from (or "(default)" when nsbox set it), the cgroup
                 file that holds it and what that file says now, and the
                 current usage against it
        .events  [Event]: the counters of limits that bit: memory.events
                 (max, oom, oom_kill; v1: memory.failcnt and memory.oom_control),
                 cpu.stat (nr_periods, nr_throttled, throttled time), pids.events (max)
        .as_dict() -> the JSON of `nsbox cgroup C --format json`

Files are read where the controller is: a v1 hierarchy when the host mounts
it there (hybrid hosts), else the cgroup2 directory.  Nothing is written.
"""

from __future__ import annotations

import os

from nsbox._record import record
from nsbox.engine.observe.stats import binary_size, controller_dirs

TYPE_CHECKING = False  # typing's own constant costs an import of typing
if TYPE_CHECKING:
    from nsbox.engine.lifecycle.state import EngineBase


@record
class Limit:
    """One limit in force: where it came from, where the kernel keeps it, how close it is."""

    flag: str  # the docker run flag ("--memory"), "" if none maps to it
    requested: str  # the value asked for, human-readable ("64MiB", "0.5", "50")
    default: bool  # set by nsbox, not by a flag (the pids limit, --memory-swap = 2x --memory)
    controller: str  # the hierarchy key of the files ("memory", "unified", ...)
    files: list  # absolute paths of the files that hold it
    setting: str  # what those files say now ("" if unreadable: not running, no controller)
    usage: str  # current usage against it, human-readable ("" if it has none)
    percent: float | None = None  # usage / limit * 100 where that means something

    def as_dict(self) -> dict:
        return {"Flag": self.flag, "Requested": self.requested, "Default": self.default,
                "Controller": self.controller, "Files": list(self.files),
                "Setting": self.setting, "Usage": self.usage, "Percent": self.percent}


@record
class Event:
    """One counter of a limit that was hit (an OOM kill, a throttled period, a refused fork)."""

    file: str  # absolute path of the file it comes from
    counter: str  # "oom_kill", "nr_throttled", "max", ...
    value: int

    def as_dict(self) -> dict:
        return {"File": self.file, "Counter": self.counter, "Value": self.value}


@record
class CgroupView:
    id: str
    name: str
    state: str
    pid: int
    mode: str  # "v1", "v2" or "hybrid"
    paths: dict
    limits: list
    events: list

    def as_dict(self) -> dict:
        return {"Id": self.id, "Name": self.name, "State": self.state, "Pid": self.pid,
                "Mode": self.mode, "Paths": dict(self.paths),
                "Limits": [lim.as_dict() for lim in self.limits],
                "Events": [ev.as_dict() for ev in self.events]}


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        return None


def _keyed(text: str | None) -> dict[str, int]:
    out = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def _size(value: int | None) -> str:
    if value is None:
        return ""
    if value < 0 or value >= 1 << 62:
        return "unlimited"
    return binary_size(value)


def _percent(usage: int | None, limit: int | None) -> float | None:
    if usage is None or not limit or limit < 0 or limit >= 1 << 62:
        return None
    return usage / limit * 100.0


class _Dirs:
    """Where each controller's files are: its v1 hierarchy, else the cgroup2 directory."""

    def __init__(self, dirs: dict[str, str]) -> None:
        self.dirs = dirs

    def find(self, controller: str, v1_file: str | None, v2_file: str | None
             ) -> tuple[str, str | None]:
        """(hierarchy key, absolute path) of the file that holds CONTROLLER's setting."""
        v1 = self.dirs.get(controller)
        if v1 and v1_file:
            return controller, os.path.join(v1, v1_file)
        unified = self.dirs.get("unified")
        if unified and v2_file and os.path.exists(os.path.join(unified, v2_file)):
            return "unified", os.path.join(unified, v2_file)
        if v1:
            return controller, None
        return ("unified" if unified else controller), None


def _memory_limits(res: dict, asked: dict, d: _Dirs) -> list[Limit]:
    mem, asked_mem = res.get("memory") or {}, asked.get("memory") or {}
    out = []
    key, limit_file = d.find("memory", "memory.limit_in_bytes", "memory.max")
    _, usage_file = d.find("memory", "memory.usage_in_bytes", "memory.current")
    usage = _int(_read(usage_file)) if usage_file else None
    if "limit" in mem:
        setting = _read(limit_file) if limit_file else None
        out.append(Limit(flag="--memory", requested=_size(mem["limit"]),
                         default="limit" not in asked_mem, controller=key,
                         files=[limit_file] if limit_file else [], setting=setting or "",
                         usage=_size(usage), percent=_percent(usage, _int(setting))))
    if "reservation" in mem:
        key_r, path = d.find("memory", "memory.soft_limit_in_bytes", "memory.low")
        out.append(Limit(flag="--memory-reservation", requested=_size(mem["reservation"]),
                         default="reservation" not in asked_mem, controller=key_r,
                         files=[path] if path else [], setting=(_read(path) or "") if path
                         else "", usage=_size(usage)))
    if "swap" in mem:
        key_s, path = d.find("memory", "memory.memsw.limit_in_bytes", "memory.swap.max")
        _, swap_usage_file = d.find("memory", "memory.memsw.usage_in_bytes",
                                    "memory.swap.current")
        swap_usage = _int(_read(swap_usage_file)) if swap_usage_file else None
        setting = _read(path) if path else None
        # v1 counts memory+swap in one limit, v2's swap.max is the swap alone.
        # flags.py writes Docker's default (twice --memory) into the spec itself.
        default = "swap" not in asked_mem or mem["swap"] == 2 * mem.get("limit", -1)
        out.append(Limit(flag="--memory-swap", requested=_size(mem["swap"]),
                         default=default, controller=key_s,
                         files=[path] if path else [], setting=setting or "",
                         usage=_size(swap_usage), percent=_percent(swap_usage, _int(setting))))
    if "swappiness" in mem:
        key_w, path = d.find("memory", "memory.swappiness", None)
        out.append(Limit(flag="--memory-swappiness", requested=str(mem["swappiness"]),
                         default="swappiness" not in asked_mem, controller=key_w,
                         files=[path] if path else [],
                         setting=(_read(path) or "") if path else "", usage=""))
    if mem.get("disableOOMKiller"):
        key_o, path = d.find("memory", "memory.oom_control", None)
        oom = _keyed(_read(path)) if path else {}
        out.append(Limit(flag="--oom-kill-disable", requested="true",
                         default="disableOOMKiller" not in asked_mem, controller=key_o,
                         files=[path] if path else [],
                         setting=f"oom_kill_disable {oom['oom_kill_disable']}"
                         if "oom_kill_disable" in oom else "", usage=""))
    return out


def _cpu_limits(res: dict, asked: dict, d: _Dirs, cpus_used: float | None) -> list[Limit]:
    cpu, asked_cpu = res.get("cpu") or {}, asked.get("cpu") or {}
    out = []
    if cpu.get("quota") and cpu["quota"] > 0:
        period = cpu.get("period") or 100_000
        key, quota_file = d.find("cpu", "cpu.cfs_quota_us", "cpu.max")
        files = [quota_file] if quota_file else []
        if quota_file and quota_file.endswith("cpu.cfs_quota_us"):
            files.append(os.path.join(os.path.dirname(quota_file), "cpu.cfs_period_us"))
        setting = " / ".join(_read(f) or "?" for f in files)
        # --cpus N asks for both, with the kernel's default period; --cpu-quota
        # alone leaves the period out.
        flag = "--cpus" if asked_cpu.get("period") == 100_000 else \
            "--cpu-quota" if "period" not in asked_cpu else "--cpu-quota/--cpu-period"
        cpus = cpu["quota"] / period
        out.append(Limit(flag=flag, requested=f"{cpus:g}", default="quota" not in asked_cpu,
                         controller=key, files=files, setting=setting,
                         usage="" if cpus_used is None else
                         f"{cpus_used:.2f} CPUs (average since start)",
                         percent=None if cpus_used is None else cpus_used / cpus * 100.0))
    if cpu.get("shares"):
        key, path = d.find("cpu", "cpu.shares", "cpu.weight")
        out.append(Limit(flag="--cpu-shares", requested=str(cpu["shares"]),
                         default="shares" not in asked_cpu, controller=key,
                         files=[path] if path else [],
                         setting=(_read(path) or "") if path else "", usage=""))
    for field, flag, v1_file, v2_file in (("cpus", "--cpuset-cpus", "cpuset.cpus", "cpuset.cpus"),
                                          ("mems", "--cpuset-mems", "cpuset.mems", "cpuset.mems")):
        if cpu.get(field):
            key, path = d.find("cpuset", v1_file, v2_file)
            effective = None
            if path:
                effective = _read(path.replace(v1_file, "cpuset.effective_" + field)
                                  if key != "unified" else path + ".effective")
            out.append(Limit(flag=flag, requested=str(cpu[field]),
                             default=field not in asked_cpu, controller=key,
                             files=[path] if path else [],
                             setting=(_read(path) or "") if path else "",
                             usage=f"effective {effective}" if effective else ""))
    return out


def _pids_limits(res: dict, asked: dict, d: _Dirs) -> list[Limit]:
    pids = res.get("pids") or {}
    if not pids.get("limit"):
        return []
    key, path = d.find("pids", "pids.max", "pids.max")
    current = _int(_read(os.path.join(os.path.dirname(path), "pids.current"))) if path else None
    setting = _read(path) if path else None
    limit = pids["limit"]
    return [Limit(flag="--pids-limit", requested="unlimited" if limit < 0 else str(limit),
                  default="pids" not in asked, controller=key, files=[path] if path else [],
                  setting=setting or "", usage="" if current is None else str(current),
                  percent=_percent(current, _int(setting)))]


_THROTTLES = (("throttleReadBpsDevice", "--device-read-bps", "blkio.throttle.read_bps_device"),
              ("throttleWriteBpsDevice", "--device-write-bps", "blkio.throttle.write_bps_device"),
              ("throttleReadIOPSDevice", "--device-read-iops", "blkio.throttle.read_iops_device"),
              ("throttleWriteIOPSDevice", "--device-write-iops",
               "blkio.throttle.write_iops_device"))


def _blkio_limits(res: dict, asked: dict, d: _Dirs) -> list[Limit]:
    blk, asked_blk = res.get("blockIO") or {}, asked.get("blockIO") or {}
    out = []
    if blk.get("weight"):
        key, path = d.find("blkio", "blkio.weight", "io.weight")
        if path and not os.path.exists(path):
            key, path = d.find("blkio", "blkio.bfq.weight", "io.bfq.weight")
        out.append(Limit(flag="--blkio-weight", requested=str(blk["weight"]),
                         default="weight" not in asked_blk, controller=key,
                         files=[path] if path else [],
                         setting=(_read(path) or "") if path else "", usage=""))
    for field, flag, v1_file in _THROTTLES:
        for entry in blk.get(field) or []:
            key, path = d.find("blkio", v1_file, "io.max")
            out.append(Limit(flag=flag, requested=f"{entry['major']}:{entry['minor']} "
                             f"{entry['rate']}", default=field not in asked_blk,
                             controller=key, files=[path] if path else [],
                             setting=(_read(path) or "").replace("\n", "; ") if path else "",
                             usage=""))
    return out


def _events(d: _Dirs) -> list[Event]:
    out = []

    def add(path: str | None, wanted: tuple[str, ...]) -> None:
        if not path:
            return
        values = _keyed(_read(path))
        for counter in wanted:
            if counter in values:
                out.append(Event(file=path, counter=counter, value=values[counter]))

    _, path = d.find("memory", "memory.oom_control", "memory.events")
    add(path, ("max", "oom", "oom_kill", "under_oom"))
    mem_dir = d.dirs.get("memory")
    if mem_dir:  # v1: how often usage hit the limit
        failcnt = _int(_read(os.path.join(mem_dir, "memory.failcnt")))
        if failcnt is not None:
            out.append(Event(file=os.path.join(mem_dir, "memory.failcnt"), counter="failcnt",
                             value=failcnt))
    _, path = d.find("cpu", "cpu.stat", "cpu.stat")
    add(path, ("nr_periods", "nr_throttled", "throttled_time", "throttled_usec"))
    _, path = d.find("pids", "pids.events", "pids.events")
    add(path, ("max",))
    return out


def view(engine: EngineBase, ref: str) -> CgroupView:
    """REF's cgroup view (see the module doc); limits without usage if it is not running."""
    from nsbox import _json
    from nsbox.engine.observe import stats
    from nsbox.runtime import cgroups as cg

    c = engine.get(ref)
    running = c.state in ("running", "paused")
    raw = stats.cgroup_paths(engine.run_root, c.runtime, c.id, c.pid) if running else {}
    paths = {("unified" if key in ("", "unified") else key): path for key, path in raw.items()}
    try:
        with open(os.path.join(c.bundle, "config.json")) as f:
            res = (_json.loads(f.read()).get("linux") or {}).get("resources") or {}
    except (OSError, ValueError):
        res = dict(c.spec.resources or {})
    asked = c.spec.resources or {}
    d = _Dirs(controller_dirs(raw))
    cpus_used = None
    if running:
        target = stats.Target(id=c.id, name=c.name, state=c.state, pid=c.pid,
                              started_at=c.started_at, dirs=d.dirs)
        cur = stats.sample(target)
        if cur is not None:
            cpus_used = stats.cpu_percent(stats.since_start(cur), cur) / 100.0
    limits = [*_memory_limits(res, asked, d), *_cpu_limits(res, asked, d, cpus_used),
              *_pids_limits(res, asked, d), *_blkio_limits(res, asked, d)]
    if not running:
        for lim in limits:
            lim.files, lim.setting, lim.usage, lim.percent = [], "", "", None
    return CgroupView(id=c.id, name=c.name, state=c.state, pid=c.pid if running else 0,
                      mode=cg.mode(), paths=paths, limits=limits,
                      events=_events(d) if running else [])
