"""Bind sources taken before the container enters its user namespace, and idmapped mounts.

In a user namespace the container's root may be unable to reach a bind source (below a
directory only the host's root can search), and only the host's root may idmap a mount (that
needs CAP_SYS_ADMIN over the source's filesystem).  So stage 1, still the host's root in the
host's namespaces, takes a detached copy of each such source with open_tree(OPEN_TREE_CLONE),
idmaps it with mount_setattr(MOUNT_ATTR_IDMAP) where asked, and the init attaches it at its
destination with move_mount (`attach`).  A plain bind is still made by path in the init when
the init can reach its source: the kernel locks the flags (ro, nosuid...) and the submounts
of a mount that crosses into a user namespace that way, and not those of a detached copy,
which the container's root could then remount or unmount.

An idmapped mount ("idmap", "ridmap", or uidMappings/gidMappings on the mount) uses the
mount's own mappings, or else the container's user namespace (its mappings, or the namespace
joined by path).  Its source ids (containerID) appear as hostID.  The engine's image layers
use `userns_fd` and `idmapped_bind` too.
"""

from __future__ import annotations

import errno
import os

from nsbox.errors import ConfigError, KernelError
from nsbox.runtime import syscalls as sc
from nsbox.runtime.rootfs.options import bind_source, parse_mount_options

TYPE_CHECKING = False  # typing itself is slow to import
if TYPE_CHECKING:
    from collections.abc import Sequence

    from nsbox.runtime.spec import Mount, Spec

def _map_text(mappings: Sequence[tuple[int, int, int]]) -> str:
    return "".join(f"{inside} {outside} {size}\n" for inside, outside, size in mappings)


def userns_fd(uid_mappings: Sequence[tuple[int, int, int]],
              gid_mappings: Sequence[tuple[int, int, int]]) -> int:
    """An fd of a new user namespace with these mappings, for MOUNT_ATTR_IDMAP.

    A short-lived child unshares it; we write its maps and open /proc/CHILD/ns/user.
    The caller closes the fd.
    """
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
            f.write(_map_text(uid_mappings))
        with open(f"/proc/{pid}/setgroups", "w") as f:
            f.write("deny")
        with open(f"/proc/{pid}/gid_map", "w") as f:
            f.write(_map_text(gid_mappings))
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise KernelError(f"user namespace for an idmapped mount: {exc.strerror}",
                          exc.errno or 0) from None
    finally:
        os.close(ready_r)
        os.close(hold_w)
        os.waitpid(pid, 0)


def idmapped_tree(source: str, nsfd: int, *, recursive: bool = False,
                  idmap_recursive: bool = False) -> int:
    """An fd of a detached copy of the mount at SOURCE, idmapped through the user namespace
    NSFD (RECURSIVE: with its submounts; IDMAP_RECURSIVE: those idmapped too)."""
    fd = clone_tree(source, recursive=recursive)
    try:
        sc.mount_setattr(fd, "", sc.AT_EMPTY_PATH | (sc.AT_RECURSIVE if idmap_recursive else 0),
                         attr_set=sc.MOUNT_ATTR_IDMAP, userns_fd=nsfd)
    except OSError as exc:
        os.close(fd)
        why = exc.strerror
        if exc.errno == errno.EINVAL:
            why += " (the filesystem may not support idmapped mounts)"
        raise KernelError(f"idmapped mount of {source}: {why}", exc.errno) from None
    return fd


def clone_tree(source: str, *, recursive: bool = False) -> int:
    """open_tree(OPEN_TREE_CLONE) of SOURCE: a detached copy of its mount, as an fd."""
    try:
        return sc.open_tree(sc.AT_FDCWD, source,
                            sc.OPEN_TREE_CLONE | (sc.AT_RECURSIVE if recursive else 0))
    except OSError as exc:
        raise KernelError(f"open_tree {source}: {exc.strerror}", exc.errno or 0) from None


def idmapped_bind(source: str, target: str, nsfd: int) -> None:
    """Mount an idmapped copy of the mount at SOURCE on TARGET (a host path)."""
    fd = idmapped_tree(source, nsfd)
    try:
        sc.move_mount(fd, target)
    except OSError as exc:
        raise KernelError(f"idmapped mount of {source}: {exc.strerror}", exc.errno or 0) from None
    finally:
        os.close(fd)


_IDMAP_OPTIONS = frozenset(("idmap", "ridmap"))  # what sets MountFlags.idmap


def wants_idmap(mount: Mount) -> bool:
    # Asked for every mount, in create and in the init: the two options looked
    # up rather than all of them parsed (parse_mount_options).
    return bool(mount.uid_mappings or mount.gid_mappings
                or not _IDMAP_OPTIONS.isdisjoint(mount.options))


def check_idmap(mount: Mount, spec: Spec, where: str) -> None:
    """Create-time checks of an idmapped mount (before anything exists)."""
    options = parse_mount_options(mount.options)
    if not (options.is_bind or mount.type == "bind"):
        raise ConfigError(f"config.json: {where}: only bind mounts can be idmapped")
    if bool(mount.uid_mappings) != bool(mount.gid_mappings):
        raise ConfigError(f"config.json: {where}: an idmapped mount needs both uidMappings "
                          "and gidMappings")
    if not mount.uid_mappings:
        userns = spec.linux.namespace("user")
        if userns is None or not (userns.path or spec.linux.uid_mappings):
            raise ConfigError(f"config.json: {where}: idmap needs uidMappings/gidMappings on "
                              "the mount or a container user namespace with mappings")


def _triples(mappings) -> tuple[tuple[int, int, int], ...]:
    return tuple((m.container_id, m.host_id, m.size) for m in mappings)


def open_sources(spec: Spec, bundle: str | None, in_user_ns: bool) -> dict[int, int]:
    """Detached (and, where asked, idmapped) copies of bind sources: mount index -> fd.

    Runs in stage 1 before it joins or creates any namespace.  Outside a user namespace only
    idmapped mounts are taken here.  Where the kernel refuses open_tree (a runtime run by an
    unprivileged user), plain binds are left to the init, by path.
    """
    fds: dict[int, int] = {}
    userns_fds: dict[tuple, int] = {}
    try:
        for index, mount in enumerate(spec.mounts):
            options = parse_mount_options(mount.options)
            if not (options.is_bind or mount.type == "bind") or mount.type == "cgroup":
                continue
            idmap = options.idmap or bool(mount.uid_mappings)
            if not (idmap or in_user_ns):
                continue
            source = bind_source(mount, bundle)
            recursive = options.is_recursive_bind
            if not idmap:
                try:
                    fds[index] = sc.open_tree(sc.AT_FDCWD, source,
                                              sc.OPEN_TREE_CLONE | (sc.AT_RECURSIVE if recursive else 0))
                except OSError as exc:
                    if exc.errno != errno.EPERM:
                        raise KernelError(f"open_tree {source}: {exc.strerror}", exc.errno) from None
                continue
            fds[index] = idmapped_tree(source, _userns_for(mount, spec, userns_fds),
                                       recursive=recursive,
                                       idmap_recursive=options.idmap_recursive)
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        raise
    finally:
        for fd in userns_fds.values():
            os.close(fd)
    return fds


def _userns_for(mount: Mount, spec: Spec, cache: dict[tuple, int]) -> int:
    if mount.uid_mappings:
        key: tuple = (_triples(mount.uid_mappings), _triples(mount.gid_mappings))
    else:
        userns = spec.linux.namespace("user")
        if userns is not None and userns.path:
            key = ("path", userns.path)
        else:
            key = (_triples(spec.linux.uid_mappings), _triples(spec.linux.gid_mappings))
    if key not in cache:
        if key[0] == "path":
            try:
                cache[key] = os.open(key[1], os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise KernelError(f"open user namespace {key[1]}: {exc.strerror}",
                                  exc.errno) from None
        else:
            cache[key] = userns_fd(*key)
    return cache[key]


def attach(fd: int, target_fd: int, what: str) -> None:
    """move_mount the detached tree FD onto the destination open as TARGET_FD."""
    try:
        sc.move_mount(fd, "", target_fd)
    except OSError as exc:
        raise KernelError(f"{what}: {os.strerror(exc.errno)}", exc.errno) from None
