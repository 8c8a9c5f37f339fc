"""What a crash leaves behind, found and undone by the next command (docs/engine.md, "Crash safety").

There is no daemon to clean up after a killed `nsbox run` or monitor, so every
resource a start makes is recorded before it is made, and whoever finds the
record with its owner dead finishes the job:

- a row `creating` whose creator is dead: the create never finished; it is
  removed with whatever it made (rootfs, bundle, anonymous volumes);
- a row `starting` whose starter is dead and that no monitor process holds:
  the start is abandoned (runtime state, cgroups, network, mount undone);
  a --rm container is removed, another goes back to `created` (`exited` if
  it ran before) with State.Error saying why;
- an `exited` --rm container that neither its monitor nor an attached
  reader will remove any more: removed;
- cgroups named nsbox-<id> left without a row: `container prune` removes
  those this root made, and any empty one older than ORPHAN_AGE.

get()/list() (lifecycle/state.py) call settle() for the first two, so
`ps`, `rm -f`, `prune` and the next `run` all reconcile.  The container's
cgroups are found from what the start recorded: cgroupsPath (extra) below
the starter's /proc/self/cgroup (cgroup_parent), as the runtime resolves it.
"""

from __future__ import annotations

import os
import time

from nsbox._lite import suppress
from nsbox.engine.lifecycle import remove
from nsbox.engine.lifecycle.host import monitor_processes, remove_cgroups
from nsbox.engine.lifecycle.record import ACTIVE, CREATING, STARTING, spec_from_json
from nsbox.engine.lifecycle.remove import remove_now
from nsbox.engine.model import CREATED, EXITED
from nsbox.engine.procs import pid_alive
from nsbox.errors import ContainerNotFound, NsboxError

TYPE_CHECKING = False  # typing's own constant costs an import of typing
if TYPE_CHECKING:
    from nsbox.engine.lifecycle.record import Container
    from nsbox.engine.lifecycle.state import EngineBase

# An empty nsbox-<id> cgroup with no row and no trace in this root is left
# alone this long: it may belong to another root's container between steps.
ORPHAN_AGE = 60.0


def held(c: Container) -> bool:
    """Whether a live process still makes or starts C (its owner, or a monitor of it)."""
    if c.owner_pid == os.getpid() or pid_alive(c.owner_pid):
        return True
    return c.phase == STARTING and bool(monitor_processes(c.id))


def settle(engine: EngineBase, c: Container) -> bool:
    """Finish what a dead owner left of C (creating/starting); True if C is gone (removed)."""
    if c.phase == CREATING:
        # Claim it: a create that is still going would have a live owner.
        if engine.db.update_container_if(c.id, (CREATING,), owner_pid=os.getpid()):
            remove_now(engine, c.id, volumes=True)
            _drop_anonymous_volumes(engine, c.id)
        return True
    if c.phase == STARTING:
        return abandon(engine, c.id, "the start was interrupted: its starter and monitor died",
                       states=(STARTING,))
    return False


def abandon(engine: EngineBase, cid: str, reason: str, states: tuple[str, ...] = ()) -> bool:
    """Stop CID with nobody left to watch it, undo its start and record REASON; True if removed.

    For a start or a monitor that cannot go on.  STATES: only if the row is
    in one of them (claimed atomically).  A --rm container is removed;
    another is `exited` (137: it was killed here) if it had run, else `created`.
    """
    db = engine.db
    row = db.container(cid)
    if row is None:
        return True
    if states and not db.update_container_if(cid, states, owner_pid=os.getpid()):
        return False  # someone else moved it on
    oci = engine.oci(row["runtime"])
    with suppress(NsboxError):
        oci.delete(cid)  # kills what the runtime knows of
    remove_cgroups(row)  # and what it does not (a create cut short)
    spec = spec_from_json(row["spec"])
    if spec.network_mode.startswith("slirp4netns") or spec.network_mode == "pasta":
        from nsbox.engine.network import slirp
        with suppress(Exception):
            slirp.stop(engine.run_root, cid)
        if spec.publish or spec.publish_all:
            from nsbox.engine.network import slirp_ports
            slirp_ports.unpublish(engine, cid)
    with suppress(NsboxError):
        engine.storage.unmount(cid)
    if row["pid"] > 0:  # its process ran, and was killed above
        from nsbox.engine.events import emit_container
        emit_container(engine.root, row, "die", exitCode=137)
    if spec.auto_remove:
        remove_now(engine, cid, volumes=True)
        return True
    ran = row["pid"] > 0 or row["started_at"] > 0
    db.update_container(cid, state=EXITED if ran else CREATED, pid=0, owner_pid=0,
                        exit_code=137 if ran else row["exit_code"],
                        finished_at=time.time() if ran else row["finished_at"], error=reason)
    return False


def collectable(engine: EngineBase, c: Container) -> bool:
    """An exited --rm container nobody will remove any more (its monitor and reader are gone)."""
    from nsbox.engine.lifecycle.host import monitor_alive
    from nsbox.engine.lifecycle.record import RESTARTED_BY_USER
    if not c.spec.auto_remove or c.state != EXITED:
        return False
    if pid_alive(c.reader_pid) or monitor_alive(c.monitor_pid, c.id):
        return False
    row = engine.db.container(c.id)  # Container.stopped_by_user is only a bool
    if row is None or row["stopped_by_user"] == RESTARTED_BY_USER:
        return False  # `restart` stopped it to start it again (not removed, as Docker)
    return not monitor_processes(c.id)


def _drop_anonymous_volumes(engine: EngineBase, cid: str) -> None:
    """Volumes a create cut short made for CID (their label names it; extra may not yet)."""
    for vol in engine.db.volumes():
        if (vol.get("labels") or {}).get("nsbox.anonymous-for") == cid:
            with suppress(NsboxError):
                engine.volumes.remove(vol["name"], force=True)


def _is_container_id(text: str) -> bool:
    return len(text) == 64 and all(ch in "0123456789abcdef" for ch in text)


def orphan_cgroups(engine: EngineBase) -> dict[str, dict[str, str]]:
    """nsbox-<id> cgroups below this process's own with no row: id -> {hierarchy: dir}.

    Only those this root made (its run root or storage still has a trace of
    the id) or that are empty and older than ORPHAN_AGE: another root's
    containers live in the same cgroups.
    """
    from nsbox.runtime import cgroups
    found: dict[str, dict[str, str]] = {}
    own = cgroups.own_cgroups()
    for h in cgroups.hierarchies():
        rel = own.get(h.key, "/")
        rel = rel if rel.startswith(h.root) else os.path.join(h.root, rel.lstrip("/"))
        parent = os.path.normpath(os.path.join(h.mountpoint, os.path.relpath(rel, h.root)))
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        for name in names:
            if name.startswith("nsbox-") and _is_container_id(name[6:]):
                found.setdefault(name[6:], {})[h.key] = os.path.join(parent, name)
    if not found:
        return {}
    ids = engine.db.container_ids()
    out = {}
    for cid, dirs in found.items():
        if cid in ids:
            continue
        if _traced(engine, cid):
            out[cid] = dirs
            continue
        if cgroups.pids(dirs):
            continue
        with suppress(OSError):
            if all(time.time() - os.stat(d).st_mtime > ORPHAN_AGE for d in dirs.values()):
                out[cid] = dirs
    return out


def _traced(engine: EngineBase, cid: str) -> bool:
    if os.path.exists(os.path.join(engine.storage.containers_dir, cid)):
        return True
    with suppress(OSError):
        for name in os.listdir(engine.run_root):
            if os.path.lexists(os.path.join(engine.run_root, name, cid)):
                return True
    return False


def prune_orphans(engine: EngineBase) -> list[str]:
    """Remove orphan_cgroups() and the runtime state dirs left with them; their ids."""
    from nsbox.runtime import cgroups
    removed = []
    for cid, dirs in orphan_cgroups(engine).items():
        with suppress(NsboxError, OSError):
            cgroups.destroy(dirs)
            removed.append(cid)
    return removed


def prune(engine: EngineBase) -> list[str]:
    """Remove every container that is not running, and the cgroups crashes left; their ids.

    list() has already undone the creates and starts whose owner died
    (lifecycle/recover.py); a container being made or started now is left.
    """
    removed = []
    for c in engine.list(all=True):
        if c.state not in ACTIVE and not c.phase:
            with suppress(ContainerNotFound):
                remove.remove(engine, c.id)
                removed.append(c.id)
    prune_orphans(engine)
    if os.path.isdir(os.path.join(engine.run_root, "netns")):
        from nsbox.engine.network import attach  # what crashes left of bridge networking
        with suppress(NsboxError):
            attach.prune_leftovers(engine)
    remove.drop_stale_exit_files(engine)
    return removed
