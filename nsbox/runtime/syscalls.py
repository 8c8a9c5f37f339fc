"""The one small layer over the raw Linux system calls nsbox needs.

Python 3.11 has no os.unshare/os.setns, and nothing for mount, pivot_root,
prctl or capset; everything the runtime asks of the kernel that the standard
library lacks goes through here.  Every wrapper raises OSError with errno set,
like the os module does.

All of them go through two entry points, `_syscall(number, *args)` and
`_clone3(flags, cgroup_fd)`, with `address(data)` for a structure that
points to bytes: built into the nsbox-runtime and nsbox programs
(bin/syscall_module.c, which says why), or under a plain interpreter the
same on ctypes (_cdata.py).  Arguments are ints, None, bytes (path names,
structures the kernel reads) or a bytearray for a structure the kernel
fills; structures are laid out here with int.to_bytes (x86_64,
little-endian: 64-bit longs and pointers, 32-bit ints).
"""

from __future__ import annotations

import errno
import os

try:
    from _nsbox_syscall import address  # noqa: F401  (for structures that point to bytes)
    from _nsbox_syscall import clone3 as _clone3
    from _nsbox_syscall import syscall as _syscall
except ImportError:  # a plain interpreter: the same on ctypes
    from nsbox.runtime._cdata import address  # noqa: F401
    from nsbox.runtime._cdata import clone3 as _clone3
    from nsbox.runtime._cdata import raw_syscall as _syscall
try:
    from _nsbox_syscall import clone_init as _clone_init
except ImportError:  # a plain interpreter, or not x86-64: the init is forked
    _clone_init = None

# Syscall numbers (x86_64).
SYS_poll = 7
SYS_rt_sigaction = 13
SYS_ioctl = 16
SYS_socket = 41
SYS_socketpair = 53
SYS_flock = 73
SYS_capget = 125
SYS_capset = 126
SYS_personality = 135
SYS_statfs = 137
SYS_fstatfs = 138
SYS_pivot_root = 155
SYS_prctl = 157
SYS_mount = 165
SYS_umount2 = 166
SYS_sethostname = 170
SYS_setdomainname = 171
SYS_keyctl = 250
SYS_inotify_add_watch = 254
SYS_unshare = 272
SYS_inotify_init1 = 294
SYS_setns = 308
SYS_seccomp = 317
SYS_pidfd_send_signal = 424
SYS_open_tree = 428
SYS_move_mount = 429
SYS_clone3 = 435
SYS_close_range = 436
SYS_mount_setattr = 442

# clone/unshare/setns flags.
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_INTO_CGROUP = 0x200000000  # clone3 only

# mount(2) flags.
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_UNBINDABLE = 0x20000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000
MS_LAZYTIME = 0x2000000

MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8

# prctl options.
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_SET_NAME = 15
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

KEYCTL_JOIN_SESSION_KEYRING = 1



def _check(ret: int, what: str, path: str | None = None) -> int:
    """RET, an entry point's result; OSError when it is -errno."""
    if ret < 0:
        err = -ret
        if path is not None:
            raise OSError(err, f"{what}: {os.strerror(err)}", path)
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _b(value: str | bytes | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return os.fsencode(value)


def u32s(*values: int) -> bytes:
    """Unsigned 32-bit fields of a structure, in order (x86_64: little-endian)."""
    return b"".join(value.to_bytes(4, "little") for value in values)


def u64s(*values: int) -> bytes:
    """Unsigned 64-bit fields (and pointers) of a structure, in order."""
    return b"".join(value.to_bytes(8, "little") for value in values)


def syscall(number: int, *args: int | bytes | bytearray | None) -> int:
    """Call syscall(2) directly; args are ints, byte strings, None or writable buffers."""
    return _check(_syscall(number, *args), f"syscall {number}")


def unshare(flags: int) -> None:
    _check(_syscall(SYS_unshare, flags), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_syscall(SYS_setns, fd, nstype), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    ret = _syscall(SYS_mount, _b(source), _b(target), _b(fstype), flags, _b(data))
    _check(ret, f"mount {source or fstype or ''} on {target}", target)


def umount2(target: str, flags: int = 0) -> None:
    _check(_syscall(SYS_umount2, _b(target), flags), f"umount {target}", target)


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_syscall(SYS_pivot_root, _b(new_root), _b(put_old)), "pivot_root", new_root)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_syscall(SYS_prctl, option, arg2, arg3, arg4, arg5), f"prctl {option}")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_syscall(SYS_sethostname, raw, len(raw)), "sethostname")


def setdomainname(name: str) -> None:
    raw = name.encode()
    _check(_syscall(SYS_setdomainname, raw, len(raw)), "setdomainname")


def close_range(first: int, last: int = 0xFFFFFFFF, flags: int = 0) -> None:
    """Close (or with CLOSE_RANGE_CLOEXEC=4, mark) every fd in [first, last]."""
    _check(_syscall(SYS_close_range, first, last, flags), "close_range")


CLOSE_RANGE_CLOEXEC = 4


def join_session_keyring(name: str | None = None) -> int:
    ret = _syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, _b(name))
    return _check(ret, "keyctl(JOIN_SESSION_KEYRING)")


def set_no_new_privs() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


# --- network interfaces (ioctl on a socket) ---------------------------------

AF_INET = 2
SOCK_DGRAM = 2
SOCK_CLOEXEC = 0o2000000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ_SIZE = 40  # struct ifreq: char ifr_name[16], then a 24-byte union (ifr_flags: short)


def interface_up(name: str = "lo") -> None:
    """Set IFF_UP on interface NAME of the calling thread's network namespace.

    A new network namespace has only `lo`, and it is down (no 127.0.0.1);
    the kernel adds the loopback addresses as soon as it is up.  Two ioctls
    on a throwaway datagram socket: SIOCGIFFLAGS, then SIOCSIFFLAGS with
    IFF_UP added.  Needs CAP_NET_ADMIN over the namespace.
    """
    fd = _check(_syscall(SYS_socket, AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), "socket")
    try:
        ifr = bytearray(_IFREQ_SIZE)
        raw_name = name.encode()
        ifr[:len(raw_name)] = raw_name  # NUL-terminated: IFNAMSIZ is 16, names at most 15
        _check(_syscall(SYS_ioctl, fd, SIOCGIFFLAGS, ifr), f"ioctl SIOCGIFFLAGS {name}")
        flags = int.from_bytes(ifr[16:18], "little")
        if not flags & IFF_UP:
            ifr[16:18] = (flags | IFF_UP).to_bytes(2, "little")
            _check(_syscall(SYS_ioctl, fd, SIOCSIFFLAGS, ifr), f"ioctl SIOCSIFFLAGS {name}")
    finally:
        os.close(fd)


def fork_into_cgroup(cgroup_fd: int) -> int:
    """fork(), with the child born in the cgroup2 directory CGROUP_FD; 0 in the child.

    clone_fork() without namespace flags; see there.
    """
    return clone_fork(0, cgroup_fd)


def clone_fork(ns_flags: int = 0, cgroup_fd: int = -1) -> int:
    """fork() through clone3: the child is born in the new namespaces of NS_FLAGS
    (CLONE_NEW*) and, given CGROUP_FD, in that cgroup2 directory; 0 in the child.

    Moving a process into a cgroup2 cgroup through cgroup.procs takes the
    kernel's global threadgroup lock, which waits for an RCU grace period
    (8-14 ms measured on this kind of host); a child created inside the
    cgroup with clone3(CLONE_INTO_CGROUP) takes no such lock.  The GIL stays
    held across the call, between the interpreter's own fork hooks as
    os.fork() calls them (_clone3).  For single-threaded callers only, like
    every fork in the runtime.  OSError (ENOSYS, E2BIG, EINVAL, EBUSY...)
    when the kernel or a seccomp filter refuses: the caller then forks and
    moves the child the old way.
    """
    flags = ns_flags | (CLONE_INTO_CGROUP if cgroup_fd >= 0 else 0)
    return _check(_clone3(flags, cgroup_fd), "clone3")


SIGPIPE = 13
SIGXFSZ = 25


def default_signal_action(signum: int) -> None:
    """SIGNUM's action back to the default, for this process alone.

    rt_sigaction(2) itself, not the signal module: that module keeps its
    table of handlers in the interpreter's memory, which a container's
    init may share with the runtime (clone_init).
    """
    # struct sigaction as the kernel takes it: handler (SIG_DFL = 0), flags,
    # restorer, mask; 8 bytes of signal set.
    _check(_syscall(SYS_rt_sigaction, signum, bytes(32), None, 8), f"rt_sigaction {signum}")


def can_clone_init() -> bool:
    """Whether clone_init() is there (the launchers' built-in module, on x86-64)."""
    return _clone_init is not None


def clone_init(ns_flags: int, cgroup_fd: int, setup, state_dir: str, cgroup_dirs: list[str]) -> int:
    """The container's init as a child that shares our memory until its execve; its pid.

    The child is born in the new namespaces of NS_FLAGS and, given
    CGROUP_FD, in that cgroup2 directory, as with clone_fork(); it runs
    SETUP() with the interpreter while we wait, and execs in C what SETUP
    returns once `start` writes to the exec fifo (bin/syscall_module.c
    says how, and init.init_in_runtime_memory what SETUP must do).  Should
    the child die while it runs Python, this process removes STATE_DIR and
    CGROUP_DIRS, reports it on stderr and exits 1: the interpreter it would
    go on with is in the dead child's state.  OSError when the kernel
    refuses the clone: then nothing ran, and the caller forks instead.
    """
    flags = ns_flags | (CLONE_INTO_CGROUP if cgroup_fd >= 0 else 0)
    return _check(_clone_init(flags, cgroup_fd, setup, os.fsencode(state_dir),
                              [os.fsencode(d) for d in cgroup_dirs]), "clone3")


def socketpair_seqpacket() -> tuple[int, int]:
    """socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC) as two plain fds.

    Here rather than through _socket: loading that extension (and its
    hundreds of constants) cost ~0.3 ms of every `create`, for one call.
    """
    fds = bytearray(8)  # int[2]
    _check(_syscall(SYS_socketpair, 1, 5 | os.O_CLOEXEC, 0, fds), "socketpair")  # AF_UNIX, SOCK_SEQPACKET
    return int.from_bytes(fds[:4], "little"), int.from_bytes(fds[4:], "little")


# flock(2) operations.
LOCK_EX = 2

# getrlimit/setrlimit resource numbers (x86_64, as the syscall numbers above).
RLIMITS = {f"RLIMIT_{name}": number for number, name in enumerate((
    "CPU", "FSIZE", "DATA", "STACK", "CORE", "RSS", "NPROC", "NOFILE", "MEMLOCK", "AS",
    "LOCKS", "SIGPENDING", "MSGQUEUE", "NICE", "RTPRIO", "RTTIME"))}
SYS_prlimit64 = 302

# The three calls below stand in for the fcntl, select and resource modules in the
# commands that load this module anyway (create, run, exec): each extension is a
# dlopen and a module to build, ~0.1 ms of every `run`, for one call.


def flock(fd: int, operation: int) -> None:
    """flock(2), retried when a signal interrupts it (as fcntl.flock is)."""
    while (ret := _syscall(SYS_flock, fd, operation)) < 0:
        if ret != -errno.EINTR:
            _check(ret, "flock")


def poll(fd: int, events: int, timeout_ms: int) -> int:
    """poll(2) on one fd: its revents, 0 on timeout (an interrupted wait counts as one)."""
    # struct pollfd: int fd; short events, revents
    pollfd = bytearray(fd.to_bytes(4, "little", signed=True) + events.to_bytes(2, "little") + b"\0\0")
    ret = _syscall(SYS_poll, pollfd, 1, timeout_ms)
    if ret < 0:
        if ret == -errno.EINTR:
            return 0
        _check(ret, "poll")
    return int.from_bytes(pollfd[6:8], "little")


def setrlimit(resource: int, soft: int, hard: int) -> None:
    """Set one resource limit of this process (prlimit64(2)); 2**64-1 is unlimited."""
    limits = u64s(soft, hard)  # struct rlimit64
    _check(_syscall(SYS_prlimit64, 0, resource, limits, None), "setrlimit")


def set_pdeathsig(sig: int) -> None:
    prctl(PR_SET_PDEATHSIG, sig)


def set_dumpable(on: bool) -> None:
    prctl(PR_SET_DUMPABLE, 1 if on else 0)


def set_child_subreaper(on: bool = True) -> None:
    prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0)


# --- capabilities (capget/capset) -------------------------------------------

_LINUX_CAPABILITY_VERSION_3 = 0x20080522
PR_GET_KEEPCAPS = 7
PR_CAP_AMBIENT_IS_SET = 1
PR_CAP_AMBIENT_LOWER = 3


def _cap_header(pid: int) -> bytes:
    """struct __user_cap_header_struct: u32 version, int pid."""
    return _LINUX_CAPABILITY_VERSION_3.to_bytes(4, "little") + pid.to_bytes(4, "little", signed=True)


def capget(pid: int = 0) -> tuple[int, int, int]:
    """Return (effective, permitted, inheritable) of pid (0: the calling thread) as bit masks."""
    data = bytearray(24)  # struct __user_cap_data_struct[2]: u32 effective, permitted, inheritable
    _check(_syscall(SYS_capget, _cap_header(pid), data), "capget")
    low, high = data[:12], data[12:]
    return tuple(int.from_bytes(low[i:i + 4], "little") | int.from_bytes(high[i:i + 4], "little") << 32
                 for i in (0, 4, 8))


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set the calling thread's effective, permitted and inheritable sets (64-bit masks)."""
    data = u32s(*(mask >> shift & 0xFFFFFFFF
                  for shift in (0, 32) for mask in (effective, permitted, inheritable)))
    _check(_syscall(SYS_capset, _cap_header(0), data), "capset")


# --- LSM ----------------------------------------------------------------------

SYS_lsm_list_modules = 461  # Linux >= 6.8


def lsm_list_modules() -> list[int]:
    """LSM ids (LSM_ID_* from linux/lsm.h) of the active security modules, in call order."""
    count = 16
    while True:
        ids = bytearray(8 * count)  # u64[count]
        size = bytearray(u32s(len(ids)))  # the kernel's answer on E2BIG
        ret = _syscall(SYS_lsm_list_modules, ids, size, 0)
        needed = int.from_bytes(size, "little")
        if ret == -errno.E2BIG and needed > len(ids):
            count = needed // 8
            continue
        _check(ret, "lsm_list_modules")
        return [int.from_bytes(ids[i:i + 8], "little") for i in range(0, 8 * ret, 8)]


# ---------------------------------------------------------------- rootfs helpers
SYS_openat2 = 437

# openat2(2) resolve flags.
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

# mount_setattr(2) attributes and flags.
MOUNT_ATTR_RDONLY = 0x00000001
MOUNT_ATTR_NOSUID = 0x00000002
MOUNT_ATTR_NODEV = 0x00000004
MOUNT_ATTR_NOEXEC = 0x00000008
MOUNT_ATTR__ATIME = 0x00000070
MOUNT_ATTR_RELATIME = 0x00000000
MOUNT_ATTR_NOATIME = 0x00000010
MOUNT_ATTR_STRICTATIME = 0x00000020
MOUNT_ATTR_NODIRATIME = 0x00000080
MOUNT_ATTR_IDMAP = 0x00100000
MOUNT_ATTR_NOSYMFOLLOW = 0x00200000
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000

MS_I_VERSION = 0x800000


class StatFs:
    """struct statfs as the x86_64 kernel fills it (120 bytes; f_fsid, f_spare left out)."""

    __slots__ = ("f_type", "f_bsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
                 "f_namelen", "f_frsize", "f_flags")
    SIZE = 120

    def __init__(self, raw: bytes | bytearray) -> None:
        word = [int.from_bytes(raw[i:i + 8], "little") for i in range(0, 88, 8)]
        (self.f_type, self.f_bsize, self.f_blocks, self.f_bfree, self.f_bavail, self.f_files,
         self.f_ffree) = word[:7]
        self.f_namelen, self.f_frsize, self.f_flags = word[8:11]  # word[7]: f_fsid


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """openat2(2): open PATH relative to DIRFD under the RESOLVE_* rules; returns an fd."""
    how = u64s(flags | os.O_CLOEXEC, mode, resolve)  # struct open_how
    return _check(_syscall(SYS_openat2, dirfd, _b(path), how, len(how)), "openat2", path)


def statfs(path: str) -> StatFs:
    buf = bytearray(StatFs.SIZE)
    _check(_syscall(SYS_statfs, _b(path), buf), "statfs", path)
    return StatFs(buf)


def fstatfs(fd: int) -> StatFs:
    buf = bytearray(StatFs.SIZE)
    _check(_syscall(SYS_fstatfs, fd, buf), "fstatfs")
    return StatFs(buf)


def mount_setattr(dirfd: int, path: str, flags: int, attr_set: int = 0, attr_clr: int = 0,
                  propagation: int = 0, userns_fd: int = 0) -> None:
    """mount_setattr(2); pass AT_RECURSIVE in FLAGS to change a whole mount tree."""
    attr = u64s(attr_set, attr_clr, propagation, userns_fd)  # struct mount_attr
    _check(_syscall(SYS_mount_setattr, dirfd, _b(path), flags, attr, len(attr)),
           "mount_setattr", path)


def personality(persona: int) -> int:
    """Set the execution domain; returns the previous one."""
    return _check(_syscall(SYS_personality, persona), "personality")


# --- bpf(2) -------------------------------------------------------------------
SYS_bpf = 321


def bpf(cmd: int, attr: object) -> int:
    """bpf(2) with ATTR laid out like the command's part of union bpf_attr: bytes
    when the kernel only reads it, a bytearray (or ctypes structure) when it writes back.

    The kernel reads len(attr) bytes and treats any field it knows but was
    not given as zero, so each caller passes only the fields it needs.
    """
    size = memoryview(attr).nbytes
    return _check(_syscall(SYS_bpf, cmd, attr, size), f"bpf({cmd})")


# --- detached mounts (open_tree, move_mount) ----------------------------------
OPEN_TREE_CLONE = 1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40
AT_FDCWD = -100


def open_tree(dirfd: int, path: str, flags: int) -> int:
    """open_tree(2); with OPEN_TREE_CLONE, an fd of a detached copy of the mount at PATH
    (AT_RECURSIVE: with its submounts).  O_CLOEXEC is always added."""
    return _check(_syscall(SYS_open_tree, dirfd, _b(path), flags | os.O_CLOEXEC), "open_tree", path)


def move_mount(from_fd: int, to_path: str = "", to_dirfd: int = AT_FDCWD) -> None:
    """move_mount(2) of the (detached) mount FROM_FD onto TO_PATH, or onto TO_DIRFD itself
    when TO_PATH is empty (MOVE_MOUNT_T_EMPTY_PATH: an O_PATH fd of the destination)."""
    flags = MOVE_MOUNT_F_EMPTY_PATH | (0 if to_path else MOVE_MOUNT_T_EMPTY_PATH)
    ret = _syscall(SYS_move_mount, from_fd, b"", to_dirfd, _b(to_path), flags)
    _check(ret, "move_mount", to_path or None)


# inotify(7): `nsbox events` follow mode waits for the journal to change instead of polling.
IN_MODIFY = 0x2
IN_CLOSE_WRITE = 0x8
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC


def inotify_init1(flags: int = IN_CLOEXEC) -> int:
    return _check(_syscall(SYS_inotify_init1, flags), "inotify_init1")


def inotify_add_watch(fd: int, path: str, mask: int) -> int:
    return _check(_syscall(SYS_inotify_add_watch, fd, _b(path), mask), "inotify_add_watch", path)
