"""The entries of `mounts` in config.json, one at a time, inside the rootfs.

proc and sysfs destinations must not involve any symlink, and the result is checked to
really be procfs/sysfs before anything writes to it.

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
from nsbox.errors import BundleError, ConfigError, KernelError, SecurityError, UnsupportedError
from nsbox.runtime import syscalls as sc
from nsbox.runtime.rootfs.mountinfo import (
    CgroupLine,
    MountInfo,
    host_cgroup_dir,
    read_mountinfo,
    read_proc_cgroup,
)
from nsbox.runtime.rootfs.options import MountFlags, bind_source, parse_mount_options
from nsbox.runtime.rootfs.resolve import (
    ATIME_FLAGS,
    BIND_REMOUNT_FLAGS,
    CGROUP2_SUPER_MAGIC,
    PROC_SUPER_MAGIC,
    SYSFS_MAGIC,
    bind_remount,
    do_mount,
    ensure_in_root,
    fd_path,
    ms_flags_from_statfs,
    open_in_root,
)
from nsbox.runtime.rootfs.sources import attach, wants_idmap

TYPE_CHECKING = False  # typing itself is slow to import
if TYPE_CHECKING:
    from nsbox.runtime.spec import Mount, Spec

log = get_logger(__name__)

# Files inside procfs that may be bind-mounted over (lxcfs-style); any other mount whose
# destination resolves into procfs is refused, since it could hide or redirect kernel knobs.
_PROC_OVERRIDE_ALLOWED = frozenset(
    f"/proc/{name}" for name in ("cpuinfo", "diskstats", "meminfo", "stat", "swaps", "uptime",
                                 "loadavg", "slabinfo", "pressure/cpu", "pressure/io",
                                 "pressure/memory"))

# A directory of our own, as an fd to mount onto (fd_path); never through a symlink.
_OPEN_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# The host mounts host_cgroup_dir looks at: only these are read from mountinfo.
_CGROUP_FSTYPES = frozenset(("cgroup", "cgroup2"))


def _reachable(path: str) -> bool:
    try:
        os.stat(path)
    except OSError:
        return False
    return True


class MountBuilder:
    """Performs the mounts of SPEC below the rootfs open as ROOT_FD."""

    def __init__(self, spec: Spec, rootfs: str, bundle: str | None, root_fd: int) -> None:
        self.spec = spec
        self.rootfs = rootfs
        self.bundle = bundle
        self.root_fd = root_fd

    # ---- per-mount
    def _open_destination(self, mount: Mount, is_dir: bool, strict: bool) -> int:
        dest = mount.destination
        try:
            if not strict:
                return ensure_in_root(self.root_fd, dest, is_dir=is_dir)
            try:
                return open_in_root(self.root_fd, dest, no_symlinks=True)
            except FileNotFoundError:
                os.close(ensure_in_root(self.root_fd, dest, is_dir=True))
                return open_in_root(self.root_fd, dest, no_symlinks=True)
        except OSError as exc:
            if strict and exc.errno == errno.ELOOP:
                raise SecurityError(f"mount {mount.type} on {dest}: the destination is or goes "
                                    "through a symlink in the rootfs; refusing") from None
            hint = (" (a user namespace without uid/gid mappings cannot create files on a "
                    "filesystem mounted in it)") if exc.errno == errno.EOVERFLOW else ""
            raise KernelError(f"mount {mount.type or 'bind'} on {dest}: cannot create the "
                              f"destination: {os.strerror(exc.errno)}{hint}", exc.errno) from None

    def _check_not_in_proc(self, mount: Mount, target_fd: int) -> None:
        if sc.fstatfs(target_fd).f_type != PROC_SUPER_MAGIC:
            return
        dest = posixpath.normpath(mount.destination)
        if dest in _PROC_OVERRIDE_ALLOWED:
            try:
                os.close(open_in_root(self.root_fd, dest, no_symlinks=True))
                return
            except OSError:
                pass
        raise SecurityError(f"mount on {mount.destination}: the destination is inside procfs; "
                            "refusing")

    def _check_not_over_proc(self, mount: Mount, target_fd: int, source: str,
                             is_bind: bool, tree_fd: int = -1) -> None:
        """Only procfs may sit at the container's /proc (CVE-2019-16884): anything else
        there (a tmpfs, a bind of a plain directory, reached directly or through a
        symlink) would turn the runtime's later writes to /proc into writes to fake files."""
        try:
            proc_fd = open_in_root(self.root_fd, "/proc", no_symlinks=True)
        except OSError:
            return  # no /proc, or a symlink there, which the proc mount itself refuses
        try:
            over_proc = os.path.samestat(os.fstat(proc_fd), os.fstat(target_fd))
        finally:
            os.close(proc_fd)
        if not over_proc or (is_bind and (sc.fstatfs(tree_fd) if tree_fd >= 0
                                          else sc.statfs(source)).f_type == PROC_SUPER_MAGIC):
            return
        raise SecurityError(f"mount {mount.type or 'bind'} on {mount.destination}: only procfs "
                            "may be mounted at /proc; refusing")

    def mount_entry(self, mount: Mount, tree_fd: int = -1) -> None:
        """Mount MOUNT; TREE_FD, when given, is its source as a detached tree (sources.py)."""
        options = parse_mount_options(mount.options)
        if mount.type == "cgroup":
            self._mount_cgroup(mount, options)
            return
        is_bind = options.is_bind or mount.type == "bind"
        if is_bind:
            source = bind_source(mount, self.bundle)
            if tree_fd >= 0 and not wants_idmap(mount) and _reachable(source):
                # Bound by path when we can: the kernel then locks the flags and submounts
                # of what crosses into this user namespace; a detached copy is not locked.
                tree_fd = -1
            if tree_fd >= 0:
                is_dir = stat.S_ISDIR(os.fstat(tree_fd).st_mode)
            elif not os.path.exists(source):
                raise BundleError(f"mount source {source} does not exist")
            else:
                is_dir = os.path.isdir(source)
            what = f"bind mount {source} on {mount.destination}"
        else:
            source = mount.source or mount.type
            is_dir = True
            what = f"mount {mount.type} on {mount.destination}"
            if mount.type == "tmpfs" and not any(o.startswith("mode=")
                                                 for o in options.data.split(",")):
                options.data = self._keep_mode(mount.destination, options.data)
        strict = mount.type in ("proc", "sysfs")
        target_fd = self._open_destination(mount, is_dir, strict)
        try:
            if mount.type != "proc":
                self._check_not_in_proc(mount, target_fd)
                self._check_not_over_proc(mount, target_fd, source, is_bind, tree_fd)
            self._do_mount(mount, options, source, is_bind, target_fd, what, tree_fd)
        finally:
            os.close(target_fd)

    def _keep_mode(self, dest: str, data: str) -> str:
        """A tmpfs without mode= takes the mode of the directory it covers (as with runc)."""
        try:
            fd = open_in_root(self.root_fd, dest)
        except OSError:
            return data  # created by the mount: the tmpfs default
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
        return f"mode={mode:04o}" + ("," + data if data else "")

    def mount_root(self, mount: Mount, tree_fd: int = -1) -> None:
        """A bind mount whose destination is "/": it covers the rootfs itself, and what
        follows (later mounts, /dev, the root switch) happens on top of it."""
        options = parse_mount_options(mount.options)
        if not (options.is_bind or mount.type == "bind"):
            raise ConfigError("config.json: a mount destination of / must be a bind mount")
        source = bind_source(mount, self.bundle)
        what = f"bind mount {source} on /"
        if tree_fd >= 0:
            attach(tree_fd, self.root_fd, what)
        else:
            do_mount(source, fd_path(self.root_fd), None, sc.MS_BIND | (options.flags & sc.MS_REC),
                     None, what)
        old_fd = self.root_fd
        try:
            self.root_fd = os.open(self.rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise KernelError(f"{what}: {os.strerror(exc.errno)}", exc.errno) from None
        os.close(old_fd)
        if not stat.S_ISDIR(os.fstat(self.root_fd).st_mode):
            raise ConfigError(f"config.json: {what}: the source is not a directory")
        self._after_bind(self.root_fd, options, what, tree_fd >= 0)

    def _do_mount(self, mount: Mount, options: MountFlags, source: str, is_bind: bool,
                  target_fd: int, what: str, tree_fd: int = -1) -> None:
        target = fd_path(target_fd)
        flags = options.flags
        if tree_fd >= 0:
            attach(tree_fd, target_fd, what)
        elif is_bind:
            do_mount(source, target, None, sc.MS_BIND | (flags & sc.MS_REC), None, what)
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
                do_mount(fallback, target, None, sc.MS_BIND | sc.MS_REC, None, what)
                is_bind = True
        # The fd taken before mounting points below the new mount; re-resolve to reach it.
        top_fd = self._reopen(mount.destination, what, strict=mount.type in ("proc", "sysfs"))
        try:
            top = fd_path(top_fd)
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
                self._after_bind(top_fd, options, what, tree_fd >= 0)
            else:
                self._set_recursive_and_propagation(top_fd, options, what)
        finally:
            os.close(top_fd)

    def _after_bind(self, top_fd: int, options: MountFlags, what: str, attached: bool) -> None:
        top = fd_path(top_fd)
        if attached:
            # A detached copy keeps the peer group of the host mount it was taken from;
            # give it the propagation a bind made in the init would have had.
            requested = self.spec.linux.rootfs_propagation
            if requested not in ("shared", "rshared"):
                do_mount(None, top, None, sc.MS_SLAVE | sc.MS_REC, None, f"{what}: propagation")
                if requested in ("private", "rprivate"):
                    do_mount(None, top, None, sc.MS_PRIVATE | sc.MS_REC, None,
                             f"{what}: propagation")
        self._remount_bind_if_needed(top_fd, options, what)
        self._set_recursive_and_propagation(top_fd, options, what)

    @staticmethod
    def _set_recursive_and_propagation(top_fd: int, options: MountFlags, what: str) -> None:
        if options.recursive_set or options.recursive_clear:
            try:
                sc.mount_setattr(top_fd, "", sc.AT_EMPTY_PATH | sc.AT_RECURSIVE,
                                 options.recursive_set, options.recursive_clear)
            except OSError as exc:
                raise KernelError(f"{what}: setting recursive attributes: "
                                  f"{os.strerror(exc.errno)}", exc.errno) from None
        for propagation in options.propagation:
            do_mount(None, fd_path(top_fd), None, propagation, None, f"{what}: propagation")

    def _reopen(self, dest: str, what: str, strict: bool = False) -> int:
        try:
            return open_in_root(self.root_fd, dest, no_symlinks=strict)
        except OSError as exc:
            raise KernelError(f"{what}: cannot reopen the mounted destination: "
                              f"{os.strerror(exc.errno)}", exc.errno) from None

    @staticmethod
    def _remount_bind_if_needed(top_fd: int, options: MountFlags, what: str) -> None:
        """Second pass for binds: mount(2) ignores ro/nosuid/... together with MS_BIND."""
        st_flags = sc.fstatfs(top_fd).f_flags
        current = ms_flags_from_statfs(st_flags)
        set_flags = options.flags & BIND_REMOUNT_FLAGS
        clear = options.clear_flags & BIND_REMOUNT_FLAGS
        wanted_on = set_flags & ~current
        wanted_off = clear & current
        if not (wanted_on or wanted_off or set_flags & ATIME_FLAGS):
            return
        bind_remount(fd_path(top_fd), st_flags, set_flags, clear, what)

    @staticmethod
    def _copy_up(old_fd: int, new_path: str, what: str) -> None:
        import shutil

        try:
            shutil.copytree(fd_path(old_fd), new_path, symlinks=True, dirs_exist_ok=True)
        except (OSError, shutil.Error) as exc:
            raise KernelError(f"{what}: tmpcopyup: {exc}") from None

    # ---- cgroup
    def _mount_cgroup(self, mount: Mount, options: MountFlags) -> None:
        dest = mount.destination.rstrip("/")
        in_cgroupns = self.spec.linux.namespace("cgroup") is not None
        readonly = bool(options.flags & sc.MS_RDONLY)
        base_flags = options.flags & (sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | ATIME_FLAGS)
        try:
            host_v2 = sc.statfs("/sys/fs/cgroup").f_type == CGROUP2_SUPER_MAGIC
        except OSError:
            raise UnsupportedError("the host has no /sys/fs/cgroup") from None
        lines = read_proc_cgroup()
        mounts = [] if in_cgroupns else read_mountinfo(fstypes=_CGROUP_FSTYPES)
        if host_v2:
            v2 = [line for line in lines if line.hierarchy_id == 0]
            if not v2:
                raise UnsupportedError("this process is in no cgroup v2 hierarchy")
            self._mount_hierarchy(dest, v2[0], in_cgroupns, base_flags, readonly, mounts)
            return
        what = f"mount cgroup on {dest}"
        fd = self._open_destination(mount, True, False)
        try:
            do_mount("tmpfs", fd_path(fd), "tmpfs", base_flags, "mode=755", what)
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
                                      mounts, parent_fd=top_fd)
                controllers = [c for c in line.controllers.split(",") if c and "=" not in c]
                if len(controllers) > 1:
                    for controller in controllers:
                        try:
                            os.symlink(name, controller, dir_fd=top_fd)
                        except FileExistsError:
                            pass
            if readonly:
                bind_remount(fd_path(top_fd), sc.fstatfs(top_fd).f_flags, sc.MS_RDONLY, 0,
                              what)
        finally:
            os.close(top_fd)

    def _mount_hierarchy(self, dest: str, line: CgroupLine, in_cgroupns: bool, base_flags: int,
                         readonly: bool, mounts: list[MountInfo], parent_fd: int = -1) -> None:
        """PARENT_FD: the tmpfs just mounted for the v1 hierarchies, which holds nothing
        the container made: their directories are made and opened right there, without
        resolving DEST from the root again (four openat2 calls fewer each)."""
        what = f"mount cgroup on {dest}"
        name = dest.rpartition("/")[2]
        if parent_fd >= 0:
            try:
                os.mkdir(name, 0o755, dir_fd=parent_fd)
            except FileExistsError:
                parent_fd = -1  # one of our controller symlinks: resolve it as before
        try:
            if parent_fd >= 0:
                fd = os.open(name, _OPEN_DIR, dir_fd=parent_fd)
            else:
                fd = ensure_in_root(self.root_fd, dest, is_dir=True)
        except OSError as exc:
            raise KernelError(f"{what}: cannot create the destination: "
                              f"{os.strerror(exc.errno)}", exc.errno) from None
        try:
            if in_cgroupns:
                # In a cgroup namespace a fresh mount is rooted at the namespace's root.
                if line.hierarchy_id == 0:
                    do_mount("cgroup2", fd_path(fd), "cgroup2", base_flags, None, what)
                else:
                    do_mount("cgroup", fd_path(fd), "cgroup", base_flags, line.controllers, what)
            else:
                source = host_cgroup_dir(line, mounts, self.rootfs)
                do_mount(source, fd_path(fd), None, sc.MS_BIND, None, what)
        finally:
            os.close(fd)
        if parent_fd >= 0:
            top_fd = os.open(name, _OPEN_DIR, dir_fd=parent_fd)  # now the mount's root
        else:
            top_fd = self._reopen(dest, what)
        try:
            flags = base_flags | (sc.MS_RDONLY if readonly else 0)
            if flags:
                bind_remount(fd_path(top_fd), sc.fstatfs(top_fd).f_flags, flags, 0, what)
        finally:
            os.close(top_fd)

