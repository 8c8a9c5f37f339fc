"""The bottom of the rootfs package: mount(2) with readable errors, mount flags read back
from statfs, and path resolution that cannot leave the rootfs.

Every mount destination and device path is resolved with openat2(RESOLVE_IN_ROOT) against an
fd of the rootfs, and the mount is made on /proc/self/fd/N of the resolved O_PATH fd, so
neither a symlink in the image (absolute or full of "..") nor a rename race can put a mount
outside the rootfs.
"""

from __future__ import annotations

import errno
import os
import posixpath

from nsbox.errors import KernelError, SecurityError, UnsupportedError
from nsbox.runtime import syscalls as sc

# statfs f_type values.
PROC_SUPER_MAGIC = 0x9FA0
SYSFS_MAGIC = 0x62656572
DEVPTS_SUPER_MAGIC = 0x1CD1
TMPFS_MAGIC = 0x01021994
CGROUP_SUPER_MAGIC = 0x27E0EB
CGROUP2_SUPER_MAGIC = 0x63677270

# statfs/statvfs f_flags bits (ST_*) and the mount(2) flag each one corresponds to.
_ST_TO_MS = (
    (0x0001, sc.MS_RDONLY),
    (0x0002, sc.MS_NOSUID),
    (0x0004, sc.MS_NODEV),
    (0x0008, sc.MS_NOEXEC),
    (0x0010, sc.MS_SYNCHRONOUS),
    (0x0040, sc.MS_MANDLOCK),
    (0x0400, sc.MS_NOATIME),
    (0x0800, sc.MS_NODIRATIME),
    (0x1000, sc.MS_RELATIME),
    (0x2000, sc.MS_NOSYMFOLLOW),
)
ATIME_FLAGS = sc.MS_NOATIME | sc.MS_NODIRATIME | sc.MS_RELATIME | sc.MS_STRICTATIME
# Per-mount flags a MS_BIND|MS_REMOUNT can change.
BIND_REMOUNT_FLAGS = (sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
                      | sc.MS_NOSYMFOLLOW | ATIME_FLAGS)

_RESOLVE = sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS


def ensure_procfs(path: str = "/proc") -> None:
    """Raise SecurityError unless PATH is the root of a procfs mount (not a symlink, not fake)."""
    try:
        if os.path.islink(path):
            raise SecurityError(f"{path} is a symlink; refusing to use it as procfs")
        magic = sc.statfs(path).f_type
    except OSError as exc:
        raise SecurityError(f"{path} is unusable as procfs: {os.strerror(exc.errno)}") from None
    if magic != PROC_SUPER_MAGIC:
        raise SecurityError(f"{path} is not procfs (filesystem type {magic:#x})")


# ---------------------------------------------------------------- small helpers
def fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def do_mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None,
           what: str) -> None:
    """mount(2), turning a failure into a KernelError that names WHAT (the destination)."""
    try:
        sc.mount(source, target, fstype, flags, data or None)
    except OSError as exc:
        raise KernelError(f"{what}: {os.strerror(exc.errno)}", exc.errno) from None


def ms_flags_from_statfs(st_flags: int) -> int:
    ms = 0
    for st_bit, ms_bit in _ST_TO_MS:
        if st_flags & st_bit:
            ms |= ms_bit
    return ms


def bind_remount(target: str, current_st_flags: int, set_flags: int, clear_flags: int,
                  what: str) -> None:
    """Change the per-mount flags of TARGET, keeping every flag not explicitly changed.

    Keeping the current nosuid/nodev/noexec/ro bits matters: inside a user namespace the
    kernel refuses (EPERM) a remount that would drop a locked flag, and a bind of a read-only
    source must not silently become writable.
    """
    current = ms_flags_from_statfs(current_st_flags)
    if set_flags & ATIME_FLAGS or clear_flags & ATIME_FLAGS:
        # An explicit atime mode replaces the current one.
        current &= ~ATIME_FLAGS
    wanted = (current & ~clear_flags) | (set_flags & BIND_REMOUNT_FLAGS)
    do_mount(None, target, None, sc.MS_REMOUNT | sc.MS_BIND | wanted, None, what)


# ---------------------------------------------------------------- resolution inside the rootfs
def open_in_root(root_fd: int, path: str, *, no_symlinks: bool = False) -> int:
    """An O_PATH fd of PATH resolved as if ROOT_FD were "/" (symlinks cannot escape it)."""
    resolve = _RESOLVE | (sc.RESOLVE_NO_SYMLINKS if no_symlinks else 0)
    try:
        return sc.openat2(root_fd, path.lstrip("/") or ".", os.O_PATH, 0, resolve)
    except OSError as exc:
        if exc.errno == errno.ENOSYS:
            raise UnsupportedError("openat2(2) is required (Linux 5.6 or later)") from None
        raise


def ensure_in_root(root_fd: int, path: str, *, is_dir: bool, _depth: int = 0) -> int:
    """Like open_in_root, but create PATH (and missing parents) when it does not exist.

    The path is never normalised lexically: "a/../b" must go through whatever "a" really is,
    exactly as the kernel's resolution does.
    """
    try:
        return open_in_root(root_fd, path)
    except FileNotFoundError:
        pass
    if _depth > 40:
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
    parent, name = posixpath.split(path.rstrip("/"))
    if not name:
        raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    parent_fd = ensure_in_root(root_fd, parent or "/", is_dir=True, _depth=_depth + 1)
    try:
        if name not in (".", ".."):
            try:
                if is_dir:
                    os.mkdir(name, 0o755, dir_fd=parent_fd)
                else:
                    os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW
                                     | os.O_CLOEXEC, 0o644, dir_fd=parent_fd))
            except FileExistsError:
                # It exists yet did not resolve: a dangling symlink.  Create what it points
                # to, resolved (still inside the root) from the symlink's directory.
                try:
                    target = os.readlink(name, dir_fd=parent_fd)
                except OSError:
                    target = None
                if target is not None:
                    base = "/" if target.startswith("/") else (parent or "/")
                    os.close(ensure_in_root(root_fd, posixpath.join(base, target),
                                             is_dir=is_dir, _depth=_depth + 1))
    finally:
        os.close(parent_fd)
    return open_in_root(root_fd, path)

