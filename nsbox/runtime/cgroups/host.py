"""The host's cgroup hierarchies, and the one-write file I/O every cgroup module uses.

Which hierarchies are mounted (v1 controllers, the cgroup2 tree, or both),
the host's mode, and a process's own cgroups. It sits below the package and
its drivers (v1, v2, systemd), which all read these facts, so none of them
has to import the package that imports them.
"""

from __future__ import annotations

import os

from nsbox._lite import once


def write_file(path: str, text: str) -> None:
    """Write TEXT to a cgroup (or /proc) file in one write(2).

    os.open/os.write rather than open(): the io stack costs an fstat, an
    ioctl, two lseeks and three Python objects per file, and the hot path
    writes a dozen of these (one per v1 hierarchy), partly in forked children
    where every touched page is a copy-on-write fault.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def read_file(path: str) -> str:
    """A small cgroup (or /proc) file's text, read as write_file writes."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode()


UNIFIED = ""  # key of the cgroup2 hierarchy in path maps


class Hierarchy:
    """One mounted cgroup hierarchy."""

    __slots__ = ("key", "mountpoint", "root")

    def __init__(self, key: str, mountpoint: str, root: str) -> None:
        self.key = key  # "" for cgroup2, else the v1 controllers joined by "," (name=systemd too)
        self.mountpoint = mountpoint
        self.root = root  # the mount's root inside the hierarchy

    def __repr__(self) -> str:
        return f"Hierarchy({self.key!r}, {self.mountpoint!r}, {self.root!r})"


@once
def hierarchies() -> tuple[Hierarchy, ...]:
    # The mount visible at a path is the last one mounted there: a cgroup mount
    # hidden under another filesystem (a tmpfs over it) is not usable.
    # Only cgroup mounts are parsed whole: a busy host has hundreds of others,
    # of which just the mount point is needed (to know what hides what).
    top: dict[str, tuple[str, str, str] | None] = {}  # mountpoint -> (fstype, root, options)
    for line in read_file("/proc/self/mountinfo").splitlines():
        fields = line.split(" ", 5)  # id, parent, device, root, mount point, the rest
        mountpoint = fields[4].replace("\\040", " ")
        if " - cgroup" in line:
            fstype, _src, opts = line.partition(" - ")[2].split()[:3]
            if fstype in ("cgroup", "cgroup2"):
                top[mountpoint] = (fstype, fields[3], opts)
                continue
        top[mountpoint] = None
    found: dict[str, Hierarchy] = {}
    known = set(_v1_controllers())
    for mountpoint, entry in top.items():
        if entry is None:
            continue
        fstype, root, opts = entry
        if fstype == "cgroup2":
            key = UNIFIED
        elif fstype == "cgroup":
            ctrls = [o for o in opts.split(",") if o not in ("rw", "ro") and "=" not in o or o.startswith("name=")]
            key = ",".join(sorted(c for c in ctrls if c in known or c.startswith("name=")))
            if not key:
                continue
        else:
            continue
        found.setdefault(key, Hierarchy(key, mountpoint, root))
    return tuple(found.values())


@once
def _v1_controllers() -> tuple[str, ...]:
    return tuple(line.split()[0] for line in read_file("/proc/cgroups").splitlines()
                 if line and not line.startswith("#"))


def mode() -> str:
    """'v2', 'v1' or 'hybrid'."""
    keys = {h.key for h in hierarchies()}
    if keys == {UNIFIED}:
        return "v2"
    return "hybrid" if UNIFIED in keys else "v1"


def own_cgroups(pid: int | str = "self") -> dict[str, str]:
    """PID's cgroup path per hierarchy key, as /proc/PID/cgroup names it."""
    out = {}
    for line in read_file(f"/proc/{pid}/cgroup").splitlines():
        hid, ctrls, path = line.split(":", 2)
        out[UNIFIED if hid == "0" else ",".join(sorted(ctrls.split(",")))] = path
    return out
