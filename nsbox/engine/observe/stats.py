"""Resource statistics of containers, as `docker stats` shows them (`nsbox stats`).

API (used by the CLI, nsbox.api and the dashboard):

    targets(engine, refs=(), all=False) -> list[Target]
        the containers to look at, from ONE database query (no reconcile, no
        spec parsing): running and paused ones, or every one with ALL, or the
        ones REFS names (name, full id or unique id prefix; ContainerNotFound
        else).  A Target knows its cgroup directory per controller (`dirs`).
    sample(target, system_ns=None, online=None, detail=True) -> Sample | None
        one reading of the counters Docker reports (None: not running, or its
        processes went away while being read).
    sample_all(targets, detail=True) -> list[Sample | None]
        sample() of each, with /proc/stat read once for all of them.
    cpu_percent(prev, cur) -> float
        Docker's formula: (cpu delta / system cpu delta) * online cpus * 100.
    since_start(cur) -> Sample
        the reading a container had when it started (no CPU used yet), to
        hold against a single sample: CPU % averaged since the start.
    compute(target, prev, cur) -> Stats
        the numbers of one row: CPU %, memory used / limit and %, net and
        block I/O, PIDs; Stats.docker(trunc) -> Docker's JSON/template fields
        (Container, Name, ID, CPUPerc, MemUsage, MemPerc, NetIO, BlockIO,
        PIDs) with Docker's units; Stats.api() -> the Docker Engine API's
        stats object (cpu_stats, precpu_stats, memory_stats, ...).
    snapshot(engine, refs=(), all=False, interval=0.0, detail=True) -> list[Stats]
        `--no-stream`: with INTERVAL 0, one sample per container against its
        start; with INTERVAL > 0, two samples of every container that far apart.
    stream(engine, refs=(), all=False, interval=1.0, detail=True) -> Iterator[list[Stats]]
        the live view: the first rows against each container's start, then
        one round per INTERVAL, CPU % over the last interval.

What a Sample holds (Docker's numbers; byte counts, ns):
    cpu_total_ns    cpuacct.usage (v1) or cpu.stat usage_usec * 1000 (v2)
    system_cpu_ns   the host's total CPU time from /proc/stat's cpu line
                    (user..softirq, in clock ticks, as nanoseconds), as Docker
    online_cpus     sysconf(_SC_NPROCESSORS_ONLN)
    mem_usage       memory.usage_in_bytes (v1) / memory.current (v2)
    mem_inactive_file  total_inactive_file (v1) / inactive_file (v2) of
                    memory.stat: Docker shows usage minus this page cache
    mem_limit       memory.limit_in_bytes / memory.max, at most the host's RAM
    networks        interface -> (rx_bytes, rx_packets, rx_errors, rx_dropped,
                    tx_bytes, tx_packets, tx_errors, tx_dropped) from
                    /proc/PID/net/dev of the init (its netns; lo left out)
    blk_read, blk_write  blkio.throttle.io_service_bytes_recursive Read/Write
                    (v1) or io.stat rbytes/wbytes (v2), summed over devices
    pids, pids_limit  pids.current / pids.max (0: no limit)

The files are read by observe/readings.py (cgroup and /proc readers, the
cgroup paths from the runtime's state.json).

Speed: the work is about ten small file reads per container and no
subprocess: `nsbox stats --no-stream` over 50 containers costs less than
`nsbox ps` (about half podman's `stats --no-stream`: bench/stats_bench.py).  That is why --no-stream samples
once and holds it against the container's start by default (as podman does)
instead of sleeping for a second sample as Docker's daemon does: an
interval is available (`--interval`, `snapshot(interval=)`), and the live
view uses one.
"""

from __future__ import annotations

import time

from nsbox.engine.observe import readings as rd
from nsbox.engine.observe.readings import (  # noqa: F401 - part of this module's API
    cgroup_dirs,
    cgroup_paths,
    controller_dirs,
    host_memory,
    online_cpus,
    system_cpu_ns,
)

TYPE_CHECKING = False  # typing's own constant costs an import of typing
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from nsbox.engine.lifecycle.state import EngineBase

# Row states the engine records (nsbox.engine.model), without importing it.
_LIVE = ("running", "paused")
# Docker's daemon reports the host's memory as the limit of an unlimited container.
_UNLIMITED_V1 = 1 << 62  # v1 "no limit" is PAGE_COUNTER_MAX pages: anything this big


class _Record:
    """repr and == over __slots__, for the hand-written records below.

    nsbox._record's decorator builds an __init__ that loops over the fields;
    a few hundred records per `stats` call made that a tenth of the command,
    so these records spell their __init__ out."""

    __slots__ = ()

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({inner})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(
            getattr(self, n) == getattr(other, n) for n in self.__slots__)

    __hash__ = None  # type: ignore[assignment]


class Target(_Record):
    """A container to sample: what one database row and its cgroup paths give."""

    __slots__ = ("id", "name", "state", "pid", "started_at", "dirs", "ref")

    def __init__(self, *, id: str, name: str, state: str, pid: int,  # noqa: A002
                 started_at: float, dirs: dict, ref: str = "") -> None:
        self.id, self.name, self.state, self.pid = id, name, state, pid
        self.started_at = started_at
        self.dirs = dirs  # controller ("cpuacct", "memory", ..., "unified") -> directory
        self.ref = ref  # how the caller named it ("" when listed)


class Sample(_Record):
    """One reading of a container's counters (see the module doc for each field)."""

    __slots__ = ("read_at", "started_at", "cpu_total_ns", "cpu_user_ns", "cpu_kernel_ns",
                 "system_cpu_ns", "online_cpus", "mem_usage", "mem_inactive_file", "mem_limit",
                 "networks", "blk_read", "blk_write", "blkio", "pids", "pids_limit", "cgroup")

    def __init__(self, *, read_at: float, started_at: float, cpu_total_ns: int,
                 cpu_user_ns: int, cpu_kernel_ns: int, system_cpu_ns: int, online_cpus: int,
                 mem_usage: int, mem_inactive_file: int, mem_limit: int, networks: dict,
                 blk_read: int, blk_write: int, blkio: list, pids: int, pids_limit: int,
                 cgroup: str) -> None:
        self.read_at = read_at  # time.time() of the reading
        self.started_at = started_at
        self.cpu_total_ns, self.cpu_user_ns, self.cpu_kernel_ns = \
            cpu_total_ns, cpu_user_ns, cpu_kernel_ns
        self.system_cpu_ns, self.online_cpus = system_cpu_ns, online_cpus
        self.mem_usage, self.mem_inactive_file, self.mem_limit = \
            mem_usage, mem_inactive_file, mem_limit
        self.networks = networks
        self.blk_read, self.blk_write = blk_read, blk_write
        self.blkio = blkio  # (major, minor, "read"|"write", bytes) per device
        self.pids, self.pids_limit = pids, pids_limit
        # "v1" or "v2": where the memory numbers came from; "none": no cgroup to read
        self.cgroup = cgroup

    @property
    def mem_used(self) -> int:
        """Usage without the inactive page cache, as `docker stats` shows it."""
        if self.mem_inactive_file < self.mem_usage:
            return self.mem_usage - self.mem_inactive_file
        return self.mem_usage

    @property
    def net_rx(self) -> int:
        return sum(v[0] for v in self.networks.values())

    @property
    def net_tx(self) -> int:
        return sum(v[4] for v in self.networks.values())


class Stats(_Record):
    """One row of `nsbox stats`: the numbers, and the samples they came from."""

    __slots__ = ("id", "name", "container", "running", "cpu_percent", "mem_usage", "mem_limit",
                 "mem_percent", "net_rx", "net_tx", "blk_read", "blk_write", "pids", "sample",
                 "prev")

    def __init__(self, *, id: str, name: str, container: str, running: bool) -> None:  # noqa: A002
        self.id, self.name = id, name
        self.container = container  # as named on the command line, else "" (the id shows)
        self.running = running
        self.cpu_percent = self.mem_percent = 0.0
        self.mem_usage = self.mem_limit = self.net_rx = self.net_tx = 0
        self.blk_read = self.blk_write = self.pids = 0
        self.sample: Sample | None = None
        self.prev: Sample | None = None

    def docker(self, trunc: bool = True) -> dict[str, str]:
        """The fields of `docker stats --format json`, as Docker prints them."""
        short = self.id[:12] if trunc else self.id
        container = self.container or short
        if self.sample is not None and self.sample.cgroup == "none":
            # Running without a cgroup (rootless, none delegated): nothing to
            # count CPU, memory, I/O or tasks by; Docker's "--" for numbers it lacks.
            return {"BlockIO": "--", "CPUPerc": "--", "Container": container, "ID": short,
                    "MemPerc": "--", "MemUsage": "-- / --", "Name": self.name or "--",
                    "NetIO": f"{decimal_size(self.net_rx)} / {decimal_size(self.net_tx)}",
                    "PIDs": "--"}
        return {
            "BlockIO": f"{decimal_size(self.blk_read)} / {decimal_size(self.blk_write)}",
            "CPUPerc": f"{self.cpu_percent:.2f}%",
            "Container": container,
            "ID": short,
            "MemPerc": f"{self.mem_percent:.2f}%",
            "MemUsage": f"{binary_size(self.mem_usage)} / {binary_size(self.mem_limit)}",
            "Name": self.name or "--",
            "NetIO": f"{decimal_size(self.net_rx)} / {decimal_size(self.net_tx)}",
            "PIDs": str(self.pids),
        }

    def api(self) -> dict:
        """The Docker Engine API's stats object (GET /containers/ID/stats)."""
        cur, prev = self.sample, self.prev
        out = {"id": self.id, "name": "/" + self.name, "num_procs": 0,
               "read": _rfc3339(cur.read_at if cur else 0),
               "preread": _rfc3339(prev.read_at if prev else 0),
               "cpu_stats": _cpu_api(cur), "precpu_stats": _cpu_api(prev),
               "pids_stats": {}, "memory_stats": {}, "blkio_stats": {}, "networks": {}}
        if cur is None:
            return out
        out["pids_stats"] = {"current": cur.pids, **({"limit": cur.pids_limit}
                                                     if cur.pids_limit else {})}
        inactive = "total_inactive_file" if cur.cgroup == "v1" else "inactive_file"
        out["memory_stats"] = {"usage": cur.mem_usage, "limit": cur.mem_limit,
                               "stats": {inactive: cur.mem_inactive_file}}
        out["blkio_stats"] = {"io_service_bytes_recursive": [
            {"major": major, "minor": minor, "op": op, "value": value}
            for major, minor, op, value in cur.blkio]}
        names = ("rx_bytes", "rx_packets", "rx_errors", "rx_dropped",
                 "tx_bytes", "tx_packets", "tx_errors", "tx_dropped")
        out["networks"] = {ifname: dict(zip(names, values, strict=True))
                           for ifname, values in cur.networks.items()}
        return out


def _cpu_api(s: Sample | None) -> dict:
    if s is None:
        return {"cpu_usage": {"total_usage": 0}, "throttling_data": {}}
    return {"cpu_usage": {"total_usage": s.cpu_total_ns, "usage_in_usermode": s.cpu_user_ns,
                          "usage_in_kernelmode": s.cpu_kernel_ns},
            "system_cpu_usage": s.system_cpu_ns, "online_cpus": s.online_cpus,
            "throttling_data": {}}


def _rfc3339(stamp: float) -> str:
    if not stamp:
        return "0001-01-01T00:00:00Z"
    secs = int(stamp)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + \
        f".{int((stamp - secs) * 1e9):09d}Z"


# ----------------------------------------------------------------- units
def binary_size(size: float) -> str:
    """Docker's units.BytesSize: "%.4g" with B, KiB, MiB, ... (1024 steps)."""
    return _custom_size(size, 1024.0, ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"), 4)


def decimal_size(size: float) -> str:
    """Docker's units.HumanSizeWithPrecision(size, 3): "%.3g" with B, kB, MB, ..."""
    return _custom_size(size, 1000.0, ("B", "kB", "MB", "GB", "TB", "PB", "EB"), 3)


def _custom_size(size: float, base: float, units: tuple[str, ...], precision: int) -> str:
    i = 0
    size = float(size)
    while size >= base and i < len(units) - 1:
        size /= base
        i += 1
    return f"{size:.{precision}g}{units[i]}"


def sample(target: Target, system_ns: int | None = None, online: int | None = None,
           detail: bool = True) -> Sample | None:
    """One reading of TARGET's counters; None if it is not running or vanished meanwhile.

    SYSTEM_NS / ONLINE: the host's numbers, when the caller samples many at once.
    DETAIL=False skips the files only Stats.api() shows (the user/kernel CPU
    split, the pids limit: 0 then), two of the ten reads per container (state.json too).
    """
    if target.state not in _LIVE or target.pid <= 0:
        return None
    dirs = target.dirs
    unified = dirs.get("unified")
    # The container's network namespace, through its init: if that is gone,
    # so is the container (whatever the record still says).
    networks = rd.net_dev(target.pid)
    if networks is None:
        return None
    read_at = time.time()
    # CPU: v1 cpuacct counts in ns; cgroup2's cpu.stat (always there, even
    # without the cpu controller) in us.
    total = user = kernel = None
    acct = dirs.get("cpuacct")
    if acct:
        total = rd.read_int(acct + "/cpuacct.usage")
        if total is not None and detail:
            # Clock ticks, as Docker reads them for usage_in_usermode/kernelmode.
            text = rd.read(acct + "/cpuacct.stat")
            user = rd.keyed(text, "user") * 1_000_000_000 // rd.CLK_TCK
            kernel = rd.keyed(text, "system") * 1_000_000_000 // rd.CLK_TCK
    if total is None and unified:
        text = rd.read(unified + "/cpu.stat")
        if text is not None:
            total = rd.keyed(text, "usage_usec") * 1000
            user = rd.keyed(text, "user_usec") * 1000
            kernel = rd.keyed(text, "system_usec") * 1000
    # Memory: the v1 controller where it is mounted (hybrid hosts), else cgroup2.
    mem = dirs.get("memory")
    usage = None
    cgroup = "v1"
    if mem:
        usage = rd.read_int(mem + "/memory.usage_in_bytes")
        if usage is not None:
            limit = rd.read_int(mem + "/memory.limit_in_bytes") or 0
            inactive = rd.keyed(rd.read(mem + "/memory.stat"), "total_inactive_file")
    if usage is None and unified:
        usage = rd.read_int(unified + "/memory.current")
        if usage is not None:
            cgroup = "v2"
            limit = rd.read_int(unified + "/memory.max") or 0
            inactive = rd.keyed(rd.read(unified + "/memory.stat"), "inactive_file")
    if usage is None:
        usage = limit = inactive = 0
    if not dirs:
        cgroup = "none"
    host_mem = rd.host_memory_cached()
    if limit < 0 or limit >= _UNLIMITED_V1 or (host_mem and limit > host_mem):
        limit = host_mem
    # Block I/O: the v1 throttle layer sees every bio; else cgroup2's io.stat.
    blkio: list = []
    blk = dirs.get("blkio")
    if blk:
        text = rd.read(blk + "/blkio.throttle.io_service_bytes_recursive")
        if text is None:
            text = rd.read(blk + "/blkio.io_service_bytes_recursive")
        blkio = rd.blkio_v1(text)
    elif unified:
        blkio = rd.io_v2(rd.read(unified + "/io.stat"))
    # PIDs (tasks, threads included, as the pids controller counts them).
    pids = pids_limit = None
    for prefix in (dirs.get("pids"), unified):
        if prefix:
            pids = rd.read_int(prefix + "/pids.current")
            if pids is not None:
                if detail:
                    pids_limit = rd.read_int(prefix + "/pids.max")
                break
    if pids is None:
        pids = rd.count_tasks(dirs)
    return Sample(
        read_at=read_at, started_at=target.started_at,
        cpu_total_ns=total or 0, cpu_user_ns=user or 0, cpu_kernel_ns=kernel or 0,
        system_cpu_ns=system_cpu_ns() if system_ns is None else system_ns,
        online_cpus=online or online_cpus(),
        mem_usage=usage, mem_inactive_file=inactive, mem_limit=limit,
        networks=networks,
        blk_read=sum(v for _, _, op, v in blkio if op == "read"),
        blk_write=sum(v for _, _, op, v in blkio if op == "write"),
        blkio=blkio, pids=pids, pids_limit=max(pids_limit or 0, 0), cgroup=cgroup)


def sample_all(targets: Iterable[Target], detail: bool = True) -> list[Sample | None]:
    """sample() of each target, the host's CPU counters read once for all."""
    system_ns, online = system_cpu_ns(), online_cpus()
    return [sample(t, system_ns, online, detail) for t in targets]


# ----------------------------------------------------------------- numbers
def cpu_percent(prev: Sample | None, cur: Sample | None) -> float:
    """CPU % between two samples, Docker's way: cpu delta / system delta * cpus * 100."""
    if prev is None or cur is None:
        return 0.0
    cpu_delta = cur.cpu_total_ns - prev.cpu_total_ns
    system_delta = cur.system_cpu_ns - prev.system_cpu_ns
    if cpu_delta <= 0 or system_delta <= 0:
        return 0.0
    return cpu_delta / system_delta * cur.online_cpus * 100.0


def since_start(cur: Sample) -> Sample:
    """The reading CUR's container had at its start: no CPU used, the system's CPU
    time less what all CPUs have run since (elapsed wall time * online CPUs)."""
    elapsed = max(cur.read_at - cur.started_at, 0.0) if cur.started_at else 0.0
    system = cur.system_cpu_ns - int(elapsed * 1e9 * cur.online_cpus)
    return Sample(read_at=cur.started_at, started_at=cur.started_at, cpu_total_ns=0,
                  cpu_user_ns=0, cpu_kernel_ns=0, system_cpu_ns=system,
                  online_cpus=cur.online_cpus, mem_usage=0, mem_inactive_file=0,
                  mem_limit=cur.mem_limit, networks={}, blk_read=0, blk_write=0, blkio=[],
                  pids=0, pids_limit=cur.pids_limit, cgroup=cur.cgroup)


def compute(target: Target, prev: Sample | None, cur: Sample | None) -> Stats:
    """The row of TARGET from two samples (PREV None: against its start)."""
    row = Stats(id=target.id, name=target.name, container=target.ref, running=cur is not None)
    if cur is None:
        return row
    if prev is None:
        prev = since_start(cur)
    used = cur.mem_used
    row.cpu_percent = cpu_percent(prev, cur)
    row.mem_usage, row.mem_limit = used, cur.mem_limit
    row.mem_percent = used / cur.mem_limit * 100.0 if cur.mem_limit else 0.0
    row.net_rx, row.net_tx = cur.net_rx, cur.net_tx
    row.blk_read, row.blk_write = cur.blk_read, cur.blk_write
    row.pids = cur.pids
    row.sample, row.prev = cur, prev
    return row


# ----------------------------------------------------------------- containers
def targets(engine: EngineBase, refs: Iterable[str] = (), all: bool = False  # noqa: A002
            ) -> list[Target]:
    """The containers to sample, from one database query; see the module doc."""
    from nsbox.errors import ContainerNotFound

    def rows() -> list[tuple]:
        with engine.db.connection() as conn:
            return list(conn.execute(
                "SELECT id, name, state, pid, started_at, runtime FROM container_containers "
                "ORDER BY created DESC"))

    every = engine.db._retry(rows)
    refs = list(refs)
    if refs:
        chosen = []
        for ref in refs:
            ref_clean = ref.lstrip("/")
            hits = [r for r in every if r[1] == ref_clean] or \
                [r for r in every if ref_clean and r[0].startswith(ref_clean)]
            if not hits:
                raise ContainerNotFound(f"no such container: {ref}")
            if len(hits) > 1:
                raise ContainerNotFound(f"container id prefix {ref!r} is ambiguous "
                                        f"({len(hits)} matches)")
            chosen.append((hits[0], ref))
    else:
        chosen = [(r, "") for r in every if all or r[2] in _LIVE]
    out = []
    for (cid, name, state, pid, started_at, runtime), ref in chosen:
        live = state in _LIVE and pid > 0
        out.append(Target(id=cid, name=name, state=state if live else "exited" if
                          state == "running" else state, pid=pid if live else 0,
                          started_at=started_at or 0.0,
                          dirs=cgroup_dirs(engine.run_root, runtime, cid, pid) if live else {},
                          ref=ref))
    return out


class Reader:
    """What targets() needs of an engine, without the engine: its database and run root.

    `nsbox stats` reads through this: importing the whole Engine (its
    lifecycle modules) would cost more than sampling ten containers."""

    def __init__(self, root: str, run_root: str) -> None:
        from nsbox.engine.db import Database

        self.root, self.run_root = root, run_root
        self.db = Database(root)


def snapshot(engine: EngineBase, refs: Iterable[str] = (), all: bool = False,  # noqa: A002
             interval: float = 0.0, detail: bool = True) -> list[Stats]:
    """`stats --no-stream`: one row per container (see the module doc for INTERVAL)."""
    chosen = targets(engine, refs, all)
    first = sample_all(chosen, detail)
    if interval <= 0:
        return [compute(t, None, s) for t, s in zip(chosen, first, strict=True)]
    time.sleep(interval)
    second = sample_all(chosen, detail)
    return [compute(t, a, b) for t, a, b in zip(chosen, first, second, strict=True)]


def stream(engine: EngineBase, refs: Iterable[str] = (), all: bool = False,  # noqa: A002
           interval: float = 1.0, detail: bool = True) -> Iterator[list[Stats]]:
    """Rows every INTERVAL seconds, for ever; containers come and go (unless REFS)."""
    refs = list(refs)
    previous: dict[str, Sample] = {}
    while True:
        started = time.monotonic()
        chosen = targets(engine, refs, all)
        current = sample_all(chosen, detail)
        rows = []
        for t, cur in zip(chosen, current, strict=True):
            prev = previous.get(t.id)
            if prev is not None and cur is not None and prev.started_at != cur.started_at:
                prev = None  # restarted meanwhile: its counters began again
            rows.append(compute(t, prev, cur))
        previous = {t.id: s for t, s in zip(chosen, current, strict=True) if s is not None}
        yield rows
        time.sleep(max(interval - (time.monotonic() - started), 0.0))
