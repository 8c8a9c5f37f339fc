"""Container state on disk: one directory per container under the runtime root.

<root>/<id>/state.json is written atomically (temp file + rename), so a crash
leaves either the old or the new state, never half of one.  A container
whose directory exists but has no state.json is a half-created one that any
later command may clean up.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import re
from dataclasses import asdict, dataclass, field

from nsbox.errors import ConfigError, ContainerExists, ContainerNotFound

DEFAULT_ROOT = "/run/nsbox-runtime"
STATE_FILE = "state.json"
EXEC_FIFO = "exec.fifo"
LOCK_FILE = "lock"

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_+.-]*$")

CREATED, RUNNING, STOPPED, PAUSED, CREATING = "created", "running", "stopped", "paused", "creating"


def validate_id(container_id: str) -> None:
    if not container_id or len(container_id) > 1024 or not _ID_RE.match(container_id):
        raise ConfigError(f"invalid container id {container_id!r}: use letters, digits and _+.-")


def now_rfc3339() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def process_start_time(pid: int) -> int | None:
    """The start time (clock ticks since boot) of PID, or None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data[data.rindex(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


@dataclass
class ContainerState:
    """What the runtime remembers about one container."""

    id: str
    bundle: str
    rootfs: str
    pid: int = 0
    pid_start_time: int = 0
    created: str = ""
    owner: str = ""
    annotations: dict[str, str] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    cgroup_paths: dict[str, str] = field(default_factory=dict)
    namespace_paths: dict[str, str] = field(default_factory=dict)
    systemd_cgroup: bool = False
    rootless: bool = False
    stopped_at_create: bool = False

    def oci_state(self, status: str) -> dict:
        """The state object of the OCI runtime spec (what `state` prints and hooks read)."""
        out = {
            "ociVersion": self.config.get("ociVersion", "1.2.0"),
            "id": self.id,
            "pid": self.pid if status != STOPPED else 0,
            "status": status,
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "owner": self.owner,
        }
        if self.annotations:
            out["annotations"] = self.annotations
        return out


class StateStore:
    """The runtime root directory (`--root`)."""

    def __init__(self, root: str = DEFAULT_ROOT) -> None:
        self.root = os.path.abspath(root)

    def dir(self, container_id: str) -> str:
        return os.path.join(self.root, container_id)

    def reserve(self, container_id: str) -> str:
        """Atomically claim an id: mkdir fails if it is taken."""
        validate_id(container_id)
        os.makedirs(self.root, mode=0o711, exist_ok=True)
        path = self.dir(container_id)
        try:
            os.mkdir(path, 0o711)
        except FileExistsError:
            raise ContainerExists(f"container with id {container_id} already exists") from None
        return path

    def save(self, state: ContainerState) -> None:
        path = os.path.join(self.dir(state.id), STATE_FILE)
        tmp = f"{path}.tmp{os.getpid()}"
        data = json.dumps(asdict(state), separators=(",", ":")).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.rename(tmp, path)

    def load(self, container_id: str) -> ContainerState:
        validate_id(container_id)
        try:
            with open(os.path.join(self.dir(container_id), STATE_FILE), "rb") as f:
                raw = json.loads(f.read())
        except FileNotFoundError:
            raise ContainerNotFound(f"container {container_id} does not exist") from None
        except ValueError:
            raise ContainerNotFound(f"container {container_id} has a corrupt state file") from None
        return ContainerState(**raw)

    def ids(self) -> list[str]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if os.path.isfile(os.path.join(self.root, n, STATE_FILE)))

    def remove(self, container_id: str) -> None:
        path = self.dir(container_id)
        for name in (STATE_FILE, EXEC_FIFO, LOCK_FILE):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(path, name))
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY:
                raise
            import shutil

            shutil.rmtree(path, ignore_errors=True)

    @contextlib.contextmanager
    def lock(self, container_id: str):
        """An exclusive lock serialising commands on one container."""
        path = os.path.join(self.dir(container_id), LOCK_FILE)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            raise ContainerNotFound(f"container {container_id} does not exist") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def status(self, state: ContainerState) -> str:
        """The truthful status: derived from the live process, never cached."""
        if not state.pid:
            return STOPPED
        start = process_start_time(state.pid)
        if start is None or start != state.pid_start_time:
            return STOPPED
        if os.path.exists(os.path.join(self.dir(state.id), EXEC_FIFO)):
            return CREATED
        if _is_frozen(state):
            return PAUSED
        return RUNNING


def _is_frozen(state: ContainerState) -> bool:
    freezer = state.cgroup_paths.get("freezer")
    if freezer:
        try:
            with open(os.path.join(freezer, "freezer.state")) as f:
                return f.read().strip() in ("FROZEN", "FREEZING")
        except OSError:
            return False
    unified = state.cgroup_paths.get("")
    if unified:
        try:
            with open(os.path.join(unified, "cgroup.freeze")) as f:
                return f.read().strip() == "1"
        except OSError:
            return False
    return False
