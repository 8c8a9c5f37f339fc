"""OCI `linux.resources` -> the cgroup file writes that enforce it, for v1, v2 or both.

`plan()` validates the whole section and turns it into an ordered list of
`Write`s, each aimed at one hierarchy (a v1 key like "memory" or "" for
cgroup2).  Nothing touches a file until `apply_writes()`, so the same plan
serves `create`'s early check (before any directory or process exists) and
the real write later.

Where a controller lives is decided per controller by a `Layout`: a v1
hierarchy if the host mounts one for it, otherwise cgroup2 if the controller
is available there (a hybrid host like Debian 12 with only hugetlb on
cgroup2), otherwise the value is refused with UnsupportedError.
"""

from __future__ import annotations

import errno
import os

from nsbox._lazylog import get_logger
from nsbox.errors import ConfigError, KernelError, UnsupportedError
from nsbox.runtime.cgroups import UNIFIED, hierarchies
from nsbox.runtime.cgroups import convert as cv

log = get_logger(__name__)

PREFIX = "linux.resources."
KNOWN_SECTIONS = ("devices", "memory", "cpu", "pids", "blockIO", "hugepageLimits", "network",
                  "rdma", "unified")

# Devices every container needs, appended after the config's own rules when
# it has any (the init creates and opens these itself): mknod of anything,
# then the standard /dev nodes, ptys and the console.
DEFAULT_DEVICE_RULES = (
    {"allow": True, "type": "c", "access": "m"},
    {"allow": True, "type": "b", "access": "m"},
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},   # null
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},   # zero
    {"allow": True, "type": "c", "major": 1, "minor": 7, "access": "rwm"},   # full
    {"allow": True, "type": "c", "major": 1, "minor": 8, "access": "rwm"},   # random
    {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"},   # urandom
    {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"},   # tty
    {"allow": True, "type": "c", "major": 5, "minor": 1, "access": "rwm"},   # console
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},   # ptmx
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},             # /dev/pts/*
)

# v1 files that exist in a hierarchy's root cgroup as well as in children, so
# their absence from the root proves the kernel lacks them.  Others (pids.max,
# the blkio weights, ...) are missing from the root on purpose.
_ROOT_HAS = frozenset((
    "memory.memsw.limit_in_bytes", "memory.kmem.limit_in_bytes",
    "memory.kmem.tcp.limit_in_bytes", "memory.swappiness", "cpu.rt_runtime_us",
    "cpu.rt_period_us", "cpu.cfs_burst_us", "cpu.idle", "cpu.shares", "cpu.cfs_quota_us",
))

# unified keys that would move or kill processes, or reshape the tree.
_UNIFIED_FORBIDDEN = frozenset(("cgroup.procs", "cgroup.threads", "cgroup.kill",
                                "cgroup.subtree_control", "cgroup.type"))


class Write:
    """One value for one cgroup file; CHOICES are (file, value) alternatives, first that exists wins."""

    __slots__ = ("key", "choices", "field", "group", "optional")

    def __init__(self, key: str, choices: list[tuple[str, str]], field: str, group: str = "",
                 optional: bool = False) -> None:
        self.key = key
        self.choices = choices
        self.field = field  # the OCI field, for error messages
        self.group = group  # writes of one group may need another order (see apply_writes)
        self.optional = optional  # a missing file is no error

    def __repr__(self) -> str:
        return f"Write({self.key!r}, {self.choices!r}, {self.field!r})"


class Plan:
    """Everything `apply` will do for one resources section."""

    __slots__ = ("writes", "bpf_devices", "v2_controllers", "memory_limit", "check_before_update")

    def __init__(self) -> None:
        self.writes: list[Write] = []
        self.bpf_devices: list[dict] | None = None  # rules for the cgroup2 device program
        self.v2_controllers: set[str] = set()  # to enable on the cgroup2 side
        self.memory_limit: int | None = None
        self.check_before_update = False


class Layout:
    """Which hierarchy holds each controller for one container's paths."""

    def __init__(self, paths: dict[str, str]) -> None:
        self.paths = paths
        self._v2_available: set[str] | None = None

    @property
    def has_unified(self) -> bool:
        return UNIFIED in self.paths

    @property
    def pure_v2(self) -> bool:
        return list(self.paths) == [UNIFIED]

    def v1_key(self, controller: str) -> str | None:
        for key in self.paths:
            if key != UNIFIED and controller in key.split(","):
                return key
        return None

    def v2_available(self) -> set[str]:
        """Controllers the container's cgroup2 directory can have (its parent offers them)."""
        if self._v2_available is None:
            self._v2_available = set()
            path = self.paths.get(UNIFIED)
            if path:
                from nsbox.runtime.cgroups import v2

                self._v2_available = v2.available_controllers(path)
        return self._v2_available

    def where(self, controller: str) -> str | None:
        """The key of the hierarchy that enforces CONTROLLER, or None."""
        key = self.v1_key(controller)
        if key is not None:
            return key
        if self.has_unified and controller in self.v2_available():
            return UNIFIED
        return None

    def probe(self, key: str, name: str) -> bool | None:
        """Does file NAME exist for the container in hierarchy KEY? None: cannot tell yet."""
        path = self.paths[key]
        probe = path
        while not os.path.isdir(probe):
            probe = os.path.dirname(probe)
        if key == UNIFIED:
            return os.path.exists(os.path.join(path, name)) if probe == path else None
        if os.path.exists(os.path.join(probe, name)):
            return True
        mountpoint = next((h.mountpoint for h in hierarchies() if h.key == key), None)
        if probe == mountpoint and name not in _ROOT_HAS:
            return None
        return False


# ---------------------------------------------------------------- value checks
def _section(resources: dict, name: str) -> dict | None:
    value = resources.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"{PREFIX}{name}: expected an object, got {type(value).__name__}")
    return value


def _int(obj: dict, key: str, where: str, lo: int | None = None, hi: int | None = None) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{PREFIX}{where}.{key}: expected an integer, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
        raise ConfigError(f"{PREFIX}{where}.{key}: {value} is out of range {bounds}")
    return value


def _bool(obj: dict, key: str, where: str) -> bool | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, bool):
        raise ConfigError(f"{PREFIX}{where}.{key}: expected true or false, got {value!r}")
    return value


def _str(obj: dict, key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{PREFIX}{where}.{key}: expected a string, got {value!r}")
    return value


def _list(obj: dict, key: str, where: str) -> list:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{PREFIX}{where}.{key}: expected an array, got {value!r}")
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise ConfigError(f"{PREFIX}{where}.{key}[{index}]: expected an object, got {item!r}")
    return value


def _need(layout: Layout, controller: str, field: str) -> str:
    key = layout.where(controller)
    if key is None:
        if layout.has_unified:
            from nsbox.runtime.cgroups import v2

            raise UnsupportedError(f"{PREFIX}{field}: no {controller} cgroup controller for this "
                                   f"container (mode {_mode_name(layout)}): "
                                   f"{v2.unavailable_reason(layout.paths[UNIFIED], controller)}")
        raise UnsupportedError(f"{PREFIX}{field}: this host has no {controller} cgroup controller "
                               f"(mode {_mode_name(layout)})")
    return key


def _mode_name(layout: Layout) -> str:
    if layout.pure_v2:
        return "cgroup v2"
    return "hybrid" if layout.has_unified else "cgroup v1"


def _require_file(layout: Layout, key: str, names: list[str], field: str) -> None:
    """Refuse now, not after mkdir, when the host certainly lacks every alternative."""
    results = [layout.probe(key, n) for n in names]
    if results and all(r is False for r in results):
        raise UnsupportedError(f"{PREFIX}{field}: the kernel offers no {' or '.join(names)} "
                               f"in {layout.paths[key]}")


def _online(path: str, default: str) -> set[int]:
    try:
        with open(path) as f:
            return cv.parse_cpu_list(f.read())
    except OSError:
        return cv.parse_cpu_list(default)


def supported_page_sizes() -> dict[str, int]:
    """Hugepage sizes the kernel has, by cgroup file name ("2MB": 2097152)."""
    out = {}
    try:
        names = os.listdir("/sys/kernel/mm/hugepages")
    except OSError:
        return out
    for name in names:
        if name.startswith("hugepages-") and name.endswith("kB"):
            size = int(name[len("hugepages-"):-2]) * 1024
            out[cv.page_size_name(size)] = size
    return out


# ---------------------------------------------------------------- the planner
def plan(resources: dict | None, layout: Layout, updating: bool = False) -> Plan:
    """Validate RESOURCES and list the writes that enforce them on LAYOUT.

    UPDATING: the values replace live ones, so explicit defaults (false, 0)
    are written too.
    """
    out = Plan()
    if not resources:
        return out
    if not isinstance(resources, dict):
        raise ConfigError(f"linux.resources: expected an object, got {type(resources).__name__}")
    for name in resources:
        if name not in KNOWN_SECTIONS:
            log.warning("ignoring unknown field linux.resources.%s", name)
    _plan_devices(resources, layout, out)
    _plan_cpu(resources, layout, out)
    _plan_memory(resources, layout, out, updating)
    _plan_pids(resources, layout, out)
    _plan_blockio(resources, layout, out)
    _plan_hugepages(resources, layout, out)
    _plan_network(resources, layout, out)
    _plan_rdma(resources, layout, out)
    _plan_unified(resources, layout, out)
    for w in out.writes:
        if w.key == UNIFIED:
            controller = w.choices[0][0].split(".", 1)[0]
            if controller != "cgroup":
                out.v2_controllers.add(controller)
    return out


def _plan_devices(resources: dict, layout: Layout, out: Plan) -> None:
    rules = resources.get("devices")
    if rules is None:
        return
    if not isinstance(rules, list):
        raise ConfigError(f"{PREFIX}devices: expected an array, got {rules!r}")
    normalized = [_device_rule(rule, i) for i, rule in enumerate(rules)]
    if not normalized:
        return
    # Like runc, linux.devices adds no rule: a device the config creates is
    # usable only as far as its own rules (the engine's --device rule) allow.
    normalized.extend(dict(r) for r in DEFAULT_DEVICE_RULES)
    key = layout.v1_key("devices")
    if key is not None:
        for index, rule in enumerate(normalized):
            field = f"devices[{index}]" if index < len(rules) else "devices"
            for text in _v1_device_lines(rule):
                out.writes.append(Write(key, [("devices.allow" if rule["allow"] else "devices.deny",
                                               text)], field, group="devices"))
        return
    if layout.has_unified:
        out.bpf_devices = normalized
        return
    raise UnsupportedError(f"{PREFIX}devices: this host has neither the v1 devices controller "
                           "nor cgroup2 for a device program")


def _device_rule(rule: object, index: int) -> dict:
    where = f"devices[{index}]"
    if not isinstance(rule, dict):
        raise ConfigError(f"{PREFIX}{where}: expected an object, got {rule!r}")
    allow = _bool(rule, "allow", where)
    if allow is None:
        raise ConfigError(f"{PREFIX}{where}.allow: required (true or false)")
    dtype = _str(rule, "type", where) or "a"
    if dtype not in ("a", "c", "b", "u"):
        raise ConfigError(f"{PREFIX}{where}.type: expected a, c or b, got {dtype!r}")
    access = _str(rule, "access", where) or "rwm"
    if not set(access) <= set("rwm"):
        raise ConfigError(f"{PREFIX}{where}.access: expected letters from 'rwm', got {access!r}")
    out: dict = {"allow": allow, "type": "c" if dtype == "u" else dtype, "access": access}
    for num in ("major", "minor"):
        value = _int(rule, num, where, lo=-1, hi=0xFFFFFFFF)
        if value is not None and value != -1:
            out[num] = value
    return out


def _v1_device_lines(rule: dict) -> list[str]:
    """devices.allow/deny lines for one rule.

    In v1 a line of type "a" means every device with every access, whatever
    else it says, so a narrower "all types" rule becomes a char and a block line.
    """
    major = str(rule["major"]) if "major" in rule else "*"
    minor = str(rule["minor"]) if "minor" in rule else "*"
    access = "".join(ch for ch in "rwm" if ch in rule["access"])
    if rule["type"] == "a":
        if major == "*" and minor == "*" and access == "rwm":
            return ["a"]
        return [f"c {major}:{minor} {access}", f"b {major}:{minor} {access}"]
    return [f"{rule['type']} {major}:{minor} {access}"]


def _plan_cpu(resources: dict, layout: Layout, out: Plan) -> None:
    cpu = _section(resources, "cpu")
    if cpu is None:
        return
    shares = _int(cpu, "shares", "cpu", lo=0)
    if shares:
        if not cv.CPU_SHARES_MIN <= shares <= cv.CPU_SHARES_MAX:
            raise ConfigError(f"{PREFIX}cpu.shares: {shares} is out of range "
                              f"{cv.CPU_SHARES_MIN}..{cv.CPU_SHARES_MAX}")
    quota = _int(cpu, "quota", "cpu", lo=-1)
    period = _int(cpu, "period", "cpu", lo=0)
    burst = _int(cpu, "burst", "cpu", lo=0)
    rt_runtime = _int(cpu, "realtimeRuntime", "cpu", lo=-1)
    rt_period = _int(cpu, "realtimePeriod", "cpu", lo=0)
    idle = _int(cpu, "idle", "cpu", lo=0, hi=1)
    if period and not 1000 <= period <= 1_000_000:
        raise ConfigError(f"{PREFIX}cpu.period: {period} is out of range 1000..1000000 (microseconds)")
    if quota is not None and 0 < quota < 1000:
        raise ConfigError(f"{PREFIX}cpu.quota: {quota} is below the kernel's minimum of 1000 "
                          "microseconds (use -1 for no limit)")
    if burst and quota is not None and quota > 0 and burst > quota:
        raise ConfigError(f"{PREFIX}cpu.burst: {burst} is larger than cpu.quota {quota}")
    if shares or quota or period or burst is not None or rt_runtime or rt_period or idle is not None:
        key = _need(layout, "cpu", "cpu")
        v2 = key == UNIFIED
        if shares:
            out.writes.append(Write(key, [("cpu.weight", str(cv.cpu_shares_to_weight(shares)))]
                                    if v2 else [("cpu.shares", str(shares))], "cpu.shares", "cpu"))
        if v2:
            if quota or period:
                value = str(quota) if quota and quota > 0 else "max"
                if period:
                    value += f" {period}"
                out.writes.append(Write(key, [("cpu.max", value)], "cpu.quota", "cpu"))
            if burst is not None:
                out.writes.append(Write(key, [("cpu.max.burst", str(burst))], "cpu.burst", "cpu"))
            if rt_runtime or rt_period:
                raise UnsupportedError(f"{PREFIX}cpu.realtimeRuntime/realtimePeriod: cgroup v2 has "
                                       "no realtime CPU limits")
        else:
            if period:
                out.writes.append(Write(key, [("cpu.cfs_period_us", str(period))], "cpu.period", "cpu"))
            if quota:
                out.writes.append(Write(key, [("cpu.cfs_quota_us", str(quota))], "cpu.quota", "cpu"))
            if burst is not None:
                _require_file(layout, key, ["cpu.cfs_burst_us"], "cpu.burst")
                out.writes.append(Write(key, [("cpu.cfs_burst_us", str(burst))], "cpu.burst", "cpu"))
            if rt_period:
                _require_file(layout, key, ["cpu.rt_period_us"], "cpu.realtimePeriod")
                out.writes.append(Write(key, [("cpu.rt_period_us", str(rt_period))],
                                        "cpu.realtimePeriod", "cpu"))
            if rt_runtime:
                _require_file(layout, key, ["cpu.rt_runtime_us"], "cpu.realtimeRuntime")
                out.writes.append(Write(key, [("cpu.rt_runtime_us", str(rt_runtime))],
                                        "cpu.realtimeRuntime", "cpu"))
        if idle is not None:
            if not v2:
                _require_file(layout, key, ["cpu.idle"], "cpu.idle")
            out.writes.append(Write(key, [("cpu.idle", str(idle))], "cpu.idle", "cpu"))
    for name, online_file, default in (("cpus", "/sys/devices/system/cpu/online", "0"),
                                       ("mems", "/sys/devices/system/node/online", "0")):
        value = _str(cpu, name, "cpu")
        if not value:
            continue
        wanted = cv.parse_cpu_list(value, f"{PREFIX}cpu.{name}")
        missing = wanted - _online(online_file, default)
        if missing:
            what = "CPUs" if name == "cpus" else "memory nodes"
            raise ConfigError(f"{PREFIX}cpu.{name}: {what} {cv.format_cpu_list(missing)} are not "
                              f"online on this host (online: {cv.format_cpu_list(_online(online_file, default))})")
        key = _need(layout, "cpuset", f"cpu.{name}")
        out.writes.append(Write(key, [(f"cpuset.{name}", value.strip())], f"cpu.{name}", "cpuset"))


def _plan_memory(resources: dict, layout: Layout, out: Plan, updating: bool) -> None:
    mem = _section(resources, "memory")
    if mem is None:
        return
    limit = _int(mem, "limit", "memory", lo=-1)
    reservation = _int(mem, "reservation", "memory", lo=-1)
    swap = _int(mem, "swap", "memory", lo=-1)
    kernel = _int(mem, "kernel", "memory", lo=-1)
    kernel_tcp = _int(mem, "kernelTCP", "memory", lo=-1)
    swappiness = _int(mem, "swappiness", "memory", lo=0, hi=100)
    disable_oom = _bool(mem, "disableOOMKiller", "memory")
    hierarchy = _bool(mem, "useHierarchy", "memory")
    out.check_before_update = bool(_bool(mem, "checkBeforeUpdate", "memory"))
    if limit and swap and limit > 0 and swap > 0 and swap < limit:
        raise ConfigError(f"{PREFIX}memory.swap: {swap} is below memory.limit {limit} "
                          "(swap counts memory plus swap)")
    if limit:
        out.memory_limit = limit
    wanted = (limit or reservation or swap or kernel or kernel_tcp or swappiness is not None
              or disable_oom or (updating and disable_oom is not None) or hierarchy is not None)
    if not wanted:
        return
    key = _need(layout, "memory", "memory")
    if key == UNIFIED:
        if limit:
            out.writes.append(Write(key, [("memory.max", cv.v2_limit(limit))], "memory.limit", "memory"))
        if reservation:
            out.writes.append(Write(key, [("memory.low", cv.v2_limit(reservation))],
                                    "memory.reservation", "memory"))
        swap_max = cv.swap_to_v2(swap, limit)
        if swap_max is not None:
            out.writes.append(Write(key, [("memory.swap.max", cv.v2_limit(swap_max))],
                                    "memory.swap", "memory"))
        for value, field in ((kernel, "kernel"), (kernel_tcp, "kernelTCP")):
            if value:
                raise UnsupportedError(f"{PREFIX}memory.{field}: cgroup v2 has no separate kernel "
                                       "memory limit")
        if swappiness is not None:
            raise UnsupportedError(f"{PREFIX}memory.swappiness: cgroup v2 has no per-cgroup swappiness")
        if disable_oom:
            raise UnsupportedError(f"{PREFIX}memory.disableOOMKiller: cgroup v2 cannot disable "
                                   "the OOM killer")
        if hierarchy is False:
            raise UnsupportedError(f"{PREFIX}memory.useHierarchy: cgroup v2 is always hierarchical")
        return
    if limit:
        out.writes.append(Write(key, [("memory.limit_in_bytes", cv.v1_limit(limit))],
                                "memory.limit", "memory"))
    if reservation:
        out.writes.append(Write(key, [("memory.soft_limit_in_bytes", cv.v1_limit(reservation))],
                                "memory.reservation", "memory"))
    if swap:
        _require_file(layout, key, ["memory.memsw.limit_in_bytes"], "memory.swap")
        out.writes.append(Write(key, [("memory.memsw.limit_in_bytes", cv.v1_limit(swap))],
                                "memory.swap", "memory"))
    elif limit == -1:
        # memory+swap may not be below memory: lifting one lifts both.
        out.writes.append(Write(key, [("memory.memsw.limit_in_bytes", "-1")], "memory.swap",
                                "memory", optional=True))
    if kernel:
        _require_file(layout, key, ["memory.kmem.limit_in_bytes"], "memory.kernel")
        out.writes.append(Write(key, [("memory.kmem.limit_in_bytes", cv.v1_limit(kernel))],
                                "memory.kernel", "memory"))
    if kernel_tcp:
        _require_file(layout, key, ["memory.kmem.tcp.limit_in_bytes"], "memory.kernelTCP")
        out.writes.append(Write(key, [("memory.kmem.tcp.limit_in_bytes", cv.v1_limit(kernel_tcp))],
                                "memory.kernelTCP", "memory"))
    if swappiness is not None:
        out.writes.append(Write(key, [("memory.swappiness", str(swappiness))],
                                "memory.swappiness", "memory"))
    if disable_oom or (updating and disable_oom is not None):
        out.writes.append(Write(key, [("memory.oom_control", "1" if disable_oom else "0")],
                                "memory.disableOOMKiller", "memory"))
    if hierarchy is not None:
        out.writes.append(Write(key, [("memory.use_hierarchy", "1" if hierarchy else "0")],
                                "memory.useHierarchy", "memory"))


def _plan_pids(resources: dict, layout: Layout, out: Plan) -> None:
    pids = _section(resources, "pids")
    if pids is None:
        return
    limit = _int(pids, "limit", "pids")
    if limit is None:
        return
    key = _need(layout, "pids", "pids.limit")
    out.writes.append(Write(key, [("pids.max", "max" if limit <= 0 else str(limit))], "pids.limit"))


def _dev(entry: dict, where: str) -> str:
    major = _int(entry, "major", where, lo=0)
    minor = _int(entry, "minor", where, lo=0)
    if major is None or minor is None:
        raise ConfigError(f"{PREFIX}{where}: major and minor are required")
    return f"{major}:{minor}"


_THROTTLE = (("throttleReadBpsDevice", "blkio.throttle.read_bps_device", "rbps"),
             ("throttleWriteBpsDevice", "blkio.throttle.write_bps_device", "wbps"),
             ("throttleReadIOPSDevice", "blkio.throttle.read_iops_device", "riops"),
             ("throttleWriteIOPSDevice", "blkio.throttle.write_iops_device", "wiops"))


def _plan_blockio(resources: dict, layout: Layout, out: Plan) -> None:
    bio = _section(resources, "blockIO")
    if bio is None:
        return
    weight = _int(bio, "weight", "blockIO", lo=0, hi=cv.BLKIO_WEIGHT_MAX)
    leaf = _int(bio, "leafWeight", "blockIO", lo=0, hi=cv.BLKIO_WEIGHT_MAX)
    for value, name in ((weight, "weight"), (leaf, "leafWeight")):
        if value and value < cv.BLKIO_WEIGHT_MIN:
            raise ConfigError(f"{PREFIX}blockIO.{name}: {value} is out of range "
                              f"{cv.BLKIO_WEIGHT_MIN}..{cv.BLKIO_WEIGHT_MAX}")
    devices = _list(bio, "weightDevice", "blockIO")
    throttles = {name: _list(bio, name, "blockIO") for name, _f, _k in _THROTTLE}
    if not (weight or leaf or devices or any(throttles.values())):
        return
    key = layout.v1_key("blkio") or (UNIFIED if layout.has_unified and "io" in layout.v2_available()
                                     else None)
    if key is None:
        raise UnsupportedError(f"{PREFIX}blockIO: this host has no blkio/io cgroup controller")
    v2 = key == UNIFIED
    if weight:
        if v2:
            choices = [("io.bfq.weight", str(weight)),
                       ("io.weight", f"default {cv.blkio_weight_to_io_weight(weight)}")]
        else:
            choices = [("blkio.weight", str(weight)), ("blkio.bfq.weight", str(weight))]
            _require_file(layout, key, [c[0] for c in choices], "blockIO.weight")
        out.writes.append(Write(key, choices, "blockIO.weight", "blkio"))
    if leaf:
        if v2:
            raise UnsupportedError(f"{PREFIX}blockIO.leafWeight: cgroup v2 has no leaf weights")
        _require_file(layout, key, ["blkio.leaf_weight"], "blockIO.leafWeight")
        out.writes.append(Write(key, [("blkio.leaf_weight", str(leaf))], "blockIO.leafWeight", "blkio"))
    for index, entry in enumerate(devices):
        where = f"blockIO.weightDevice[{index}]"
        dev = _dev(entry, where)
        dev_weight = _int(entry, "weight", where, lo=0, hi=cv.BLKIO_WEIGHT_MAX)
        dev_leaf = _int(entry, "leafWeight", where, lo=0, hi=cv.BLKIO_WEIGHT_MAX)
        if dev_weight is None and dev_leaf is None:
            raise ConfigError(f"{PREFIX}{where}: give weight, leafWeight or both")
        if dev_weight is not None:
            if v2:
                choices = [("io.bfq.weight", f"{dev} {dev_weight}"),
                           ("io.weight", f"{dev} {cv.blkio_weight_to_io_weight(dev_weight)}")]
            else:
                choices = [("blkio.weight_device", f"{dev} {dev_weight}"),
                           ("blkio.bfq.weight_device", f"{dev} {dev_weight}")]
                _require_file(layout, key, [c[0] for c in choices], where)
            out.writes.append(Write(key, choices, where, "blkio"))
        if dev_leaf is not None:
            if v2:
                raise UnsupportedError(f"{PREFIX}{where}.leafWeight: cgroup v2 has no leaf weights")
            _require_file(layout, key, ["blkio.leaf_weight_device"], where)
            out.writes.append(Write(key, [("blkio.leaf_weight_device", f"{dev} {dev_leaf}")],
                                    where, "blkio"))
    io_max: dict[str, list[str]] = {}
    for name, v1_file, v2_key in _THROTTLE:
        for index, entry in enumerate(throttles[name]):
            where = f"blockIO.{name}[{index}]"
            dev = _dev(entry, where)
            rate = _int(entry, "rate", where, lo=0)
            if rate is None:
                raise ConfigError(f"{PREFIX}{where}.rate: required")
            if v2:
                io_max.setdefault(dev, []).append(f"{v2_key}={rate if rate else 'max'}")
            else:
                out.writes.append(Write(key, [(v1_file, f"{dev} {rate}")], where, "blkio"))
    for dev, limits in io_max.items():  # one line per device sets all its limits at once
        out.writes.append(Write(key, [("io.max", f"{dev} {' '.join(limits)}")],
                                "blockIO.throttle", "blkio"))


def _plan_hugepages(resources: dict, layout: Layout, out: Plan) -> None:
    limits = resources.get("hugepageLimits")
    if limits is None:
        return
    if not isinstance(limits, list):
        raise ConfigError(f"{PREFIX}hugepageLimits: expected an array, got {limits!r}")
    if not limits:
        return
    entries = []
    for index, entry in enumerate(limits):
        where = f"hugepageLimits[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{PREFIX}{where}: expected an object, got {entry!r}")
        page = _str(entry, "pageSize", where)
        limit = _int(entry, "limit", where, lo=-1)
        if not page or limit is None:
            raise ConfigError(f"{PREFIX}{where}: pageSize and limit are required")
        entries.append((where, page, cv.page_size_name(cv.page_size_bytes(page)), limit))
    sizes = supported_page_sizes()
    key = _need(layout, "hugetlb", "hugepageLimits")
    for where, page, name, limit in entries:
        if name not in sizes:
            raise UnsupportedError(f"{PREFIX}{where}.pageSize: the kernel has no {page} huge pages "
                                   f"(it has: {', '.join(sorted(sizes)) or 'none'})")
        if key == UNIFIED:
            value = cv.v2_limit(limit)
            out.writes.append(Write(key, [(f"hugetlb.{name}.max", value)], where, "hugetlb"))
            out.writes.append(Write(key, [(f"hugetlb.{name}.rsvd.max", value)], where, "hugetlb",
                                    optional=True))
        else:
            value = cv.v1_limit(limit)
            out.writes.append(Write(key, [(f"hugetlb.{name}.limit_in_bytes", value)], where, "hugetlb"))
            out.writes.append(Write(key, [(f"hugetlb.{name}.rsvd.limit_in_bytes", value)], where,
                                    "hugetlb", optional=True))


def _plan_network(resources: dict, layout: Layout, out: Plan) -> None:
    net = _section(resources, "network")
    if net is None:
        return
    class_id = _int(net, "classID", "network", lo=0, hi=0xFFFFFFFF)
    priorities = _list(net, "priorities", "network")
    if class_id is not None:
        key = layout.v1_key("net_cls")
        if key is None:
            raise UnsupportedError(f"{PREFIX}network.classID: this host has no net_cls cgroup "
                                   "hierarchy mounted (cgroup v2 has no net_cls)")
        out.writes.append(Write(key, [("net_cls.classid", str(class_id))], "network.classID"))
    for index, entry in enumerate(priorities):
        where = f"network.priorities[{index}]"
        name = _str(entry, "name", where)
        prio = _int(entry, "priority", where, lo=0, hi=0xFFFFFFFF)
        if not name or prio is None:
            raise ConfigError(f"{PREFIX}{where}: name and priority are required")
        key = layout.v1_key("net_prio")
        if key is None:
            raise UnsupportedError(f"{PREFIX}network.priorities: this host has no net_prio cgroup "
                                   "hierarchy mounted (cgroup v2 has no net_prio)")
        out.writes.append(Write(key, [("net_prio.ifpriomap", f"{name} {prio}")], where))


def _plan_rdma(resources: dict, layout: Layout, out: Plan) -> None:
    rdma = _section(resources, "rdma")
    if not rdma:
        return
    key = _need(layout, "rdma", "rdma")
    for device, limits in rdma.items():
        where = f"rdma.{device}"
        if not isinstance(limits, dict):
            raise ConfigError(f"{PREFIX}{where}: expected an object, got {limits!r}")
        parts = []
        handles = _int(limits, "hcaHandles", where, lo=0, hi=0xFFFFFFFF)
        objects = _int(limits, "hcaObjects", where, lo=0, hi=0xFFFFFFFF)
        if handles is not None:
            parts.append(f"hca_handle={handles}")
        if objects is not None:
            parts.append(f"hca_object={objects}")
        if not parts:
            raise ConfigError(f"{PREFIX}{where}: give hcaHandles, hcaObjects or both")
        out.writes.append(Write(key, [("rdma.max", f"{device} {' '.join(parts)}")], where))


def _plan_unified(resources: dict, layout: Layout, out: Plan) -> None:
    unified = _section(resources, "unified")
    if not unified:
        return
    for name, value in unified.items():
        where = f"unified.{name}"
        if not isinstance(value, str):
            raise ConfigError(f"{PREFIX}{where}: expected a string, got {value!r}")
        if not name or "/" in name or name.startswith(".") or "." not in name:
            raise ConfigError(f"{PREFIX}{where}: not a cgroup file name")
        if name in _UNIFIED_FORBIDDEN:
            raise ConfigError(f"{PREFIX}{where}: the runtime manages {name} itself")
    if not layout.has_unified:
        raise UnsupportedError(f"{PREFIX}unified: this host has no cgroup v2 hierarchy "
                               "(unified keys are cgroup v2 files)")
    available = layout.v2_available()
    for name, value in unified.items():
        where = f"unified.{name}"
        controller = name.split(".", 1)[0]
        if controller != "cgroup" and controller not in available:
            raise UnsupportedError(f"{PREFIX}{where}: the {controller} controller is not "
                                   f"available in cgroup v2 here (available: "
                                   f"{' '.join(sorted(available)) or 'none'})")
        out.writes.append(Write(UNIFIED, [(name, value)], where))


# ---------------------------------------------------------------- applying
# Writes a kernel may refuse only because of the current value of a sibling
# file (memory below memory+swap, cpu burst above quota, rt runtime above rt
# period): these groups are retried in another order.
_REORDERABLE = frozenset(("memory", "cpu"))


def apply_writes(writes: list[Write], paths: dict[str, str]) -> None:
    """Write every value, in order; raise UnsupportedError/KernelError naming the OCI field."""
    index = 0
    while index < len(writes):
        group = writes[index].group
        end = index + 1
        if group in _REORDERABLE:
            while end < len(writes) and writes[end].group == group:
                end += 1
            _write_reorderable(writes[index:end], paths)
        else:
            _write_one(writes[index], paths)
        index = end


def _write_reorderable(writes: list[Write], paths: dict[str, str]) -> None:
    pending = writes
    while pending:
        failed: list[tuple[Write, KernelError]] = []
        for w in pending:
            try:
                _write_one(w, paths)
            except KernelError as exc:
                if exc.errno not in (errno.EINVAL, errno.EBUSY):
                    raise
                failed.append((w, exc))
        if not failed:
            return
        if len(failed) == len(pending):
            raise failed[0][1]
        pending = [w for w, _exc in failed]



def _write_one(w: Write, paths: dict[str, str]) -> None:
    directory = paths[w.key]
    for position, (name, value) in enumerate(w.choices):
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if position + 1 < len(w.choices):
                continue
            if w.optional:
                return
            if not os.path.isdir(directory):
                raise KernelError(f"{PREFIX}{w.field}: cgroup {directory} does not exist",
                                  errno.ENOENT) from None
            names = " or ".join(c[0] for c in w.choices)
            raise UnsupportedError(f"{PREFIX}{w.field}: the kernel offers no {names} in "
                                   f"{directory}") from None
        except OSError as exc:
            raise KernelError(f"{PREFIX}{w.field}: open {path}: {exc.strerror}", exc.errno) from None
        try:
            os.write(fd, value.encode())
        except OSError as exc:
            if exc.errno == errno.EOPNOTSUPP:
                raise UnsupportedError(f"{PREFIX}{w.field}: the kernel does not support {value!r} "
                                       f"in {path} (Operation not supported)") from None
            raise KernelError(f"{PREFIX}{w.field}: write {value!r} to {path}: {exc.strerror}",
                              exc.errno) from None
        finally:
            os.close(fd)
        log.debug("cgroup %s <- %r", path, value)
        return
