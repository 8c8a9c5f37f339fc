"""Reading a container's counters: cgroup files, /proc files, the runtime's state.json.

The low level of observe/stats.py (and cgroupview.py): small tolerant
readers that return None or zero for a file that is missing (a controller the
host lacks, a container that just went away) instead of raising.  Files are
read with os.open/os.read: no buffered or text wrappers, which cost more
than the read itself on these small files (about ten per container per round).
"""

from __future__ import annotations

import os

CLK_TCK = os.sysconf("SC_CLK_TCK")
_O_RDONLY = os.O_RDONLY | os.O_CLOEXEC


def read(path: str) -> str | None:
    # os.read on a raw fd: no buffered/text wrappers, which cost more than the
    # read itself on these small files (about ten per container).
    try:
        fd = os.open(path, _O_RDONLY)
    except OSError:
        return None
    try:
        data = os.read(fd, 65536)
        if len(data) == 65536:  # not one of the small files we expect: read it all
            chunks = [data]
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            data = b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data.decode(errors="replace")


def read_int(path: str) -> int | None:
    text = read(path)
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return -1
    try:
        return int(text)
    except ValueError:
        return None


def keyed(text: str | None, key: str) -> int:
    """The value of KEY in a "key value" file (memory.stat, cpu.stat), 0 if absent."""
    if not text:
        return 0
    start = text.find(key + " ") if text.startswith(key + " ") else text.find("\n" + key + " ")
    if start < 0:
        return 0
    start = text.index(" ", start + 1) + 1
    end = text.find("\n", start)
    try:
        return int(text[start:end if end >= 0 else None])
    except ValueError:
        return 0


def controller_dirs(paths: dict[str, str]) -> dict[str, str]:
    """Hierarchy key -> directory (state.json's cgroup_paths, or query.cgroups) as
    controller -> directory: "cpu,cpuacct" gives both names, "" is "unified"."""
    out = {}
    for key, path in paths.items():
        if key in ("", "unified"):
            out["unified"] = path
            continue
        for name in key.split(","):
            out[name.removeprefix("name=")] = path
    return out


def host_memory() -> int:
    text = read("/proc/meminfo") or ""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


_HOST_MEMORY: list[int] = []


def host_memory_cached() -> int:
    if not _HOST_MEMORY:
        _HOST_MEMORY.append(host_memory())
    return _HOST_MEMORY[0]


def system_cpu_ns() -> int:
    """Docker's system_cpu_usage: the first 7 fields of /proc/stat's cpu line, as ns."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return sum(int(v) for v in fields[1:8]) * 1_000_000_000 // CLK_TCK


def online_cpus() -> int:
    return os.sysconf("SC_NPROCESSORS_ONLN") or 1


_OWN_NETNS: list[int] = []


def net_dev(pid: int) -> dict[str, tuple[int, ...]] | None:
    """/proc/PID/net/dev: the interfaces of PID's network namespace, lo left out.

    A container in our own network namespace (--network host) has none of
    its own: Docker shows no network I/O for it, not the host's."""
    text = read(f"/proc/{pid}/net/dev")
    if text is None:
        return None
    try:
        if not _OWN_NETNS:
            _OWN_NETNS.append(os.stat("/proc/self/ns/net").st_ino)
        if os.stat(f"/proc/{pid}/ns/net").st_ino == _OWN_NETNS[0]:
            return {}
    except OSError:
        return None
    out = {}
    for line in text.splitlines()[2:]:
        name, _, rest = line.partition(":")
        name = name.strip()
        if name == "lo" or not rest:
            continue
        values = rest.split()
        try:
            out[name] = (int(values[0]), int(values[1]), int(values[2]), int(values[3]),
                         int(values[8]), int(values[9]), int(values[10]), int(values[11]))
        except (IndexError, ValueError):
            continue
    return out


def blkio_v1(text: str | None) -> list[tuple[int, int, str, int]]:
    out = []
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) != 3 or ":" not in parts[0]:
            continue
        op = parts[1].lower()
        if op not in ("read", "write"):
            continue
        major, _, minor = parts[0].partition(":")
        out.append((int(major), int(minor), op, int(parts[2])))
    return out


def io_v2(text: str | None) -> list[tuple[int, int, str, int]]:
    out = []
    for line in (text or "").splitlines():
        parts = line.split()
        if not parts or ":" not in parts[0]:
            continue
        major, _, minor = parts[0].partition(":")
        for item in parts[1:]:
            key, _, value = item.partition("=")
            if key in ("rbytes", "wbytes"):
                out.append((int(major), int(minor), "read" if key == "rbytes" else "write",
                            int(value)))
    return out


def count_tasks(dirs: dict[str, str]) -> int:
    """Threads in the cgroup, for hosts without a pids controller."""
    for key, name in (("unified", "cgroup.threads"), ("cpuacct", "tasks"), ("memory", "tasks"),
                      ("freezer", "tasks")):
        if key in dirs:
            text = read(os.path.join(dirs[key], name))
            if text is not None:
                return len(text.split())
    return 0


def cgroup_dirs(run_root: str, runtime: str, cid: str, pid: int) -> dict[str, str]:
    """Controller -> directory of a container (cgroup_paths as controller_dirs)."""
    return controller_dirs(cgroup_paths(run_root, runtime, cid, pid))


def cgroup_paths(run_root: str, runtime: str, cid: str, pid: int) -> dict[str, str]:
    """Hierarchy key -> directory of a container, as `inspect .Cgroups` finds them:
    the runtime's state.json, else the init's /proc/PID/cgroup.

    A state.json that records no cgroup (a rootless container without a
    delegated cgroup) means none: the init's own cgroups are then the user's
    session's, whose usage is not the container's."""
    # nsbox.engine.oci.state_root (lifecycle.host.runtime_root), spelt out: that
    # module's import is a tenth of `stats --no-stream`'s own work.
    state = os.path.join(run_root, os.path.basename(runtime), cid, "state.json")
    paths = state_cgroup_paths(state)
    if paths is not None:
        return paths
    from nsbox.engine.lifecycle.query import cgroups

    class _Row:  # what query.cgroups reads of a record
        __slots__ = ("id", "pid", "runtime")

    row = _Row()
    row.id, row.pid, row.runtime = cid, pid, runtime
    return cgroups(_EngineRoots(run_root), row)


def state_cgroup_paths(path: str) -> dict[str, str] | None:
    """state.json's "cgroup_paths", parsed alone (the file is mostly the OCI config).

    Inside a JSON string a quote is escaped, so the text '"cgroup_paths":'
    is a key; should the first one be another object's (an annotation named
    so holds a string, not an object), the whole file is parsed instead."""
    from nsbox import _json

    text = read(path)
    if not text:
        return None
    at = text.find('"cgroup_paths":')
    if at < 0:
        return None
    try:
        value, _ = _json._scan(text, at + len('"cgroup_paths":'))
    except (StopIteration, SystemError, ValueError):
        value = None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        try:
            value = _json.loads(text).get("cgroup_paths")
        except (ValueError, AttributeError):
            return None
    return value if isinstance(value, dict) else None


class _EngineRoots:
    """The one engine attribute query.cgroups needs."""

    __slots__ = ("run_root",)

    def __init__(self, run_root: str) -> None:
        self.run_root = run_root
