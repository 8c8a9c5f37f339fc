"""Terminal support: `process.terminal` with `--console-socket`.

The flow, split over two processes:
  1. the runtime connects to the console socket early (`connect_console_socket`),
     while the path is still reachable from the host mount namespace, and
     lets the container init inherit that connected socket;
  2. the init, after /dev/pts is mounted in the container, opens a pty pair
     there (`open_pty`), sizes it (`set_window_size`), makes the slave its
     controlling terminal and stdio (`make_controlling_tty`) once it belongs
     to the process's user (`give_tty_to`), and sends the
     master to the socket with SCM_RIGHTS (`send_console_fd`) in a single
     message whose payload is the slave's name inside the container.

`recv_console_fd` is the other end (used by tests and `nsbox.runtime.recvtty`).
"""

from __future__ import annotations

import os
import socket
import struct

from nsbox.errors import ConfigError, KernelError

# tty ioctls missing from Python's termios module (asm-generic values, x86_64).
TIOCGPTN = 0x80045430      # _IOR('T', 0x30, unsigned int): pty number
TIOCSPTLCK = 0x40045431    # _IOW('T', 0x31, int): (un)lock the slave
TIOCGPTPEER = 0x5441       # _IO('T', 0x41): open the slave from the master (4.13+)
TIOCSCTTY = 0x540E
TIOCSWINSZ = 0x5414
TIOCGWINSZ = 0x5413

# Largest payload we accept with the fd; a pty name is far shorter.
_MAX_NAME = 4096


def open_pty(ptmx: str = "/dev/ptmx") -> tuple[int, int, str]:
    """Open a new pty pair: (master_fd, slave_fd, slave_path); both fds close-on-exec.

    Uses the devpts instance behind `ptmx` (inside a container: its own
    /dev/ptmx, normally a symlink to pts/ptmx), so the name is the one valid
    in the caller's mount namespace.
    """
    import fcntl

    flags = os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC
    try:
        master = os.open(ptmx, flags)
    except OSError as err:
        raise KernelError(f"open {ptmx}: {err.strerror}", err.errno) from err
    try:
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
        number = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0" * 4))[0]
        slave_path = f"{os.path.dirname(os.path.realpath(ptmx))}/{number}"
        if os.path.basename(os.path.dirname(slave_path)) != "pts":
            slave_path = f"/dev/pts/{number}"
        try:
            # Opening the peer through the master needs no path lookup, so a
            # container cannot redirect us with a crafted /dev/pts entry.
            slave = fcntl.ioctl(master, TIOCGPTPEER, flags)
        except OSError:
            slave = os.open(slave_path, flags)
    except OSError as err:
        os.close(master)
        raise KernelError(f"cannot set up a pty on {ptmx}: {err.strerror}", err.errno) from err
    return master, slave, slave_path


def make_controlling_tty(slave_fd: int) -> None:
    """Start a new session with `slave_fd` as its controlling terminal and as fds 0, 1, 2.

    `slave_fd` itself is closed afterwards unless it is one of 0-2.
    """
    import fcntl

    try:
        os.setsid()
    except PermissionError:
        # Already a process group leader: fine only if it leads its own session.
        if os.getsid(0) != os.getpid():
            raise KernelError("setsid: the process is a process group leader", 1) from None
    try:
        fcntl.ioctl(slave_fd, TIOCSCTTY, 0)
        for target in (0, 1, 2):
            if slave_fd != target:
                os.dup2(slave_fd, target)
    except OSError as err:
        raise KernelError(f"cannot make the pty the controlling terminal: {err.strerror}",
                          err.errno) from err
    if slave_fd > 2:
        os.close(slave_fd)


def give_tty_to(slave_fd: int, uid: int) -> None:
    """Make the pty slave belong to the process's user (its group stays: devpts's tty group).

    As runc does for the process's stdio: otherwise a non-root process could
    not reopen its own terminal (`tty`, /proc/self/fd/0, ssh-style checks).
    Skipped when the owner or the uid has no mapping in a user namespace
    (EINVAL, EPERM) or the devpts is read-only (EROFS), as runc skips it.
    """
    import errno

    try:
        if os.fstat(slave_fd).st_uid == uid:
            return
        os.fchown(slave_fd, uid, -1)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.EPERM, errno.EROFS):
            raise KernelError(f"chown the console to uid {uid}: {err.strerror}", err.errno) from err


def set_window_size(fd: int, rows: int, cols: int) -> None:
    """Set the window size of the terminal behind `fd` (master or slave)."""
    import fcntl

    try:
        fcntl.ioctl(fd, TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    except OSError as err:
        raise KernelError(f"set console size {rows}x{cols}: {err.strerror}", err.errno) from err


def get_window_size(fd: int) -> tuple[int, int]:
    """(rows, cols) of the terminal behind `fd`."""
    import fcntl

    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, TIOCGWINSZ, b"\0" * 8))
    return rows, cols


def connect_console_socket(path: str) -> socket.socket:
    """Connect to the unix stream socket at `path` (the --console-socket).

    The socket is returned non-inheritable; the caller marks it inheritable
    (or passes it explicitly) for the container init.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        _connect_unix(sock, path)
    except OSError as err:
        sock.close()
        raise ConfigError(f"cannot connect to console socket {path}: {err.strerror or err}") from err
    return sock


def send_console_fd(sock: socket.socket, master_fd: int, name: str) -> None:
    """Send `master_fd` over `sock` with SCM_RIGHTS in one message whose payload is `name`."""
    payload = name.encode() or b"\0"  # a message with ancillary data needs a payload byte
    try:
        sent = socket.send_fds(sock, [payload], [master_fd])
    except OSError as err:
        raise KernelError(f"send console fd: {err.strerror}", err.errno) from err
    if sent != len(payload):
        raise KernelError(f"send console fd: short write ({sent} of {len(payload)} bytes)")


def recv_console_fd(sock: socket.socket) -> tuple[int, str]:
    """Receive (master_fd, name) from a console socket.

    `sock` is either a listening socket (one connection is accepted, read and
    closed) or an already connected one.  The fd is close-on-exec.
    """
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        conn, _ = sock.accept()
        with conn:
            return _recv_fd(conn)
    return _recv_fd(sock)


def _recv_fd(conn: socket.socket) -> tuple[int, str]:
    # Not socket.recv_fds: in 3.11 it drops its flags argument, and we want
    # MSG_CMSG_CLOEXEC so the fd is never open without close-on-exec.
    int_size = struct.calcsize("i")
    try:
        payload, ancillary, msg_flags, _ = conn.recvmsg(
            _MAX_NAME, socket.CMSG_SPACE(4 * int_size), socket.MSG_CMSG_CLOEXEC)
    except OSError as err:
        raise KernelError(f"receive console fd: {err.strerror}", err.errno) from err
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % int_size
            fds.extend(struct.unpack(f"{usable // int_size}i", data[:usable]))
    if msg_flags & socket.MSG_CTRUNC or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise KernelError(f"console socket: expected one fd, got {len(fds)}"
                          f"{' (truncated)' if msg_flags & socket.MSG_CTRUNC else ''}")
    return fds[0], payload.rstrip(b"\0").decode(errors="replace")


def _connect_unix(sock: socket.socket, path: str) -> None:
    # sun_path holds 107 bytes; reach longer paths through the directory's fd.
    if len(os.fsencode(path)) < 108:
        sock.connect(path)
        return
    dirfd = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sock.connect(f"/proc/self/fd/{dirfd}/{os.path.basename(path)}")
    finally:
        os.close(dirfd)
