"""OCI lifecycle hooks: run each configured hook with the container state on stdin.

Where a hook runs is the caller's business: createRuntime, prestart, poststart
and poststop hooks are run by the runtime process in the host namespaces;
createContainer and startContainer hooks by the container's init, inside the
container namespaces, before it execs the user process.  This module only
knows how to run one list of hooks, and is written to be safe in both places:
no threads, no subprocess module, just fork/exec and a poll loop on a pidfd,
so it works in a freshly forked (single-threaded) init as well.

Environment: a hook's `env` is its whole environment (an empty list: none);
without `env` it inherits the runtime's (as runc and crun do), minus the
socket-activation variables LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES.

I/O of a hook:
  * stdin   the container state as compact JSON, then end of file;
  * stdout and stderr  captured through pipes, never mixed into the runtime's
    own stdout (which may carry the container's output, or JSON a caller
    parses).  A failing hook's error message carries the last line of its
    stderr (or of its stdout when stderr was empty); the full captured tail is
    logged at debug level, or at warning level for a failed non-fatal hook.

A hook that leaves a background process holding its stdout open does not
make us wait: once the hook itself has exited we read what is already there
and stop.  On timeout the hook is killed with SIGKILL together with its
process group (it is started as a group leader), so nothing it spawned lingers.

Callers must not reap children concurrently (no SIGCHLD handler doing
waitpid(-1)); the hook's pid is reaped here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from nsbox import _lazylog
from nsbox._lazylog import get_logger
from nsbox._record import record
from nsbox.errors import HookError
from nsbox.runtime.spec import HOOK_KINDS, Hook

log = get_logger(__name__)

# Hooks whose failure the spec says must only be logged.
NON_FATAL_KINDS = ("poststart", "poststop")

# How much of each output stream is kept for error messages and logs.
_OUTPUT_TAIL_BYTES = 16 * 1024


@record
class HookResult:
    """What one finished hook did: its wait status and the tail of its output."""

    status: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False


def preload() -> None:
    """Import what running a hook needs, for callers that will lose the host's
    Python library (the container's init after pivot_root)."""
    import fcntl  # noqa: F401
    import json  # noqa: F401
    import select  # noqa: F401
    import signal  # noqa: F401

    from nsbox.runtime import syscalls  # noqa: F401


def run_hooks(kind: str, hooks: Sequence[Hook], state: dict, *, cwd: str | None = None,
              fatal: bool | None = None) -> None:
    """Run `hooks` of lifecycle `kind` in order, each fed `state` as JSON on stdin.

    A failure of a fatal kind raises HookError at the first failing hook;
    poststart/poststop failures (or any when fatal=False) are logged and the
    remaining hooks still run.  `cwd` is the hooks' working directory
    (default: the caller's).
    """
    if kind not in HOOK_KINDS:
        raise ValueError(f"unknown hook kind {kind!r}")
    if not hooks:
        return
    if fatal is None:
        fatal = kind not in NON_FATAL_KINDS
    import json

    state_json = json.dumps(state, separators=(",", ":")).encode()
    for hook in hooks:
        try:
            run_hook(kind, hook, state_json, cwd=cwd)
        except HookError as err:
            if fatal:
                raise
            log.warning("%s (ignored: %s hooks are not fatal)", err, kind)


def run_poststop_hooks(hooks: Sequence[Hook], state: dict, *, cwd: str | None = None) -> None:
    """Run poststop hooks; failures are only logged, as the spec requires."""
    run_hooks("poststop", hooks, state, cwd=cwd, fatal=False)


def run_hook(kind: str, hook: Hook, state_json: bytes, *, cwd: str | None = None) -> HookResult:
    """Run one hook to completion; raise HookError unless it exits with status 0."""
    what = f"{kind} hook {hook.path}"
    result = _execute(what, hook, state_json, cwd)
    if result.timed_out:
        _log_output(_lazylog.DEBUG, what, result)
        raise HookError(f"{what} timed out after {hook.timeout}s")
    if result.status != 0:
        # The error carries the last line; the full tail at warning level would make
        # the CLI's one-line error several lines (--debug still shows it).
        _log_output(_lazylog.DEBUG, what, result)
        message = f"{what} failed: {_describe_status(result.status)}"
        last = _last_line(result.stderr) or _last_line(result.stdout)
        if last:
            message += f": {last}"
        raise HookError(message)
    _log_output(_lazylog.DEBUG, what, result)
    return result


# ---------------------------------------------------------------- internals
def _execute(what: str, hook: Hook, state_json: bytes, cwd: str | None) -> HookResult:
    # Imported before the fork so the child only finds them in sys.modules.
    import fcntl  # noqa: F401
    import signal  # noqa: F401

    from nsbox.runtime import syscalls  # noqa: F401

    argv = list(hook.args) if hook.args else [hook.path]
    env = _runtime_env() if hook.env is None else _env_mapping(what, hook.env)

    # All our ends are close-on-exec (the Python default); the child dups its
    # ends onto 0-2, which clears the flag on those copies only.
    stdin_r, stdin_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    exec_err_r, exec_err_w = os.pipe()
    try:
        pid = os.fork()
    except OSError as err:
        for fd in (stdin_r, stdin_w, out_r, out_w, err_r, err_w, exec_err_r, exec_err_w):
            os.close(fd)
        raise HookError(f"{what}: cannot fork: {err.strerror}") from err
    if pid == 0:
        _child(hook.path, argv, env, cwd, (stdin_r, out_w, err_w), exec_err_w)
    for fd in (stdin_r, out_w, err_w, exec_err_w):
        os.close(fd)

    reaped = supervised = False
    try:
        exec_error = _read_all(exec_err_r)
        os.close(exec_err_r)
        exec_err_r = -1
        if exec_error:
            os.waitpid(pid, 0)
            reaped = True
            raise HookError(f"{what}: cannot execute: {exec_error.decode(errors='replace')}")
        # From here on _supervise owns (and closes) stdin_w.
        supervised = True
        result = _supervise(pid, hook.timeout, state_json, stdin_w, out_r, err_r)
        reaped = True
        return result
    finally:
        if exec_err_r >= 0:
            os.close(exec_err_r)
        if not supervised:
            os.close(stdin_w)
        os.close(out_r)
        os.close(err_r)
        if not reaped:
            # Only reached when something raised mid-way (even KeyboardInterrupt):
            # never leave the hook running or a zombie behind.
            _kill_hook(pid)
            os.waitpid(pid, 0)


def _child(path: str, argv: list[str], env: dict[str, str], cwd: str | None,
           stdio: tuple[int, int, int], exec_err_w: int) -> None:
    """In the forked child: set up stdio and signals, then execve. Never returns."""
    try:
        import fcntl
        import signal

        # Own process group, so a timeout can kill what the hook spawned too.
        os.setpgid(0, 0)
        # Lift the pipe ends above 2 first: if the runtime ran with a closed
        # stdio fd, a pipe end may itself be 0, 1 or 2 and dup2 would clobber it.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in stdio]
        for target, fd in enumerate(high):
            os.dup2(fd, target)
        if cwd is not None:
            os.chdir(cwd)
        try:
            from nsbox.runtime import syscalls

            # Whatever fd the runtime holds without O_CLOEXEC is not the hook's business.
            syscalls.close_range(3, flags=syscalls.CLOSE_RANGE_CLOEXEC)
        except OSError:
            pass  # pre-5.11 kernel: Python's own fds are close-on-exec anyway
        # Ignored dispositions and the signal mask survive execve; Python ignores
        # SIGPIPE and SIGXFSZ, and the runtime may block signals it forwards.
        for signum in signal.valid_signals():
            try:
                if signal.getsignal(signum) == signal.SIG_IGN:
                    signal.signal(signum, signal.SIG_DFL)
            except (OSError, ValueError):
                pass
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.execve(path, argv, env)
    except BaseException as err:  # noqa: B036 - anything must end in _exit here
        try:
            message = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            os.write(exec_err_w, message.encode(errors="replace") or b"exec failed")
        finally:
            os._exit(127)
    os._exit(127)  # unreachable: execve does not return


def _supervise(pid: int, timeout: int | None, state_json: bytes, stdin_w: int, out_r: int,
               err_r: int) -> HookResult:
    """Feed stdin, collect output and wait for `pid` with a deadline; reaps pid."""
    import select

    deadline = None if timeout is None else time.monotonic() + timeout
    outputs = {out_r: bytearray(), err_r: bytearray()}
    open_outputs = {out_r, err_r}
    pending = memoryview(state_json)
    pidfd = -1
    stdin_open = True
    try:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            pass  # no pidfd (pre-5.3 kernel): fall back to a waitpid tick
        poller = select.poll()
        if pidfd >= 0:
            poller.register(pidfd, select.POLLIN)
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
            poller.register(fd, select.POLLIN)
        os.set_blocking(stdin_w, False)
        if pending:
            poller.register(stdin_w, select.POLLOUT)
        else:
            os.close(stdin_w)
            stdin_open = False
        while True:
            wait_ms = None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    _kill_hook(pid)
                    _, status = os.waitpid(pid, 0)
                    _drain(outputs, open_outputs)
                    return HookResult(status, bytes(outputs[out_r]), bytes(outputs[err_r]),
                                      timed_out=True)
                wait_ms = int(remaining * 1000) + 1
            if pidfd < 0:
                wait_ms = 20 if wait_ms is None else min(wait_ms, 20)
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
            try:
                events = poller.poll(wait_ms)
            except InterruptedError:
                continue
            for fd, event in events:
                if fd == pidfd:
                    _, status = os.waitpid(pid, 0)
                    _drain(outputs, open_outputs)
                    return HookResult(status, bytes(outputs[out_r]), bytes(outputs[err_r]))
                if fd == stdin_w:
                    try:
                        written = os.write(stdin_w, pending) if event & select.POLLOUT else 0
                    except BrokenPipeError:
                        # The hook does not read its state; that is its right.
                        written, pending = 0, memoryview(b"")
                    except BlockingIOError:
                        written = 0
                    pending = pending[written:]
                    if not pending or event & (select.POLLERR | select.POLLHUP):
                        poller.unregister(stdin_w)
                        os.close(stdin_w)
                        stdin_open = False
                    continue
                if not _read_into(fd, outputs[fd]):
                    poller.unregister(fd)
                    open_outputs.discard(fd)
        # Only the waitpid-tick fallback gets here.
        _drain(outputs, open_outputs)
        return HookResult(status, bytes(outputs[out_r]), bytes(outputs[err_r]))
    finally:
        if pidfd >= 0:
            os.close(pidfd)
        if stdin_open:
            _close_quietly(stdin_w)


def _read_into(fd: int, buffer: bytearray) -> bool:
    """Read one chunk from fd into the bounded buffer; False on end of file."""
    try:
        chunk = os.read(fd, 65536)
    except BlockingIOError:
        return True
    if not chunk:
        return False
    _append_tail(buffer, chunk)
    return True


def _append_tail(buffer: bytearray, chunk: bytes) -> None:
    buffer += chunk
    if len(buffer) > _OUTPUT_TAIL_BYTES:
        del buffer[:-_OUTPUT_TAIL_BYTES]


def _drain(outputs: dict[int, bytearray], open_outputs: set[int]) -> None:
    """After the hook exited: take what is buffered, without waiting on writers it left behind."""
    for fd in open_outputs:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            _append_tail(outputs[fd], chunk)


def _kill_hook(pid: int) -> None:
    import signal

    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# Socket activation names fds of the runtime, which a hook does not get (runc
# unsets these at create, as go-systemd's activation.Files does).
_NOT_INHERITED = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def _runtime_env() -> dict[str, str]:
    """A hook without `env` runs with the runtime's environment, as with runc and crun."""
    env = dict(os.environ)
    for name in _NOT_INHERITED:
        env.pop(name, None)
    return env


def _env_mapping(what: str, entries: Sequence[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for entry in entries:
        name, sep, value = entry.partition("=")
        if not sep or not name:
            # execve would accept it, but os.execve takes a mapping; such an
            # entry means nothing to getenv(3) anyway.
            log.warning("%s: ignoring env entry without a name: %r", what, entry)
            continue
        env[name] = value
    return env


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except InterruptedError:
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _describe_status(status: int) -> str:
    if os.WIFEXITED(status):
        return f"exit status {os.WEXITSTATUS(status)}"
    if os.WIFSIGNALED(status):
        import signal

        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = str(signum)
        return f"killed by signal {name}"
    return f"wait status {status:#x}"


def _last_line(data: bytes) -> str:
    for line in reversed(data.decode(errors="replace").splitlines()):
        if line.strip():
            return line.strip()
    return ""


def _log_output(level: int, what: str, result: HookResult) -> None:
    if not log.isEnabledFor(level):
        return
    for name, data in (("stdout", result.stdout), ("stderr", result.stderr)):
        if data:
            log.log(level, "%s %s: %s", what, name, data.decode(errors="replace").rstrip())
