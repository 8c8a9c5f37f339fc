"""User namespaces for engine containers: remapped root and idmapped image layers.

`--userns=remap` runs the container in a user namespace whose root is the
first subordinate id of the remap user (`nsbox`, or NSBOX_REMAP_USER) in
/etc/subuid and /etc/subgid, 65536 ids wide, like Docker's `userns-remap`.
`--userns=auto` gives each container its own 65536-id slice of that range,
one no other container of this engine uses, like Podman's `auto`.

The image's layers stay owned by the ids in the archive and shared by every
container: the overlay is built on idmapped mounts of them (mount_setattr
with MOUNT_ATTR_IDMAP), so the container sees its files owned by its own
root and users.  Only the container's upper and work directories are owned
by the mapped ids on disk.
"""

from __future__ import annotations

import os

from nsbox.errors import ConfigError, KernelError

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
    from nsbox.runtime import syscalls as sc

    uid_base, gid_base, size = idmap
    ready_r, ready_w = os.pipe()
    hold_r, hold_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.close(ready_r)
            os.close(hold_w)
            sc.unshare(sc.CLONE_NEWUSER)
            os.write(ready_w, b"x")
            os.read(hold_r, 1)  # stay until the parent holds the namespace
            code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(hold_r)
    try:
        if os.read(ready_r, 1) != b"x":
            raise KernelError("user namespace for an idmapped mount: the helper failed")
        with open(f"/proc/{pid}/uid_map", "w") as f:
            f.write(f"0 {uid_base} {size}\n")
        with open(f"/proc/{pid}/setgroups", "w") as f:
            f.write("deny")
        with open(f"/proc/{pid}/gid_map", "w") as f:
            f.write(f"0 {gid_base} {size}\n")
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise KernelError(f"user namespace for an idmapped mount: {exc.strerror}",
                          exc.errno or 0) from None
    finally:
        os.close(ready_r)
        os.close(hold_w)
        os.waitpid(pid, 0)


def idmapped_bind(source: str, target: str, nsfd: int) -> None:
    """Mount an idmapped copy of the mount tree at SOURCE on TARGET."""
    from nsbox.runtime import syscalls as sc

    open_tree_clone, open_tree_cloexec, move_mount_f_empty_path = 1, 0o2000000, 4
    try:
        fd = sc.syscall(sc.SYS_open_tree, -100, os.fsencode(source),
                        open_tree_clone | open_tree_cloexec)
    except OSError as exc:
        raise KernelError(f"open_tree {source}: {exc.strerror}", exc.errno or 0) from None
    try:
        sc.mount_setattr(fd, "", sc.AT_EMPTY_PATH, attr_set=sc.MOUNT_ATTR_IDMAP, userns_fd=nsfd)
        sc.syscall(sc.SYS_move_mount, fd, b"", -100, os.fsencode(target), move_mount_f_empty_path)
    except OSError as exc:
        raise KernelError(f"idmapped mount of {source}: {exc.strerror}", exc.errno or 0) from None
    finally:
        os.close(fd)
