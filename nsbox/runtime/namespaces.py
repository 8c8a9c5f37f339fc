"""The eight Linux namespaces: their flags, how to join or create them, id maps.

OCI names a namespace by its spec type ("network"); /proc names it by its
short name ("net").  Both directions live here.
"""

from __future__ import annotations

import os

from nsbox._record import record
from nsbox.errors import ConfigError, KernelError
from nsbox.runtime import syscalls as sc
from nsbox.runtime.spec import IdMapping, Linux

# spec type -> (clone flag, /proc/PID/ns name)
NAMESPACES: dict[str, tuple[int, str]] = {
    "user": (sc.CLONE_NEWUSER, "user"),
    "mount": (sc.CLONE_NEWNS, "mnt"),
    "pid": (sc.CLONE_NEWPID, "pid"),
    "network": (sc.CLONE_NEWNET, "net"),
    "ipc": (sc.CLONE_NEWIPC, "ipc"),
    "uts": (sc.CLONE_NEWUTS, "uts"),
    "cgroup": (sc.CLONE_NEWCGROUP, "cgroup"),
    "time": (sc.CLONE_NEWTIME, "time"),
}

# Joining order: the user namespace first (it grants the capabilities needed to
# join the others); the mount namespace last (it changes our root and cwd).
JOIN_ORDER = ("user", "pid", "time", "network", "ipc", "uts", "cgroup", "mount")

PROC_NAMES = {spec_type: proc for spec_type, (_, proc) in NAMESPACES.items()}


@record
class NamespacePlan:
    """Which namespaces to create and which to join, from linux.namespaces."""

    new_flags: int
    join: list[tuple[str, str]]  # (spec type, path) in JOIN_ORDER

    def creates(self, ns_type: str) -> bool:
        return bool(self.new_flags & NAMESPACES[ns_type][0])

    def joins(self, ns_type: str) -> bool:
        return any(t == ns_type for t, _ in self.join)

    def has(self, ns_type: str) -> bool:
        """The container has a NS_TYPE namespace of its own (new or joined by path)."""
        return self.creates(ns_type) or self.joins(ns_type)


def plan(linux: Linux) -> NamespacePlan:
    flags = 0
    joins: dict[str, str] = {}
    for ns in linux.namespaces:
        if ns.path:
            if not os.path.exists(ns.path):
                raise ConfigError(f"config.json: {ns.type} namespace path {ns.path} does not exist")
            joins[ns.type] = ns.path
        else:
            flags |= NAMESPACES[ns.type][0]
    if (linux.uid_mappings or linux.gid_mappings) and "user" not in joins and not flags & sc.CLONE_NEWUSER:
        raise ConfigError("config.json: uidMappings/gidMappings need a new user namespace")
    if flags & sc.CLONE_NEWUSER and bool(linux.uid_mappings) != bool(linux.gid_mappings):
        raise ConfigError("config.json: a new user namespace needs both uidMappings and "
                          "gidMappings, or neither (unmapped: every id is the overflow id)")
    if linux.time_offsets and not flags & sc.CLONE_NEWTIME:
        raise ConfigError("config.json: timeOffsets need a new time namespace")
    order = [(t, joins[t]) for t in JOIN_ORDER if t in joins]
    return NamespacePlan(flags, order)


def join(ns_type: str, path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise KernelError(f"open {ns_type} namespace {path}: {exc.strerror}", exc.errno) from None
    try:
        sc.setns(fd, NAMESPACES[ns_type][0])
    except OSError as exc:
        raise KernelError(f"join {ns_type} namespace {path}: {exc.strerror}", exc.errno) from None
    finally:
        os.close(fd)


def unshare(flags: int) -> None:
    try:
        sc.unshare(flags)
    except OSError as exc:
        names = [t for t, (f, _) in NAMESPACES.items() if f & flags]
        raise KernelError(f"unshare {'+'.join(names)} namespaces: {exc.strerror}", exc.errno) from None


def _map_text(mappings: list[IdMapping]) -> str:
    return "".join(f"{m.container_id} {m.host_id} {m.size}\n" for m in mappings)


def write_id_maps(pid: int, uid_mappings: list[IdMapping], gid_mappings: list[IdMapping],
                  deny_setgroups: bool = False) -> None:
    """Write PID's uid_map/gid_map from the parent user namespace (the parent's job).

    Without mappings nothing is written: the namespace stays unmapped, every id in it is the
    overflow id (65534), as with crun.
    """
    try:
        if deny_setgroups:
            with open(f"/proc/{pid}/setgroups", "w") as f:
                f.write("deny")
        if uid_mappings:
            with open(f"/proc/{pid}/uid_map", "w") as f:
                f.write(_map_text(uid_mappings))
        if gid_mappings:
            with open(f"/proc/{pid}/gid_map", "w") as f:
                f.write(_map_text(gid_mappings))
    except OSError as exc:
        raise KernelError(f"write id mappings of {pid}: {exc.strerror}", exc.errno) from None


def write_time_offsets(offsets: dict[str, tuple[int, int]]) -> None:
    """Set clock offsets of the new (not yet entered) time namespace."""
    text = "".join(f"{clock} {secs} {nsecs}\n" for clock, (secs, nsecs) in offsets.items())
    try:
        with open("/proc/self/timens_offsets", "w") as f:
            f.write(text)
    except OSError as exc:
        raise KernelError(f"write timens_offsets: {exc.strerror}", exc.errno) from None


def namespace_inodes(pid: int | str = "self") -> dict[str, int]:
    """Each namespace's inode number for PID, keyed by the /proc name."""
    out = {}
    for proc_name in PROC_NAMES.values():
        try:
            out[proc_name] = os.stat(f"/proc/{pid}/ns/{proc_name}").st_ino
        except OSError:
            pass
    return out


def namespace_paths(pid: int) -> dict[str, str]:
    """The /proc paths to PID's namespaces, keyed by spec type."""
    return {t: f"/proc/{pid}/ns/{p}" for t, p in PROC_NAMES.items()}
