"""Switching into the rootfs: propagation first, then pivot_root, or MS_MOVE + chroot
(`--no-pivot`)."""

from __future__ import annotations

import os

from nsbox._lazylog import get_logger
from nsbox.errors import KernelError
from nsbox.runtime import syscalls as sc
from nsbox.runtime.rootfs.mountinfo import MountInfo, is_under, read_mountinfo
from nsbox.runtime.rootfs.options import PROPAGATION_OPTIONS
from nsbox.runtime.rootfs.resolve import do_mount

TYPE_CHECKING = False  # typing itself is slow to import
if TYPE_CHECKING:
    from nsbox.runtime.spec import Spec

log = get_logger(__name__)


def make_parent_private(rootfs: str, spec: Spec) -> None:
    """pivot_root and MS_MOVE refuse a shared parent mount; unshare only that one.

    It is also the source of the rootfs's bind onto itself, which is thus private too
    (pivot_root refuses a shared new root); finalize_rootfs applies rootfsPropagation.
    """
    if spec.linux.rootfs_propagation not in ("shared", "rshared"):
        # initial_propagation made every mount of the namespace a slave (or
        # private): none is shared, so there is no need to read mountinfo, which
        # cost the init ~0.9 ms (a forked child pays for every page it touches).
        return
    best: MountInfo | None = None
    for entry in read_mountinfo():
        if is_under(rootfs, entry.mountpoint) and (
                best is None or len(entry.mountpoint) >= len(best.mountpoint)):
            best = entry
    if best is not None and any(o.startswith("shared:") for o in best.optional):
        do_mount(None, best.mountpoint, None, sc.MS_PRIVATE, None,
                 f"make {best.mountpoint} private")


def _make_old_root_private() -> None:
    # pivot_root refuses a shared current root, and a mount moved onto a shared "/"
    # would propagate to the host.  Only the old root mount itself changes, and it is
    # about to be left behind.
    do_mount(None, "/", None, sc.MS_PRIVATE, None, "make the old / private")


def pivot(rootfs: str, root_fd: int) -> None:
    """pivot_root into ROOT_FD (ROOTFS names it in errors) and detach the old root."""
    _make_old_root_private()
    old_root_fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fchdir(root_fd)
        try:
            sc.pivot_root(".", ".")
        except OSError as exc:
            raise KernelError(f"pivot_root into {rootfs}: {os.strerror(exc.errno)}",
                              exc.errno) from None
        # The old root now sits on top of ".", but mount(2) resolves "." to the new
        # root underneath: an rslave there would turn every container mount (rshared
        # binds included) into a slave.  Step onto the old root itself.
        os.fchdir(old_root_fd)
    finally:
        os.close(old_root_fd)
    # Detach the old root without the unmount reaching the host (it may still be a
    # peer of host mounts).
    do_mount(None, ".", None, sc.MS_SLAVE | sc.MS_REC, None, "make the old root rslave")
    try:
        sc.umount2(".", sc.MNT_DETACH)
    except OSError as exc:
        raise KernelError(f"detach the old root: {os.strerror(exc.errno)}", exc.errno) from None


def move_root(spec: Spec, rootfs: str, root_fd: int) -> None:
    """`--no-pivot`: detach what lies outside ROOTFS, MS_MOVE it onto / and chroot."""
    # chroot does not hide the rest of the mount tree, so detach what lies outside the
    # rootfs first.  That is only safe when nothing outside sends propagation (the
    # default rslave, or private): an unmount propagates to the peers of the parent
    # mount, and a mount hidden under another cannot be made private by path.  With a
    # shared/rshared rootfsPropagation the host mounts are left in place.
    if spec.linux.rootfs_propagation in ("shared", "rshared"):
        log.debug("no-pivot with %s propagation: host mounts are not detached",
                  spec.linux.rootfs_propagation)
    else:
        # /proc goes away on the way: keep a handle on this process's proc directory.
        proc_self_fd = os.open("/proc/self", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _detach_outside(rootfs, proc_self_fd)
        finally:
            os.close(proc_self_fd)
    _make_old_root_private()
    os.fchdir(root_fd)
    try:
        sc.mount(".", "/", None, sc.MS_MOVE)
    except OSError as exc:
        raise KernelError(f"move {rootfs} onto /: {os.strerror(exc.errno)}",
                          exc.errno) from None
    os.chroot(".")


def _detach_outside(rootfs: str, proc_self_fd: int) -> None:
    # Several passes: detaching the top of a stack of mounts uncovers the next one.
    for _ in range(8):
        foreign = {e.mountpoint for e in read_mountinfo("mountinfo", dir_fd=proc_self_fd)
                   if not is_under(e.mountpoint, rootfs)
                   and not is_under(rootfs, e.mountpoint)}
        if not foreign:
            return
        for mountpoint in sorted(foreign, key=lambda p: p.count("/"), reverse=True):
            try:
                sc.umount2(mountpoint, sc.MNT_DETACH)
            except OSError as exc:
                log.debug("no-pivot: cannot detach %s: %s", mountpoint, exc)


def initial_propagation(spec: Spec) -> None:
    requested = spec.linux.rootfs_propagation
    if requested in ("shared", "rshared"):
        # Sharing with the host is the point: keep the host peer groups.
        do_mount(None, "/", None, PROPAGATION_OPTIONS[requested], None, f"make / {requested}")
        return
    do_mount(None, "/", None, sc.MS_SLAVE | sc.MS_REC, None, "make / rslave")
    if requested in ("private", "rprivate"):
        do_mount(None, "/", None, PROPAGATION_OPTIONS[requested], None, f"make / {requested}")
    # unbindable variants wait for finalize_rootfs: an unbindable "/" could not be bound.
