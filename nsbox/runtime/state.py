"""Container state on disk: one directory per container under the runtime root.

<root>/<id>/state.json is written atomically (temp file + rename), so a crash
leaves either the old or the new state, never half of one.  A container
whose directory exists but has no state.json is a half-created one that any
later command may clean up.
"""

from __future__ import annotations

import errno
import os
import sys
import time

from nsbox import _json
from nsbox._lite import suppress
from nsbox.errors import ConfigError, ContainerExists, ContainerNotFound

DEFAULT_ROOT = "/run/nsbox-runtime"
STATE_FILE = "state.json"
EXEC_FIFO = "exec.fifo"
LOCK_FILE = "lock"
# What the compiled nsbox-runtime reads to start or delete a plain container
# without Python (bin/runtime_fast.c): fastpath_record() writes it.
FASTPATH_FILE = "fastpath"

_ID_FIRST = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_ID_CHARS = _ID_FIRST | frozenset("_+.-")

CREATED, RUNNING, STOPPED, PAUSED, CREATING = "created", "running", "stopped", "paused", "creating"


def validate_id(container_id: str) -> None:
    if (not container_id or len(container_id) > 1024 or container_id[0] not in _ID_FIRST
            or not _ID_CHARS.issuperset(container_id)):
        raise ConfigError(f"invalid container id {container_id!r}: use letters, digits and _+.-")


def now_rfc3339() -> str:
    ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns % 10**9:09d}Z"


PF_EXITING = 0x4


def process_start_time(pid: int) -> int | None:
    """The start time (clock ticks since boot) of PID, or None if it is gone or dying.

    A PID 1 that is exiting can linger for a while (until every process of its
    PID namespace is reaped, by parents possibly outside the namespace); it is
    already stopped as far as the container is concerned.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data[data.rindex(b")") + 2:].split()
    if fields[0] in (b"Z", b"X") or int(fields[6]) & PF_EXITING:
        return None
    return int(fields[19])


class ContainerState:
    """What the runtime remembers about one container (state.json)."""

    # A plain class: the dataclasses import alone would double `start`'s cost.
    FIELDS = ("id", "bundle", "rootfs", "pid", "pid_start_time", "created", "owner",
              "annotations", "config", "cgroup_paths", "namespace_paths", "systemd_cgroup",
              "rootless", "cgroup_created")
    __slots__ = FIELDS

    def __init__(self, id: str, bundle: str, rootfs: str, pid: int = 0, pid_start_time: int = 0,
                 created: str = "", owner: str = "", annotations: dict | None = None,
                 config: dict | None = None, cgroup_paths: dict | None = None,
                 namespace_paths: dict | None = None, systemd_cgroup: bool = False,
                 rootless: bool = False, cgroup_created: list | None = None) -> None:
        self.id = id
        self.bundle = bundle
        self.rootfs = rootfs
        self.pid = pid
        self.pid_start_time = pid_start_time  # tells a recycled pid from our init
        self.created = created
        self.owner = owner
        self.annotations = annotations or {}
        self.config = config or {}
        self.cgroup_paths = cgroup_paths or {}
        self.namespace_paths = namespace_paths or {}
        self.systemd_cgroup = systemd_cgroup
        self.rootless = rootless
        # The cgroup directories create made (delete removes only these);
        # None in a state.json written before this field existed.
        self.cgroup_created = cgroup_created

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.FIELDS}

    @classmethod
    def from_dict(cls, data: dict) -> ContainerState:
        return cls(**{k: v for k, v in data.items() if k in cls.FIELDS})

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


def fastpath_record(state: ContainerState) -> bytes | None:
    """The little of STATE that `start` and `delete` need, for bin/runtime_fast.c.

    None when the container is not the plain case that program handles (a
    poststart or poststop hook, systemd's placement, a path with a newline):
    its commands then run here, in Python.  The rules are this package's:
    the status as StateStore.status derives it, the directories as
    cgroups.destroy removes them (owned leaves, then the parents create made,
    deepest first).
    """
    from nsbox.runtime.cgroups import UNIFIED, owned_dirs

    hooks = state.config.get("hooks") or {}
    if hooks.get("poststart") or hooks.get("poststop") or state.systemd_cgroup or not state.pid:
        return None
    paths = state.cgroup_paths
    owned, parents = owned_dirs(paths, state.cgroup_created)
    leaves = list(dict.fromkeys(owned.values()))
    lines = ["nsbox-fastpath 1", f"pid {state.pid}", f"start {state.pid_start_time}"]
    named = [("freezer", paths.get("freezer")), ("unified", paths.get(UNIFIED)),
             *(("rmdir", p) for p in leaves), *(("rmdir-parent", p) for p in parents)]
    for key, path in named:
        if not path:
            continue
        if "\n" in path or not path.startswith("/"):
            return None
        lines.append(f"{key} {path}")
    return ("\n".join(lines) + "\n").encode()


def _write_atomically(path: str, data: bytes, mode: int = 0o600) -> None:
    """DATA at PATH through a temp file renamed over it: a reader sees all or nothing."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.rename(tmp, path)


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
        """state.json, and the fast path's record before it (a record without
        state.json is a half-created container to the compiled commands too)."""
        directory = self.dir(state.id)
        record = fastpath_record(state)
        if record is not None:
            _write_atomically(os.path.join(directory, FASTPATH_FILE), record)
        else:
            with suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, FASTPATH_FILE))
        _write_atomically(os.path.join(directory, STATE_FILE),
                          _json.dumps(state.to_dict()).encode())

    def load(self, container_id: str) -> ContainerState:
        validate_id(container_id)
        try:
            with open(os.path.join(self.dir(container_id), STATE_FILE), "rb") as f:
                raw = _json.loads(f.read())
        except FileNotFoundError:
            raise ContainerNotFound(f"container {container_id} does not exist") from None
        except ValueError:
            raise ContainerNotFound(f"container {container_id} has a corrupt state file") from None
        return ContainerState.from_dict(raw)

    def ids(self) -> list[str]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if os.path.isfile(os.path.join(self.root, n, STATE_FILE)))

    def remove(self, container_id: str) -> None:
        path = self.dir(container_id)
        for name in (FASTPATH_FILE, STATE_FILE, EXEC_FIFO, LOCK_FILE):
            with suppress(FileNotFoundError):
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

    def lock(self, container_id: str) -> _Lock:
        """An exclusive lock serialising commands on one container (a context manager).

        If this process keeps it (hold_lock), that lock, already held: the
        `with` block then ends the keeping.
        """
        path = os.path.join(self.dir(container_id), LOCK_FILE)
        return _held_locks.pop(path, None) or _Lock(path, container_id)

    def hold_lock(self, container_id: str) -> None:
        """Take the container's lock and keep it until this process's next
        lock() of that container ends, or until it exits (create.py's _created)."""
        lock = self.lock(container_id)
        lock.__enter__()
        _held_locks[lock.path] = lock

    def release_held_lock(self, container_id: str) -> None:
        held = _held_locks.pop(os.path.join(self.dir(container_id), LOCK_FILE), None)
        if held is not None:
            held.__exit__(None, None, None)

    def status(self, state: ContainerState) -> str:
        """The truthful status: derived from the live process, never cached."""
        if not state.pid:
            return STOPPED
        start = process_start_time(state.pid)
        if start is None or start != state.pid_start_time:
            return STOPPED
        # Frozen comes first, as with runc: a paused created container is paused.
        if state.cgroup_paths:
            from nsbox.runtime.cgroups import is_frozen

            if is_frozen(state.cgroup_paths):
                return PAUSED
        if os.path.exists(os.path.join(self.dir(state.id), EXEC_FIFO)):
            return CREATED
        return RUNNING


class _Lock:
    __slots__ = ("path", "container_id", "fd")

    def __init__(self, path: str, container_id: str) -> None:
        self.path = path
        self.container_id = container_id
        self.fd = -1

    def __enter__(self) -> None:
        if self.fd >= 0:
            return  # kept by this process (hold_lock): a `with` then just ends it
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            raise ContainerNotFound(f"container {self.container_id} does not exist") from None
        sc = sys.modules.get("nsbox.runtime.syscalls")
        if sc is not None:
            sc.flock(self.fd, sc.LOCK_EX)  # `run` has it loaded: no extension to load
        else:
            # Imported here: only start, pause, resume and update lock, and loading
            # the extension (~0.13 ms) is a noticeable part of `delete` or `state`.
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc) -> None:
        os.close(self.fd)
        self.fd = -1


# Locks this process took and keeps (StateStore.hold_lock), by path: process-wide,
# since the engine calls create and start through separate Runtime objects.
_held_locks: dict[str, _Lock] = {}


def wait_gone(pid: int, start_time: int | None, timeout: float = 5.0) -> None:
    """Wait up to TIMEOUT s until PID is gone (or is another process than START_TIME's),
    reaping it if it is our child."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        st = process_start_time(pid)
        if st is None or (start_time is not None and st != start_time):
            return
        time.sleep(0.002)


def write_pid_file(path: str, pid: int) -> None:
    """--pid-file: PID written atomically (a temp file renamed over PATH)."""
    _write_atomically(os.path.abspath(path), str(pid).encode(), 0o666)  # umask applies
