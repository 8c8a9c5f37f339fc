"""The container's root filesystem, built by the init process inside its new mount namespace.

The init process calls, in order:

1. `prepare_rootfs`: cut mount propagation back to the host, bind the rootfs onto itself,
   perform `spec.mounts`, create /dev nodes and links, run the `before_pivot` callback
   (createContainer hooks), then pivot_root into the rootfs (or MS_MOVE + chroot when
   `no_pivot`).
2. (the caller sets the hostname and writes linux.sysctl)
3. `finalize_rootfs`: readonlyPaths, maskedPaths, root.readonly, rootfsPropagation.

The modules, each importing only those above it in this list:

- `resolve`: mount(2) with readable errors, flags read back from statfs, openat2 resolution
  inside the rootfs (RESOLVE_IN_ROOT: no symlink or ".." can lead out of it);
- `options`: the `options` of a mount parsed into flags, propagation and data;
- `mountinfo`: /proc/self/mountinfo and /proc/self/cgroup;
- `mounts`: one `mounts` entry (binds, proc/sysfs checks, the cgroup type);
- `devices`: /dev nodes and links;
- `switch`: propagation, pivot_root, MS_MOVE + chroot;
- `masking`: readonlyPaths, maskedPaths, root.readonly (finalize_rootfs);
- this package: the order of it all.

Every submodule is imported here, before the init pivots: after that the host's Python
library is out of reach.
"""

from __future__ import annotations

import os

from nsbox._lazylog import get_logger
from nsbox.errors import BundleError, ConfigError
from nsbox.runtime import syscalls as sc
from nsbox.runtime.rootfs import devices, switch
from nsbox.runtime.rootfs.masking import finalize_rootfs
from nsbox.runtime.rootfs.mounts import MountBuilder
from nsbox.runtime.rootfs.options import (
    PROPAGATION_OPTIONS,
    MountFlags,
    bind_source,
    is_bind_mount,
    known_mount_options,
    parse_mount_options,
)
from nsbox.runtime.rootfs.resolve import (
    PROC_SUPER_MAGIC,
    TMPFS_MAGIC,
    do_mount,
    ensure_procfs,
)

TYPE_CHECKING = False  # typing itself is slow to import
if TYPE_CHECKING:
    from collections.abc import Callable

    from nsbox.runtime.spec import Spec

__all__ = ["PROC_SUPER_MAGIC", "PROPAGATION_OPTIONS", "TMPFS_MAGIC", "MountFlags", "bind_source", "check_mount_sources",
           "ensure_procfs", "finalize_rootfs", "is_bind_mount", "known_mount_options",
           "parse_mount_options", "prepare_rootfs"]

log = get_logger(__name__)


def check_mount_sources(spec: Spec, bundle: str | None = None) -> None:
    """Create-time check (before forking): every option parses and every bind source exists."""
    for mount in spec.mounts:
        if mount.destination.rstrip("/") == "":
            raise ConfigError("config.json: a mount destination of / is not supported")
        if is_bind_mount(mount):
            source = bind_source(mount, bundle)
            if not os.path.exists(source):
                raise BundleError(f"mount source {source} does not exist")


def prepare_rootfs(spec: Spec, rootfs: str, *, no_pivot: bool = False,
                   before_pivot: Callable[[], None] | None = None,
                   bundle: str | None = None) -> None:
    """Build the container's mounts and /dev, then switch root into ROOTFS.

    Runs in the init process, already in its new mount namespace.  Relative bind sources
    are taken relative to BUNDLE (default: the current directory).
    """
    rootfs = os.path.realpath(rootfs)
    if not os.path.isdir(rootfs):
        # The runtime saw it: here, in a user namespace, the cause is usually
        # a parent directory the container's root may not search.
        try:
            os.stat(rootfs)
            why = "is not a directory"
        except OSError as exc:
            why = f"cannot be reached by the container's root user: {exc.strerror}"
        raise BundleError(f"rootfs {rootfs} {why}")
    switch.initial_propagation(spec)
    switch.make_parent_private(rootfs)
    do_mount(rootfs, rootfs, None, sc.MS_BIND | sc.MS_REC, None, f"bind {rootfs} onto itself")
    root_fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        builder = MountBuilder(spec, rootfs, bundle, root_fd)
        for mount in spec.mounts:
            if mount.destination.rstrip("/") == "":
                raise ConfigError("config.json: a mount destination of / is not supported")
            log.debug("mount %s (%s) on %s %s", mount.source, mount.type, mount.destination,
                      mount.options)
            builder.mount_entry(mount)
        devices.setup_dev(spec, root_fd)
        if before_pivot is not None:
            before_pivot()
        if no_pivot:
            switch.move_root(spec, rootfs, root_fd)
        else:
            switch.pivot(rootfs, root_fd)
    finally:
        os.close(root_fd)
    os.chdir("/")
