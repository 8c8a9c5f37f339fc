"""The per-container monitor (nsbox's conmon): `python -m nsbox.engine.monitor ROOT RUN_ROOT ID FD`.

The engine starts it in a new session; it forks once more (so it is nobody's
child but init's) and makes itself a child subreaper, so the container's
init, once the runtime's intermediate process exits, becomes its child and
its exit status comes here.

One cycle per (re)start:

1. a short-lived helper child (which may import the heavy parts: sqlite3,
   the engine) runs `runtime create` with the container's stdout/stderr on
   pipes the monitor holds, then `runtime start`, and records the pid in
   SQLite; the first cycle's outcome goes back to the engine on FD;
2. the monitor itself only copies the pipes into the log file and waits
   for the init to exit (a pidfd);
3. another helper records the exit code, runs `runtime delete`, and decides
   on the restart policy (exit status 3 = restart), or unmounts the rootfs
   and, for --rm, removes the container.

An attached starter (`nsbox run` without -d) may take step 3 over, since it
has the engine loaded already and saves a helper its start-up: it hands
the monitor an ACK pipe.  The monitor then writes `exit CODE` on the DONE
pipe once the output is in the log, and waits: `done` on ACK means the
starter finished the container; end-of-file without it (the starter died)
means the monitor finishes it itself, as without a starter.

Keeping sqlite3 and the engine in the helpers keeps the idle monitor
small: it imports only os, sys, select, time and the C half of json.
"""

import os
import select
import sys
import time

from nsbox.engine.monitor_protocol import RESTART, monitor_name
from nsbox.engine.procs import crashpoint

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


def _pump(fds: dict[int, str], buffers: dict[int, bytes], log: LogWriter, pidfd: int) -> bool:
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


def _drain(fds: dict[int, str], buffers: dict[int, bytes], log: LogWriter) -> None:
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


_UNREAPED: list[int] = []  # helpers whose answer came before their exit
_WATCHING = [0]  # the init this monitor watches now: killed if the monitor must give up


def _helper(func_name: str, *args: str, answer_only: bool = False,
            keep: tuple[int, ...] = ()) -> tuple[int, bytes]:
    """Run lifecycle.monitor_helpers.<func_name>(*args, status_fd) in a child; (exit status, message).

    The child keeps only the fds in KEEP (and 0-2, and its status pipe).

    ANSWER_ONLY: an `ok ...` line means success at once, without waiting for
    the child's exit (the teardown of a forked Python takes milliseconds);
    _reap_helpers() collects it later.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(r)
        # The container's processes are forked from here: none may hold the
        # monitor's pipes (ready, done, ack), or their readers would wait on
        # a container that never starts for end-of-file.
        _close_all_but((w, *keep))
        code = 1
        try:
            from nsbox.engine.lifecycle import monitor_helpers
            code = getattr(monitor_helpers, func_name)(*args, w) or 0
        except BaseException as err:  # noqa: BLE001 - reported through the pipe
            try:
                os.write(w, f"err {err}\n".encode())
            except OSError:
                pass
            code = 1
        os._exit(code)
    os.close(w)
    chunks = []
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        pidfd = -1
    while True:
        if pidfd >= 0 and r not in select.select([r, pidfd], [], [])[0]:
            # The helper is gone without end-of-file: the container it was
            # making holds the pipe (a helper killed halfway).  Take what it said.
            os.set_blocking(r, False)
            try:
                chunks.append(os.read(r, 65536))
            except OSError:
                pass
            break
        chunk = os.read(r, 65536)
        if not chunk:
            break
        chunks.append(chunk)
        if answer_only and chunks[0].startswith(b"ok ") and chunk.endswith(b"\n"):
            os.close(r)
            if pidfd >= 0:
                os.close(pidfd)
            _UNREAPED.append(pid)
            return 0, b"".join(chunks)
    os.close(r)
    if pidfd >= 0:
        os.close(pidfd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks)


def _close_all_but(keep: tuple[int, ...]) -> None:
    """Close every fd above 2 but KEEP."""
    low = 3
    for fd in sorted(fd for fd in keep if fd >= 3):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 16)


def _reap_helpers() -> None:
    while _UNREAPED:
        try:
            os.waitpid(_UNREAPED.pop(), 0)
        except ChildProcessError:
            pass


def _reap_others(keep: int) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0 or pid == keep:
            return


LOOP_BINARY = "nsbox-monitor-loop"


def loop_binary(run_root: str = "") -> str:
    """The C loop built from monitor_loop.c with the package (setup.py), or "" if it is missing.

    It sits next to this module: `pip install .` puts it in the wheel and an
    editable install in the source tree.  Without it the monitor waits in
    Python (several MiB per container instead of ~0.1 MiB); `nsbox info`
    says which one is used.  RUN_ROOT is no longer used (the loop was once
    compiled there on first use).
    """
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), LOOP_BINARY)
    return path if os.access(path, os.X_OK) else ""


def _hand_exit(done_fd: int, ack_fd: int, exit_code: int) -> bool:
    """Tell the attached starter the exit code; True once it says it finished the container."""
    try:
        os.write(done_fd, f"exit {exit_code}\n".encode())
        answer = b""
        while chunk := os.read(ack_fd, 64):
            answer += chunk
            if answer.endswith(b"\n"):
                break
    except OSError:
        return False  # the starter is gone
    return answer == b"done\n"


def run(root: str, run_root: str, cid: str, ready_fd: int, log_path: str, driver: str,
        max_size: int, max_file: int, tty: bool, loop_bin: str,
        resume_code: int | None = None, done_fd: int = -1, ack_fd: int = -1) -> None:
    """Start/watch/finish cycles until the container stays down.

    With LOOP_BIN the watching is done by the C loop, which execs us again
    with `--resume` and the exit code (RESUME_CODE).  With ACK_FD the
    starter finishes the first exit (see the module's docstring), told on
    DONE_FD.
    """
    if resume_code is not None:
        crashpoint("monitor.resume")
        code, _ = _helper("monitor_finish", root, run_root, cid, str(resume_code), "0")
        _reap_others(-1)  # as below
        if code != RESTART:
            return
        time.sleep(0.1)
    first = ready_fd >= 0
    while True:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        listener, console = None, ""
        if tty:
            from nsbox.runtime.recvtty import listen
            os.makedirs(os.path.join(run_root, "tty"), mode=0o700, exist_ok=True)
            console = os.path.join(run_root, "tty", cid[:32])
            listener = listen(console)
        code, message = _helper("monitor_start", root, run_root, cid, str(out_w), str(err_w),
                                console, answer_only=True, keep=(out_w, err_w))
        os.close(out_w)
        os.close(err_w)
        text = message.decode(errors="replace").strip()
        if listener is not None:
            master = -1
            if text.startswith("ok "):
                from nsbox.runtime.console import recv_console_fd
                listener.settimeout(10)
                try:
                    master, _ = recv_console_fd(listener)
                except Exception:  # noqa: BLE001 - the container then runs with no log
                    master = -1
            listener.close()
            os.unlink(console)
            if master >= 0:
                # With a terminal, the runtime's own pipes carry nothing of the container's.
                os.close(out_r)
                os.close(err_r)
                out_r, err_r = master, os.open("/dev/null", os.O_RDONLY)
        fds = {out_r: "stdout", err_r: "stderr"}
        buffers = {out_r: b"", err_r: b""}
        log = LogWriter(log_path, driver, max_size, max_file)
        failed = text != "cancel" and (code != 0 or not text.startswith("ok "))
        if text == "cancel" or failed:  # stopped while waiting to restart, or could not start
            _drain(fds, buffers, log)
            log.close()
            if failed:
                _helper("monitor_finish", root, run_root, cid, "-1", "1")
        if not failed and text.endswith(" health"):
            # A healthcheck: its runner (health/runner.py), forked before the starter
            # hears, so a command right after `run -d` finds the runner's lock held.
            from nsbox.engine.health.runner import fork_from_monitor
            fork_from_monitor(root, run_root, cid, int(text.split()[1]), os.path.dirname(log_path))
        if first:
            # Answered after a failure is cleaned up, so the engine never sees it half-done.
            crashpoint("monitor.before_ready")
            try:
                os.write(ready_fd, (text or "err the monitor's helper failed").encode() + b"\n")
            except OSError:
                pass  # EPIPE: the starter is gone; the container is ours all the same
            os.close(ready_fd)
            first = False
        _reap_helpers()
        if text == "cancel" or failed:
            return
        init_pid = _WATCHING[0] = int(text.split()[1])
        crashpoint("monitor.watching")
        if loop_bin:
            log.close()
            os.set_inheritable(out_r, True)
            os.set_inheritable(err_r, True)
            os.execv(loop_bin, [loop_bin, str(init_pid), str(out_r), str(err_r), log_path, driver,
                                str(max_size), str(max_file), sys.executable, "-m",
                                "nsbox.engine.monitor", "--resume", root, run_root, cid, "-1",
                                log_path, driver, str(max_size), str(max_file),
                                "1" if tty else "0", loop_bin])
        try:
            pidfd = os.pidfd_open(init_pid)
        except ProcessLookupError:
            pidfd = -1
        status = None
        log.prepare_drops()
        if pidfd >= 0:
            while not _pump(fds, buffers, log, pidfd):
                pass
            os.close(pidfd)
        _drain(fds, buffers, log)
        log.close()
        try:
            _, raw = os.waitpid(init_pid, 0)
            status = os.waitstatus_to_exitcode(raw)
        except ChildProcessError:
            status = None  # not our child (should not happen): the helper asks the runtime
        _reap_others(init_pid)
        _WATCHING[0] = 0
        exit_code = 255 if status is None else (128 - status if status < 0 else status)
        if ack_fd >= 0 and _hand_exit(done_fd, ack_fd, exit_code):
            _reap_others(-1)
            return
        code, _ = _helper("monitor_finish", root, run_root, cid, str(exit_code), "0")
        # The finish stopped the container's slirp4netns, our child since the
        # start helper left: reap it, this host's init may not.
        _reap_others(-1)
        if code != RESTART:
            return
        time.sleep(0.1)


def detach_and_run(root: str, run_root: str, cid: str, ready_fd: int, log_path: str,
                   driver: str, max_size: int, max_file: int, tty: bool, loop_bin: str,
                   done_fd: int = -1, ack_fd: int = -1) -> None:
    """Become the container's monitor daemon and run it; the calling process exits at once.

    Called in a child of whoever starts the container (the engine forks one,
    or `python -m nsbox.engine.monitor`): it forks once more so the monitor
    is nobody's child, leaves the session and the terminal, and becomes a
    child subreaper.  Every way out is os._exit: a forked engine process must
    not run its parent's finalizers (SQLite connections among them).
    DONE_FD, ACK_FD: see run().
    """
    if os.fork() != 0:
        os._exit(0)  # the starter waits for this one; the daemon lives on, reparented
    try:
        if os.getsid(0) != os.getpid():
            os.setsid()
        devnull = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
        # From here the container is ours whatever happens to the starter: its
        # pipes' EPIPE is an error return (never a signal), a hang-up is ignored.
        import _signal  # the signal module costs an import of enum
        _signal.signal(_signal.SIGPIPE, _signal.SIG_IGN)  # kept across execve by the C loop
        _signal.signal(_signal.SIGHUP, _signal.SIG_IGN)
        from nsbox.runtime import syscalls
        syscalls.set_child_subreaper(True)  # survives execve, so the C loop keeps it
        name_process(cid)
        crashpoint("monitor.after_detach")
        run(root, run_root, cid, ready_fd, log_path, driver, max_size, max_file, tty, loop_bin,
            done_fd=done_fd, ack_fd=ack_fd)
    except BaseException as err:  # noqa: BLE001 - a monitor that cannot go on
        _give_up(root, run_root, cid, f"the monitor failed: {err.__class__.__name__}: {err}")
    finally:
        os._exit(0)


def _give_up(root: str, run_root: str, cid: str, reason: str) -> None:
    """The monitor cannot go on: stop the container it watches, and record why.

    A container nobody watches would run on with its output and exit lost.
    The helper kills what is left (runtime delete), records REASON in
    State.Error and honours --rm (lifecycle/recover.py, abandon).
    """
    with _suppress_all():
        if _WATCHING[0]:
            os.kill(_WATCHING[0], 9)
    with _suppress_all():
        _helper("monitor_abandon", root, run_root, cid, reason)
        _reap_others(-1)


class _suppress_all:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


def name_process(cid: str) -> None:
    """Name this process after CID's monitor (/proc/PID/comm).

    A forked monitor shows its starter's command line, not CID: the name is
    how the engine tells it from a recycled pid, and finds it before it has
    recorded its pid (lifecycle/host.py, monitor_processes).
    """
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(monitor_name(cid))
    except OSError:
        pass


def main(argv: list[str]) -> int:
    resume = argv[:1] == ["--resume"]
    if resume:
        argv = argv[1:]
    root, run_root, cid, ready_fd = argv[0], argv[1], argv[2], int(argv[3])
    log_path, driver, max_size, max_file = argv[4], argv[5], int(argv[6]), int(argv[7])
    tty, loop_bin = argv[8] == "1", argv[9]
    if resume:
        run(root, run_root, cid, -1, log_path, driver, max_size, max_file, tty, loop_bin,
            resume_code=int(argv[10]))
        return 0
    done_fd = int(argv[10]) if len(argv) > 10 else -1
    ack_fd = int(argv[11]) if len(argv) > 11 else -1
    for fd in (done_fd, ack_fd):
        if fd >= 0:
            # Held, not passed on: the starter sees end-of-file when we are gone.
            os.set_inheritable(fd, False)
    detach_and_run(root, run_root, cid, ready_fd, log_path, driver, max_size, max_file, tty,
                   loop_bin, done_fd, ack_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
