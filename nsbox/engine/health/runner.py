"""The healthcheck runner of one container, and `healthcheck run`.

There is no daemon: the container's monitor forks a runner when the start
helper says the container has a check (`ok PID health`, monitor.py), before
it answers the starter and execs its C loop.  A container without a check gets no runner
and nothing of this module is imported for it.

The runner (named `nsbhc-<id prefix>`) holds an flock on
<bundle>/health.runner for its whole life and watches the init through a
pidfd: it runs a check every interval (state.py has the rules), and exits
when the init exits, killing a check in progress.  It does not depend on
the monitor: if the monitor dies the runner goes on, and if both die, the
next command that looks at the running container (ps, inspect, healthcheck
run...: EngineBase.get/list) finds the lock free and starts a new runner
(recover.ensure_runner) which goes on from the recorded status.  Two runners
cannot both hold the lock: a second one exits.

    python -m nsbox.engine.health.runner ROOT RUN_ROOT ID INIT_PID BUNDLE
"""

from __future__ import annotations

import os
import sys

from nsbox.engine.health.recover import open_lock as _open_lock
from nsbox.engine.health.recover import try_lock as _try_lock

LOCK_WAIT = 10.0  # seconds a new runner waits for an old one (of the last start) to go


def runner_name(cid: str) -> str:
    """The runner's /proc/PID/comm (15 characters at most)."""
    return "nsbhc-" + cid[:8]


def _become_runner(cid: str, keep: int = -1) -> None:
    """Take the runner's name; with KEEP, close every fd above 2 but KEEP (a forked runner
    must not hold the monitor's pipes: their readers wait for end-of-file)."""
    if keep >= 3:
        os.closerange(3, keep)
        os.closerange(keep + 1, 1 << 16)
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(runner_name(cid))
    except OSError:
        pass


def fork_from_monitor(root: str, run_root: str, cid: str, init_pid: int, bundle: str) -> None:
    """Fork the runner (the monitor calls this; it must stay light: os and fcntl only).

    The lock is taken here, before the fork, so a command that looks right
    after `run -d` returns finds it held and starts no second runner.
    """
    try:
        fd = _open_lock(bundle)
    except OSError:
        return
    locked = _try_lock(fd)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            _become_runner(cid, fd)
            # The monitor runs with the collector off, so that no object it inherited
            # (an SQLite connection whose fd was closed) is finalized onto a reused fd.
            # A long-lived runner wants it on: the inherited objects are frozen out of it.
            import gc
            gc.freeze()
            gc.enable()
            serve(root, run_root, cid, init_pid, fd, locked)
        except BaseException:  # noqa: BLE001, S110 - a runner never takes its parent down
            pass
        finally:
            os._exit(0)
    os.close(fd)


def serve(root: str, run_root: str, cid: str, init_pid: int, lock_fd: int, locked: bool) -> None:
    """Check CID every interval while INIT_PID lives (and we hold LOCK_FD's lock)."""
    import select
    import time

    try:
        pidfd = os.pidfd_open(init_pid)
    except OSError:
        return
    deadline = time.monotonic() + LOCK_WAIT
    while not locked:
        if select.select([pidfd], [], [], 0.1)[0] or time.monotonic() > deadline:
            return  # the container is gone, or another runner serves it
        locked = _try_lock(lock_fd)
    from nsbox.engine.health.config import effective
    from nsbox.engine.health.state import STARTING, status
    from nsbox.engine.lifecycle.state import EngineBase
    from nsbox.engine.model import PAUSED

    engine = EngineBase(root, run_root)
    c = _current(engine, cid, init_pid)
    if c is None:
        return
    config = effective(c.extra.get("healthcheck"))
    if config is None:
        return
    interval, start_interval = config["Interval"] / 1e9, config["StartInterval"] / 1e9
    start_period = config["StartPeriod"] / 1e9
    while True:
        wait = interval
        if time.time() - c.started_at < start_period and status(c.bundle) == STARTING:
            wait = start_interval
        if select.select([pidfd], [], [], wait)[0]:
            return
        c = _current(engine, cid, init_pid)
        if c is None:
            return
        if c.state == PAUSED:
            continue  # a frozen container would only time the check out (Docker skips too)
        if check_once(engine, c, config, stop_fd=pidfd, die_with_us=True) is None:
            return


def _current(engine, cid: str, init_pid: int):  # noqa: ANN001, ANN202
    """CID's record while it is still the run of INIT_PID, else None (read, not reconciled)."""
    from nsbox.engine.lifecycle.record import Container
    from nsbox.engine.model import PAUSED, RUNNING
    row = engine.db.container(cid)
    if row is None or row["pid"] != init_pid or row["state"] not in (RUNNING, PAUSED):
        return None
    return Container.from_row(row)


def check_once(engine, c, config: dict, stop_fd: int = -1, die_with_us: bool = False):  # noqa: ANN001, ANN201
    """Run C's check now and record it; (Result, status after), or None if C stopped meanwhile."""
    from nsbox.engine.health import probe, state
    from nsbox.engine.health.config import probe_command
    from nsbox.engine.lifecycle.host import runtime_root

    command = probe_command(config, c.extra.get("health_shell"))
    argv = [c.runtime, "--root", runtime_root(engine.run_root, c.runtime),
            *engine.oci(c.runtime).global_args, "exec", c.id, *command]
    timeout_text = probe.timeout_message(config["Timeout"])
    exec_id = _exec_events(engine, c, command)
    result = probe.run(argv, config["Timeout"] / 1e9, stop_fd=stop_fd, die_with_us=die_with_us,
                       timeout_text=timeout_text)
    _exec_died(engine, c, exec_id, result, timeout_text)
    if result is None or _stopped(stop_fd):
        return None  # the container ended under the check: nothing to say about its health
    try:
        before, after = state.record(c.bundle, result, config["Retries"],
                                    config["StartPeriod"] / 1e9, c.started_at)
    except FileNotFoundError:
        return None  # removed meanwhile
    except OSError:
        # Not recorded (a full disk): the check goes on; the status stays as recorded.
        return result, state.status(c.bundle)
    if after != before:
        _emit(engine, c, after)
    return result, after


def _stopped(fd: int) -> bool:
    import select
    return fd >= 0 and bool(select.select([fd], [], [], 0)[0])


def _exec_events(engine, c, command: list[str]) -> str:  # noqa: ANN001
    """Docker's `exec_create: CMD` and `exec_start: CMD` of a check (a check is an exec there
    too, and tools that follow events expect them); the exec id."""
    from nsbox.engine.events import emit_container
    exec_id = os.urandom(32).hex()
    shown = " ".join(command)
    emit_container(engine.root, c, f"exec_create: {shown}", execID=exec_id)
    emit_container(engine.root, c, f"exec_start: {shown}", execID=exec_id)
    return exec_id


def _exec_died(engine, c, exec_id: str, result, timeout_text: str) -> None:  # noqa: ANN001
    """Docker's `exec_die` of a check with its exit code; a check killed (at its timeout, or
    because the container ended) died of SIGKILL: 137."""
    from nsbox.engine.events import emit_container
    code = 137 if result is None or (result.exit_code < 0 and result.output == timeout_text) \
        else result.exit_code
    emit_container(engine.root, c, "exec_die", execID=exec_id, exitCode=code)


def _emit(engine, c, status: str) -> None:  # noqa: ANN001
    """Docker's `health_status: STATUS` container event, in the events journal."""
    from nsbox.engine.events import emit_container
    emit_container(engine.root, c, f"health_status: {status}")


def run_now(engine, ref: str):  # noqa: ANN001, ANN201
    """`healthcheck run`: C's check once, now; (Result, status after).

    InvalidState if C is not running, NsboxError if it has no healthcheck.
    """
    from nsbox.engine.health.config import effective
    from nsbox.engine.model import PAUSED, RUNNING
    from nsbox.errors import InvalidState, NsboxError

    c = engine.get(ref)
    config = effective(c.extra.get("healthcheck"))
    if config is None:
        raise NsboxError(f"container {c.name} has no healthcheck")
    if c.state == PAUSED:
        raise InvalidState(f"container {c.name} is paused, unpause the container first")
    if c.state != RUNNING:
        raise InvalidState(f"container {c.name} is not running")
    try:
        pidfd = os.pidfd_open(c.pid)
    except OSError:
        raise InvalidState(f"container {c.name} is not running") from None
    try:
        done = check_once(engine, c, config, stop_fd=pidfd)
    finally:
        os.close(pidfd)
    if done is None:
        raise InvalidState(f"container {c.name} stopped during its healthcheck")
    return done


def health(engine, ref: str) -> dict | None:  # noqa: ANN001
    """Docker's State.Health of REF ({Status, FailingStreak, Log}), None without a healthcheck."""
    from nsbox.engine.health.state import read
    c = engine.get(ref)
    if not c.extra.get("healthcheck"):  # create keeps it only if there is a check to run
        return None
    return read(c.bundle)


def main(argv: list[str]) -> int:
    root, run_root, cid, init_pid, bundle = argv[0], argv[1], argv[2], int(argv[3]), argv[4]
    try:
        fd = _open_lock(bundle)
    except OSError:
        return 0  # removed meanwhile
    if not _try_lock(fd):
        return 0  # a runner serves it
    if os.fork() != 0:
        return 0  # the spawner waits for this one; the runner lives on with the lock
    try:
        _become_runner(cid)
        serve(root, run_root, cid, init_pid, fd, True)
    finally:
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
