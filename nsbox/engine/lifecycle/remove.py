"""Removing containers: remove (rm, rm -f) and the removal itself.

prune, which also clears what crashes left, is in recover.py.

A --rm container is removed by whoever comes first: its monitor (at its exit,
lifecycle/finish.py) or the user's rm; either way once, and the other one
finds nothing left to do.  The exit file <run_root>/exits/<id> (read by
wait) goes with a user's removal; the monitor's --rm removal keeps it for
`wait ID`, and any removal or prune drops those of removed containers older
than EXIT_FILE_TTL, so exits/ holds only recent ones (docs/engine.md).
"""

from __future__ import annotations

import os
import time

from nsbox import _json
from nsbox._lite import suppress
from nsbox.engine.lifecycle.host import exit_file, remove_cgroups, rmtree, stdin_fifo
from nsbox.engine.lifecycle.record import ACTIVE
from nsbox.engine.procs import crashpoint
from nsbox.errors import ContainerNotFound, InvalidState, NsboxError

TYPE_CHECKING = False  # typing's own constant costs an import of typing
if TYPE_CHECKING:
    from nsbox.engine.lifecycle.state import EngineBase

# How long the exit file of a container removed by its --rm stays for `wait ID`.
EXIT_FILE_TTL = 300.0


def remove(engine: EngineBase, ref: str, force: bool = False, volumes: bool = False) -> None:
    """Delete the container (FORCE kills a running one); VOLUMES also drops its anonymous volumes.

    Once found, a container its --rm removes meanwhile is removed: no error.
    """
    c = engine._lookup(ref)  # ContainerNotFound: there is no such container
    try:
        c = engine._reconcile_to_read(c)  # a dead owner's create or start is undone here
        if c.phase:
            # A live process is making or starting it: let it get there first.
            if not force:
                raise InvalidState(f"cannot remove container {c.name}: it is {c.phase}; "
                                   "wait or force the removal")
            deadline = time.monotonic() + 30
            while c.phase and time.monotonic() < deadline:
                time.sleep(0.02)
                c = engine.get(c.id)
    except ContainerNotFound:
        pass  # its --rm removed it as we looked: what is left of it goes below
    else:
        if c.state in ACTIVE:
            if not force:
                raise InvalidState(f"cannot remove container {c.name}: it is {c.state}; "
                                   "stop it first or force the removal")
            # Imported here: `run --rm` removes a container that is down already.
            from nsbox.engine.lifecycle.control import mark_stopped, terminate
            mark_stopped(engine, c.id)
            terminate(engine, c, "KILL", 0)
    # A --rm container's monitor may be removing it now: let it finish first.
    engine._wait_monitor_gone(c)
    remove_now(engine, c.id, volumes)


def remove_now(engine: EngineBase, cid: str, volumes: bool, keep_exit_code: bool = False) -> None:
    """Remove CID and its state now; KEEP_EXIT_CODE leaves its exit file for wait()
    (a --rm container its monitor removes may still be waited for by id).

    Safe to race with another removal of CID: each step is a no-op once done.
    """
    if not keep_exit_code:
        with suppress(FileNotFoundError):
            os.unlink(exit_file(engine.run_root, cid))
    drop_stale_exit_files(engine)
    row = engine.db.container(cid)
    if row is None:
        return
    engine.oci(row["runtime"]).delete(cid)
    remove_cgroups(row)  # a start cut short leaves cgroups the runtime never recorded
    crashpoint("remove.after_runtime_delete")
    network = _json.loads(row["spec"] or "{}").get("network_mode") or ""
    user_mode = network.startswith("slirp4netns") or network == "pasta"  # slirp4netns, pasta
    # A bridge network's container: its leases are recorded before its namespace
    # file exists (network/attach.py), so a create killed in between has only those.
    bridged = network not in ("none", "host", "private", "", "shareable") and \
        not network.startswith("container:")
    if not user_mode and (bridged or os.path.lexists(os.path.join(engine.run_root, "netns",
                                                                   cid))):
        from nsbox.engine.db import DatabaseFull
        from nsbox.engine.network import attach  # a bridge network's veths, leases, netns
        try:
            attach.teardown_container(engine, cid)
        except DatabaseFull:
            # A full disk past the reserve: the storage goes first, which frees
            # the room the leases' record needs (docs/engine.md, "A full disk").
            engine.storage.remove(cid)
            rmtree(os.path.join(engine.storage.containers_dir, cid))
            attach.teardown_container(engine, cid)
    engine.storage.remove(cid)
    rmtree(os.path.join(engine.storage.containers_dir, cid))
    with suppress(FileNotFoundError):
        os.unlink(stdin_fifo(engine.run_root, cid))
    if user_mode:
        from nsbox.engine.network import slirp
        slirp.stop(engine.run_root, cid)
        with suppress(FileNotFoundError):  # its published ports (network/slirp_ports.py)
            os.unlink(os.path.join(engine.run_root, "ports", cid + ".json"))
    # The record goes last: a crash before leaves it to redo.  Of two racing
    # removals, the one that deleted the row says so (one `destroy` event).
    if engine.db.delete_container(cid):
        from nsbox.engine.events import emit_container
        emit_container(engine.root, row, "destroy")
    extra = _json.loads(row["extra"] or "{}")
    if volumes:
        for name in extra.get("anonymous_volumes", []):
            with suppress(NsboxError):
                engine.volumes.remove(name, force=True)


def drop_stale_exit_files(engine: EngineBase) -> None:
    """Delete the exit files of removed containers older than EXIT_FILE_TTL."""
    directory = os.path.join(engine.run_root, "exits")
    try:
        names = os.listdir(directory)
    except OSError:
        return
    limit = time.time() - EXIT_FILE_TTL
    old = []
    for name in names:
        with suppress(OSError):
            if os.stat(os.path.join(directory, name)).st_mtime < limit:
                old.append(name)
    if not old:
        return
    existing = engine.db.container_ids()
    for name in old:
        if name not in existing:
            with suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, name))
