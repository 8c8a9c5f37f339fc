"""What a container's monitor runs in its short-lived helper children (see monitor.py).

The monitor itself never imports sqlite3 or the engine: it forks a helper
that calls one of these functions with the monitor's arguments and a
STATUS_FD to answer on, and reads the helper's answer and exit status
(docs/engine.md, "The monitor hand-over").  Each builds its own EngineBase
from ROOT and RUN_ROOT.
"""

from __future__ import annotations

import os
import time

from nsbox import _json
from nsbox._lite import suppress
from nsbox.engine.lifecycle.finish import finish_exit
from nsbox.engine.lifecycle.host import open_stdin_fifo, runtime_root
from nsbox.engine.lifecycle.record import STARTING, Container
from nsbox.engine.lifecycle.state import EngineBase
from nsbox.engine.model import EXITED, RESTARTING, RUNNING
from nsbox.engine.monitor_protocol import RESTART
from nsbox.engine.oci import runtime_for
from nsbox.engine.procs import crashpoint
from nsbox.errors import NsboxError


def monitor_start(root: str, run_root: str, cid: str, out_w: str, err_w: str, console: str,
                  status_fd: int) -> int:
    """Mount, create and start the container; write 'ok PID', 'cancel' or 'err MESSAGE' to STATUS_FD.

    The rootfs is mounted here rather than by the starter, which then need
    not load the syscall layer (ctypes) before the container runs.
    """
    engine = EngineBase(root, run_root)
    db = engine.db
    row = db.container(cid)
    if row is None:
        os.write(status_fd, b"err the container was removed\n")
        return 1
    if row["state"] not in (STARTING, RESTARTING):
        # Our starter died and the next command undid the start (recover.py).
        os.write(status_fd, b"err the start was abandoned\n")
        return 1
    if row["stopped_by_user"] and row["state"] == RESTARTING:
        with suppress(NsboxError):
            engine.storage.unmount(cid)
        db.update_container(cid, state=EXITED, pid=0)
        os.write(status_fd, b"cancel\n")
        return 0
    runtime, bundle = row["runtime"], row["bundle"]
    os.makedirs(runtime_root(run_root, runtime), mode=0o700, exist_ok=True)
    oci = runtime_for(run_root, runtime)
    if oci.state(cid) is not None:
        oci.delete(cid)
    pid_file = os.path.join(bundle, "init.pid")
    runtime_log = os.path.join(bundle, "runtime.log")
    with suppress(FileNotFoundError):
        os.unlink(pid_file)
    spec = _json.loads(row["spec"] or "{}")
    interactive = not console and spec.get("interactive", False)
    network = spec.get("network_mode") or ""
    user_mode = network.startswith("slirp4netns") or network == "pasta"  # slirp4netns, pasta
    null = open_stdin_fifo(run_root, cid) if interactive else os.open("/dev/null", os.O_RDONLY)
    try:
        engine.storage.mount(cid)  # already mounted on a restart
        fill_new_volumes(engine, Container.from_row(row))
        if user_mode:
            from nsbox.engine.network import netns, slirp
            netns.make_netns(run_root, cid)
        elif os.path.exists(os.path.join(run_root, "wiring", cid)):
            from nsbox.engine.network import wiring
            if wiring.failed(run_root, cid):  # an earlier start failed there: again
                from nsbox.engine.network import attach
                attach.rewire(engine, cid)
        oci.create(cid, bundle, pid_file, console, (null, int(out_w), int(err_w)), runtime_log)
        crashpoint("helper.after_create")
        with open(pid_file) as f:
            pid = int(f.read().strip())
        if user_mode:
            slirp.start(run_root, cid, network)
        elif os.path.exists(os.path.join(run_root, "wiring", cid)):
            # A bridge network's interfaces are made alongside (network/wiring.py):
            # the container's process must not run before they are up.
            from nsbox.engine.network import wiring
            wiring.wait(run_root, cid)
        if '"guard"' in (row["extra"] or ""):
            _guard_watch(engine, row, spec, pid)  # before its first instruction runs
        oci.start(cid)
    except NsboxError as exc:
        reason = str(exc).strip() or "the runtime failed"  # create's already has its --log error
        if user_mode:
            from nsbox.engine.network import slirp
            slirp.stop(run_root, cid)
        oci.delete(cid)
        db.update_container(cid, error=reason)
        os.write(status_fd, f"err {reason}\n".encode())
        return 1
    finally:
        os.close(null)
    health = _health_reset(row)
    db.update_container(cid, state=RUNNING, pid=pid, started_at=time.time(), finished_at=0,
                        exit_code=0, monitor_pid=os.getppid(), error="")
    crashpoint("helper.after_running")
    # Before the answer: the container may exit (and its die be emitted) right after.
    from nsbox.engine.events import emit_container
    emit_container(root, row, "start")
    try:
        os.write(status_fd, f"ok {pid}{health}\n".encode())
    except OSError:
        # EPIPE: our monitor died while we started the container, and nobody
        # would watch it: stop it again and say why (its starter sees EOF).
        from nsbox.engine.lifecycle.recover import abandon
        abandon(engine, cid, "the monitor died while starting the container")
        return 1
    return 0


def _health_reset(row: dict) -> str:
    """The answer's suffix: " health" if the container has a check (its monitor then forks
    the runner, nsbox/engine/health/runner.py), after resetting its status to `starting`."""
    if '"healthcheck"' not in (row["extra"] or ""):
        return ""  # the common case: nothing of the health code is imported
    from nsbox.engine.health import config, state
    if config.effective(_json.loads(row["extra"]).get("healthcheck")) is None:
        return ""
    try:
        state.reset(row["bundle"])
    except OSError:
        pass  # (a full disk) the runner goes on from the last status; the start must not fail
    return " health"


def _guard_watch(engine: EngineBase, row, spec: dict, pid: int) -> None:  # noqa: ANN001
    """Hand the created container to the host's guard process (nsbox/engine/guard)."""
    extra = _json.loads(row["extra"] or "{}")
    if not extra.get("guard"):
        return
    from nsbox.engine.guard import client
    context = {"id": row["id"], "name": row["name"], "image": row["image"],
               "labels": spec.get("labels") or {}, "network": spec.get("network_mode") or "",
               "entrypoint": extra.get("path", "")}
    client.watch(engine.root, context, extra["guard"], pid, row["bundle"])


def fill_new_volumes(engine: EngineBase, c: Container) -> None:
    """An empty volume gets the image's files at its mount point, as with Docker (not with
    nocopy); at the container's first start only, so a volume it emptied stays empty."""
    targets = c.extra.get("volumes") or {}
    if not targets or c.started_at:
        return
    from nsbox.engine.volumes import fill_from_image
    nocopy = {os.path.normpath(m.target) for m in c.spec.mounts
              if m.type == "volume" and "nocopy" in m.options}
    merged = None
    for target, name in targets.items():
        data = os.path.join(engine.volumes.dir, name, "_data")
        if target in nocopy or not os.path.isdir(data) or os.listdir(data):
            continue
        merged = merged or engine.storage.rootfs(c.id).merged
        fill_from_image(merged, target, data)


def monitor_finish(root: str, run_root: str, cid: str, exit_code: str, failed: str,
                   status_fd: int) -> int:
    """Record the exit, delete the runtime state, apply the restart policy (3 = restart)."""
    restart = finish_exit(EngineBase(root, run_root), cid, int(exit_code), failed == "1")
    return RESTART if restart else 0


def monitor_abandon(root: str, run_root: str, cid: str, reason: str, status_fd: int) -> int:
    """The monitor cannot go on: stop the container, record REASON, honour --rm (recover.abandon)."""
    from nsbox.engine.lifecycle.recover import abandon
    abandon(EngineBase(root, run_root), cid, reason)
    return 0
