"""Copy a directory tree exactly: owners, modes, times, symlinks, hard links, xattrs.

Used to fill a new volume from the image (volumes.fill_from_image) and to
make an image layer whose owners are shifted for a container's user
namespace (storage.Storage.set_shifted).  The source is walked through
directory fds with O_NOFOLLOW, so a symlink inside it is copied as a link
and never followed out of the tree.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

Owner = tuple[int, int]


def copy_tree(src_fd: int, dest: str, owner: Callable[[int, int], Owner] | None = None,
              devices: bool = False) -> None:
    """Copy the contents of the directory SRC_FD into the existing directory DEST.

    OWNER maps each (uid, gid) of the source to the one to give the copy
    (default: the same).  Sockets are skipped, and so are device nodes
    unless DEVICES (an image layer's overlay whiteouts are 0:0 devices).
    """
    _copy_dir(src_fd, dest, owner or (lambda uid, gid: (uid, gid)), {}, devices)


def _copy_dir(src_fd: int, dest: str, owner, links: dict, devices: bool) -> None:  # noqa: ANN001
    for entry in os.scandir(src_fd):
        st = entry.stat(follow_symlinks=False)
        path = os.path.join(dest, entry.name)
        kind = stat.S_IFMT(st.st_mode)
        if kind == stat.S_IFDIR:
            os.mkdir(path, 0o700)
            fd = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=src_fd)
            try:
                _copy_dir(fd, path, owner, links, devices)
                _copy_xattrs(fd, path)
            finally:
                os.close(fd)
        elif st.st_nlink > 1 and kind != stat.S_IFDIR and (st.st_dev, st.st_ino) in links:
            os.link(links[(st.st_dev, st.st_ino)], path, follow_symlinks=False)
            continue
        elif kind == stat.S_IFLNK:
            os.symlink(os.readlink(entry.name, dir_fd=src_fd), path)
        elif kind == stat.S_IFREG:
            _copy_file(src_fd, entry.name, path)
        elif kind == stat.S_IFIFO:
            os.mkfifo(path, 0o600)
        elif kind in (stat.S_IFCHR, stat.S_IFBLK) and devices:
            os.mknod(path, kind | 0o600, st.st_rdev)
        else:
            continue  # sockets
        if st.st_nlink > 1 and kind != stat.S_IFDIR:
            links[(st.st_dev, st.st_ino)] = path
        uid, gid = owner(st.st_uid, st.st_gid)
        os.lchown(path, uid, gid)
        if kind != stat.S_IFLNK:
            os.chmod(path, stat.S_IMODE(st.st_mode))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _copy_file(src_fd: int, name: str, path: str) -> None:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_fd)
    try:
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600)
        try:
            while os.sendfile(out, fd, None, 1 << 20):
                pass
            _copy_xattrs(fd, out)
        finally:
            os.close(out)
    finally:
        os.close(fd)


def _copy_xattrs(src: int, dest: int | str) -> None:
    """The xattrs of SRC (an fd) onto DEST, as far as we may set them (file capabilities,
    overlay's opaque marker)."""
    try:
        names = os.listxattr(src)
    except OSError:
        return
    for name in names:
        try:
            os.setxattr(dest, name, os.getxattr(src, name))
        except OSError:
            pass  # trusted.* without CAP_SYS_ADMIN, or a filesystem without xattrs
