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
- `sources`: bind sources taken before the user namespace (open_tree), idmapped mounts;
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
from nsbox.errors import BundleError, ConfigError, KernelError
from nsbox.runtime import syscalls as sc
from nsbox.runtime.rootfs import sources
from nsbox.runtime.rootfs.options import (
    PROPAGATION_OPTIONS,
    MountFlags,
    bind_source,
    is_bind_mount,
    known_mount_options,
    parse_mount_options,
)

TYPE_CHECKING = False  # typing itself is slow to import
if TYPE_CHECKING:
    from collections.abc import Callable

    from nsbox.runtime.spec import Spec

__all__ = ["PROPAGATION_OPTIONS", "MountFlags", "bind_source", "check_mount_sources",
           "enter_root", "finalize_rootfs", "is_bind_mount", "known_mount_options", "load",
           "open_mount_sources", "parse_mount_options", "prepare_rootfs"]

log = get_logger(__name__)


def load() -> None:
    """Import the modules that build the rootfs.  `create` itself needs only the checks;
    the init needs these before it pivots (after that the host's library is out of reach),
    and the runtime loads them before it forks (init.preload says why)."""
    from nsbox.runtime.rootfs import devices, masking, mounts, switch  # noqa: F401


def __getattr__(name: str) -> object:
    # Re-exported for tests and callers that want them, without loading resolve.py on
    # the runtime's create path.
    if name in ("PROC_SUPER_MAGIC", "TMPFS_MAGIC", "ensure_procfs"):
        from nsbox.runtime.rootfs import resolve

        return getattr(resolve, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# What a container without a mount namespace of its own cannot have: each would change the
# mount table it shares (the host's, or the one joined by path).
_NEEDS_MOUNT_NS = (("mounts", lambda s: s.mounts),
                   ("linux.maskedPaths", lambda s: s.linux.masked_paths),
                   ("linux.readonlyPaths", lambda s: s.linux.readonly_paths),
                   ("root.readonly", lambda s: s.root.readonly),
                   ("linux.rootfsPropagation", lambda s: s.linux.rootfs_propagation),
                   ("linux.devices", lambda s: s.linux.devices))


def check_mount_sources(spec: Spec, bundle: str | None = None) -> None:
    """Create-time checks (before forking): every option parses, every bind source exists,
    idmapped mounts have mappings, and what needs a mount namespace has one."""
    if not spec.has_new_namespace("mount"):
        for field, get in _NEEDS_MOUNT_NS:
            if get(spec):
                raise ConfigError(f"config.json: {field} needs a new mount namespace (without "
                                  "one the container shares a mount table, which nsbox-runtime "
                                  "leaves as it is; the process is only chrooted into the root)")
    for i, mount in enumerate(spec.mounts):
        where = f"mounts[{i}] ({mount.destination})"
        is_root = mount.destination.rstrip("/") == ""
        if is_root and not is_bind_mount(mount):
            raise ConfigError(f"config.json: {where}: a mount on / must be a bind mount")
        if sources.wants_idmap(mount):
            sources.check_idmap(mount, spec, where)
        if is_bind_mount(mount):
            source = bind_source(mount, bundle)
            if not os.path.exists(source):
                raise BundleError(f"mount source {source} does not exist")
            if is_root and not os.path.isdir(source):
                raise ConfigError(f"config.json: {where}: the source {source} is not a directory")
    if spec.linux.devices and spec.linux.namespace("user") is not None:
        from nsbox.runtime.rootfs import devices

        if not devices.dev_is_host_bind(spec):
            devices.check_host_nodes(spec)


def open_mount_sources(spec: Spec, bundle: str | None, in_user_ns: bool) -> dict[int, int]:
    """Stage 1, before any namespace: detached copies of the bind sources that need one
    (sources.py); pass the result to prepare_rootfs."""
    if not spec.has_new_namespace("mount"):
        return {}
    load()
    return sources.open_sources(spec, bundle, in_user_ns)


def enter_root(root_fd: int, rootfs: str) -> None:
    """No mount namespace of its own: chroot into ROOT_FD (ROOTFS, opened before a mount
    namespace was joined), as runc does, and change no mount.  Closes ROOT_FD."""
    try:
        os.fchdir(root_fd)
        os.chroot(".")
    except OSError as exc:
        raise KernelError(f"chroot into {rootfs} (no new mount namespace): {exc.strerror}",
                          exc.errno) from None
    finally:
        os.close(root_fd)
    os.chdir("/")


def prepare_rootfs(spec: Spec, rootfs: str, *, no_pivot: bool = False,
                   before_pivot: Callable[[], None] | None = None,
                   bundle: str | None = None, trees: dict[int, int] | None = None) -> None:
    """Build the container's mounts and /dev, then switch root into ROOTFS.

    Runs in the init process, already in its new mount namespace.  Relative bind sources
    are taken relative to BUNDLE (default: the current directory).  TREES: mount index ->
    detached source (open_mount_sources); each is closed once attached.
    """
    load()
    from nsbox.runtime.rootfs import devices, switch
    from nsbox.runtime.rootfs.mounts import MountBuilder
    from nsbox.runtime.rootfs.resolve import do_mount

    trees = trees or {}
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
    switch.make_parent_private(rootfs, spec)  # after initial_propagation: it relies on it
    do_mount(rootfs, rootfs, None, sc.MS_BIND | sc.MS_REC, None, f"bind {rootfs} onto itself")
    builder = MountBuilder(spec, rootfs, bundle,
                           os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
    try:
        for index, mount in enumerate(spec.mounts):
            log.debug("mount %s (%s) on %s %s", mount.source, mount.type, mount.destination,
                      mount.options)
            tree_fd = trees.pop(index, -1)
            try:
                if mount.destination.rstrip("/") == "":
                    builder.mount_root(mount, tree_fd)
                else:
                    builder.mount_entry(mount, tree_fd)
            finally:
                if tree_fd >= 0:
                    os.close(tree_fd)
        devices.setup_dev(spec, builder.root_fd)
        if before_pivot is not None:
            before_pivot()
        if no_pivot:
            switch.move_root(spec, rootfs, builder.root_fd)
        else:
            switch.pivot(rootfs, builder.root_fd)
    finally:
        os.close(builder.root_fd)
        for fd in trees.values():
            os.close(fd)
    os.chdir("/")


def finalize_rootfs(spec: Spec) -> None:
    """After the root switch: readonlyPaths, maskedPaths, root.readonly, rootfsPropagation
    (masking.py, loaded before the switch)."""
    from nsbox.runtime.rootfs.masking import finalize_rootfs as finalize

    finalize(spec)
