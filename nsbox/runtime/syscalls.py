"""The one small ctypes layer over the raw Linux system calls nsbox needs.

Python 3.11 has no os.unshare/os.setns, and nothing for mount, pivot_root,
prctl or capset; everything the runtime asks of the kernel that the standard
library lacks goes through here.  Every wrapper raises OSError with errno set,
like the os module does.
"""

from __future__ import annotations

import errno
import os

# Not `import ctypes`: the same _ctypes machinery, ~0.8 ms cheaper to load (_cdata.py).
from nsbox.runtime import _cdata as ctypes

_libc = ctypes.CDLL(None, use_errno=True)

# Syscall numbers (x86_64).
SYS_pivot_root = 155
SYS_setns = 308
SYS_unshare = 272
SYS_capget = 125
SYS_capset = 126
SYS_close_range = 436
SYS_keyctl = 250
SYS_pidfd_send_signal = 424
SYS_seccomp = 317
SYS_mount_setattr = 442
SYS_open_tree = 428
SYS_move_mount = 429
SYS_personality = 135
SYS_clone3 = 435

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

_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.setdomainname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.syscall.restype = ctypes.c_long


def _check(ret: int, what: str, path: str | None = None) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        if path is not None:
            raise OSError(err, f"{what}: {os.strerror(err)}", path)
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _b(value: str | bytes | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return os.fsencode(value)


def syscall(number: int, *args: int | bytes | None) -> int:
    """Call syscall(2) directly; args are ints, byte strings or None."""
    cargs = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    return _check(_libc.syscall(ctypes.c_long(number), *cargs), f"syscall {number}")


def unshare(flags: int) -> None:
    _check(_libc.syscall(ctypes.c_long(SYS_unshare), ctypes.c_long(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.syscall(ctypes.c_long(SYS_setns), ctypes.c_long(fd), ctypes.c_long(nstype)), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    ret = _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data))
    _check(ret, f"mount {source or fstype or ''} on {target}", target)


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), f"umount {target}", target)


def pivot_root(new_root: str, put_old: str) -> None:
    ret = _libc.syscall(ctypes.c_long(SYS_pivot_root), _b(new_root), _b(put_old))
    _check(ret, "pivot_root", new_root)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_libc.prctl(option, arg2, arg3, arg4, arg5), f"prctl {option}")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), "sethostname")


def setdomainname(name: str) -> None:
    raw = name.encode()
    _check(_libc.setdomainname(raw, len(raw)), "setdomainname")


def close_range(first: int, last: int = 0xFFFFFFFF, flags: int = 0) -> None:
    """Close (or with CLOSE_RANGE_CLOEXEC=4, mark) every fd in [first, last]."""
    ret = _libc.syscall(ctypes.c_long(SYS_close_range), ctypes.c_uint(first),
                        ctypes.c_uint(last), ctypes.c_uint(flags))
    _check(ret, "close_range")


CLOSE_RANGE_CLOEXEC = 4


def join_session_keyring(name: str | None = None) -> int:
    ret = _libc.syscall(ctypes.c_long(SYS_keyctl), ctypes.c_long(KEYCTL_JOIN_SESSION_KEYRING),
                        _b(name))
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
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]


def interface_up(name: str = "lo") -> None:
    """Set IFF_UP on interface NAME of the calling thread's network namespace.

    A new network namespace has only `lo`, and it is down (no 127.0.0.1);
    the kernel adds the loopback addresses as soon as it is up.  Two ioctls
    on a throwaway datagram socket: SIOCGIFFLAGS, then SIOCSIFFLAGS with
    IFF_UP added.  Needs CAP_NET_ADMIN over the namespace.
    """
    fd = _check(_libc.socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), "socket")
    try:
        ifr = ctypes.create_string_buffer(name.encode(), _IFREQ_SIZE)
        _check(_libc.ioctl(fd, SIOCGIFFLAGS, ifr), f"ioctl SIOCGIFFLAGS {name}")
        flags = int.from_bytes(ifr.raw[16:18], "little")
        if not flags & IFF_UP:
            ctypes.memmove(ctypes.addressof(ifr) + 16, (flags | IFF_UP).to_bytes(2, "little"), 2)
            _check(_libc.ioctl(fd, SIOCSIFFLAGS, ifr), f"ioctl SIOCSIFFLAGS {name}")
    finally:
        os.close(fd)


class _CloneArgs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size",
        "tls", "set_tid", "set_tid_size", "cgroup")]


_gil_libc: ctypes.PyDLL | None = None


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
    cgroup with clone3(CLONE_INTO_CGROUP) takes no such lock.  The raw
    syscall goes through a PyDLL, so the GIL stays held across it, between
    the interpreter's own fork hooks as os.fork() calls them.  For
    single-threaded callers only, like every fork in the runtime.  OSError
    (ENOSYS, E2BIG, EINVAL, EBUSY...) when the kernel or a seccomp filter
    refuses: the caller then forks and moves the child the old way.
    """
    global _gil_libc
    if _gil_libc is None:
        _gil_libc = ctypes.PyDLL(None, use_errno=True)
        _gil_libc.syscall.restype = ctypes.c_long
    flags = ns_flags | (CLONE_INTO_CGROUP if cgroup_fd >= 0 else 0)
    args = _CloneArgs(flags=flags, exit_signal=17, cgroup=max(cgroup_fd, 0))  # SIGCHLD
    api = ctypes.pythonapi
    api.PyOS_BeforeFork()
    pid = _gil_libc.syscall(ctypes.c_long(SYS_clone3), ctypes.byref(args),
                            ctypes.c_size_t(ctypes.sizeof(args)))
    if pid == 0:
        api.PyOS_AfterFork_Child()
        return 0
    err = ctypes.get_errno()
    api.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, f"clone3: {os.strerror(err)}")
    return pid


def socketpair_seqpacket() -> tuple[int, int]:
    """socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC) as two plain fds.

    Here rather than through _socket: loading that extension (and its
    hundreds of constants) cost ~0.3 ms of every `create`, for one call.
    """
    fds = (ctypes.c_int * 2)()
    _check(_libc.socketpair(1, 5 | os.O_CLOEXEC, 0, fds), "socketpair")  # AF_UNIX, SOCK_SEQPACKET
    return fds[0], fds[1]


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
    while _libc.flock(fd, operation) < 0:
        if ctypes.get_errno() != errno.EINTR:
            _check(-1, "flock")


def poll(fd: int, events: int, timeout_ms: int) -> int:
    """poll(2) on one fd: its revents, 0 on timeout (an interrupted wait counts as one)."""
    pollfd = (ctypes.c_int * 2)(fd, events)  # struct pollfd: int fd; short events, revents
    if _libc.poll(pollfd, 1, timeout_ms) < 0:
        if ctypes.get_errno() == errno.EINTR:
            return 0
        _check(-1, "poll")
    return pollfd[1] >> 16 & 0xFFFF


def setrlimit(resource: int, soft: int, hard: int) -> None:
    """Set one resource limit of this process (prlimit64(2)); 2**64-1 is unlimited."""
    limits = (ctypes.c_uint64 * 2)(soft, hard)
    _check(_libc.syscall(ctypes.c_long(SYS_prlimit64), ctypes.c_long(0), ctypes.c_long(resource),
                         limits, None), "setrlimit")


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


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _join64(low: int, high: int) -> int:
    return low | (high << 32)


def capget(pid: int = 0) -> tuple[int, int, int]:
    """Return (effective, permitted, inheritable) of pid (0: the calling thread) as bit masks."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, pid)
    data = (_CapData * 2)()
    ret = _libc.syscall(ctypes.c_long(SYS_capget), ctypes.byref(header), data)
    _check(ret, "capget")
    return (_join64(data[0].effective, data[1].effective),
            _join64(data[0].permitted, data[1].permitted),
            _join64(data[0].inheritable, data[1].inheritable))


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set the calling thread's effective, permitted and inheritable sets (64-bit masks)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for index, shift in ((0, 0), (1, 32)):
        data[index].effective = (effective >> shift) & 0xFFFFFFFF
        data[index].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[index].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    ret = _libc.syscall(ctypes.c_long(SYS_capset), ctypes.byref(header), data)
    _check(ret, "capset")


# --- LSM ----------------------------------------------------------------------

SYS_lsm_list_modules = 461  # Linux >= 6.8


def lsm_list_modules() -> list[int]:
    """LSM ids (LSM_ID_* from linux/lsm.h) of the active security modules, in call order."""
    import errno

    count = 16
    while True:
        ids = (ctypes.c_uint64 * count)()
        size = ctypes.c_uint32(ctypes.sizeof(ids))
        ret = _libc.syscall(ctypes.c_long(SYS_lsm_list_modules), ids, ctypes.byref(size),
                            ctypes.c_long(0))
        if ret < 0 and ctypes.get_errno() == errno.E2BIG and size.value > ctypes.sizeof(ids):
            count = size.value // 8
            continue
        _check(ret, "lsm_list_modules")
        return list(ids[:ret])


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


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


class StatFs(ctypes.Structure):
    """struct statfs as the x86_64 kernel fills it."""

    _fields_ = [("f_type", ctypes.c_long), ("f_bsize", ctypes.c_long),
                ("f_blocks", ctypes.c_ulong), ("f_bfree", ctypes.c_ulong),
                ("f_bavail", ctypes.c_ulong), ("f_files", ctypes.c_ulong),
                ("f_ffree", ctypes.c_ulong), ("f_fsid", ctypes.c_int * 2),
                ("f_namelen", ctypes.c_long), ("f_frsize", ctypes.c_long),
                ("f_flags", ctypes.c_long), ("f_spare", ctypes.c_long * 4)]


_libc.statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
_libc.fstatfs.argtypes = [ctypes.c_int, ctypes.c_void_p]


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """openat2(2): open PATH relative to DIRFD under the RESOLVE_* rules; returns an fd."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    ret = _libc.syscall(ctypes.c_long(SYS_openat2), ctypes.c_long(dirfd), _b(path),
                        ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    return _check(ret, "openat2", path)


def statfs(path: str) -> StatFs:
    buf = StatFs()
    _check(_libc.statfs(_b(path), ctypes.byref(buf)), "statfs", path)
    return buf


def fstatfs(fd: int) -> StatFs:
    buf = StatFs()
    _check(_libc.fstatfs(fd, ctypes.byref(buf)), "fstatfs")
    return buf


def mount_setattr(dirfd: int, path: str, flags: int, attr_set: int = 0, attr_clr: int = 0,
                  propagation: int = 0, userns_fd: int = 0) -> None:
    """mount_setattr(2); pass AT_RECURSIVE in FLAGS to change a whole mount tree."""
    attr = _MountAttr(attr_set, attr_clr, propagation, userns_fd)
    ret = _libc.syscall(ctypes.c_long(SYS_mount_setattr), ctypes.c_long(dirfd), _b(path),
                        ctypes.c_uint(flags), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
    _check(ret, "mount_setattr", path)


def personality(persona: int) -> int:
    """Set the execution domain; returns the previous one."""
    ret = _libc.syscall(ctypes.c_long(SYS_personality), ctypes.c_ulong(persona))
    return _check(ret, "personality")


# --- bpf(2) -------------------------------------------------------------------
SYS_bpf = 321


def bpf(cmd: int, attr: ctypes.Structure) -> int:
    """bpf(2) with ATTR (a ctypes structure laid out like the command's part of union bpf_attr).

    The kernel reads sizeof(attr) bytes and treats any field it knows but was
    not given as zero, so each caller passes only the fields it needs.
    """
    ret = _libc.syscall(ctypes.c_long(SYS_bpf), ctypes.c_long(cmd), ctypes.byref(attr),
                        ctypes.c_uint(ctypes.sizeof(attr)))
    return _check(ret, f"bpf({cmd})")


# --- detached mounts (open_tree, move_mount) ----------------------------------
OPEN_TREE_CLONE = 1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40
AT_FDCWD = -100


def open_tree(dirfd: int, path: str, flags: int) -> int:
    """open_tree(2); with OPEN_TREE_CLONE, an fd of a detached copy of the mount at PATH
    (AT_RECURSIVE: with its submounts).  O_CLOEXEC is always added."""
    ret = _libc.syscall(ctypes.c_long(SYS_open_tree), ctypes.c_long(dirfd), _b(path),
                        ctypes.c_uint(flags | os.O_CLOEXEC))
    return _check(ret, "open_tree", path)


def move_mount(from_fd: int, to_path: str = "", to_dirfd: int = AT_FDCWD) -> None:
    """move_mount(2) of the (detached) mount FROM_FD onto TO_PATH, or onto TO_DIRFD itself
    when TO_PATH is empty (MOVE_MOUNT_T_EMPTY_PATH: an O_PATH fd of the destination)."""
    flags = MOVE_MOUNT_F_EMPTY_PATH | (0 if to_path else MOVE_MOUNT_T_EMPTY_PATH)
    ret = _libc.syscall(ctypes.c_long(SYS_move_mount), ctypes.c_long(from_fd), b"",
                        ctypes.c_long(to_dirfd), _b(to_path), ctypes.c_uint(flags))
    _check(ret, "move_mount", to_path or None)


# inotify(7): `nsbox events` follow mode waits for the journal to change instead of polling.
IN_MODIFY = 0x2
IN_CLOSE_WRITE = 0x8
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]


def inotify_init1(flags: int = IN_CLOEXEC) -> int:
    return _check(_libc.inotify_init1(ctypes.c_int(flags)), "inotify_init1")


def inotify_add_watch(fd: int, path: str, mask: int) -> int:
    return _check(_libc.inotify_add_watch(fd, _b(path), mask), "inotify_add_watch", path)
