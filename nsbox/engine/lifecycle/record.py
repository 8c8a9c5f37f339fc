"""The engine's record of one container (a row of container_containers) and its JSON columns."""

from __future__ import annotations

import os

from nsbox import _json
from nsbox._record import as_dict, record
from nsbox.engine.model import (
    CREATED,
    PAUSED,
    RESTARTING,
    RUNNING,
    ContainerSpec,
    MountSpec,
    RestartPolicy,
)
from nsbox.errors import ConfigError

USERDATA = "userdata"  # <root>/containers/<id>/userdata: the bundle
DEFAULT_STOP_TIMEOUT = 10
ACTIVE = (RUNNING, PAUSED, RESTARTING)
# The engine's own states, held only while a process is making or starting
# the container (owner_pid); Docker's view of both is `created` (Container.state),
# the record's own one is Container.phase.  docs/engine.md, "Crash safety".
CREATING, STARTING = "creating", "starting"
TRANSITIONAL = (CREATING, STARTING)
# stopped_by_user: 1 = stop/kill/rm (no restart policy); RESTARTED_BY_USER = `restart`
# (no restart policy and no --rm removal at this exit: it starts again, as Docker).
RESTARTED_BY_USER = 2


@record
class Container:
    """What the engine knows about one container (one row of container_containers)."""

    id: str
    name: str
    image: str
    image_id: str
    created: float
    state: str
    exit_code: int
    pid: int
    started_at: float
    finished_at: float
    restart_count: int
    spec: ContainerSpec
    bundle: str
    runtime: str
    monitor_pid: int = 0
    stopped_by_user: bool = False
    oom_killed: bool = False
    error: str = ""
    extra: dict = dict
    phase: str = ""  # CREATING or STARTING while owner_pid makes or starts it; else ""
    owner_pid: int = 0
    reader_pid: int = 0  # an attached `run` that removes it (--rm) after reading its output
    cgroup_parent: str = ""  # the starter's /proc/self/cgroup (the container's cgroups go below)
    exit_unknown: bool = False  # nobody saw the exit; `error` says why

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def running(self) -> bool:
        return self.state in ACTIVE

    @property
    def log_path(self) -> str:
        return os.path.join(self.bundle, "ctr.log")

    @classmethod
    def from_row(cls, row: dict) -> Container:
        state = row["state"]
        phase = state if state in TRANSITIONAL else ""
        return cls(id=row["id"], name=row["name"], image=row["image"], image_id=row["image_id"],
                   created=row["created"], state=CREATED if phase else state,
                   exit_code=row["exit_code"],
                   pid=row["pid"], started_at=row["started_at"], finished_at=row["finished_at"],
                   restart_count=row["restart_count"], spec=spec_from_json(row["spec"]),
                   bundle=row["bundle"], runtime=row["runtime"], monitor_pid=row["monitor_pid"],
                   stopped_by_user=bool(row["stopped_by_user"]), oom_killed=bool(row["oom_killed"]),
                   error=row["error"], extra=_json.loads(row["extra"] or "{}"), phase=phase,
                   owner_pid=row.get("owner_pid", 0), reader_pid=row.get("reader_pid", 0),
                   cgroup_parent=row.get("cgroup_parent", ""),
                   exit_unknown=bool(row.get("exit_unknown", 0)))


def asdict_row(c: Container) -> dict:
    row = {k: getattr(c, k) for k in ("id", "name", "image", "image_id", "created", "state",
                                      "exit_code", "pid", "monitor_pid", "started_at",
                                      "finished_at", "restart_count", "stopped_by_user",
                                      "oom_killed", "error", "bundle", "runtime", "owner_pid",
                                      "reader_pid", "cgroup_parent", "exit_unknown")}
    row["state"] = c.phase or c.state
    row["spec"] = spec_to_json(c.spec)
    row["extra"] = _json.dumps(c.extra)
    return row


def new_id() -> str:
    """A new container id: 64 random hex digits (secrets.token_hex(32) without importing secrets)."""
    return os.urandom(32).hex()


def spec_to_json(spec: ContainerSpec) -> str:
    return _json.dumps(as_dict(spec))


def spec_from_json(text: str) -> ContainerSpec:
    data = _json.loads(text)
    data["mounts"] = [MountSpec(**m) for m in data.get("mounts") or []]
    data["restart"] = RestartPolicy(**(data.get("restart") or {}))
    data["ulimits"] = {k: tuple(v) for k, v in (data.get("ulimits") or {}).items()}
    known = ContainerSpec.__record_fields__
    return ContainerSpec(**{k: v for k, v in data.items() if k in known})


def check_name(name: str) -> None:
    """ConfigError unless NAME is a valid container name (Docker's rule)."""
    import re
    if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", name or ""):
        raise ConfigError(f"invalid container name {name!r}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*")
    if len(name) > 253:
        raise ConfigError("container name too long")
