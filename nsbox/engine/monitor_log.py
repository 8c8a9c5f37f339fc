"""The monitor's Python log copier: the container's stdout/stderr pipes copied
into its log file as json-file or k8s-file lines, rotated at max-size/max-file,
and dropped (counted in LOG.dropped) while the disk is full.

monitor.py uses it to drain the pipes of a container that could not start,
and to watch the container when the compiled loop (monitor_loop.c, which does
the same) is not installed.  Like the monitor, it imports only os, select and
time (and the C half of json).
"""

import os
import select
import time

MAX_LINE = 16 * 1024
# A log that cannot be written (a full disk): output is dropped and counted
# in LOG.dropped, a write is tried again after a back-off once LOW_WATER is
# free, and the pipes are read at most every DRAIN_PAUSE; as monitor_loop.c.
LOW_WATER = 2 << 20
CHECK_EVERY = 256 * 1024  # bytes written between looks at the free space
BACKOFF_MIN, BACKOFF_MAX = 0.1, 1.0
DRAIN_PAUSE = 0.02
DROPS_SUFFIX = ".dropped"  # "LINES BYTES", fixed width, rewritten in place


def _rfc3339nano(now: float | None = None) -> str:
    now = time.time() if now is None else now
    seconds = int(now)
    nanos = int((now - seconds) * 1e9)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{nanos:09d}Z"


class LogWriter:
    """json-file or k8s-file lines, with size rotation (max-size/max-file), dropping on a full disk."""

    def __init__(self, path: str, driver: str, max_size: int, max_file: int) -> None:
        self.path = path
        self.driver = driver
        self.max_size = max_size
        self.max_file = max(max_file, 1)
        self.fd, self.size = -1, 0
        self._open()
        self.dropping = False
        self.next_try = 0.0
        self.backoff = BACKOFF_MIN
        self.since_check = 0
        self.dropped = [0, 0]  # lines, bytes
        self._saved: tuple[int, int] | None = None
        self._drops_fd = -1

    def _open(self) -> None:
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                              0o600)
            self.size = os.fstat(self.fd).st_size
        except OSError:
            self.fd = -1

    def close(self) -> None:
        self.save_drops()
        for fd in (self.fd, self._drops_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self._drops_fd = -1

    def prepare_drops(self) -> None:
        """Open LOG.dropped and write the counts: its block is taken while there is room."""
        if self._drops_fd < 0:
            self._open_drops()
        self._saved = None
        self.save_drops()

    def _open_drops(self) -> None:
        """Open LOG.dropped, adding the counts of earlier runs (restarts) to ours."""
        try:
            self._drops_fd = os.open(self.path + DROPS_SUFFIX,
                                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fields = os.pread(self._drops_fd, 64, 0).split()
            if len(fields) == 2:
                self.dropped[0] += int(fields[0])
                self.dropped[1] += int(fields[1])
        except (OSError, ValueError):
            pass

    def save_drops(self) -> None:
        counts = (self.dropped[0], self.dropped[1])
        if counts == self._saved:
            return
        if self._drops_fd < 0:
            if counts == (0, 0):
                return  # nothing to tell (prepare_drops makes the file up front)
            self._open_drops()
            if self._drops_fd < 0:
                return
            counts = (self.dropped[0], self.dropped[1])
        try:
            os.pwrite(self._drops_fd, b"%20d %20d\n" % counts, 0)
            self._saved = counts
        except OSError:
            pass

    def _room(self) -> bool:
        try:
            st = os.fstatvfs(self.fd)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize >= LOW_WATER

    def _start_dropping(self) -> None:
        self.backoff = min(self.backoff * 2, BACKOFF_MAX) if self.dropping else BACKOFF_MIN
        self.dropping = True
        self.next_try = time.monotonic() + self.backoff
        self.save_drops()

    def resting(self) -> bool:
        """Dropping, and not yet time to try writing again."""
        return self.dropping and time.monotonic() < self.next_try

    def drop(self, lines: int, size: int) -> None:
        self.dropped[0] += lines
        self.dropped[1] += size

    def _may_write(self) -> bool:
        if not self.dropping:
            return True
        if time.monotonic() < self.next_try:
            return False
        if self.fd < 0:
            self._open()
        if not self._room():
            self._start_dropping()
            return False
        return True

    def write(self, stream: str, data: bytes, partial: bool) -> None:
        if not self._may_write():
            self.drop(1, len(data))
            return
        text = data.decode("utf-8", "replace")
        if self.driver == "k8s-file":
            line = f"{_rfc3339nano()} {stream} {'P' if partial else 'F'} {text.rstrip(chr(10))}\n"
        else:
            from _json import encode_basestring
            line = (f'{{"log":{encode_basestring(text)},"stream":"{stream}",'
                    f'"time":"{_rfc3339nano()}"}}\n')
        encoded = line.encode()
        if self.max_size and self.size + len(encoded) > self.max_size and self.size:
            self._rotate()
        self.since_check += len(encoded)
        if self.since_check >= CHECK_EVERY:
            self.since_check = 0
            if not self._room():  # leave the filesystem's last LOW_WATER to the metadata
                self.drop(1, len(data))
                self._start_dropping()
                return
        done = 0
        try:
            while done < len(encoded):
                done += os.write(self.fd, encoded[done:])
        except OSError:
            if done:
                try:
                    os.ftruncate(self.fd, self.size)  # no half line left behind
                except OSError:
                    pass
            self.drop(1, len(data))
            self._start_dropping()
            return
        self.size += len(encoded)
        if self.dropping:
            self.dropping = False
            self.save_drops()

    def _rotate(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        try:
            if self.max_file <= 1:
                os.truncate(self.path, 0)
            else:
                for n in range(self.max_file - 1, 0, -1):
                    older = f"{self.path}.{n}"
                    newer = self.path if n == 1 else f"{self.path}.{n - 1}"
                    if os.path.exists(newer):
                        os.replace(newer, older)
        except OSError:
            pass
        self._open()
        self.size = 0


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:
        return b""  # EIO: a pty master whose container side is gone


def pump(fds: dict[int, str], buffers: dict[int, bytes], log: LogWriter, pidfd: int) -> bool:
    """Copy output until the init exits; True once it has (pidfd readable)."""
    watch = list(fds) + [pidfd]
    readable, _, _ = select.select(watch, [], [])
    exited = pidfd in readable
    for fd in readable:
        if fd == pidfd:
            continue
        chunk = _read(fd)
        stream = fds[fd]
        if chunk and log.resting():  # not writing now: count and discard
            log.drop(chunk.count(b"\n"), len(chunk) + len(buffers[fd]))  # a line begun goes too
            buffers[fd] = b""
            continue
        if not chunk:
            if buffers[fd]:
                log.write(stream, buffers[fd], True)
                buffers[fd] = b""
            del fds[fd]
            os.close(fd)
            continue
        data = buffers[fd] + chunk
        while True:
            nl = data.find(b"\n")
            if nl < 0:
                break
            log.write(stream, data[:nl + 1], False)
            data = data[nl + 1:]
        while len(data) >= MAX_LINE:
            log.write(stream, data[:MAX_LINE], True)
            data = data[MAX_LINE:]
        buffers[fd] = data
    if log.dropping and not exited:
        time.sleep(DRAIN_PAUSE)  # let the pipes fill: a flood costs a read per pause
    return exited


def drain(fds: dict[int, str], buffers: dict[int, bytes], log: LogWriter) -> None:
    """After the init exited: read what is left (its pid namespace is gone, so EOF comes soon)."""
    deadline = time.monotonic() + 2.0
    while fds and time.monotonic() < deadline:
        readable, _, _ = select.select(list(fds), [], [], 0.2)
        if not readable:
            break
        for fd in readable:
            chunk = _read(fd)
            if not chunk:
                if buffers[fd]:
                    log.write(fds[fd], buffers[fd], True)
                    buffers[fd] = b""
                os.close(fd)
                del fds[fd]
                continue
            *lines, rest = (buffers[fd] + chunk).split(b"\n")
            for line in lines:
                log.write(fds[fd], line + b"\n", False)
            buffers[fd] = rest
    for fd, stream in list(fds.items()):
        if buffers[fd]:
            log.write(stream, buffers[fd], True)
        os.close(fd)
    fds.clear()
