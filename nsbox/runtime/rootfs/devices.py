"""/dev: the default nodes, `linux.devices`, and the /dev/fd, std* and ptmx links.

Without CAP_MKNOD (a user namespace) the host's node is bind-mounted onto an empty file.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat

from nsbox.errors import ConfigError, KernelError
from nsbox.runtime import syscalls as sc
from nsbox.runtime.rootfs.options import is_bind_mount
from nsbox.runtime.rootfs.resolve import (
    DEVPTS_SUPER_MAGIC,
    bind_remount,
    do_mount,
    ensure_in_root,
    fd_path,
    open_in_root,
)

TYPE_CHECKING = False  # typing itself is slow to import
if TYPE_CHECKING:
    from nsbox.runtime.spec import Device, Spec

# (path, major, minor) of the devices every container gets, all char devices, mode 0666.
DEFAULT_DEVICES = (
    ("/dev/null", 1, 3), ("/dev/zero", 1, 5), ("/dev/full", 1, 7),
    ("/dev/random", 1, 8), ("/dev/urandom", 1, 9), ("/dev/tty", 5, 0),
)
_DEV_SYMLINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                 ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"))


def dev_is_host_bind(spec: Spec) -> bool:
    return any(posixpath.normpath(m.destination) == "/dev" and is_bind_mount(m)
               for m in spec.mounts)


def setup_dev(spec: Spec, root_fd: int) -> None:
    """Create the /dev nodes and links below ROOT_FD (nothing when /dev is a host bind)."""
    from nsbox.runtime.spec import Device

    if dev_is_host_bind(spec):
        return
    wanted = {posixpath.normpath(d.path) for d in spec.linux.devices}
    devices = [Device(path, "c", major, minor, 0o666)
               for path, major, minor in DEFAULT_DEVICES if path not in wanted]
    devices.extend(spec.linux.devices)
    old_umask = os.umask(0)
    try:
        for device in devices:
            _create_device(root_fd, device)
        _create_dev_links(root_fd)
    finally:
        os.umask(old_umask)


def _create_device(root_fd: int, device: Device) -> None:
    parent, name = posixpath.split(posixpath.normpath(device.path))
    if not name or name in (".", ".."):
        raise ConfigError(f"config.json: device path {device.path!r} is not a file path")
    kinds = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}
    mode = kinds[device.type] | ((device.file_mode if device.file_mode is not None
                                  else 0o666) & 0o7777)
    rdev = 0 if device.type == "p" else os.makedev(device.major, device.minor)
    what = f"create device {device.path}"
    try:
        parent_fd = ensure_in_root(root_fd, parent, is_dir=True)
    except OSError as exc:
        raise KernelError(f"{what}: {os.strerror(exc.errno)}", exc.errno) from None
    try:
        try:
            os.unlink(name, dir_fd=parent_fd)
        except FileNotFoundError:
            pass
        try:
            os.mknod(name, mode, rdev, dir_fd=parent_fd)
        except PermissionError:
            if device.type == "p":
                raise
            # No CAP_MKNOD (user namespace): bind the host's node onto an empty file.
            # The node is the host's, so its owner and mode are left alone.
            _bind_host_device(parent_fd, name, device.path, what)
            return
        if device.uid is not None or device.gid is not None:
            os.chown(name, -1 if device.uid is None else device.uid,
                     -1 if device.gid is None else device.gid,
                     dir_fd=parent_fd, follow_symlinks=False)
    except KernelError:
        raise
    except OSError as exc:
        raise KernelError(f"{what}: {os.strerror(exc.errno)}", exc.errno) from None
    finally:
        os.close(parent_fd)


def _bind_host_device(parent_fd: int, name: str, host_path: str, what: str) -> None:
    if not os.path.exists(host_path):
        raise KernelError(f"{what}: mknod is not permitted and the host has no {host_path} "
                          "to bind", errno.EPERM)
    os.close(os.open(name, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666,
                     dir_fd=parent_fd))
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    try:
        do_mount(host_path, fd_path(fd), None, sc.MS_BIND, None, what)
    finally:
        os.close(fd)
    # As runc does: the host's node, but no set-id programs or executables through it.
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    try:
        bind_remount(fd_path(fd), sc.fstatfs(fd).f_flags, sc.MS_NOSUID | sc.MS_NOEXEC, 0, what)
    finally:
        os.close(fd)


def check_host_nodes(spec: Spec) -> None:
    """Create-time check for a container in a user namespace, where no device node can be
    made and each is bound from the host: the host node must exist and be that device."""
    for device in spec.linux.devices:
        if device.type == "p":
            continue  # a fifo is made, not bound
        where = f"config.json: linux.devices {device.path}"
        try:
            st = os.stat(device.path)
        except OSError as exc:
            raise ConfigError(f"{where}: a user namespace cannot create device nodes, and the "
                              f"host's {device.path} to bind instead is unusable: "
                              f"{exc.strerror}") from None
        kind = stat.S_ISBLK if device.type == "b" else stat.S_ISCHR
        if not kind(st.st_mode) or st.st_rdev != os.makedev(device.major, device.minor):
            raise ConfigError(f"{where}: a user namespace cannot create device nodes, and the "
                              f"host's {device.path} to bind instead is not device "
                              f"{device.type} {device.major}:{device.minor}")


def _create_dev_links(root_fd: int) -> None:
    dev_fd = ensure_in_root(root_fd, "/dev", is_dir=True)
    try:
        links = list(_DEV_SYMLINKS)
        if os.path.exists("/proc/kcore"):
            links.append(("core", "/proc/kcore"))
        for name, target in links:
            try:
                os.symlink(target, name, dir_fd=dev_fd)
            except FileExistsError:
                pass
        try:
            pts_fd = open_in_root(root_fd, "/dev/pts", no_symlinks=True)
        except OSError:
            return
        try:
            is_devpts = sc.fstatfs(pts_fd).f_type == DEVPTS_SUPER_MAGIC
        finally:
            os.close(pts_fd)
        if is_devpts:
            try:
                os.unlink("ptmx", dir_fd=dev_fd)
            except FileNotFoundError:
                pass
            os.symlink("pts/ptmx", "ptmx", dir_fd=dev_fd)
    except OSError as exc:
        raise KernelError(f"create /dev links: {os.strerror(exc.errno)}", exc.errno) from None
    finally:
        os.close(dev_fd)
