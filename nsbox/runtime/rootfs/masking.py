"""After the root switch: readonlyPaths, maskedPaths, root.readonly, rootfsPropagation,
then stdio that is /dev/null reopened read-write inside the container."""

from __future__ import annotations

import os
import stat

from nsbox.errors import KernelError
from nsbox.runtime import syscalls as sc
from nsbox.runtime.rootfs.options import PROPAGATION_OPTIONS
from nsbox.runtime.rootfs.resolve import bind_remount, do_mount

TYPE_CHECKING = False  # typing itself is slow to import
if TYPE_CHECKING:
    from nsbox.runtime.spec import Spec


def finalize_rootfs(spec: Spec) -> None:
    """After pivot: readonlyPaths, maskedPaths, root.readonly, then rootfsPropagation."""
    linux = spec.linux
    for path in linux.readonly_paths:
        if not os.path.lexists(path):
            continue
        what = f"make {path} read-only"
        do_mount(path, path, None, sc.MS_BIND | sc.MS_REC, None, what)
        bind_remount(path, os.statvfs(path).f_flag,
                     sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, 0, what)
    for path in linux.masked_paths:
        try:
            is_dir = stat.S_ISDIR(os.stat(path).st_mode)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise KernelError(f"mask {path}: {os.strerror(exc.errno)}", exc.errno) from None
        if is_dir:
            do_mount("tmpfs", path, "tmpfs", sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV
                     | sc.MS_NOEXEC, None, f"mask {path}")
        else:
            do_mount("/dev/null", path, None, sc.MS_BIND, None, f"mask {path}")
    if spec.root.readonly:
        bind_remount("/", os.statvfs("/").f_flag, sc.MS_RDONLY, 0, "make / read-only")
    if linux.rootfs_propagation:
        do_mount(None, "/", None, PROPAGATION_OPTIONS[linux.rootfs_propagation], None,
                 f"make / {linux.rootfs_propagation}")
    reopen_dev_null()


def reopen_dev_null() -> None:
    """Point the stdio fds that are /dev/null at the container's /dev/null, read-write.

    As runc does: a client that gives the container no stdin (containerd's shim for
    `docker run` without -i) passes the host's /dev/null opened read-only, so a
    program that writes to fd 0 or reads fd 1 would get EBADF under nsbox alone.
    """
    try:
        fd = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return  # no usable /dev/null in this root: leave stdio as given
    try:
        null = os.fstat(fd)
        if not stat.S_ISCHR(null.st_mode):
            return
        for target in (0, 1, 2):
            try:
                st = os.fstat(target)
            except OSError:
                continue
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == null.st_rdev:
                os.dup2(fd, target)
    finally:
        os.close(fd)
