"""Container root filesystems: an overlay of the image's shared layers and a private upper dir.

    <root>/containers/<id>/upper     the container's changes
    <root>/containers/<id>/work      overlayfs scratch space
    <root>/containers/<id>/merged    the mount point: the container's rootfs
    <root>/containers/<id>/rootfs.json   image id, layer chain ids, lowerdirs

The layers are read-only lowerdirs, top-most first, shared with every other
container of the same image.  rootfs.json also keeps the image store's
garbage collector from deleting layers a container still needs, even after
its image was removed by force.

overlayfs takes its options as one string of at most a page; with many
layers the absolute paths would not fit, so then the mount is made from a
child process whose working directory is <root>/layers, with the short
aliases `l/<20 hex>` the image store keeps there (as podman does).
"""

from __future__ import annotations

import errno
import os

from nsbox import _json
from nsbox._lazylog import get_logger
from nsbox._lite import suppress
from nsbox._record import as_dict, record
from nsbox.engine import DEFAULT_ROOT
from nsbox.engine.images.layout import (  # noqa: F401 - drop_orphan_shifted: also imported from here
    CONTAINERS_DIR,
    LAYERS_DIR,
    ROOTFS_RECORD,
    SHIFTED_DIR,
    SHORT_LINK_DIR,
    SHORT_LINK_LENGTH,
    SOURCE_SUFFIX,
    Layout,
    drop_orphan_shifted,
)
from nsbox.errors import (
    ConfigError,
    ContainerExists,
    ContainerNotFound,
    ImageError,
    KernelError,
    NsboxError,
)

TYPE_CHECKING = False  # typing's own constant costs an import of typing
if TYPE_CHECKING:
    from collections.abc import Callable

log = get_logger(__name__)

# The kernel copies mount options into one page; keep a margin for the flags it adds.
MOUNT_OPTIONS_LIMIT = 4000
OVERLAY_EXTRA_OPTIONS = "index=off"
SHORT_NAME = 16
# Container ids: [A-Za-z0-9][A-Za-z0-9_.-]{0,127}, checked without re (see _valid_id).
_ID_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_ID_CHARS = _ID_FIRST | frozenset("_.-")
_ID_MAX = 128
# Characters with a meaning inside overlay's option string.
_UNSAFE_PATH_CHARS = (",", ":", "\\", "\n")


@record
class RootfsInfo:
    """Where a container's root filesystem lives, and what it is made of."""

    container_id: str
    image_id: str
    dir: str
    upper: str
    work: str
    merged: str
    layers: list[str]        # chain ids, bottom first
    lower_dirs: list[str]    # absolute layer dirs, top-most first (overlay order)
    lower_links: list[str]   # the same as `l/<hex>` aliases relative to <root>/layers
    idmap: list = list       # [uid_base, gid_base, size]: lowers mounted idmapped (userns.py)
    shifted_dirs: list = list  # chowned copies of lower_dirs used instead (set_shifted)


def overlay_options() -> str:
    """Options after the layer dirs; in rootless mode overlayfs keeps its metadata (opaque
    directories) in user.* xattrs, the only ones a user namespace may set (`userxattr`)."""
    from nsbox.engine import rootless
    return OVERLAY_EXTRA_OPTIONS + (",userxattr" if rootless.active() else "")


def _valid_id(text: str) -> bool:
    """TEXT matches [A-Za-z0-9][A-Za-z0-9_.-]{0,127}."""
    return (0 < len(text) <= _ID_MAX and text[0] in _ID_FIRST
            and all(ch in _ID_CHARS for ch in text))


def _unescape_mountinfo(text: str) -> str:
    if "\\" not in text:
        return text  # nothing escaped: the common case, without importing re
    import re
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def mount_points() -> set[str]:
    """Every mount point in this process's mount namespace."""
    points = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split(" ", 5)
            if len(fields) > 4:
                points.add(_unescape_mountinfo(fields[4]))
    return points


class Storage:
    """Overlay root filesystems for containers under ROOT (the same root as the ImageStore)."""

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_ROOT) -> None:
        self.root = os.path.abspath(os.fspath(root))
        if any(ch in self.root for ch in _UNSAFE_PATH_CHARS):
            raise ConfigError(f"storage root {self.root!r} contains a character overlayfs options "
                              "cannot carry (',', ':' or '\\')")
        self.layout = Layout(self.root)
        self.layers_dir = os.path.join(self.root, LAYERS_DIR)
        self.containers_dir = os.path.join(self.root, CONTAINERS_DIR)
        os.makedirs(self.containers_dir, mode=0o700, exist_ok=True)

    # ---------------------------------------------------------------- records
    def _dir(self, container_id: str) -> str:
        if not isinstance(container_id, str) or not _valid_id(container_id):
            raise ConfigError(f"invalid container id {container_id!r}")
        return os.path.join(self.containers_dir, container_id)

    def rootfs(self, container_id: str) -> RootfsInfo:
        """The rootfs record of CONTAINER_ID; ContainerNotFound if it has none."""
        path = os.path.join(self._dir(container_id), ROOTFS_RECORD)
        try:
            with open(path) as f:
                record = _json.loads(f.read())
        except FileNotFoundError:
            raise ContainerNotFound(f"container {container_id!r} has no root filesystem") from None
        except ValueError as err:
            raise NsboxError(f"{path} is corrupt: {err}") from None
        return RootfsInfo(**record)

    def list(self) -> list[str]:
        """Ids of the containers that have a root filesystem here."""
        with suppress(FileNotFoundError):
            return sorted(name for name in os.listdir(self.containers_dir)
                          if os.path.exists(os.path.join(self.containers_dir, name, ROOTFS_RECORD)))
        return []

    def create_rootfs(self, container_id: str, image) -> RootfsInfo:  # noqa: ANN001 - images.Image
        """Make the upper/work/merged dirs of a new container on top of IMAGE's layers."""
        path = self._dir(container_id)
        with self.layout.locked():
            for layer in image.layers:
                if not os.path.isdir(layer.path):
                    raise ImageError(f"layer {layer.chain_id} of image {image.id} is not unpacked "
                                     f"at {layer.path}")
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                raise ContainerExists(f"container {container_id!r} already has a root filesystem") from None
            try:
                info = RootfsInfo(
                    container_id=container_id, image_id=image.id, dir=path,
                    upper=os.path.join(path, "upper"), work=os.path.join(path, "work"),
                    merged=os.path.join(path, "merged"),
                    layers=[layer.chain_id for layer in image.layers],
                    lower_dirs=[layer.path for layer in reversed(image.layers)],
                    lower_links=[f"{SHORT_LINK_DIR}/{layer.chain_id.removeprefix('sha256:')[:SHORT_LINK_LENGTH]}"
                                 for layer in reversed(image.layers)])
                os.mkdir(info.upper, 0o755)
                os.mkdir(info.work, 0o700)
                os.mkdir(info.merged, 0o755)
                if not image.layers:
                    # overlayfs needs a lower layer; an image with none gets an empty one.
                    empty = os.path.join(path, "empty")
                    os.mkdir(empty, 0o755)
                    info.lower_dirs, info.lower_links = [empty], []
                self._write_record(info)
            except BaseException:
                import shutil
                shutil.rmtree(path, ignore_errors=True)
                raise
        return info

    def set_idmap(self, container_id: str, idmap: list[int]) -> None:
        """Remap the container's rootfs: its own dirs owned by the mapped root, its layers
        mounted idmapped (see userns.py)."""
        info = self.rootfs(container_id)
        with self.layout.locked():
            for path in (info.upper, info.work):
                os.chown(path, idmap[0], idmap[1])
            # The mapped root must reach merged/: search (not read) permission on the way.
            path = info.dir
            while True:
                mode = os.stat(path).st_mode & 0o777
                if mode & 0o011 != 0o011:
                    os.chmod(path, mode | 0o011)
                if os.path.samefile(path, self.root) or path == os.path.dirname(path):
                    break
                path = os.path.dirname(path)
            info.idmap = list(idmap)
            self._write_record(info)

    def set_shifted(self, container_id: str, uid_map: list[list[int]],
                    gid_map: list[list[int]]) -> None:
        """Use copies of the image's layers with owners shifted for a user namespace.

        UID_MAP and GID_MAP are OCI mappings [container id, our id, size]: a
        file that belongs to N in the image belongs to N's id on our side in
        the copy, so it shows as N's inside.  Where idmapped mounts are not
        allowed (rootless mode: the layers' filesystem belongs to the host's
        user namespace) this is the way for `--userns=keep-id`.  Copies are
        made once per layer and mapping, under <root>/shifted/, and dropped
        with their layer (drop_orphan_shifted).
        """
        import hashlib

        from nsbox.engine.fscopy import copy_tree
        from nsbox.engine.userns import map_id
        info = self.rootfs(container_id)

        def uid_of(uid: int) -> int:
            return map_id(uid_map, uid)

        def gid_of(gid: int) -> int:
            return map_id(gid_map, gid)
        key = _json.dumps([uid_map, gid_map])
        base = os.path.join(self.root, SHIFTED_DIR)
        shifted = []
        with self.layout.locked():
            os.makedirs(base, mode=0o711, exist_ok=True)
            for lower in info.lower_dirs:
                target = os.path.join(base, hashlib.sha256(f"{lower}\0{key}".encode())
                                      .hexdigest()[:SHORT_NAME])
                if not os.path.isdir(target):
                    staging = _mkdtemp(base, ".new-")
                    try:
                        fd = os.open(lower, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                        try:
                            copy_tree(fd, staging, lambda u, g: (uid_of(u), gid_of(g)),
                                      devices=True)
                            st = os.fstat(fd)
                        finally:
                            os.close(fd)
                        os.chown(staging, uid_of(st.st_uid), gid_of(st.st_gid))
                        os.chmod(staging, st.st_mode & 0o7777)
                        with open(staging + SOURCE_SUFFIX, "w") as f:
                            f.write(lower)
                        os.rename(staging, target)
                        os.rename(staging + SOURCE_SUFFIX, target + SOURCE_SUFFIX)
                    except BaseException:
                        remove_tree(staging)
                        with suppress(FileNotFoundError):
                            os.unlink(staging + SOURCE_SUFFIX)
                        raise
                shifted.append(target)
            for path in (info.upper, info.work):
                os.chown(path, uid_of(0), gid_of(0))
            info.shifted_dirs = shifted
            self._write_record(info)

    def _idmapped_lowers(self, info: RootfsInfo) -> list[str]:
        """Mount each lower layer idmapped under <dir>/idl/N; their paths, top-most first."""
        from nsbox.engine import userns
        base = os.path.join(info.dir, "idl")
        os.makedirs(base, mode=0o700, exist_ok=True)
        nsfd = userns.userns_fd(info.idmap)
        targets: list[str] = []
        try:
            for n, lower in enumerate(info.lower_dirs):
                target = os.path.join(base, str(n))
                os.makedirs(target, exist_ok=True)
                if target not in mount_points():
                    userns.idmapped_bind(lower, target, nsfd)
                targets.append(target)
        except BaseException:
            self._unmount_idmapped(info.dir)
            raise
        finally:
            os.close(nsfd)
        return targets

    def _unmount_idmapped(self, path: str) -> None:
        from nsbox.runtime import syscalls
        base = os.path.join(path, "idl") + "/"
        for point in sorted((p for p in mount_points() if p.startswith(base)), reverse=True):
            with suppress(OSError):
                syscalls.umount2(point, syscalls.MNT_DETACH | syscalls.UMOUNT_NOFOLLOW)

    def _write_record(self, info: RootfsInfo) -> None:
        fd, tmp = _mkstemp(info.dir, ".rootfs-")
        with os.fdopen(fd, "w") as f:
            f.write(_json.dumps_pretty(as_dict(info)))  # as json.dump(indent=2)
        os.replace(tmp, os.path.join(info.dir, ROOTFS_RECORD))

    # ----------------------------------------------------------------- mounts
    def is_mounted(self, container_id: str) -> bool:
        return os.path.join(self._dir(container_id), "merged") in mount_points()

    def _options(self, info: RootfsInfo, relative: bool) -> str:
        lower = ":".join(info.lower_links if relative else info.lower_dirs)
        return f"lowerdir={lower},upperdir={info.upper},workdir={info.work},{overlay_options()}"

    def mount(self, container_id: str) -> str:
        """Mount the container's overlay (if not mounted yet); returns the merged path."""
        from nsbox.runtime import syscalls
        info = self.rootfs(container_id)
        with self.layout.locked():
            if info.merged in mount_points():
                return info.merged
            for lower in info.lower_dirs:
                if not os.path.isdir(lower):
                    raise ImageError(f"container {container_id}: layer directory {lower} is missing")
            if info.idmap:
                lowers = self._idmapped_lowers(info)
                options = (f"lowerdir={':'.join(lowers)},upperdir={info.upper},"
                           f"workdir={info.work},{overlay_options()}")
                try:
                    syscalls.mount("overlay", info.merged, "overlay", 0, options)
                except OSError as err:
                    self._after_failed_mount(info)
                    self._unmount_idmapped(info.dir)
                    raise KernelError(f"cannot mount the rootfs of {container_id}: "
                                      f"{os.strerror(err.errno or 0)}", err.errno or 0) from None
                return info.merged
            if info.shifted_dirs:
                info.lower_dirs, info.lower_links = info.shifted_dirs, []
            options = self._options(info, relative=False)
            if len(options) <= MOUNT_OPTIONS_LIMIT:
                try:
                    syscalls.mount("overlay", info.merged, "overlay", 0, options)
                except OSError as err:
                    self._after_failed_mount(info)
                    raise KernelError(f"cannot mount the rootfs of {container_id}: "
                                      f"{os.strerror(err.errno or 0)}", err.errno or 0) from None
            else:
                options = self._options(info, relative=True)
                if len(options) > MOUNT_OPTIONS_LIMIT or not info.lower_links:
                    raise KernelError(f"container {container_id}: {len(info.lower_dirs)} layers are "
                                      "too many for one overlay mount", errno.E2BIG)
                self._mount_from(self.layers_dir, options, info)
            return info.merged

    def _after_failed_mount(self, info: RootfsInfo) -> None:
        # A mount(2) that failed made no mount; make sure of it all the same.
        if info.merged in mount_points():
            with suppress(OSError):
                from nsbox.runtime import syscalls
                syscalls.umount2(info.merged, syscalls.MNT_DETACH)

    def _mount_from(self, cwd: str, options: str, info: RootfsInfo) -> None:
        """mount(2) with relative lowerdirs, from a child whose cwd is CWD (ours stays put)."""
        from nsbox.runtime import syscalls
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 0
            try:
                os.chdir(cwd)
                syscalls.mount("overlay", info.merged, "overlay", 0, options)
            except OSError as err:
                code = err.errno or 255
            except BaseException:
                code = 255
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            self._after_failed_mount(info)
            reason = os.strerror(code) if 0 < code < 255 else "mount helper failed"
            raise KernelError(f"cannot mount the rootfs of {info.container_id}: {reason}",
                              code if 0 < code < 255 else 0)

    def unmount(self, container_id: str) -> None:
        """Unmount the container's overlay if it is mounted (lazily, if it is busy)."""
        from nsbox.runtime import syscalls
        merged = os.path.join(self._dir(container_id), "merged")
        with self.layout.locked():
            for _ in range(8):  # the same path may carry stacked mounts
                if merged not in mount_points():
                    self._unmount_idmapped(self._dir(container_id))
                    return
                try:
                    syscalls.umount2(merged, syscalls.UMOUNT_NOFOLLOW)
                except OSError as err:
                    if err.errno == errno.EINVAL:
                        return  # raced with another unmount
                    if err.errno != errno.EBUSY:
                        raise KernelError(f"cannot unmount {merged}: {os.strerror(err.errno or 0)}",
                                          err.errno or 0) from None
                    syscalls.umount2(merged, syscalls.MNT_DETACH | syscalls.UMOUNT_NOFOLLOW)
            raise KernelError(f"{merged} is still mounted after unmounting it repeatedly")

    def remove(self, container_id: str) -> None:
        """Unmount and delete the container's rootfs; a no-op if it has none."""
        path = self._dir(container_id)
        if not os.path.isdir(path):
            return
        self.unmount(container_id)
        with self.layout.locked():
            # Rename first: a half-deleted dir must not look like a container.
            doomed = _mkdtemp(self.containers_dir, "gone-")
            try:
                with suppress(FileNotFoundError):  # another removal was first
                    os.rename(path, os.path.join(doomed, "c"))
            finally:
                remove_tree(doomed)

    # ---------------------------------------------------------------- content
    def diff_size(self, container_id: str) -> int:
        """Bytes of file content the container added or changed (its upper dir)."""
        info = self.rootfs(container_id)
        total = 0
        for dirpath, _, filenames in os.walk(info.upper):
            for name in filenames:
                with suppress(OSError):
                    st = os.lstat(os.path.join(dirpath, name))
                    if not (st.st_mode & 0o170000 == 0o020000 and st.st_rdev == 0):
                        total += st.st_size
        return total

    def export(self, container_id: str, dest_tar: str,
               progress: Callable[[str, int, int], None] | None = None) -> None:
        """Write the container's merged filesystem to DEST_TAR (an uncompressed tar).

        A mounted container is read through its mount.  Otherwise the overlay
        is mounted in a private mount namespace of a child process, which
        takes the mount with it when it exits, whatever happens.
        """
        info = self.rootfs(container_id)
        dest = os.path.abspath(dest_tar)
        import tempfile
        fd, staging = tempfile.mkstemp(prefix=".nsbox-export-", dir=os.path.dirname(dest))
        os.close(fd)
        try:
            if self.is_mounted(container_id):
                _write_export(info.merged, staging, progress)
            else:
                self._export_unmounted(info, staging)
            os.chmod(staging, 0o644)
            os.replace(staging, dest)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(staging)
            raise

    def _export_unmounted(self, info: RootfsInfo, staging: str) -> None:
        from nsbox.runtime import syscalls
        options = self._options(info, relative=False)
        relative = len(options) > MOUNT_OPTIONS_LIMIT
        if relative:
            options = self._options(info, relative=True)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            os.close(read_end)
            code = 0
            try:
                syscalls.unshare(syscalls.CLONE_NEWNS)
                syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
                if relative:
                    os.chdir(self.layers_dir)
                syscalls.mount("overlay", info.merged, "overlay", syscalls.MS_RDONLY, options)
                _write_export(info.merged, staging, None)
            except BaseException as err:  # noqa: BLE001 - reported to the parent
                os.write(write_end, f"{type(err).__name__}: {err}".encode()[:4000])
                code = 1
            os._exit(code)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            message = pipe.read().decode(errors="replace")
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise KernelError(f"cannot export the rootfs of {info.container_id}: "
                              f"{message or 'export helper failed'}")


def _mkstemp(directory: str, prefix: str) -> tuple[int, str]:
    """tempfile.mkstemp(prefix=PREFIX, dir=DIRECTORY) without importing tempfile (and shutil, random).

    A new file, mode 0600, opened O_EXCL for writing; (fd, absolute path).
    """
    directory = os.path.abspath(directory)
    for _ in range(100):
        path = os.path.join(directory, prefix + os.urandom(6).hex())
        try:
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            return os.open(path, flags, 0o600), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no usable temporary file name found", directory)


def _mkdtemp(directory: str, prefix: str) -> str:
    """tempfile.mkdtemp(prefix=PREFIX, dir=DIRECTORY) without importing tempfile: a new 0700 dir."""
    directory = os.path.abspath(directory)
    for _ in range(100):
        path = os.path.join(directory, prefix + os.urandom(6).hex())
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no usable temporary directory name found", directory)


def remove_tree(path: str) -> None:
    """shutil.rmtree(PATH, ignore_errors=True) without importing shutil (and re, bz2, lzma).

    The same walk as shutil's on Linux: through directory fds, never following
    a symlink (a symlink is removed, not what it points to); errors are ignored.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return  # missing, a symlink or not a directory: shutil leaves those alone too
    try:
        _remove_entries(fd)
    finally:
        os.close(fd)
    with suppress(OSError):
        os.rmdir(path)


def _remove_entries(dir_fd: int) -> None:
    """Delete everything in the directory DIR_FD (see remove_tree)."""
    try:
        with os.scandir(dir_fd) as it:
            entries = list(it)
    except OSError:
        return
    for entry in entries:
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        if not is_dir:
            with suppress(OSError):
                os.unlink(entry.name, dir_fd=dir_fd)
            continue
        try:
            child = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                            dir_fd=dir_fd)
        except OSError:
            continue
        try:
            _remove_entries(child)
        finally:
            os.close(child)
        with suppress(OSError):
            os.rmdir(entry.name, dir_fd=dir_fd)


def _write_export(merged: str, dest: str, progress: Callable[[str, int, int], None] | None) -> None:
    from nsbox.engine.images.tarwrite import write_tree_tar
    with open(dest, "wb") as out:
        write_tree_tar(merged, out, devices="include", one_file_system=True, progress=progress,
                       label="export")
