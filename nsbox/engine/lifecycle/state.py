"""The engine's stores, and the truth of a container's record: what every stage starts from.

EngineBase holds the database, the volumes, the image store and the
container storage over one root, and the OCI runtime drivers; get() looks a
container up and reconciles its record with the processes (docs/engine.md,
"State truth").  The stage modules are functions of an EngineBase: the
public Engine (nsbox.engine.containers) in the engine, a plain EngineBase
in the monitor's helpers.
"""

from __future__ import annotations

import os
import time

from nsbox import _json
from nsbox._lite import suppress
from nsbox.engine import DEFAULT_ROOT
from nsbox.engine.db import Database
from nsbox.engine.lifecycle.host import monitor_alive
from nsbox.engine.lifecycle.record import ACTIVE, Container, asdict_row, spec_from_json
from nsbox.engine.model import EXITED, PAUSED, RESTARTING, RUNNING
from nsbox.engine.oci import OciRuntime, runtime_for
from nsbox.engine.procs import pid_alive
from nsbox.errors import ContainerNotFound, NsboxError

DEFAULT_RUN_ROOT = "/run/nsbox"
# A container whose exit nobody saw (its monitor was gone): inspect's ExitCode
# (an int, as Docker clients expect) and State.Error; ps shows "Exited (unknown)".
EXIT_UNKNOWN = 255
UNKNOWN_EXIT_ERROR = "exit code unknown: the monitor was not running when the container exited"


class EngineBase:
    """The stores over ROOT (persistent data) and RUN_ROOT (runtime state), and container lookup."""

    def __init__(self, root: str = DEFAULT_ROOT, run_root: str = DEFAULT_RUN_ROOT,
                 runtime: str | None = None) -> None:
        from nsbox.engine.volumes import Volumes
        self.root = os.path.abspath(root)
        self.run_root = os.path.abspath(run_root)
        self.default_runtime = runtime
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        os.makedirs(self.run_root, mode=0o700, exist_ok=True)
        self.db = Database(self.root)
        self.volumes = Volumes(self.root, self.db, users=self._volume_users)
        self._images = None
        self._storage = None
        self._loop_bin: str | None = None  # lifecycle.start.loop_binary's answer

    @property
    def images(self):  # noqa: ANN201 - ImageStore, imported lazily
        if self._images is None:
            from nsbox.engine.images.store import ImageStore
            self._images = ImageStore(self.root)
        return self._images

    @property
    def storage(self):  # noqa: ANN201 - Storage, imported lazily
        if self._storage is None:
            from nsbox.engine.storage import Storage
            self._storage = Storage(self.root)
        return self._storage

    def oci(self, runtime: str) -> OciRuntime:
        """The driver of the OCI runtime binary RUNTIME (see oci.py)."""
        return runtime_for(self.run_root, runtime)

    def get(self, ref: str) -> Container:
        """The container with full id REF, name REF, or unique id prefix REF; ContainerNotFound else."""
        return self._reconcile_to_read(self._lookup(ref))

    def _reconcile_to_read(self, c: Container) -> Container:
        """_reconcile(C), or C as recorded if the truth cannot be written (a full disk).

        Reading never fails for want of space: ps and inspect answer.
        """
        try:
            c = self._reconcile(c)
            if c.state == RUNNING and c.extra.get("healthcheck"):
                # Its runner may have died with its monitor: start one again.
                from nsbox.engine.health.recover import ensure_runner
                ensure_runner(self, c)
            return c
        except ContainerNotFound:
            raise
        except NsboxError:
            if c.state in (RUNNING, PAUSED) and not pid_alive(c.pid) \
                    and not monitor_alive(c.monitor_pid, c.id):
                # Down, and nobody could record it: say so, with the code its
                # monitor left in <run_root>/exits if it got that far.
                c.state, c.pid = EXITED, 0
                left = _exit_code_left(self.run_root, c)
                if left is None:
                    c.exit_code, c.exit_unknown, c.error = EXIT_UNKNOWN, True, UNKNOWN_EXIT_ERROR
                else:
                    c.exit_code = left
            return c

    def _lookup(self, ref: str) -> Container:
        """get() without reconciling: the record as it stands."""
        ref = ref.lstrip("/") if isinstance(ref, str) else ref
        if not ref:
            raise ContainerNotFound("no container named ''")
        rows = self.db.find_containers(ref)
        if not rows:
            raise ContainerNotFound(f"no such container: {ref}")
        if len(rows) > 1:
            raise ContainerNotFound(f"container id prefix {ref!r} is ambiguous ({len(rows)} matches)")
        return Container.from_row(rows[0])

    def _reconcile(self, c: Container) -> Container:
        """Make C's state true: a dead init or a vanished monitor is noticed here.

        So is what a crash left: a create or start whose owner died is
        undone, an exited --rm container nobody will remove any more is
        removed (lifecycle/recover.py; ContainerNotFound then).
        """
        if c.phase:
            if c.owner_pid == os.getpid():
                return c
            from nsbox.engine.lifecycle import recover
            if recover.held(c):
                return c
            if recover.settle(self, c):
                raise ContainerNotFound(f"no such container: {c.id}")
            row = self.db.container(c.id)
            if row is None:
                raise ContainerNotFound(f"no such container: {c.id}")
            return self._reconcile(Container.from_row(row))
        if c.state not in ACTIVE:
            if c.state == EXITED and c.spec.auto_remove:
                from nsbox.engine.lifecycle import recover
                if recover.collectable(self, c):
                    from nsbox.engine.lifecycle.remove import remove_now
                    remove_now(self, c.id, volumes=True, keep_exit_code=True)
                    raise ContainerNotFound(f"no such container: {c.id}")
            return c
        if monitor_alive(c.monitor_pid, c.id):
            if c.state == RESTARTING or pid_alive(c.pid):
                return c
            # The init died; its monitor is about to record it: give it a moment.
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                time.sleep(0.02)
                row = self.db.container(c.id)
                if row is None:
                    raise ContainerNotFound(f"no such container: {c.id}")
                if row["state"] not in (RUNNING, PAUSED):
                    return Container.from_row(row)
                if not monitor_alive(c.monitor_pid, c.id):
                    break
            else:
                # Still finishing (slow under load): its record will be the truth,
                # so do not guess an exit code over its head.
                return Container.from_row(self.db.container(c.id) or asdict_row(c))
            c = Container.from_row(self.db.container(c.id) or asdict_row(c))
        # The monitor may have recorded the exit just before it went away.
        row = self.db.container(c.id)
        if row is not None and row["state"] not in ACTIVE:
            return Container.from_row(row)
        # No monitor: ask the runtime what is left.
        oci = self.oci(c.runtime)
        state = oci.state(c.id)
        if state is not None and state.get("status") in ("running", "paused"):
            return c  # alive without its monitor: still true
        # Nobody saw the exit: an OOM kill the memory cgroup still counts is
        # the one exit code known; otherwise it is unknown, not invented.
        fields = {}
        if c.state != RESTARTING:
            oom = False
            if state is not None:
                with suppress(Exception):
                    oom = oci.oom_kills(c.id) > 0
            left = _exit_code_left(self.run_root, c)  # its monitor saw it, but could not record it
            fields = {"exit_code": 137, "oom_killed": True} if oom else \
                {"exit_code": left} if left is not None else \
                {"exit_code": EXIT_UNKNOWN, "exit_unknown": True, "error": UNKNOWN_EXIT_ERROR}
        if state is not None:
            oci.delete(c.id)
        from nsbox.engine.lifecycle.host import remove_cgroups
        remove_cgroups(asdict_row(c))
        with suppress(NsboxError):
            self.storage.unmount(c.id)
        if not self.db.update_container_if(c.id, ACTIVE, state=EXITED, pid=0,
                                           finished_at=time.time(), **fields):
            row = self.db.container(c.id)
            if row is None:
                raise ContainerNotFound(f"no such container: {c.id}")
            return Container.from_row(row)  # its monitor's finish got there first
        c = Container.from_row(self.db.container(c.id) or asdict_row(c))
        from nsbox.engine.events import emit_container
        if c.oom_killed:  # the exit its dead monitor could not record: seen here
            emit_container(self.root, c, "oom")
        emit_container(self.root, c, "die", exitCode=c.exit_code)
        if c.spec.auto_remove:
            return self._reconcile(c)  # removed now if nobody else will
        return c

    def list(self, all: bool = False, filters: dict | None = None) -> list[Container]:  # noqa: A002
        """Running containers (every one with ALL), newest first, matching FILTERS.

        Filters (Docker's names): id, name (substring), status, label ("k" or "k=v"),
        ancestor (image ref or id), exited (exit code).  A value may be a list.
        """
        out = []
        for row in self.db.containers():
            try:
                c = self._reconcile_to_read(Container.from_row(row))
            except ContainerNotFound:
                continue  # removed meanwhile (--rm, another rm)
            if not all and c.state not in ACTIVE:
                continue
            if filters and not _matches(c, filters):
                continue
            out.append(c)
        return out

    def _wait_monitor_gone(self, c: Container, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while monitor_alive(c.monitor_pid, c.id) and time.monotonic() < deadline:
            time.sleep(0.02)

    def _volume_users(self, name: str) -> list[str]:
        users = []
        for row in self.db.containers():
            spec = spec_from_json(row["spec"])
            extra = _json.loads(row["extra"] or "{}")
            if any(m.type == "volume" and m.source == name for m in spec.mounts) or \
                    name in extra.get("anonymous_volumes", []):
                users.append(row["id"])
        return users


def _exit_code_left(run_root: str, c: Container) -> int | None:
    """The code of C's last exit in <run_root>/exits/<id> if written since its start, else None.

    The monitor's finish writes that file before the record, so the code is
    there even when the record could not be written (a full disk).
    """
    from nsbox.engine.lifecycle.host import exit_file
    try:
        with open(exit_file(run_root, c.id)) as f:
            if c.started_at and os.fstat(f.fileno()).st_mtime >= c.started_at:
                return int(f.read().strip())
    except (OSError, ValueError):
        pass
    return None


def _matches(c: Container, filters: dict) -> bool:
    for key, wanted in filters.items():
        values = wanted if isinstance(wanted, (list, tuple, set)) else [wanted]
        if key == "id" and not any(c.id.startswith(v) for v in values):
            return False
        if key == "name" and not any(v.lstrip("/") in c.name for v in values):
            return False
        if key == "status" and c.state not in values:
            return False
        if key == "exited" and (c.state != EXITED or str(c.exit_code) not in map(str, values)):
            return False
        if key == "label":
            for v in values:
                k, eq, val = v.partition("=")
                if k not in c.spec.labels or (eq and c.spec.labels[k] != val):
                    return False
        if key == "ancestor" and not any(v in (c.image, c.image_id) or
                                         c.image_id.removeprefix("sha256:").startswith(v)
                                         for v in values):
            return False
    return True
