"""/proc/self/mountinfo and /proc/self/cgroup, parsed."""

from __future__ import annotations

import os

from nsbox._record import record
from nsbox.errors import UnsupportedError


@record
class MountInfo:
    mount_id: int
    parent_id: int
    root: str
    mountpoint: str
    options: str
    optional: list[str]
    fstype: str
    source: str
    super_options: str


def _unescape(field_text: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    if "\\" not in field_text:
        return field_text
    import re

    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_text)


def read_mountinfo(path: str = "/proc/self/mountinfo", *, dir_fd: int | None = None,
                   fstypes: frozenset[str] | None = None) -> list[MountInfo]:
    """The mount table; with FSTYPES, only the mounts of those filesystem types
    (the others are not parsed: a host can have hundreds, and the container's
    init, which asks for its cgroup mounts, is on every `create`'s path)."""
    entries = []
    with open(os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)) as f:
        for line in f:
            if fstypes is not None and \
                    line.partition(" - ")[2].split(" ", 1)[0] not in fstypes:
                continue
            fields = line.split()
            sep = fields.index("-")
            entries.append(MountInfo(
                mount_id=int(fields[0]), parent_id=int(fields[1]),
                root=_unescape(fields[3]), mountpoint=_unescape(fields[4]), options=fields[5],
                optional=fields[6:sep], fstype=fields[sep + 1],
                source=_unescape(fields[sep + 2]) if len(fields) > sep + 2 else "",
                super_options=fields[sep + 3] if len(fields) > sep + 3 else ""))
    return entries


def is_under(path: str, base: str) -> bool:
    return base == "/" or path == base or path.startswith(base + "/")


@record
class CgroupLine:
    hierarchy_id: int
    controllers: str  # "" for the v2 hierarchy
    path: str


def read_proc_cgroup() -> list[CgroupLine]:
    lines = []
    with open("/proc/self/cgroup") as f:
        for line in f:
            hid, controllers, path = line.rstrip("\n").split(":", 2)
            lines.append(CgroupLine(int(hid), controllers, path))
    return lines


def host_cgroup_dir(line: CgroupLine, mounts: list[MountInfo], rootfs: str) -> str:
    """The host directory of this process's cgroup in LINE's hierarchy."""
    wanted = set(line.controllers.split(",")) if line.controllers else set()
    for entry in mounts:
        if is_under(entry.mountpoint, rootfs):
            continue
        if line.hierarchy_id == 0:
            if entry.fstype != "cgroup2":
                continue
        elif entry.fstype != "cgroup" or not wanted <= set(entry.super_options.split(",")):
            continue
        if is_under(line.path, entry.root):
            rel = line.path[len(entry.root):] if entry.root != "/" else line.path
            return entry.mountpoint.rstrip("/") + rel
    raise UnsupportedError(f"no host mount of cgroup hierarchy {line.controllers or 'cgroup2'!r} "
                           f"shows {line.path}")

