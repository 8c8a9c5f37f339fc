"""What this host can give a container, checked when it is created (as Docker's sysinfo).

Each check is a few stat/read calls and runs only when a flag asks for what
it checks: online CPUs and memory nodes for --cpuset-cpus/--cpuset-mems,
a weight file for --blkio-weight, swap accounting for a memory+swap limit.
Docker refuses a cpuset the host cannot give and drops (with a warning) a
block I/O weight or swap limit the kernel cannot enforce; flags.py and
bundle.py do the same with these answers.
"""

from __future__ import annotations

import os

CPU_ONLINE = "/sys/devices/system/cpu/online"
NODE_ONLINE = "/sys/devices/system/node/online"
CGROUP_ROOT = "/sys/fs/cgroup"
# The weight files of the blkio controller (v1) and the io controller (v2):
# CFQ's or BFQ's on v1, iocost's or BFQ's on v2.
V1_WEIGHT_FILES = ("blkio.weight", "blkio.bfq.weight")
V2_WEIGHT_FILES = ("io.weight", "io.bfq.weight")

BLKIO_WEIGHT_WARNING = ("the kernel has no block I/O weight (no BFQ or CFQ scheduler, or the blkio "
                        "cgroup is not mounted): the weight is ignored")
SWAP_LIMIT_WARNING = ("the kernel has no swap accounting (memory.memsw.limit_in_bytes is missing): "
                      "memory is limited without a swap limit")


# ================================================================ CPU and memory node lists
def parse_list(text: str) -> set[int]:
    """`0-3,5` -> {0, 1, 2, 3, 5}; ValueError on anything else."""
    out: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        low, dash, high = part.partition("-")
        first, last = int(low), int(high) if dash else int(low)
        if last < first:
            raise ValueError(part)
        out.update(range(first, last + 1))
    return out


def format_list(ids: set[int] | list[int]) -> str:
    """{0, 1, 2, 5} -> `0-2,5`."""
    ranges: list[list[int]] = []
    for n in sorted(ids):
        if ranges and n == ranges[-1][1] + 1:
            ranges[-1][1] = n
        else:
            ranges.append([n, n])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def online(path: str, default: str = "0") -> set[int]:
    """The ids in a sysfs `online` file (DEFAULT when the file is missing or unreadable)."""
    try:
        with open(path) as f:
            return parse_list(f.read())
    except (OSError, ValueError):
        return parse_list(default)


def unavailable(requested: str, path: str) -> tuple[list[int], str]:
    """Ids of REQUESTED (a cpuset list) that PATH does not list as online, and what is online."""
    have = online(path)
    return sorted(parse_list(requested) - have), format_list(have)


# ================================================================ cgroup files
def _names(path: str) -> set[str]:
    try:
        return set(os.listdir(path))
    except OSError:
        return set()


def _own_cgroup(controller: str) -> str:
    """This process's cgroup path for CONTROLLER ("" = the cgroup2 line)."""
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if (controller in controllers.split(",")) if controller else not controllers:
                    return path
    except (OSError, ValueError):
        pass
    return "/"


def _first_child(path: str) -> str | None:
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    return entry.path
    except OSError:
        pass
    return None


def weight_supported(root: set[str], cgroups: list[set[str]], version: int) -> bool:
    """Whether block I/O weights can be set, from the file names of the hierarchy's ROOT cgroup
    and of other (non-root) CGROUPS in it; VERSION 1 (blkio) or 2 (io).

    Weight files are not in the root cgroup (CFQ's blkio.weight was), so the root
    alone only tells by the files a scheduler puts there: BFQ's blkio.bfq.* on
    v1, iocost's io.cost.* on v2."""
    wanted = V1_WEIGHT_FILES if version == 1 else V2_WEIGHT_FILES
    if any(name in root for name in wanted):
        return True
    marker = "blkio.bfq." if version == 1 else "io.cost."
    if any(name.startswith(marker) for name in root):
        return True
    return any(name in names for names in cgroups for name in wanted)


def blkio_weight_supported(cgroup_root: str = CGROUP_ROOT) -> bool:
    """Whether the hierarchy that holds block I/O (blkio on v1, io on cgroup2) has weights."""
    v1 = os.path.join(cgroup_root, "blkio")
    if os.path.isfile(os.path.join(v1, "tasks")):  # a v1 hierarchy (cgroup2 has no tasks files)
        root, version = v1, 1
    else:
        root, version = cgroup_root, 2
        try:
            with open(os.path.join(root, "cgroup.controllers")) as f:
                if "io" not in f.read().split():
                    return False
        except OSError:
            return False
    others = []
    own = os.path.join(root, _own_cgroup("blkio" if version == 1 else "").lstrip("/"))
    if os.path.normpath(own) != os.path.normpath(root):
        others.append(_names(own))
    child = _first_child(own)
    if child is not None:
        others.append(_names(child))
    return weight_supported(_names(root), others, version)


def swap_limit_supported(cgroup_root: str = CGROUP_ROOT) -> bool:
    """Whether a memory+swap limit can be set: memory.memsw.* on v1 (swap accounting on);
    on cgroup2, memory.swap.max where a cgroup shows it (assumed when none can be looked at)."""
    v1 = os.path.join(cgroup_root, "memory")
    if os.path.isfile(os.path.join(v1, "memory.limit_in_bytes")):
        return os.path.exists(os.path.join(v1, "memory.memsw.limit_in_bytes"))
    own = os.path.join(cgroup_root, _own_cgroup("").lstrip("/"))
    names = _names(own)
    if "memory.max" in names:
        return "memory.swap.max" in names
    return True
