"""Reading a container's cgroups on a v1/hybrid host, for the cgroup tests
(test_cgroups_enforce.py, test_cgroups_commands.py).
"""

from __future__ import annotations

from pathlib import Path

import host_features

MiB = 1 << 20


def controller_dir(controller: str, cgroups_path: str) -> Path:
    """The container's directory in the hierarchy holding CONTROLLER ("unified": cgroup2)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype, _source, options = right.split()[:3]
        mountpoint = left.split()[4]
        if controller == "unified" and fstype == "cgroup2":
            return Path(mountpoint + cgroups_path)
        if fstype == "cgroup" and controller in options.split(","):
            return Path(mountpoint + cgroups_path)
    raise AssertionError(f"no {controller} hierarchy mounted")


def read(path: Path) -> str:
    return path.read_text().strip()


def has_memsw() -> bool:
    """Whether a memory cgroup here has the memory+swap limit (memory.memsw.*)."""
    return "memory.memsw.limit_in_bytes" in host_features.cgroup_v1_child_files("memory")
