"""lsns for containers: every namespace of every running container (`nsbox ns`).

One pass over /proc reads the eight namespace links of every process
(/proc/PID/ns/TYPE -> "net:[4026531840]"; a readlink each, no subprocess),
which gives, per namespace, its processes.  A container's processes are
those of its cgroup (cgroup.procs, the same list the runtime's `ps` reads),
so a namespace is the container's when one of them is in it, and shared
when processes of several containers are.  "Host" means the namespace of
PID 1 of that type, as the article's `ls -l /proc/1/ns` comparison does.

    rows = table(engine)              # list[Namespace], as `nsbox ns --format json`
    view = container_view(engine, "web")  # the eight types beside the host's
"""

from __future__ import annotations

import os

from nsbox._record import record

TYPE_CHECKING = False  # typing's own constant costs an import of typing
if TYPE_CHECKING:
    from nsbox.engine.lifecycle.record import Container
    from nsbox.engine.lifecycle.state import EngineBase

# The order `nsbox ns C` prints them in (the article's order).
TYPES = ("mnt", "uts", "ipc", "pid", "net", "user", "cgroup", "time")
COLUMNS = ("ns", "type", "nprocs", "pid", "host", "containers")


@record
class Namespace:
    """One namespace, as a row of `nsbox ns` (field names follow lsns -J where they overlap)."""

    type: str
    ns: int  # the inode of /proc/PID/ns/TYPE
    nprocs: int  # processes in it, every process of the host counted (as lsns)
    pid: int  # its oldest process
    containers: list  # names of the running containers with a process in it
    host: bool  # the namespace of PID 1 of that type

    def as_dict(self) -> dict:
        return {"ns": self.ns, "type": self.type, "nprocs": self.nprocs, "pid": self.pid,
                "host": self.host, "containers": list(self.containers)}


def _inode(link: str) -> int:
    # "mnt:[4026531841]" -> 4026531841
    return int(link[link.index("[") + 1:-1])


def scan(proc: str = "/proc") -> dict[int, dict[str, int]]:
    """PID -> {type: inode} for every process /proc shows (threads are not processes here)."""
    out: dict[int, dict[str, int]] = {}
    with os.scandir(proc) as entries:
        pids = [int(e.name) for e in entries if e.name.isdigit()]
    for pid in pids:
        links = {}
        base = f"{proc}/{pid}/ns/"
        for kind in TYPES:
            try:
                links[kind] = _inode(os.readlink(base + kind))
            except (OSError, ValueError):
                continue  # gone meanwhile, a kernel without that type, or not ours to read
        if links:
            out[pid] = links
    return out


def _host_pids() -> tuple[str, ...]:
    # PID 1 first; where it cannot be read (a sandboxed init), kthreadd, which
    # the kernel keeps in the initial namespaces; this process as the last resort.
    try:
        with open("/proc/2/stat") as f:
            kthreadd = f.read(32).startswith("2 (kthreadd)")
    except OSError:
        kthreadd = False
    return ("1", "2", "self") if kthreadd else ("1", "self")


def host_namespaces(processes: dict[int, dict[str, int]] | None = None) -> dict[str, int]:
    """type -> inode of PID 1's namespaces (kthreadd's or ours where PID 1's cannot be read)."""
    if processes and 1 in processes:
        return dict(processes[1])
    out = {}
    order = _host_pids()
    for kind in TYPES:
        for pid in order:
            try:
                out[kind] = _inode(os.readlink(f"/proc/{pid}/ns/{kind}"))
                break
            except (OSError, ValueError):
                continue
    return out


def _start_time(pid: int) -> int:
    """Clock ticks after boot at which PID started (field 22 of /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 1 << 62  # gone: never the oldest


def _oldest(pids: list[int]) -> int:
    if 1 in pids:
        return 1  # nothing in userspace is older than init
    return min(pids, key=lambda p: (_start_time(p), p))


def _cgroup_dir(paths: dict[str, str]) -> str | None:
    """The directory whose cgroup.procs lists the container's processes."""
    for key in ("pids", "unified", "", "memory", "cpu", "cpuacct", "devices", "freezer"):
        if paths.get(key):
            return paths[key]
    return next(iter(paths.values()), None)


def container_pids(engine: EngineBase, c: Container) -> set[int]:
    """C's processes: its cgroup's (nested ones included), else just its init."""
    from nsbox.engine.lifecycle.query import cgroups
    pids = {c.pid} if c.pid else set()
    top = _cgroup_dir(cgroups(engine, c))
    if not top:
        return pids
    for dirpath, _dirs, files in os.walk(top):
        if "cgroup.procs" not in files:
            continue
        try:
            with open(os.path.join(dirpath, "cgroup.procs")) as f:
                pids.update(int(line) for line in f if line.strip())
        except (OSError, ValueError):
            continue
    return pids


def _running(engine: EngineBase) -> list[Container]:
    from nsbox.engine.model import PAUSED, RUNNING
    return [c for c in engine.list(all=False) if c.state in (RUNNING, PAUSED) and c.pid]


def table(engine: EngineBase, processes: dict[int, dict[str, int]] | None = None
          ) -> list[Namespace]:
    """Every namespace a running container's process is in, sorted by inode."""
    containers = _running(engine)
    processes = scan() if processes is None else processes
    host = host_namespaces(processes)
    members: dict[tuple[str, int], list[int]] = {}
    for pid, links in processes.items():
        for kind, inode in links.items():
            members.setdefault((kind, inode), []).append(pid)
    users: dict[tuple[str, int], list[str]] = {}
    for c in containers:
        for pid in sorted(container_pids(engine, c)):
            for kind, inode in processes.get(pid, {}).items():
                names = users.setdefault((kind, inode), [])
                if c.name not in names:
                    names.append(c.name)
    rows = []
    for (kind, inode), names in users.items():
        pids = members.get((kind, inode), [])
        rows.append(Namespace(type=kind, ns=inode, nprocs=len(pids),
                              pid=_oldest(pids) if pids else 0, containers=sorted(names),
                              host=host.get(kind) == inode))
    rows.sort(key=lambda r: r.ns)
    return rows


def sort_rows(rows: list[Namespace], column: str) -> list[Namespace]:
    """ROWS sorted by COLUMN (one of COLUMNS, any case); numbers numerically."""
    from nsbox.errors import ConfigError
    key = column.lower()
    if key not in COLUMNS:
        raise ConfigError(f'unknown column "{column}" for --sort: use one of '
                          + ", ".join(c.upper() for c in COLUMNS))
    if key == "containers":
        return sorted(rows, key=lambda r: (",".join(r.containers), r.ns))
    if key == "type":
        return sorted(rows, key=lambda r: (TYPES.index(r.type), r.ns))
    return sorted(rows, key=lambda r: (getattr(r, key), r.ns))


def container_view(engine: EngineBase, ref: str,
                   processes: dict[int, dict[str, int]] | None = None) -> dict:
    """REF's eight namespaces beside the host's.

    {"Name", "Id", "Pid", "Namespaces": [{"type", "container", "host", "status",
    "shared_with"}]} where status is "private", "host" (the host's own) or
    "shared" (with the running containers named in shared_with: --pid,
    --network, --ipc container:X).
    """
    from nsbox.engine.model import PAUSED, RUNNING
    from nsbox.errors import InvalidState
    c = engine.get(ref)
    if c.state not in (RUNNING, PAUSED) or not c.pid:
        raise InvalidState(f"container {c.name} is not running")
    processes = scan() if processes is None else processes
    return _view(c, _running(engine), processes, host_namespaces(processes))


def all_views(engine: EngineBase, processes: dict[int, dict[str, int]] | None = None
              ) -> dict[str, dict]:
    """container_view() of every running container (id -> view), from one list and scan."""
    processes = scan() if processes is None else processes
    host = host_namespaces(processes)
    running = _running(engine)
    return {c.id: _view(c, running, processes, host) for c in running}


def _view(c: Container, running: list[Container], processes: dict[int, dict[str, int]],
          host: dict[str, int]) -> dict:
    mine = processes.get(c.pid) or {}
    others: dict[tuple[str, int], list[str]] = {}
    for other in running:
        if other.id == c.id:
            continue
        for kind, inode in (processes.get(other.pid) or {}).items():
            others.setdefault((kind, inode), []).append(other.name)
    rows = []
    for kind in TYPES:
        inode = mine.get(kind)
        if inode is None:
            continue
        shared = sorted(others.get((kind, inode), []))
        status = "host" if host.get(kind) == inode else "shared" if shared else "private"
        rows.append({"type": kind, "container": inode, "host": host.get(kind),
                     "status": status, "shared_with": shared})
    return {"Name": c.name, "Id": c.id, "Pid": c.pid, "Namespaces": rows}


def status_text(row: dict) -> str:
    """"private", "host", or "shared with a, b" (for tables and the dashboard)."""
    if row["status"] == "shared":
        return "shared with " + ", ".join(row["shared_with"])
    if row["status"] == "host" and row["shared_with"]:
        return "host (and " + ", ".join(row["shared_with"]) + ")"
    return row["status"]
