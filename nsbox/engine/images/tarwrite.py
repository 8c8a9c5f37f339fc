"""Write a directory tree as a layer tar: deterministic, and safe on a tree that changes under us.

Used to import a rootfs directory and to export a container's merged view.
The walk goes through directory fds with O_NOFOLLOW, so a container that
swaps a directory for a symlink while it is being exported cannot make us
read files of the host.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from typing import BinaryIO

from nsbox._lazylog import get_logger

log = get_logger(__name__)

Progress = Callable[[str, int, int], None]

# The xattrs worth carrying in a layer; the unpacker has the same allow-list.
_XATTR_KEEP_PREFIXES = ("user.",)
_XATTR_KEEP = frozenset({"security.capability"})
_CHUNK = 1 << 20


class HashingWriter:
    """A write-only file object that hashes and counts what goes through it."""

    def __init__(self, inner: BinaryIO) -> None:
        self.inner = inner
        self.hasher = hashlib.sha256()
        self.count = 0

    def write(self, data: bytes) -> int:
        self.hasher.update(data)
        self.count += len(data)
        return self.inner.write(data)

    def tell(self) -> int:
        return self.count

    def flush(self) -> None:
        self.inner.flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self.hasher.hexdigest()


def tree_size(root: str) -> int:
    """Bytes of regular-file content below ROOT (for progress totals)."""
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


class _TreeTar:
    def __init__(self, tar, devices: str, one_file_system: bool, progress: Progress | None,
                 label: str, total: int, overlay: str | None = None) -> None:  # noqa: ANN001
        self.tar = tar
        # An overlay upper dir ("trusted" or "user": where its xattrs live): 0:0 char
        # devices become `.wh.NAME` files and opaque dirs get `.wh..wh..opq` (OCI form).
        self.overlay = overlay
        self.devices = devices
        self.one_file_system = one_file_system
        self.progress = progress
        self.label = label
        self.total = total
        self.done = 0
        self.reported = 0
        self.inodes: dict[tuple[int, int], str] = {}
        self.root_dev = 0

    def _info(self, name: str, st: os.stat_result, kind: bytes):  # noqa: ANN202
        import tarfile
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname = info.gname = ""
        info.mtime = int(st.st_mtime)
        return info

    @staticmethod
    def _xattrs(target: int) -> dict[str, str]:  # overlay's own xattrs are never kept
        found = {}
        try:
            names = os.listxattr(target)
        except OSError:
            return found
        for attr in names:
            if attr.startswith(("trusted.overlay.", "user.overlay.")):
                continue
            if attr in _XATTR_KEEP or attr.startswith(_XATTR_KEEP_PREFIXES):
                try:
                    value = os.getxattr(target, attr)
                except OSError:
                    continue
                found["SCHILY.xattr." + attr] = value.decode("utf-8", "surrogateescape")
        return found

    def walk(self, dir_fd: int, prefix: str) -> None:
        import tarfile
        with os.scandir(dir_fd) as listing:
            entries = sorted(listing, key=lambda e: e.name)
        for entry in entries:
            name = prefix + entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                try:
                    child = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                    | os.O_CLOEXEC, dir_fd=dir_fd)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                try:
                    info = self._info(name, st, tarfile.DIRTYPE)
                    info.pax_headers = self._xattrs(child)
                    self.tar.addfile(info)
                    if self.overlay and self._opaque(child):
                        self._whiteout(name + "/.wh..wh..opq")
                    if self.one_file_system and st.st_dev != self.root_dev:
                        continue  # a mount point: keep it as an empty directory
                    self.walk(child, name + "/")
                finally:
                    os.close(child)
            elif stat.S_ISREG(mode):
                self._regular(dir_fd, entry.name, name, st)
            elif stat.S_ISLNK(mode):
                info = self._info(name, st, tarfile.SYMTYPE)
                info.linkname = os.readlink(entry.name, dir_fd=dir_fd)
                self.tar.addfile(info)
            elif stat.S_ISFIFO(mode):
                self.tar.addfile(self._info(name, st, tarfile.FIFOTYPE))
            elif self.overlay and stat.S_ISCHR(mode) and st.st_rdev == 0:
                self._whiteout(prefix + ".wh." + entry.name)
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                if self.devices != "include":
                    log.warning("%s: skipping device node %s", self.label, name)
                    continue
                info = self._info(name, st, tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE)
                info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
                self.tar.addfile(info)
            else:
                log.debug("%s: skipping socket %s", self.label, name)

    def _opaque(self, fd: int) -> bool:
        try:
            return os.getxattr(fd, f"{self.overlay}.overlay.opaque") == b"y"
        except OSError:
            return False

    def _whiteout(self, name: str) -> None:
        import tarfile
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.uname, info.gname = tarfile.REGTYPE, 0, "", ""
        self.tar.addfile(info)

    def _regular(self, dir_fd: int, entry_name: str, name: str, st: os.stat_result) -> None:
        import tarfile
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in self.inodes:
            info = self._info(name, st, tarfile.LNKTYPE)
            info.linkname = self.inodes[key]
            self.tar.addfile(info)
            return
        try:
            fd = os.open(entry_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                         dir_fd=dir_fd)
        except FileNotFoundError:
            return
        with os.fdopen(fd, "rb") as source:
            current = os.fstat(source.fileno())
            if not stat.S_ISREG(current.st_mode):
                return  # replaced by something else since the listing
            info = self._info(name, current, tarfile.REGTYPE)
            info.size = current.st_size
            info.pax_headers = self._xattrs(source.fileno())
            self.tar.addfile(info, source)
        if st.st_nlink > 1:
            self.inodes[key] = name
        self.done += info.size
        if self.progress and self.done - self.reported >= _CHUNK:
            self.reported = self.done
            self.progress(self.label, self.done, self.total)


def write_tree_tar(root: str, out: BinaryIO, *, devices: str = "skip", one_file_system: bool = True,
                   progress: Progress | None = None, label: str = "",
                   overlay: str | None = None) -> None:
    """Write the contents of ROOT (not ROOT itself) to OUT as a PAX tar, sorted by name.

    DEVICES is "skip" (log and leave out device nodes) or "include".  With
    ONE_FILE_SYSTEM, mount points below ROOT appear as empty directories.
    PROGRESS gets (LABEL, content bytes written, content bytes in the tree).
    OVERLAY ("trusted" or "user") reads ROOT as an overlay upper dir and writes
    its whiteouts and opaque directories in the OCI form.
    """
    import tarfile
    total = tree_size(root) if progress else 0
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            walker = _TreeTar(tar, devices, one_file_system, progress, label or root, total, overlay)
            walker.root_dev = os.fstat(fd).st_dev
            walker.walk(fd, "")
    finally:
        os.close(fd)
    if progress:
        progress(label or root, total, total)
