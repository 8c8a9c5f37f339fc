"""The container's root filesystem, built by the init process inside its new mount namespace.

The init process calls, in order:

1. `prepare_rootfs`: cut mount propagation back to the host, bind the rootfs onto itself,
   perform `spec.mounts`, create /dev nodes and links, run the `before_pivot` callback
   (createContainer hooks), then pivot_root into the rootfs (or MS_MOVE + chroot when
   `no_pivot`).
2. (the caller sets the hostname and writes linux.sysctl)
3. `finalize_rootfs`: readonlyPaths, maskedPaths, root.readonly, rootfsPropagation.

Safety: every mount destination and device path is resolved with openat2(RESOLVE_IN_ROOT)
against an fd of the rootfs, and the mount is made on /proc/self/fd/N of the resolved O_PATH
fd, so neither a symlink in the image (absolute or full of "..") nor a rename race can put a
mount outside the rootfs.  proc and sysfs destinations must not involve any symlink, and the
result is checked to really be procfs/sysfs before anything writes to it.

The OCI "cgroup" mount type is implemented as follows:
- cgroup v2 host (/sys/fs/cgroup is cgroup2): in a cgroup namespace, a fresh cgroup2 mount
  (whose root is the namespace root); otherwise a bind mount of the host directory of the
  process's own cgroup.
- v1 / hybrid host: a tmpfs at the destination with one subdirectory per hierarchy listed in
  /proc/self/cgroup ("cpu", "cpu,cpuacct" plus "cpu"/"cpuacct" symlinks, "systemd" for
  name=systemd, "unified" for the v2 hierarchy).  In a cgroup namespace each is a fresh
  mount of that hierarchy; otherwise a bind of the host directory of the process's cgroup in
  that hierarchy.  "ro" makes the tmpfs and every hierarchy read-only.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat

from nsbox._lazylog import get_logger
from nsbox._record import record
from nsbox.errors import BundleError, ConfigError, KernelError, SecurityError, UnsupportedError
from nsbox.runtime import syscalls as sc

TYPE_CHECKING = False  # typing itself is slow to import
if TYPE_CHECKING:
    from collections.abc import Callable

    from nsbox.runtime.spec import Device, Mount, Spec

log = get_logger(__name__)

# statfs f_type values.
PROC_SUPER_MAGIC = 0x9FA0
SYSFS_MAGIC = 0x62656572
DEVPTS_SUPER_MAGIC = 0x1CD1
TMPFS_MAGIC = 0x01021994
CGROUP_SUPER_MAGIC = 0x27E0EB
CGROUP2_SUPER_MAGIC = 0x63677270

# statfs/statvfs f_flags bits (ST_*) and the mount(2) flag each one corresponds to.
_ST_TO_MS = (
    (0x0001, sc.MS_RDONLY),
    (0x0002, sc.MS_NOSUID),
    (0x0004, sc.MS_NODEV),
    (0x0008, sc.MS_NOEXEC),
    (0x0010, sc.MS_SYNCHRONOUS),
    (0x0040, sc.MS_MANDLOCK),
    (0x0400, sc.MS_NOATIME),
    (0x0800, sc.MS_NODIRATIME),
    (0x1000, sc.MS_RELATIME),
    (0x2000, sc.MS_NOSYMFOLLOW),
)
_ATIME_FLAGS = sc.MS_NOATIME | sc.MS_NODIRATIME | sc.MS_RELATIME | sc.MS_STRICTATIME
# Per-mount flags a MS_BIND|MS_REMOUNT can change.
_BIND_REMOUNT_FLAGS = (sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
                       | sc.MS_NOSYMFOLLOW | _ATIME_FLAGS)

# option -> (MS_* flags it sets, MS_* flags it clears)
_FLAG_OPTIONS: dict[str, tuple[int, int]] = {
    "defaults": (0, 0),
    "ro": (sc.MS_RDONLY, 0), "rw": (0, sc.MS_RDONLY),
    "nosuid": (sc.MS_NOSUID, 0), "suid": (0, sc.MS_NOSUID),
    "nodev": (sc.MS_NODEV, 0), "dev": (0, sc.MS_NODEV),
    "noexec": (sc.MS_NOEXEC, 0), "exec": (0, sc.MS_NOEXEC),
    "sync": (sc.MS_SYNCHRONOUS, 0), "async": (0, sc.MS_SYNCHRONOUS),
    "dirsync": (sc.MS_DIRSYNC, 0),
    "remount": (sc.MS_REMOUNT, 0),
    "mand": (sc.MS_MANDLOCK, 0), "nomand": (0, sc.MS_MANDLOCK),
    "noatime": (sc.MS_NOATIME, 0), "atime": (0, sc.MS_NOATIME),
    "nodiratime": (sc.MS_NODIRATIME, 0), "diratime": (0, sc.MS_NODIRATIME),
    "relatime": (sc.MS_RELATIME, 0), "norelatime": (0, sc.MS_RELATIME),
    "strictatime": (sc.MS_STRICTATIME, 0), "nostrictatime": (0, sc.MS_STRICTATIME),
    "lazytime": (sc.MS_LAZYTIME, 0), "nolazytime": (0, sc.MS_LAZYTIME),
    "iversion": (sc.MS_I_VERSION, 0), "noiversion": (0, sc.MS_I_VERSION),
    "silent": (sc.MS_SILENT, 0), "loud": (0, sc.MS_SILENT),
    "nosymfollow": (sc.MS_NOSYMFOLLOW, 0), "symfollow": (0, sc.MS_NOSYMFOLLOW),
    "bind": (sc.MS_BIND, 0), "rbind": (sc.MS_BIND | sc.MS_REC, 0),
}

PROPAGATION_OPTIONS: dict[str, int] = {
    "private": sc.MS_PRIVATE, "rprivate": sc.MS_PRIVATE | sc.MS_REC,
    "shared": sc.MS_SHARED, "rshared": sc.MS_SHARED | sc.MS_REC,
    "slave": sc.MS_SLAVE, "rslave": sc.MS_SLAVE | sc.MS_REC,
    "unbindable": sc.MS_UNBINDABLE, "runbindable": sc.MS_UNBINDABLE | sc.MS_REC,
}

# Recursive options (runtime-spec 1.1), applied with mount_setattr(AT_RECURSIVE):
# option -> (MOUNT_ATTR_* to set, MOUNT_ATTR_* to clear).
_RECURSIVE_OPTIONS: dict[str, tuple[int, int]] = {
    "rro": (sc.MOUNT_ATTR_RDONLY, 0), "rrw": (0, sc.MOUNT_ATTR_RDONLY),
    "rnosuid": (sc.MOUNT_ATTR_NOSUID, 0), "rsuid": (0, sc.MOUNT_ATTR_NOSUID),
    "rnodev": (sc.MOUNT_ATTR_NODEV, 0), "rdev": (0, sc.MOUNT_ATTR_NODEV),
    "rnoexec": (sc.MOUNT_ATTR_NOEXEC, 0), "rexec": (0, sc.MOUNT_ATTR_NOEXEC),
    "rnosymfollow": (sc.MOUNT_ATTR_NOSYMFOLLOW, 0), "rsymfollow": (0, sc.MOUNT_ATTR_NOSYMFOLLOW),
    "rnodiratime": (sc.MOUNT_ATTR_NODIRATIME, 0), "rdiratime": (0, sc.MOUNT_ATTR_NODIRATIME),
    # The atime mode is one field: changing it means clearing the whole field.
    "rrelatime": (sc.MOUNT_ATTR_RELATIME, sc.MOUNT_ATTR__ATIME),
    "rnoatime": (sc.MOUNT_ATTR_NOATIME, sc.MOUNT_ATTR__ATIME),
    "rstrictatime": (sc.MOUNT_ATTR_STRICTATIME, sc.MOUNT_ATTR__ATIME),
    "ratime": (sc.MOUNT_ATTR_RELATIME, sc.MOUNT_ATTR__ATIME),
    "rnostrictatime": (sc.MOUNT_ATTR_RELATIME, sc.MOUNT_ATTR__ATIME),
    "rnorelatime": (sc.MOUNT_ATTR_STRICTATIME, sc.MOUNT_ATTR__ATIME),
}

# (path, major, minor) of the devices every container gets, all char devices, mode 0666.
def known_mount_options() -> list[str]:
    """Every mount option prepare_rootfs understands (for the features document)."""
    return sorted({*_FLAG_OPTIONS, *PROPAGATION_OPTIONS, *_RECURSIVE_OPTIONS, "tmpcopyup"})


DEFAULT_DEVICES = (
    ("/dev/null", 1, 3), ("/dev/zero", 1, 5), ("/dev/full", 1, 7),
    ("/dev/random", 1, 8), ("/dev/urandom", 1, 9), ("/dev/tty", 5, 0),
)
_DEV_SYMLINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                 ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"))

# Files inside procfs that may be bind-mounted over (lxcfs-style); any other mount whose
# destination resolves into procfs is refused, since it could hide or redirect kernel knobs.
_PROC_OVERRIDE_ALLOWED = frozenset(
    f"/proc/{name}" for name in ("cpuinfo", "diskstats", "meminfo", "stat", "swaps", "uptime",
                                 "loadavg", "slabinfo", "pressure/cpu", "pressure/io",
                                 "pressure/memory"))

_RESOLVE = sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS


@record
class MountFlags:
    """The parsed `options` of one OCI mount."""

    flags: int = 0                 # MS_* to set (MS_BIND/MS_REC included for binds)
    clear_flags: int = 0           # MS_* the options explicitly turn off (rw, suid, dev, ...)
    propagation: list[int] = list  # applied one by one after mounting
    data: str = ""                 # filesystem-specific options, comma-joined
    is_bind: bool = False
    is_recursive_bind: bool = False
    recursive_set: int = 0         # MOUNT_ATTR_* for mount_setattr(AT_RECURSIVE)
    recursive_clear: int = 0
    copy_up: bool = False          # "tmpcopyup": seed a tmpfs with what it covers


def parse_mount_options(options: list[str]) -> MountFlags:
    """Split OCI mount options into mount(2) flags, propagation changes and fs data."""
    result = MountFlags()
    data: list[str] = []
    for option in options:
        if option in _FLAG_OPTIONS:
            to_set, to_clear = _FLAG_OPTIONS[option]
            result.flags = (result.flags & ~to_clear) | to_set
            result.clear_flags = (result.clear_flags & ~to_set) | to_clear
        elif option in PROPAGATION_OPTIONS:
            result.propagation.append(PROPAGATION_OPTIONS[option])
        elif option in _RECURSIVE_OPTIONS:
            to_set, to_clear = _RECURSIVE_OPTIONS[option]
            result.recursive_clear = (result.recursive_clear & ~to_set) | to_clear
            result.recursive_set = (result.recursive_set & ~to_clear) | to_set
        elif option in ("idmap", "ridmap"):
            raise UnsupportedError(f"mount option {option!r} (idmapped mounts) is not supported yet")
        elif option == "tmpcopyup":
            result.copy_up = True
        elif option.startswith("x-"):
            # Userspace-only hints (as mount(8) treats them); the kernel would reject them.
            continue
        else:
            data.append(option)
    result.is_bind = bool(result.flags & sc.MS_BIND)
    result.is_recursive_bind = result.is_bind and bool(result.flags & sc.MS_REC)
    result.data = ",".join(data)
    return result


def is_bind_mount(mount: Mount) -> bool:
    return mount.type == "bind" or parse_mount_options(mount.options).is_bind


def bind_source(mount: Mount, bundle: str | None = None) -> str:
    """The host path of a bind mount's source; relative sources are relative to the bundle."""
    if os.path.isabs(mount.source):
        return mount.source
    return os.path.join(bundle or os.getcwd(), mount.source)


def check_mount_sources(spec: Spec, bundle: str | None = None) -> None:
    """Create-time check (before forking): every option parses and every bind source exists."""
    for mount in spec.mounts:
        if mount.destination.rstrip("/") == "":
            raise ConfigError("config.json: a mount destination of / is not supported")
        if is_bind_mount(mount):
            source = bind_source(mount, bundle)
            if not os.path.exists(source):
                raise BundleError(f"mount source {source} does not exist")


def ensure_procfs(path: str = "/proc") -> None:
    """Raise SecurityError unless PATH is the root of a procfs mount (not a symlink, not fake)."""
    try:
        if os.path.islink(path):
            raise SecurityError(f"{path} is a symlink; refusing to use it as procfs")
        magic = sc.statfs(path).f_type
    except OSError as exc:
        raise SecurityError(f"{path} is unusable as procfs: {os.strerror(exc.errno)}") from None
    if magic != PROC_SUPER_MAGIC:
        raise SecurityError(f"{path} is not procfs (filesystem type {magic:#x})")


# ---------------------------------------------------------------- small helpers
def _fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None,
           what: str) -> None:
    """mount(2), turning a failure into a KernelError that names WHAT (the destination)."""
    try:
        sc.mount(source, target, fstype, flags, data or None)
    except OSError as exc:
        raise KernelError(f"{what}: {os.strerror(exc.errno)}", exc.errno) from None


def _ms_flags_from_statfs(st_flags: int) -> int:
    ms = 0
    for st_bit, ms_bit in _ST_TO_MS:
        if st_flags & st_bit:
            ms |= ms_bit
    return ms


def _bind_remount(target: str, current_st_flags: int, set_flags: int, clear_flags: int,
                  what: str) -> None:
    """Change the per-mount flags of TARGET, keeping every flag not explicitly changed.

    Keeping the current nosuid/nodev/noexec/ro bits matters: inside a user namespace the
    kernel refuses (EPERM) a remount that would drop a locked flag, and a bind of a read-only
    source must not silently become writable.
    """
    current = _ms_flags_from_statfs(current_st_flags)
    if set_flags & _ATIME_FLAGS or clear_flags & _ATIME_FLAGS:
        # An explicit atime mode replaces the current one.
        current &= ~_ATIME_FLAGS
    wanted = (current & ~clear_flags) | (set_flags & _BIND_REMOUNT_FLAGS)
    _mount(None, target, None, sc.MS_REMOUNT | sc.MS_BIND | wanted, None, what)


# ---------------------------------------------------------------- resolution inside the rootfs
def _open_in_root(root_fd: int, path: str, *, no_symlinks: bool = False) -> int:
    """An O_PATH fd of PATH resolved as if ROOT_FD were "/" (symlinks cannot escape it)."""
    resolve = _RESOLVE | (sc.RESOLVE_NO_SYMLINKS if no_symlinks else 0)
    try:
        return sc.openat2(root_fd, path.lstrip("/") or ".", os.O_PATH, 0, resolve)
    except OSError as exc:
        if exc.errno == errno.ENOSYS:
            raise UnsupportedError("openat2(2) is required (Linux 5.6 or later)") from None
        raise


def _ensure_in_root(root_fd: int, path: str, *, is_dir: bool, _depth: int = 0) -> int:
    """Like _open_in_root, but create PATH (and missing parents) when it does not exist.

    The path is never normalised lexically: "a/../b" must go through whatever "a" really is,
    exactly as the kernel's resolution does.
    """
    try:
        return _open_in_root(root_fd, path)
    except FileNotFoundError:
        pass
    if _depth > 40:
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
    parent, name = posixpath.split(path.rstrip("/"))
    if not name:
        raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    parent_fd = _ensure_in_root(root_fd, parent or "/", is_dir=True, _depth=_depth + 1)
    try:
        if name not in (".", ".."):
            try:
                if is_dir:
                    os.mkdir(name, 0o755, dir_fd=parent_fd)
                else:
                    os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW
                                     | os.O_CLOEXEC, 0o644, dir_fd=parent_fd))
            except FileExistsError:
                # It exists yet did not resolve: a dangling symlink.  Create what it points
                # to, resolved (still inside the root) from the symlink's directory.
                try:
                    target = os.readlink(name, dir_fd=parent_fd)
                except OSError:
                    target = None
                if target is not None:
                    base = "/" if target.startswith("/") else (parent or "/")
                    os.close(_ensure_in_root(root_fd, posixpath.join(base, target),
                                             is_dir=is_dir, _depth=_depth + 1))
    finally:
        os.close(parent_fd)
    return _open_in_root(root_fd, path)


# ---------------------------------------------------------------- mountinfo / cgroups
@record
class MountInfo:
    mount_id: int
    parent_id: int
    root: str
    mountpoint: str
    options: str
    optional: list[str]
    fstype: str
    source: str
    super_options: str


def _unescape(field_text: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    if "\\" not in field_text:
        return field_text
    import re

    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_text)


def read_mountinfo(path: str = "/proc/self/mountinfo", *,
                   dir_fd: int | None = None) -> list[MountInfo]:
    entries = []
    with open(os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)) as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            entries.append(MountInfo(
                mount_id=int(fields[0]), parent_id=int(fields[1]),
                root=_unescape(fields[3]), mountpoint=_unescape(fields[4]), options=fields[5],
                optional=fields[6:sep], fstype=fields[sep + 1],
                source=_unescape(fields[sep + 2]) if len(fields) > sep + 2 else "",
                super_options=fields[sep + 3] if len(fields) > sep + 3 else ""))
    return entries


def _is_under(path: str, base: str) -> bool:
    return base == "/" or path == base or path.startswith(base + "/")


@record
class _CgroupLine:
    hierarchy_id: int
    controllers: str  # "" for the v2 hierarchy
    path: str


def _read_proc_cgroup() -> list[_CgroupLine]:
    lines = []
    with open("/proc/self/cgroup") as f:
        for line in f:
            hid, controllers, path = line.rstrip("\n").split(":", 2)
            lines.append(_CgroupLine(int(hid), controllers, path))
    return lines


def _host_cgroup_dir(line: _CgroupLine, mounts: list[MountInfo], rootfs: str) -> str:
    """The host directory of this process's cgroup in LINE's hierarchy."""
    wanted = set(line.controllers.split(",")) if line.controllers else set()
    for entry in mounts:
        if _is_under(entry.mountpoint, rootfs):
            continue
        if line.hierarchy_id == 0:
            if entry.fstype != "cgroup2":
                continue
        elif entry.fstype != "cgroup" or not wanted <= set(entry.super_options.split(",")):
            continue
        if _is_under(line.path, entry.root):
            rel = line.path[len(entry.root):] if entry.root != "/" else line.path
            return entry.mountpoint.rstrip("/") + rel
    raise UnsupportedError(f"no host mount of cgroup hierarchy {line.controllers or 'cgroup2'!r} "
                           f"shows {line.path}")


# ---------------------------------------------------------------- the builder
class _RootfsBuilder:
    def __init__(self, spec: Spec, rootfs: str, bundle: str | None) -> None:
        self.spec = spec
        self.rootfs = rootfs
        self.bundle = bundle
        self.root_fd = -1

    # ---- per-mount
    def _open_destination(self, mount: Mount, is_dir: bool, strict: bool) -> int:
        dest = mount.destination
        try:
            if not strict:
                return _ensure_in_root(self.root_fd, dest, is_dir=is_dir)
            try:
                return _open_in_root(self.root_fd, dest, no_symlinks=True)
            except FileNotFoundError:
                os.close(_ensure_in_root(self.root_fd, dest, is_dir=True))
                return _open_in_root(self.root_fd, dest, no_symlinks=True)
        except OSError as exc:
            if strict and exc.errno == errno.ELOOP:
                raise SecurityError(f"mount {mount.type} on {dest}: the destination is or goes "
                                    "through a symlink in the rootfs; refusing") from None
            raise KernelError(f"mount {mount.type or 'bind'} on {dest}: cannot create the "
                              f"destination: {os.strerror(exc.errno)}", exc.errno) from None

    def _check_not_in_proc(self, mount: Mount, target_fd: int) -> None:
        if sc.fstatfs(target_fd).f_type != PROC_SUPER_MAGIC:
            return
        dest = posixpath.normpath(mount.destination)
        if dest in _PROC_OVERRIDE_ALLOWED:
            try:
                os.close(_open_in_root(self.root_fd, dest, no_symlinks=True))
                return
            except OSError:
                pass
        raise SecurityError(f"mount on {mount.destination}: the destination is inside procfs; "
                            "refusing")

    def _check_not_over_proc(self, mount: Mount, target_fd: int, source: str,
                             is_bind: bool) -> None:
        """Only procfs may sit at the container's /proc (CVE-2019-16884): anything else
        there (a tmpfs, a bind of a plain directory, reached directly or through a
        symlink) would turn the runtime's later writes to /proc into writes to fake files."""
        try:
            proc_fd = _open_in_root(self.root_fd, "/proc", no_symlinks=True)
        except OSError:
            return  # no /proc, or a symlink there, which the proc mount itself refuses
        try:
            over_proc = os.path.samestat(os.fstat(proc_fd), os.fstat(target_fd))
        finally:
            os.close(proc_fd)
        if not over_proc or (is_bind and sc.statfs(source).f_type == PROC_SUPER_MAGIC):
            return
        raise SecurityError(f"mount {mount.type or 'bind'} on {mount.destination}: only procfs "
                            "may be mounted at /proc; refusing")

    def mount_entry(self, mount: Mount) -> None:
        options = parse_mount_options(mount.options)
        if mount.type == "cgroup":
            self._mount_cgroup(mount, options)
            return
        is_bind = options.is_bind or mount.type == "bind"
        if is_bind:
            source = bind_source(mount, self.bundle)
            if not os.path.exists(source):
                raise BundleError(f"mount source {source} does not exist")
            is_dir = os.path.isdir(source)
            what = f"bind mount {source} on {mount.destination}"
        else:
            source = mount.source or mount.type
            is_dir = True
            what = f"mount {mount.type} on {mount.destination}"
        strict = mount.type in ("proc", "sysfs")
        target_fd = self._open_destination(mount, is_dir, strict)
        try:
            if mount.type != "proc":
                self._check_not_in_proc(mount, target_fd)
                self._check_not_over_proc(mount, target_fd, source, is_bind)
            self._do_mount(mount, options, source, is_bind, target_fd, what)
        finally:
            os.close(target_fd)

    def _do_mount(self, mount: Mount, options: MountFlags, source: str, is_bind: bool,
                  target_fd: int, what: str) -> None:
        target = _fd_path(target_fd)
        flags = options.flags
        if is_bind:
            _mount(source, target, None, sc.MS_BIND | (flags & sc.MS_REC), None, what)
        else:
            try:
                sc.mount(source, target, mount.type, flags & ~(sc.MS_BIND | sc.MS_REC),
                         options.data or None)
            except OSError as exc:
                fallback = {"sysfs": "/sys", "mqueue": "/dev/mqueue"}.get(mount.type)
                if exc.errno != errno.EPERM or fallback is None:
                    raise KernelError(f"{what}: {os.strerror(exc.errno)}", exc.errno) from None
                # Without the matching namespace (e.g. in a user namespace but not a new
                # network namespace) the kernel refuses a fresh sysfs/mqueue; share the host's.
                log.debug("%s: EPERM, falling back to a bind of %s", what, fallback)
                _mount(fallback, target, None, sc.MS_BIND | sc.MS_REC, None, what)
                is_bind = True
        # The fd taken before mounting points below the new mount; re-resolve to reach it.
        top_fd = self._reopen(mount.destination, what, strict=mount.type in ("proc", "sysfs"))
        try:
            top = _fd_path(top_fd)
            if mount.type == "proc":
                magic = sc.fstatfs(top_fd).f_type
                if magic != PROC_SUPER_MAGIC:
                    raise SecurityError(f"mount proc on {mount.destination}: the result is not "
                                        f"procfs (type {magic:#x}); refusing")
            if mount.type == "sysfs" and not is_bind:
                magic = sc.fstatfs(top_fd).f_type
                if magic != SYSFS_MAGIC:
                    raise SecurityError(f"mount sysfs on {mount.destination}: the result is not "
                                        f"sysfs (type {magic:#x}); refusing")
            if options.copy_up and mount.type == "tmpfs":
                self._copy_up(target_fd, top, what)
            if is_bind:
                self._remount_bind_if_needed(top_fd, options, what)
            if options.recursive_set or options.recursive_clear:
                try:
                    sc.mount_setattr(top_fd, "", sc.AT_EMPTY_PATH | sc.AT_RECURSIVE,
                                     options.recursive_set, options.recursive_clear)
                except OSError as exc:
                    raise KernelError(f"{what}: setting recursive attributes: "
                                      f"{os.strerror(exc.errno)}", exc.errno) from None
            for propagation in options.propagation:
                _mount(None, top, None, propagation, None, f"{what}: propagation")
        finally:
            os.close(top_fd)

    def _reopen(self, dest: str, what: str, strict: bool = False) -> int:
        try:
            return _open_in_root(self.root_fd, dest, no_symlinks=strict)
        except OSError as exc:
            raise KernelError(f"{what}: cannot reopen the mounted destination: "
                              f"{os.strerror(exc.errno)}", exc.errno) from None

    @staticmethod
    def _remount_bind_if_needed(top_fd: int, options: MountFlags, what: str) -> None:
        """Second pass for binds: mount(2) ignores ro/nosuid/... together with MS_BIND."""
        st_flags = sc.fstatfs(top_fd).f_flags
        current = _ms_flags_from_statfs(st_flags)
        set_flags = options.flags & _BIND_REMOUNT_FLAGS
        clear = options.clear_flags & _BIND_REMOUNT_FLAGS
        wanted_on = set_flags & ~current
        wanted_off = clear & current
        if not (wanted_on or wanted_off or set_flags & _ATIME_FLAGS):
            return
        _bind_remount(_fd_path(top_fd), st_flags, set_flags, clear, what)

    @staticmethod
    def _copy_up(old_fd: int, new_path: str, what: str) -> None:
        import shutil

        try:
            shutil.copytree(_fd_path(old_fd), new_path, symlinks=True, dirs_exist_ok=True)
        except (OSError, shutil.Error) as exc:
            raise KernelError(f"{what}: tmpcopyup: {exc}") from None

    # ---- cgroup
    def _mount_cgroup(self, mount: Mount, options: MountFlags) -> None:
        dest = mount.destination.rstrip("/")
        in_cgroupns = self.spec.linux.namespace("cgroup") is not None
        readonly = bool(options.flags & sc.MS_RDONLY)
        base_flags = options.flags & (sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | _ATIME_FLAGS)
        try:
            host_v2 = sc.statfs("/sys/fs/cgroup").f_type == CGROUP2_SUPER_MAGIC
        except OSError:
            raise UnsupportedError("the host has no /sys/fs/cgroup") from None
        lines = _read_proc_cgroup()
        mounts = [] if in_cgroupns else read_mountinfo()
        if host_v2:
            v2 = [line for line in lines if line.hierarchy_id == 0]
            if not v2:
                raise UnsupportedError("this process is in no cgroup v2 hierarchy")
            self._mount_hierarchy(dest, v2[0], in_cgroupns, base_flags, readonly, mounts)
            return
        what = f"mount cgroup on {dest}"
        fd = self._open_destination(mount, True, False)
        try:
            _mount("tmpfs", _fd_path(fd), "tmpfs", base_flags, "mode=755", what)
        finally:
            os.close(fd)
        top_fd = self._reopen(dest, what)
        try:
            for line in lines:
                if line.hierarchy_id == 0:
                    name = "unified"
                else:
                    name = ",".join(c.removeprefix("name=") for c in line.controllers.split(","))
                self._mount_hierarchy(f"{dest}/{name}", line, in_cgroupns, base_flags, readonly,
                                      mounts)
                controllers = [c for c in line.controllers.split(",") if c and "=" not in c]
                if len(controllers) > 1:
                    for controller in controllers:
                        try:
                            os.symlink(name, controller, dir_fd=top_fd)
                        except FileExistsError:
                            pass
            if readonly:
                _bind_remount(_fd_path(top_fd), sc.fstatfs(top_fd).f_flags, sc.MS_RDONLY, 0,
                              what)
        finally:
            os.close(top_fd)

    def _mount_hierarchy(self, dest: str, line: _CgroupLine, in_cgroupns: bool, base_flags: int,
                         readonly: bool, mounts: list[MountInfo]) -> None:
        what = f"mount cgroup on {dest}"
        try:
            fd = _ensure_in_root(self.root_fd, dest, is_dir=True)
        except OSError as exc:
            raise KernelError(f"{what}: cannot create the destination: "
                              f"{os.strerror(exc.errno)}", exc.errno) from None
        try:
            if in_cgroupns:
                # In a cgroup namespace a fresh mount is rooted at the namespace's root.
                if line.hierarchy_id == 0:
                    _mount("cgroup2", _fd_path(fd), "cgroup2", base_flags, None, what)
                else:
                    _mount("cgroup", _fd_path(fd), "cgroup", base_flags, line.controllers, what)
            else:
                source = _host_cgroup_dir(line, mounts, self.rootfs)
                _mount(source, _fd_path(fd), None, sc.MS_BIND, None, what)
        finally:
            os.close(fd)
        top_fd = self._reopen(dest, what)
        try:
            flags = base_flags | (sc.MS_RDONLY if readonly else 0)
            if flags:
                _bind_remount(_fd_path(top_fd), sc.fstatfs(top_fd).f_flags, flags, 0, what)
        finally:
            os.close(top_fd)

    # ---- /dev
    def dev_is_host_bind(self) -> bool:
        return any(posixpath.normpath(m.destination) == "/dev" and is_bind_mount(m)
                   for m in self.spec.mounts)

    def setup_dev(self) -> None:
        from nsbox.runtime.spec import Device

        if self.dev_is_host_bind():
            return
        wanted = {posixpath.normpath(d.path) for d in self.spec.linux.devices}
        devices = [Device(path, "c", major, minor, 0o666)
                   for path, major, minor in DEFAULT_DEVICES if path not in wanted]
        devices.extend(self.spec.linux.devices)
        old_umask = os.umask(0)
        try:
            for device in devices:
                self._create_device(device)
            self._create_dev_links()
        finally:
            os.umask(old_umask)

    def _create_device(self, device: Device) -> None:
        parent, name = posixpath.split(posixpath.normpath(device.path))
        if not name or name in (".", ".."):
            raise ConfigError(f"config.json: device path {device.path!r} is not a file path")
        kinds = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}
        mode = kinds[device.type] | ((device.file_mode if device.file_mode is not None
                                      else 0o666) & 0o7777)
        rdev = 0 if device.type == "p" else os.makedev(device.major, device.minor)
        what = f"create device {device.path}"
        try:
            parent_fd = _ensure_in_root(self.root_fd, parent, is_dir=True)
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
                self._bind_host_device(parent_fd, name, device.path, what)
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

    @staticmethod
    def _bind_host_device(parent_fd: int, name: str, host_path: str, what: str) -> None:
        if not os.path.exists(host_path):
            raise KernelError(f"{what}: mknod is not permitted and the host has no {host_path} "
                              "to bind", errno.EPERM)
        os.close(os.open(name, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666,
                         dir_fd=parent_fd))
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        try:
            _mount(host_path, _fd_path(fd), None, sc.MS_BIND, None, what)
        finally:
            os.close(fd)

    def _create_dev_links(self) -> None:
        dev_fd = _ensure_in_root(self.root_fd, "/dev", is_dir=True)
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
                pts_fd = _open_in_root(self.root_fd, "/dev/pts", no_symlinks=True)
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

    # ---- root switch
    def make_parent_private(self) -> None:
        """pivot_root and MS_MOVE refuse a shared parent mount; unshare only that one.

        It is also the source of the rootfs's bind onto itself, which is thus private too
        (pivot_root refuses a shared new root); finalize_rootfs applies rootfsPropagation.
        """
        best: MountInfo | None = None
        for entry in read_mountinfo():
            if _is_under(self.rootfs, entry.mountpoint) and (
                    best is None or len(entry.mountpoint) >= len(best.mountpoint)):
                best = entry
        if best is not None and any(o.startswith("shared:") for o in best.optional):
            _mount(None, best.mountpoint, None, sc.MS_PRIVATE, None,
                   f"make {best.mountpoint} private")

    @staticmethod
    def _make_old_root_private() -> None:
        # pivot_root refuses a shared current root, and a mount moved onto a shared "/"
        # would propagate to the host.  Only the old root mount itself changes, and it is
        # about to be left behind.
        _mount(None, "/", None, sc.MS_PRIVATE, None, "make the old / private")

    def pivot(self) -> None:
        self._make_old_root_private()
        old_root_fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fchdir(self.root_fd)
            try:
                sc.pivot_root(".", ".")
            except OSError as exc:
                raise KernelError(f"pivot_root into {self.rootfs}: {os.strerror(exc.errno)}",
                                  exc.errno) from None
            # The old root now sits on top of ".", but mount(2) resolves "." to the new
            # root underneath: an rslave there would turn every container mount (rshared
            # binds included) into a slave.  Step onto the old root itself.
            os.fchdir(old_root_fd)
        finally:
            os.close(old_root_fd)
        # Detach the old root without the unmount reaching the host (it may still be a
        # peer of host mounts).
        _mount(None, ".", None, sc.MS_SLAVE | sc.MS_REC, None, "make the old root rslave")
        try:
            sc.umount2(".", sc.MNT_DETACH)
        except OSError as exc:
            raise KernelError(f"detach the old root: {os.strerror(exc.errno)}", exc.errno) from None

    def move_root(self) -> None:
        # chroot does not hide the rest of the mount tree, so detach what lies outside the
        # rootfs first.  That is only safe when nothing outside sends propagation (the
        # default rslave, or private): an unmount propagates to the peers of the parent
        # mount, and a mount hidden under another cannot be made private by path.  With a
        # shared/rshared rootfsPropagation the host mounts are left in place.
        if self.spec.linux.rootfs_propagation in ("shared", "rshared"):
            log.debug("no-pivot with %s propagation: host mounts are not detached",
                      self.spec.linux.rootfs_propagation)
        else:
            # /proc goes away on the way: keep a handle on this process's proc directory.
            proc_self_fd = os.open("/proc/self", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                self._detach_outside(proc_self_fd)
            finally:
                os.close(proc_self_fd)
        self._make_old_root_private()
        os.fchdir(self.root_fd)
        try:
            sc.mount(".", "/", None, sc.MS_MOVE)
        except OSError as exc:
            raise KernelError(f"move {self.rootfs} onto /: {os.strerror(exc.errno)}",
                              exc.errno) from None
        os.chroot(".")

    def _detach_outside(self, proc_self_fd: int) -> None:
        # Several passes: detaching the top of a stack of mounts uncovers the next one.
        for _ in range(8):
            foreign = {e.mountpoint for e in read_mountinfo("mountinfo", dir_fd=proc_self_fd)
                       if not _is_under(e.mountpoint, self.rootfs)
                       and not _is_under(self.rootfs, e.mountpoint)}
            if not foreign:
                return
            for mountpoint in sorted(foreign, key=lambda p: p.count("/"), reverse=True):
                try:
                    sc.umount2(mountpoint, sc.MNT_DETACH)
                except OSError as exc:
                    log.debug("no-pivot: cannot detach %s: %s", mountpoint, exc)


def _initial_propagation(spec: Spec) -> None:
    requested = spec.linux.rootfs_propagation
    if requested in ("shared", "rshared"):
        # Sharing with the host is the point: keep the host peer groups.
        _mount(None, "/", None, PROPAGATION_OPTIONS[requested], None, f"make / {requested}")
        return
    _mount(None, "/", None, sc.MS_SLAVE | sc.MS_REC, None, "make / rslave")
    if requested in ("private", "rprivate"):
        _mount(None, "/", None, PROPAGATION_OPTIONS[requested], None, f"make / {requested}")
    # unbindable variants wait for finalize_rootfs: an unbindable "/" could not be bound.


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
    _initial_propagation(spec)
    builder = _RootfsBuilder(spec, rootfs, bundle)
    builder.make_parent_private()
    _mount(rootfs, rootfs, None, sc.MS_BIND | sc.MS_REC, None, f"bind {rootfs} onto itself")
    builder.root_fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for mount in spec.mounts:
            if mount.destination.rstrip("/") == "":
                raise ConfigError("config.json: a mount destination of / is not supported")
            log.debug("mount %s (%s) on %s %s", mount.source, mount.type, mount.destination,
                      mount.options)
            builder.mount_entry(mount)
        builder.setup_dev()
        if before_pivot is not None:
            before_pivot()
        if no_pivot:
            builder.move_root()
        else:
            builder.pivot()
    finally:
        os.close(builder.root_fd)
    os.chdir("/")


def finalize_rootfs(spec: Spec) -> None:
    """After pivot: readonlyPaths, maskedPaths, root.readonly, then rootfsPropagation."""
    linux = spec.linux
    for path in linux.readonly_paths:
        if not os.path.lexists(path):
            continue
        what = f"make {path} read-only"
        _mount(path, path, None, sc.MS_BIND | sc.MS_REC, None, what)
        _bind_remount(path, os.statvfs(path).f_flag,
                      sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, 0, what)
    for path in linux.masked_paths:
        try:
            is_dir = stat.S_ISDIR(os.stat(path).st_mode)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise KernelError(f"mask {path}: {os.strerror(exc.errno)}", exc.errno) from None
        if is_dir:
            _mount("tmpfs", path, "tmpfs", sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV
                   | sc.MS_NOEXEC, None, f"mask {path}")
        else:
            _mount("/dev/null", path, None, sc.MS_BIND, None, f"mask {path}")
    if spec.root.readonly:
        _bind_remount("/", os.statvfs("/").f_flag, sc.MS_RDONLY, 0, "make / read-only")
    if linux.rootfs_propagation:
        _mount(None, "/", None, PROPAGATION_OPTIONS[linux.rootfs_propagation], None,
               f"make / {linux.rootfs_propagation}")
