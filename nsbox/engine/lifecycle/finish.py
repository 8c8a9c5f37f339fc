"""A container's exit: the exit record, the restart policy, --rm, and wait().

finish_exit runs once per exit of the container's process: in a helper of
its monitor (monitor_helpers.monitor_finish), or in an attached starter the
monitor handed the finish to (lifecycle/start.py, AttachedRun).
"""

from __future__ import annotations

import os
import time

from nsbox._lite import suppress
from nsbox.engine.lifecycle.host import exit_file
from nsbox.engine.lifecycle.record import RESTARTED_BY_USER, Container, spec_from_json
from nsbox.engine.lifecycle.remove import remove_now
from nsbox.engine.model import CREATED, DEAD, EXITED, RESTARTING, RestartPolicy
from nsbox.engine.procs import crashpoint, pid_alive
from nsbox.errors import ContainerNotFound, NsboxError

TYPE_CHECKING = False  # typing's own constant costs an import of typing
if TYPE_CHECKING:
    from nsbox.engine.lifecycle.state import EngineBase


def finish_exit(engine: EngineBase, cid: str, code: int, failed: bool = False,
                auto_remove: bool = True) -> bool:
    """Record CID's exit CODE (FAILED: it never started) and delete its runtime state.

    True if its restart policy restarts it; else its rootfs is unmounted,
    and with --rm (unless not AUTO_REMOVE, or `restart` stopped it) it is
    removed, its exit file kept for wait() (lifecycle/remove.py).  A user's
    rm may remove it first: then there is nothing left to do.
    """
    db = engine.db
    row = db.container(cid)
    if row is None:
        return False
    oci = engine.oci(row["runtime"])
    # Before delete removes the cgroup: was the container's process OOM-killed?
    oom_killed = code == 137 and not failed and oci.oom_kills(cid) > 0
    oci.delete(cid)
    crashpoint("finish.after_runtime_delete")
    spec = spec_from_json(row["spec"])
    if spec.network_mode.startswith("slirp4netns") or spec.network_mode == "pasta":
        from nsbox.engine.network import slirp
        slirp.stop(engine.run_root, cid)
    os.makedirs(os.path.join(engine.run_root, "exits"), exist_ok=True)
    with open(exit_file(engine.run_root, cid), "w") as f:
        f.write(str(code if not failed else 127))
    if not failed and not row["stopped_by_user"] and should_restart(spec.restart, code,
                                                                    row["restart_count"]):
        _emit_exit(engine, row, code, oom_killed, time.time())
        db.update_container(cid, exit_code=code, finished_at=time.time(), pid=0,
                            oom_killed=oom_killed)
        db.increment_restart(cid)
        db.update_container(cid, state=RESTARTING)
        return True
    if spec.publish or spec.publish_all:  # released at stop, published again at start
        with suppress(Exception):
            if spec.network_mode.startswith("slirp4netns") or spec.network_mode == "pasta":
                from nsbox.engine.network import slirp_ports
                slirp_ports.unpublish(engine, cid)  # slirp4netns held them: gone above
            else:
                from nsbox.engine.network import ports
                ports.unpublish(engine, cid)
    with suppress(NsboxError):
        engine.storage.unmount(cid)
    if failed:
        db.update_container(cid, state=CREATED, pid=0, exit_code=127)
    else:
        # Before the record: whoever wait()s for the exit then finds the `die` in the journal.
        _emit_exit(engine, row, code, oom_killed, time.time())
        db.update_container(cid, state=EXITED, pid=0, exit_code=code, finished_at=time.time(),
                            oom_killed=oom_killed)
    crashpoint("finish.after_exit_record")
    # An attached `run` still reading the output removes it itself, after;
    # should it die first, the next command does (lifecycle/recover.py).
    reader = row.get("reader_pid", 0)
    if spec.auto_remove and auto_remove and row["stopped_by_user"] != RESTARTED_BY_USER and \
            not (reader and reader != os.getpid() and pid_alive(reader)):
        remove_now(engine, cid, volumes=True, keep_exit_code=True)
    return False


def _emit_exit(engine: EngineBase, row: dict, code: int, oom_killed: bool, now: float) -> None:
    """The `oom` (the cgroup counted an OOM kill) and `die` events of this exit, in that order."""
    from nsbox.engine.events import emit_container
    if oom_killed:
        emit_container(engine.root, row, "oom")
    started = row.get("started_at") or 0
    duration = f"{max(0, int(now - started))}" if started else "0"
    emit_container(engine.root, row, "die", exitCode=code, execDuration=duration)


def should_restart(policy: RestartPolicy, code: int, count: int) -> bool:
    if policy.name in ("always", "unless-stopped"):
        return True
    if policy.name == "on-failure":
        return code != 0 and (policy.max_retries <= 0 or count < policy.max_retries)
    return False


def wait(engine: EngineBase, ref: str, wake_fd: int = -1) -> int:
    """Block until the container is not running (or is removed by --rm); its exit code.

    WAKE_FD: the pipe start(notify=True) returned, to notice the exit at once.
    """
    from nsbox.engine.logs import nap
    try:
        c = engine.get(ref)
    except ContainerNotFound:
        # A --rm container may be gone already; its exit code stays behind by full id.
        try:
            with open(exit_file(engine.run_root, os.path.basename(ref))) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            raise ContainerNotFound(f"no such container: {ref}") from None
    while True:
        row = engine.db.container(c.id)
        try:
            if row is None:
                raise ContainerNotFound(c.id)
            c = engine._reconcile(Container.from_row(row))
        except ContainerNotFound:
            # Removed (--rm) meanwhile, maybe while being reconciled.
            try:
                with open(exit_file(engine.run_root, c.id)) as f:
                    return int(f.read().strip())
            except (OSError, ValueError):
                return c.exit_code
        if c.state in (EXITED, DEAD) or (c.state == CREATED and c.started_at):
            return c.exit_code
        wake_fd = nap(wake_fd, 0.05)
