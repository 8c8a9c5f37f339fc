"""User namespaces for engine containers: remapped root and idmapped image layers.

`--userns=remap` runs the container in a user namespace whose root is the
first subordinate id of the remap user (`nsbox`, or NSBOX_REMAP_USER) in
/etc/subuid and /etc/subgid, 65536 ids wide, like Docker's `userns-remap`.
`--userns=auto` gives each container its own 65536-id slice of that range,
one no other container of this engine uses, like Podman's `auto`.

The image's layers stay owned by the ids in the archive and shared by every
container: the overlay is built on idmapped mounts of them (mount_setattr
with MOUNT_ATTR_IDMAP; the code is the runtime's, nsbox/runtime/rootfs/sources.py),
so the container sees its files owned by its own root and users.  Only the container's upper and work directories are owned
by the mapped ids on disk.
"""

from __future__ import annotations

import os

from nsbox.errors import ConfigError

SLICE = 65536
REMAP_USER_ENV = "NSBOX_REMAP_USER"
MODES = ("remap", "auto")


def remap_user() -> str:
    return os.environ.get(REMAP_USER_ENV, "nsbox")


def subid_ranges(path: str, user: str) -> list[tuple[int, int]]:
    """(start, count) of USER's ranges in an /etc/subuid-style file."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                fields = line.strip().split(":")
                if len(fields) == 3 and fields[0] == user and fields[1].isdigit() \
                        and fields[2].isdigit():
                    out.append((int(fields[1]), int(fields[2])))
    except FileNotFoundError:
        pass
    return out


def map_id(mappings: list[list[int]], inside: int) -> int:
    """The outer id of INSIDE by MAPPINGS ([inside start, outer start, size]); unmapped: 65534."""
    for start, outer, size in mappings:
        if start <= inside < start + size:
            return outer + inside - start
    return 65534


def allocate(mode: str, taken: list[list[int]]) -> list[int]:
    """[uid_base, gid_base, size] for a new container in MODE; TAKEN: other containers' maps."""
    user = remap_user()
    uids = subid_ranges("/etc/subuid", user)
    gids = subid_ranges("/etc/subgid", user)
    if not uids or not gids:
        raise ConfigError(f"--userns={mode}: user {user!r} has no subordinate ids in /etc/subuid "
                          f"and /etc/subgid (add them, e.g. usermod --add-subuids "
                          f"100000-165535 --add-subgids 100000-165535 {user})")
    (ustart, ucount), (gstart, gcount) = uids[0], gids[0]
    if mode == "remap":
        size = min(SLICE, ucount, gcount)
        return [ustart, gstart, size]
    used = {m[0] for m in taken if m}
    for n in range(min(ucount, gcount) // SLICE):
        if ustart + n * SLICE not in used:
            return [ustart + n * SLICE, gstart + n * SLICE, SLICE]
    raise ConfigError(f"--userns=auto: the subordinate ids of {user!r} are all in use "
                      f"({min(ucount, gcount) // SLICE} containers of {SLICE} ids)")


def oci_mappings(idmap: list[int]) -> tuple[list[dict], list[dict]]:
    uid_base, gid_base, size = idmap
    return ([{"containerID": 0, "hostID": uid_base, "size": size}],
            [{"containerID": 0, "hostID": gid_base, "size": size}])


def userns_fd(idmap: list[int]) -> int:
    """An fd of a new user namespace with IDMAP (for MOUNT_ATTR_IDMAP); the caller closes it."""
    from nsbox.runtime.rootfs import sources

    uid_base, gid_base, size = idmap
    return sources.userns_fd([(0, uid_base, size)], [(0, gid_base, size)])


def idmapped_bind(source: str, target: str, nsfd: int) -> None:
    """Mount an idmapped copy of the mount tree at SOURCE on TARGET (the runtime's code)."""
    from nsbox.runtime.rootfs import sources

    sources.idmapped_bind(source, target, nsfd)
