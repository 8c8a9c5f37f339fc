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
    # Here, not at the top: the engine imports this module for loop_binary alone.
    from nsbox.engine.monitor_log import LogWriter, drain, pump

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
            drain(fds, buffers, log)
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
            while not pump(fds, buffers, log, pidfd):
                pass
            os.close(pidfd)
        drain(fds, buffers, log)
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
