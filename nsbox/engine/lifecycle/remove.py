"""Removing containers: remove (rm, rm -f), the removal itself, and prune."""

from __future__ import annotations

import os

from nsbox import _json
from nsbox._lite import suppress
from nsbox.engine.lifecycle.host import exit_file, rmtree, stdin_fifo
from nsbox.engine.lifecycle.record import ACTIVE
from nsbox.errors import ContainerNotFound, InvalidState, NsboxError

TYPE_CHECKING = False  # typing's own constant costs an import of typing
if TYPE_CHECKING:
    from nsbox.engine.lifecycle.state import EngineBase


def remove(engine: EngineBase, ref: str, force: bool = False, volumes: bool = False) -> None:
    """Delete the container (FORCE kills a running one); VOLUMES also drops its anonymous volumes."""
    c = engine.get(ref)
    if c.state in ACTIVE:
        if not force:
            raise InvalidState(f"cannot remove container {c.name}: it is {c.state}; "
                               "stop it first or force the removal")
        # Imported here: `run --rm` removes a container that is down already.
        from nsbox.engine.lifecycle.control import terminate
        engine.db.update_container(c.id, stopped_by_user=1)
        terminate(engine, c, "KILL", 0)
    engine._wait_monitor_gone(c)
    remove_now(engine, c.id, volumes)


def remove_now(engine: EngineBase, cid: str, volumes: bool, keep_exit_code: bool = False) -> None:
    """Remove CID and its state now; KEEP_EXIT_CODE leaves its exit file for wait()
    (a --rm container its monitor removes may still be waited for by id)."""
    if not keep_exit_code:
        with suppress(FileNotFoundError):
            os.unlink(exit_file(engine.run_root, cid))
    row = engine.db.container(cid)
    if row is None:
        return
    engine.oci(row["runtime"]).delete(cid)
    engine.storage.remove(cid)
    rmtree(os.path.join(engine.storage.containers_dir, cid))
    with suppress(FileNotFoundError):
        os.unlink(stdin_fifo(engine.run_root, cid))
    if '"slirp4netns' in (row["spec"] or ""):
        from nsbox.engine.network import slirp
        slirp.stop(engine.run_root, cid)
    engine.db.delete_container(cid)
    extra = _json.loads(row["extra"] or "{}")
    if volumes:
        for name in extra.get("anonymous_volumes", []):
            with suppress(NsboxError):
                engine.volumes.remove(name, force=True)


def prune(engine: EngineBase) -> list[str]:
    """Remove every container that is not running; their ids."""
    removed = []
    for c in engine.list(all=True):
        if c.state not in ACTIVE:
            with suppress(ContainerNotFound):
                remove(engine, c.id)
                removed.append(c.id)
    return removed
