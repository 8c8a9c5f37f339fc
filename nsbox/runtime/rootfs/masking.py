"""After the root switch: readonlyPaths, maskedPaths, root.readonly, rootfsPropagation."""

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
