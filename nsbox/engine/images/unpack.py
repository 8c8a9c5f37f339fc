"""Unpack one image layer (a tar, tar.gz or tar.zst blob) into a directory an overlay can use.

The directory is an overlayfs *lower* layer, so the OCI whiteout files are
translated into what overlayfs understands:

    .wh.<name>         -> a 0:0 character device named <name> (an overlay whiteout)
    <dir>/.wh..wh..opq -> the xattr trusted.overlay.opaque=y on <dir>
                          (user.overlay.opaque in rootless mode)

Safety: the tar is untrusted.  Every member path is split into components;
absolute paths and `..` are refused, and the parent directories are walked one
component at a time from the layer root with O_NOFOLLOW, so a symlink anywhere
in a member's path (say, one an earlier member planted) stops the unpack
instead of being followed.  The last component is always created fresh
(anything already there is removed first; files are opened O_CREAT|O_EXCL), so
it cannot be a symlink that gets written through either.  Hard links may only
point at paths inside the layer (or, copied, a lower layer).  xattrs come only
from an allow-list: trusted.overlay.* from a tar would forge overlay metadata.
Device nodes are refused by default (see DEVICE_POLICIES).

The caller unpacks into a fresh temporary directory and renames it into
place only when this returns, so a failed unpack leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Callable, Sequence
from typing import BinaryIO

from nsbox._lazylog import get_logger
from nsbox._record import record
from nsbox.errors import ImageError, KernelError, SecurityError

from .layout import COPY_CHUNK, HashingReader, detect_compression

log = get_logger(__name__)

Progress = Callable[[str, int, int], None]

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
# Other .wh..wh.* names are aufs bookkeeping (hard-link dirs and such); skipped.
AUFS_META_PREFIX = ".wh..wh."
OPAQUE_XATTR = "trusted.overlay.opaque"
# Rootless: only the user.* namespace is ours, and overlayfs mounted with
# `userxattr` (storage.overlay_options) reads its metadata from there.
USER_OPAQUE_XATTR = "user.overlay.opaque"


def opaque_xattr() -> str:
    """The xattr that marks an opaque directory for the overlays this process mounts."""
    from nsbox.engine import rootless
    return USER_OPAQUE_XATTR if rootless.active() else OPAQUE_XATTR
PAX_XATTR_PREFIX = "SCHILY.xattr."
# xattrs a layer may carry: file capabilities (ping, ...) and the user namespace.
ALLOWED_XATTR_PREFIXES = ("user.",)
ALLOWED_XATTRS = frozenset({"security.capability"})
# ...but never overlayfs metadata, which rootless overlays read from user.*
FORBIDDEN_XATTR_PREFIXES = ("user.overlay.",)

# What to do with a character or block device in a layer:
#   reject: refuse the layer (the default: image layers come from anywhere)
#   skip:   leave it out, with a warning
#   create: mknod it (root only; for trusted sources)
# A 0:0 character device is an overlay whiteout and always allowed.
DEVICE_POLICIES = ("reject", "skip", "create")

PROGRESS_STEP = 1 << 20
_DIR_CACHE_LIMIT = 256
_O_DIR_PATH = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@record
class UnpackResult:
    diff_id: str       # sha256 of the uncompressed tar stream
    size: int          # bytes of regular-file content
    entries: int       # tar members processed


class NeedsLowers(Exception):  # noqa: N818 - a signal, not an error
    """The layer needs the layers below it (a hard link into one, a parent the tar does not
    list) but was unpacked without them (lowers=None): unpack it again once they exist."""


def member_parts(name: str) -> list[str]:
    """The path components of a tar member name; raises SecurityError on escapes."""
    if name.startswith("/"):
        raise SecurityError(f"layer entry {name!r} has an absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise SecurityError(f"layer entry {name!r} leaves the layer through '..'")
    return parts


def _is_whiteout_device(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


class _LayerWriter:
    """Applies tar members to one layer directory, never following a symlink on the way."""

    def __init__(self, dest: str, lowers: Sequence[str] | None, devices: str) -> None:
        if devices not in DEVICE_POLICIES:
            raise ValueError(f"device policy must be one of {DEVICE_POLICIES}, not {devices!r}")
        self.devices = devices
        self.is_root = os.geteuid() == 0
        self.root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self.lowers = None if lowers is None else list(lowers)  # top-most first; None: unknown yet
        self._dirs: dict[str, int] = {}
        self._dir_times: list[tuple[list[str], int]] = []
        self.size = 0
        self.entries = 0

    def close(self) -> None:
        self._forget_dirs()
        os.close(self.root_fd)

    # ------------------------------------------------------------ path walking
    def _forget_dirs(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()

    def _parent_fd(self, parts: list[str], create: bool = True) -> int:
        """An O_PATH fd of the directory that holds parts[-1], reached without symlinks."""
        parents = parts[:-1]
        if not parents:
            return self.root_fd
        key = "/".join(parents)
        cached = self._dirs.get(key)
        if cached is not None:
            return cached
        if len(self._dirs) >= _DIR_CACHE_LIMIT:
            self._forget_dirs()
        fd = self.root_fd
        for depth in range(1, len(parents) + 1):
            prefix = "/".join(parents[:depth])
            cached = self._dirs.get(prefix)
            if cached is not None:
                fd = cached
                continue
            fd = self._open_child_dir(fd, parents[depth - 1], parents[:depth], create)
            self._dirs[prefix] = fd
        return fd

    def _open_child_dir(self, parent_fd: int, name: str, rel: list[str], create: bool) -> int:
        try:
            return os.open(name, _O_DIR_PATH, dir_fd=parent_fd)
        except FileNotFoundError:
            if not create:
                raise
        except OSError as err:
            if err.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            path = "/".join(rel)
            if stat.S_ISLNK(st.st_mode):
                raise SecurityError(f"layer entry path goes through the symlink {path!r}; "
                                    "refusing to follow it") from None
            if _is_whiteout_device(st) and create:
                # Whiteout then children in the same layer: the dir was deleted and
                # re-created, which overlayfs spells as an opaque directory.
                os.unlink(name, dir_fd=parent_fd)
                self._mkdir_implicit(parent_fd, name, rel)
                self._set_opaque_at(parent_fd, name)
                return os.open(name, _O_DIR_PATH, dir_fd=parent_fd)
            raise ImageError(f"layer entry path goes through {path!r}, which is not a directory") from None
        self._mkdir_implicit(parent_fd, name, rel)
        return os.open(name, _O_DIR_PATH, dir_fd=parent_fd)

    def _mkdir_implicit(self, parent_fd: int, name: str, rel: list[str]) -> None:
        """Create a parent the tar did not list, with the lower layer's metadata if it has one.

        Otherwise a merged directory would take this layer's made-up mode
        (say /tmp losing its sticky bit because a layer added /tmp/x only).
        """
        os.mkdir(name, 0o755, dir_fd=parent_fd)
        lower = self._lower_stat(rel)
        if lower is not None and stat.S_ISDIR(lower.st_mode):
            self._chown(name, parent_fd, lower.st_uid, lower.st_gid)
            os.chmod(name, stat.S_IMODE(lower.st_mode), dir_fd=parent_fd)
        else:
            os.chmod(name, 0o755, dir_fd=parent_fd)

    def _lower_stat(self, rel: list[str]) -> os.stat_result | None:
        if self.lowers is None:
            raise NeedsLowers(rel)
        for lower in self.lowers:
            with contextlib.suppress(OSError), _open_beneath(lower, rel[:-1]) as fd:
                return os.stat(rel[-1], dir_fd=fd, follow_symlinks=False)
        return None

    # ------------------------------------------------------------- primitives
    def _remove_existing(self, parent_fd: int, name: str, keep_dir: bool = False) -> os.stat_result | None:
        """Clear NAME for a new entry; returns what was there.  Directories stay if KEEP_DIR."""
        try:
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return st
            # Cached fds may point into the tree going away.
            self._forget_dirs()
            shutil.rmtree(name, dir_fd=parent_fd)
        else:
            os.unlink(name, dir_fd=parent_fd)
        return st

    def _chown(self, name: str | int, parent_fd: int | None, uid: int, gid: int) -> None:
        try:
            if isinstance(name, int):
                os.fchown(name, uid, gid)
            else:
                os.chown(name, uid, gid, dir_fd=parent_fd, follow_symlinks=False)
        except PermissionError:
            if self.is_root:
                raise
            # Unprivileged unpack: files stay owned by the caller.

    def _set_xattrs(self, target: int, member: object, path: str) -> None:
        headers = getattr(member, "pax_headers", None) or {}
        for key, value in headers.items():
            if not key.startswith(PAX_XATTR_PREFIX):
                continue
            attr = key[len(PAX_XATTR_PREFIX):]
            if (attr not in ALLOWED_XATTRS and not attr.startswith(ALLOWED_XATTR_PREFIXES)) \
                    or attr.startswith(FORBIDDEN_XATTR_PREFIXES):
                log.debug("layer entry %s: xattr %s not allowed, skipped", path, attr)
                continue
            raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
            try:
                os.setxattr(target, attr, raw)
            except OSError as err:
                log.warning("layer entry %s: cannot set xattr %s: %s", path, attr, err.strerror)

    def _set_opaque_at(self, parent_fd: int, name: str) -> None:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        try:
            os.setxattr(fd, opaque_xattr(), b"y")
        finally:
            os.close(fd)

    @staticmethod
    def _mtime_ns(member: object) -> int:
        return int(float(getattr(member, "mtime", 0)) * 1_000_000_000)

    # ---------------------------------------------------------------- members
    def apply(self, member, tar) -> None:  # noqa: ANN001 - tarfile types imported lazily
        self.entries += 1
        parts = member_parts(member.name)
        if not parts:
            if member.isdir():
                self._dir_times.append(([], self._mtime_ns(member)))
                os.chmod(self.root_fd, stat.S_IMODE(member.mode))
                self._chown(self.root_fd, None, member.uid, member.gid)
                return
            raise ImageError(f"layer entry {member.name!r} names the layer root but is not a directory")
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX):
            if base == OPAQUE_MARKER:
                self._opaque(parts[:-1])
            elif base.startswith(AUFS_META_PREFIX):
                log.debug("skipping aufs metadata %s", member.name)
            else:
                target = base[len(WHITEOUT_PREFIX):]
                if target in ("", ".", ".."):
                    raise SecurityError(f"layer entry {member.name!r} is a malformed whiteout")
                self._whiteout(parts[:-1] + [target])
            return
        path = "/".join(parts)
        if member.isdir():
            self._directory(parts, member)
        elif member.isreg():
            self._regular(parts, member, tar)
        elif member.issym():
            self._symlink(parts, member)
        elif member.islnk():
            self._hardlink(parts, member)
        elif member.isfifo():
            self._fifo(parts, member)
        elif member.ischr() or member.isblk():
            self._device(parts, member)
        else:
            raise ImageError(f"layer entry {path!r} has an unsupported type {member.type!r}")

    def _directory(self, parts: list[str], member) -> None:  # noqa: ANN001
        parent = self._parent_fd(parts)
        name = parts[-1]
        previous = self._remove_existing(parent, name, keep_dir=True)
        if previous is None or not stat.S_ISDIR(previous.st_mode):
            os.mkdir(name, 0o700, dir_fd=parent)
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            self._chown(fd, None, member.uid, member.gid)
            os.fchmod(fd, stat.S_IMODE(member.mode))
            if previous is not None and _is_whiteout_device(previous):
                os.setxattr(fd, opaque_xattr(), b"y")
            self._set_xattrs(fd, member, "/".join(parts))
        finally:
            os.close(fd)
        self._dir_times.append((parts, self._mtime_ns(member)))

    def _regular(self, parts: list[str], member, tar) -> None:  # noqa: ANN001
        parent = self._parent_fd(parts)
        name = parts[-1]
        self._remove_existing(parent, name)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=parent)
        try:
            source = tar.extractfile(member)
            remaining = member.size
            while remaining > 0:
                chunk = source.read(min(COPY_CHUNK, remaining))
                if not chunk:
                    raise ImageError(f"layer entry {member.name!r} is truncated")
                _write_all(fd, chunk)
                remaining -= len(chunk)
            self._chown(fd, None, member.uid, member.gid)
            os.fchmod(fd, stat.S_IMODE(member.mode))
            self._set_xattrs(fd, member, "/".join(parts))
            mtime = self._mtime_ns(member)
            os.utime(fd, ns=(mtime, mtime))
        finally:
            os.close(fd)
        self.size += member.size

    def _symlink(self, parts: list[str], member) -> None:  # noqa: ANN001
        parent = self._parent_fd(parts)
        name = parts[-1]
        self._remove_existing(parent, name)
        # The target is stored verbatim: it is resolved inside the container, never here.
        os.symlink(member.linkname, name, dir_fd=parent)
        self._chown(name, parent, member.uid, member.gid)
        mtime = self._mtime_ns(member)
        os.utime(name, ns=(mtime, mtime), dir_fd=parent, follow_symlinks=False)

    def _hardlink(self, parts: list[str], member) -> None:  # noqa: ANN001
        target_parts = member_parts(member.linkname)
        if not target_parts:
            raise SecurityError(f"layer entry {member.name!r} is a hard link to the layer root")
        if target_parts == parts:
            return
        parent = self._parent_fd(parts)
        name = parts[-1]
        try:
            target_parent = self._parent_fd(target_parts, create=False)
            os.stat(target_parts[-1], dir_fd=target_parent, follow_symlinks=False)
        except FileNotFoundError:
            self._remove_existing(parent, name)
            self._copy_from_lower(target_parts, parent, name, member)
            return
        self._remove_existing(parent, name)
        try:
            os.link(target_parts[-1], name, src_dir_fd=target_parent, dst_dir_fd=parent,
                    follow_symlinks=False)
        except PermissionError:
            raise ImageError(f"layer entry {member.name!r}: cannot hard-link to "
                             f"{member.linkname!r} (a directory?)") from None

    def _copy_from_lower(self, target_parts: list[str], parent: int, name: str, member) -> None:  # noqa: ANN001
        """A hard link to a file of an earlier layer: overlay layers cannot share inodes, so copy."""
        if self.lowers is None:
            raise NeedsLowers(target_parts)
        for lower in self.lowers:
            try:
                with _open_beneath(lower, target_parts[:-1]) as lower_parent:
                    source = os.open(target_parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                     dir_fd=lower_parent)
            except OSError:
                continue
            try:
                st = os.fstat(source)
                if not stat.S_ISREG(st.st_mode):
                    raise ImageError(f"layer entry {member.name!r} links to a non-file in a lower layer")
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o600, dir_fd=parent)
                try:
                    while chunk := os.read(source, COPY_CHUNK):
                        _write_all(fd, chunk)
                    self._chown(fd, None, st.st_uid, st.st_gid)
                    os.fchmod(fd, stat.S_IMODE(st.st_mode))
                    os.utime(fd, ns=(st.st_mtime_ns, st.st_mtime_ns))
                finally:
                    os.close(fd)
            finally:
                os.close(source)
            return
        raise ImageError(f"layer entry {member.name!r} is a hard link to {member.linkname!r}, "
                         "which is not in this layer or below")

    def _fifo(self, parts: list[str], member) -> None:  # noqa: ANN001
        parent = self._parent_fd(parts)
        name = parts[-1]
        self._remove_existing(parent, name)
        os.mkfifo(name, 0o600, dir_fd=parent)
        self._finish_special(parent, name, member)

    def _device(self, parts: list[str], member) -> None:  # noqa: ANN001
        path = "/".join(parts)
        if member.ischr() and member.devmajor == 0 and member.devminor == 0:
            self._whiteout(parts)
            return
        kind = "character" if member.ischr() else "block"
        if self.devices == "reject":
            raise SecurityError(f"layer entry {path!r} is a {kind} device "
                                f"({member.devmajor}:{member.devminor}); device nodes are refused in images")
        if self.devices == "skip" or not self.is_root:
            log.warning("skipping %s device %s (%d:%d) in layer", kind, path, member.devmajor,
                        member.devminor)
            return
        parent = self._parent_fd(parts)
        name = parts[-1]
        self._remove_existing(parent, name)
        kind_bits = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
        os.mknod(name, kind_bits | 0o600, os.makedev(member.devmajor, member.devminor), dir_fd=parent)
        self._finish_special(parent, name, member)

    def _finish_special(self, parent: int, name: str, member) -> None:  # noqa: ANN001
        self._chown(name, parent, member.uid, member.gid)
        # Just created by us in a directory only we write: the name is that node.
        os.chmod(name, stat.S_IMODE(member.mode), dir_fd=parent)
        mtime = self._mtime_ns(member)
        os.utime(name, ns=(mtime, mtime), dir_fd=parent, follow_symlinks=False)

    def _whiteout(self, parts: list[str]) -> None:
        parent = self._parent_fd(parts)
        name = parts[-1]
        self._remove_existing(parent, name)
        os.mknod(name, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent)

    def _opaque(self, dir_parts: list[str]) -> None:
        if not dir_parts:
            # The layer root cannot be opaque in overlayfs; an opaque root would
            # hide every lower layer, which no real image asks for.
            raise ImageError("layer marks its root directory opaque")
        parent = self._parent_fd(dir_parts)
        name = dir_parts[-1]
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            self._mkdir_implicit(parent, name, dir_parts)
        else:
            if not stat.S_ISDIR(st.st_mode):
                raise ImageError(f"layer marks {'/'.join(dir_parts)!r} opaque but it is not a directory")
        self._set_opaque_at(parent, name)

    def finish(self) -> None:
        """Set directory times last: creating their children changed them."""
        self._forget_dirs()
        for parts, mtime in reversed(self._dir_times):
            try:
                if not parts:
                    os.utime(self.root_fd, ns=(mtime, mtime))
                    continue
                parent = self._parent_fd(parts, create=False)
                os.utime(parts[-1], ns=(mtime, mtime), dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed by a later member
        self._forget_dirs()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


@contextlib.contextmanager
def _open_beneath(root: str, parts: list[str]):  # noqa: ANN202
    """An O_PATH fd of root/parts..., walked without following any symlink."""
    fd = os.open(root, _O_DIR_PATH)
    try:
        for part in parts:
            child = os.open(part, _O_DIR_PATH, dir_fd=fd)
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def unpack_layer(blob_path: str, dest: str, *, lowers: Sequence[str] | None = (),
                 devices: str = "reject", progress: Progress | None = None,
                 label: str = "layer", source: BinaryIO | None = None) -> UnpackResult:
    """Unpack the layer blob at BLOB_PATH (tar, tar.gz or tar.zst) into the empty directory DEST.

    SOURCE, if given, is read instead of BLOB_PATH (a pull's layer while it
    downloads).  LOWERS are the unpacked directories of the layers below,
    top-most first; they are only read, for hard links into earlier layers
    and for the metadata of parent directories the tar does not list.  LOWERS
    None (not unpacked yet) raises NeedsLowers when one is needed.
    PROGRESS gets (LABEL, compressed bytes read, blob size).  Raises
    SecurityError for unsafe content, ImageError for corrupt content,
    KernelError when writing fails; DEST is then half-filled and the caller
    removes it.
    """
    import tarfile

    from .inflate import CountingReader, ForwardReader, InflateReader, zstd_pipe
    from .staging import Prepended

    writer = _LayerWriter(dest, lowers, devices)
    current = "(start)"
    try:
        with contextlib.ExitStack() as stack:
            if source is None:
                source = stack.enter_context(open(blob_path, "rb"))
                total = os.fstat(source.fileno()).st_size
            else:
                total = 0
            head = b""
            while len(head) < 4 and (more := source.read(4 - len(head))):
                head += more
            compression = detect_compression(head)
            raw = CountingReader(Prepended(head, source))  # counts the compressed bytes
            if compression == "zstd":
                stream = stack.enter_context(zstd_pipe(raw, label))
            elif compression == "gzip":
                stream = InflateReader(raw)
            else:
                stream = raw
            reader = HashingReader(stream)
            reported = 0
            if progress:
                progress(label, 0, total)
            tar = stack.enter_context(tarfile.open(fileobj=ForwardReader(reader), mode="r:"))
            for member in tar:
                current = member.name
                writer.apply(member, tar)
                if progress and raw.count - reported >= PROGRESS_STEP:
                    reported = raw.count
                    progress(label, raw.count, total)
            current = "(end of archive)"
            reader.drain()
            raw.drain()  # the compressed stream to its end: nothing may follow unread
            writer.finish()
            if progress:
                progress(label, total, total)
        return UnpackResult(diff_id=reader.digest, size=writer.size, entries=writer.entries)
    except (tarfile.TarError, EOFError) as err:
        raise ImageError(f"{label}: corrupt or truncated archive near {current!r}: {err}") from None
    except ImageError as err:
        if str(err).startswith("corrupt gzip data"):
            raise ImageError(f"{label}: {err} near {current!r}") from None
        raise
    except SecurityError:
        raise
    except OSError as err:
        raise KernelError(f"{label}: cannot unpack {current!r}: {err.strerror or err}",
                          err.errno or 0) from None
    finally:
        writer.close()
