"""Acting on an existing container: stop, kill, pause, unpause, update its limits, rename it.

stop and kill mark the container as stopped by the user, so its monitor
applies no restart policy (lifecycle/finish.py).

A --rm container may be removed by its monitor while stop, kill or rm acts
on it: once it was found, its row vanishing means it is down and gone, which
is what they asked for (docs/engine.md, "Who removes a --rm container").
"""

from __future__ import annotations

import os
import time

from nsbox import _json
from nsbox._lite import suppress
from nsbox.engine.db import sqlite
from nsbox.engine.lifecycle.host import monitor_alive
from nsbox.engine.lifecycle.record import (
    ACTIVE,
    DEFAULT_STOP_TIMEOUT,
    RESTARTED_BY_USER,
    Container,
    check_name,
    spec_to_json,
)
from nsbox.engine.model import EXITED, PAUSED, RUNNING
from nsbox.engine.procs import pid_alive
from nsbox.errors import (
    ContainerExists,
    ContainerNotFound,
    InvalidState,
    NsboxError,
    UnsupportedError,
)

TYPE_CHECKING = False  # typing's own constant costs an import of typing
if TYPE_CHECKING:
    from nsbox.engine.lifecycle.state import EngineBase


def stop(engine: EngineBase, ref: str, timeout: int | None = None,
         restarting: bool = False) -> None:
    """The stop signal, then SIGKILL after TIMEOUT seconds (spec.stop_timeout, else 10).

    Returns once it is down (a --rm container: removed).  RESTARTING (`restart`):
    its --rm does not remove it at this exit.
    """
    c = engine._lookup(ref)  # ContainerNotFound: there is no such container
    try:
        c = engine._reconcile_to_read(c)
    except ContainerNotFound:
        return  # it ended and its --rm removed it as we looked: stopped
    if c.state not in ACTIVE:
        if c.spec.auto_remove:
            engine._wait_monitor_gone(c)  # its --rm removal may be under way
        return
    if not mark_stopped(engine, c.id, RESTARTED_BY_USER if restarting else 1):
        return  # removed meanwhile
    if timeout is None:
        timeout = c.spec.stop_timeout if c.spec.stop_timeout is not None else DEFAULT_STOP_TIMEOUT
    terminate(engine, c, c.extra.get("stop_signal") or "SIGTERM", max(timeout, 0))
    if engine.db.container(c.id) is not None:  # not after the `destroy` of a racing rm or --rm
        from nsbox.engine.events import emit_container
        emit_container(engine.root, c, "stop")


def mark_stopped(engine: EngineBase, cid: str, how: int = 1) -> bool:
    """Record that the user stopped CID (no restart follows); False if it no longer exists.

    On a full disk past the reserve (DatabaseFull) the container is stopped
    all the same: the signal, and a removal's freeing of space, matter more.
    """
    from nsbox.engine.db import DatabaseFull
    try:
        return engine.db.update_container(cid, stopped_by_user=how)
    except DatabaseFull:
        return True


def terminate(engine: EngineBase, c: Container, signal_name: str, timeout: float) -> None:
    """Signal the init until the container is down (SIGKILL after TIMEOUT), then its monitor.

    A container caught between restarts may come up once more; it is
    signalled again (stopped_by_user is set, so the monitor then stops).
    A container removed meanwhile (its --rm) is down: this returns once its
    monitor, which removed it, is gone.
    """
    signalled_pid, kill_at = 0, 0.0
    deadline = time.monotonic() + timeout + 30
    while time.monotonic() < deadline:
        row = engine.db.container(c.id)
        if row is None:
            break
        try:
            current = engine._reconcile_to_read(Container.from_row(row))
        except ContainerNotFound:
            break  # removed while being reconciled
        if current.state not in ACTIVE:
            break
        if current.pid and not pid_alive(current.pid) \
                and not monitor_alive(current.monitor_pid, current.id):
            break  # down, with an exit nobody could record (a full disk)
        now = time.monotonic()
        if current.state in (RUNNING, PAUSED) and current.pid != signalled_pid:
            _emit_kill(engine, current, signal_name)
            with suppress(NsboxError):
                engine.oci(c.runtime).kill(c.id, signal_name)
            if current.state == PAUSED:
                with suppress(NsboxError):
                    engine.oci(c.runtime).resume(c.id)
            signalled_pid, kill_at = current.pid, now + timeout
        elif signalled_pid and now >= kill_at:
            _emit_kill(engine, current, "KILL")
            with suppress(NsboxError):
                engine.oci(c.runtime).kill(c.id, "KILL")
            kill_at = now + 1
        time.sleep(0.02)
    engine._wait_monitor_gone(c)


def _emit_kill(engine: EngineBase, c: Container, signal: str | int) -> None:
    """The `kill` event, before the signal goes: the `die` it causes comes after it."""
    from nsbox.engine.events import emit_container
    number: str | int = signal
    with suppress(Exception):
        from nsbox.runtime.cli.cmd_kill import parse_signal
        number = parse_signal(str(signal))
    emit_container(engine.root, c, "kill", signal=number)


def kill(engine: EngineBase, ref: str, signal: str | int = "KILL") -> None:
    """Send SIGNAL to the container's init (the restart policy then does not apply).

    A --rm container that ends (and is removed) under us, or that has ended and
    is being removed by its monitor, counts as killed.
    """
    c = engine._lookup(ref)  # ContainerNotFound: there is no such container
    try:
        c = engine._reconcile_to_read(c)
    except ContainerNotFound:
        if c.spec.auto_remove:
            return
        raise
    if c.state not in (RUNNING, PAUSED):
        if c.spec.auto_remove and c.state == EXITED and monitor_alive(c.monitor_pid, c.id):
            return  # on its way out: its monitor is removing it
        raise InvalidState(f"container {c.name} is not running")
    if not mark_stopped(engine, c.id):
        if c.spec.auto_remove:
            return
        raise ContainerNotFound(f"no such container: {ref}")
    _emit_kill(engine, c, signal)
    try:
        engine.oci(c.runtime).kill(c.id, str(signal))
    except NsboxError:
        if not _down(engine, c):
            raise
        if not c.spec.auto_remove:
            raise InvalidState(f"container {c.name} is not running") from None


def _down(engine: EngineBase, c: Container) -> bool:
    """Whether C has ended (or is removed) since it was found running."""
    row = engine.db.container(c.id)
    if row is None:
        return True
    try:
        return engine._reconcile_to_read(Container.from_row(row)).state not in (RUNNING, PAUSED)
    except ContainerNotFound:
        return True


def pause(engine: EngineBase, ref: str) -> None:
    c = engine.get(ref)
    if c.state != RUNNING:
        raise InvalidState(f"container {c.name} is not running")
    need_cgroups(c, "pause")
    engine.oci(c.runtime).pause(c.id)
    engine.db.update_container(c.id, state=PAUSED)
    from nsbox.engine.events import emit_container
    emit_container(engine.root, c, "pause")


def unpause(engine: EngineBase, ref: str) -> None:
    c = engine.get(ref)
    if c.state != PAUSED:
        raise InvalidState(f"container {c.name} is not paused")
    engine.oci(c.runtime).resume(c.id)
    engine.db.update_container(c.id, state=RUNNING)
    from nsbox.engine.events import emit_container
    emit_container(engine.root, c, "unpause")


def update(engine: EngineBase, ref: str, resources: dict) -> None:
    """Change linux.resources (OCI names) now if running, and for later starts."""
    c = engine.get(ref)
    need_cgroups(c, "update the limits of")
    if c.state in (RUNNING, PAUSED):
        engine.oci(c.runtime).update(c.id, resources)
    c.spec.resources = {**c.spec.resources, **resources}
    path = os.path.join(c.bundle, "config.json")
    with open(path) as f:
        config = _json.loads(f.read())
    config["linux"].setdefault("resources", {}).update(resources)
    with open(path + ".tmp", "w") as f:
        f.write(_json.dumps_pretty(config, indent=" "))  # as json.dump(indent=1)
    os.replace(path + ".tmp", path)
    engine.db.update_container(c.id, spec=spec_to_json(c.spec))


def rename(engine: EngineBase, ref: str, new_name: str) -> None:
    sqlite3 = sqlite()
    c = engine.get(ref)
    check_name(new_name)
    try:
        engine.db.update_container(c.id, name=new_name)
    except sqlite3.IntegrityError:
        raise ContainerExists(f"the container name {new_name!r} is already in use") from None
    from nsbox.engine.events import emit_container
    old_name, c.name = c.name, new_name
    emit_container(engine.root, c, "rename", oldName=old_name)


def need_cgroups(c: Container, what: str) -> None:
    """UnsupportedError for WHAT on a container without a cgroup (rootless mode, undelegated)."""
    from nsbox.engine import rootless
    if not rootless.cgroups_usable():
        raise UnsupportedError(f"cannot {what} container {c.name}: rootless containers get no "
                               "cgroup here (no cgroup2 subtree is delegated to this user)")
