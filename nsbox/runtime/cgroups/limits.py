"""`linux.resources` beyond the device rules: cpu, memory, pids, blockIO, hugepageLimits,
network, rdma and unified, each turned into `Write`s (values.py) by `plan_limits`.

Apart from resources.py, whose `plan()` calls this module only when the
section has more than `devices` (every engine's config has device rules;
most have no limits), so that `create` does not load this half and the
v1/v2 conversions for them.
"""

from __future__ import annotations

import os

from nsbox._lazylog import get_logger
from nsbox.errors import ConfigError, UnsupportedError
from nsbox.runtime.cgroups import UNIFIED
from nsbox.runtime.cgroups import convert as cv
from nsbox.runtime.cgroups.values import (
    PREFIX,
    Layout,
    Plan,
    Write,
    _bool,
    _int,
    _list,
    _need,
    _require_file,
    _section,
    _str,
)

log = get_logger(__name__)

# unified keys that would move or kill processes, or reshape the tree.
_UNIFIED_FORBIDDEN = frozenset(("cgroup.procs", "cgroup.threads", "cgroup.kill",
                                "cgroup.subtree_control", "cgroup.type"))


def plan_limits(resources: dict, layout: Layout, out: Plan, updating: bool) -> None:
    """Add the writes of every section but `devices` to OUT (see resources.plan)."""
    _plan_cpu(resources, layout, out)
    _plan_memory(resources, layout, out, updating)
    _plan_pids(resources, layout, out)
    _plan_blockio(resources, layout, out)
    _plan_hugepages(resources, layout, out)
    _plan_network(resources, layout, out)
    _plan_rdma(resources, layout, out)
    _plan_unified(resources, layout, out)


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
