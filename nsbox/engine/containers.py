"""Containers, Docker-style and daemonless: the engine's `Engine` and `Container`.

    from nsbox.engine.containers import Engine
    from nsbox.engine.model import ContainerSpec
    engine = Engine("/var/lib/nsbox", "/run/nsbox")
    c = engine.run(ContainerSpec(image="busybox", command=["sh", "-c", "echo hi"]))
    engine.wait(c.id); list(engine.logs(c.id))

Like Podman, there is no daemon: each call reads and writes the SQLite
metadata (<root>/nsbox.db), builds an OCI bundle (bundle.py) and drives an
OCI runtime CLI (nsbox-runtime by default, runc works too).  A started
container is watched by its own monitor process (monitor.py) that keeps its
log and records its exit.  docs/engine.md has the details.

On disk, per container:
    <root>/containers/<id>/{upper,work,merged,rootfs.json}   storage.py's overlay
    <root>/containers/<id>/userdata/   config.json, hosts, hostname, resolv.conf, ctr.log
    <run_root>/<runtime name>/         the runtime's --root (its state.json files)
    <run_root>/exits/<id>              the last exit code (read by wait after --rm)
"""

from __future__ import annotations

import os
import stat
import sys
import time

from nsbox import _json
from nsbox._lazylog import get_logger
from nsbox._record import as_dict, record
from nsbox.engine import DEFAULT_ROOT
from nsbox.engine.db import Database, close_all_connections, sqlite
from nsbox.engine.model import (
    CREATED,
    DEAD,
    EXITED,
    PAUSED,
    RESTARTING,
    RUNNING,
    ContainerSpec,
    MountSpec,
    RestartPolicy,
)
from nsbox.engine.oci import (
    OciRuntime,
    own_runtime_binary,
    runtime_for,
    state_root,
)
from nsbox.errors import (
    CommandError,
    ConfigError,
    ContainerExists,
    ContainerNotFound,
    InvalidState,
    NsboxError,
    UnsupportedError,
)

TYPE_CHECKING = False  # typing's own constant costs an import of typing
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

log = get_logger(__name__)

DEFAULT_RUN_ROOT = "/run/nsbox"
USERDATA = "userdata"
DEFAULT_STOP_TIMEOUT = 10
ACTIVE = (RUNNING, PAUSED, RESTARTING)
NAMESPACES = ("cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts")
_ADJECTIVES = ("brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lucid",
               "merry", "nimble", "proud", "quiet", "rapid", "sharp", "tidy", "vivid", "witty",
               "zen", "bold", "clever", "dreamy", "fervent", "hopeful")
_NOUNS = ("turing", "hopper", "lovelace", "knuth", "ritchie", "thompson", "torvalds", "shannon",
          "dijkstra", "hamilton", "liskov", "lamport", "kay", "backus", "curie", "noether",
          "euler", "gauss", "pike", "wirth", "cerf", "allen", "goldberg", "perlman")


# ====================================================================== records
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
        return cls(id=row["id"], name=row["name"], image=row["image"], image_id=row["image_id"],
                   created=row["created"], state=row["state"], exit_code=row["exit_code"],
                   pid=row["pid"], started_at=row["started_at"], finished_at=row["finished_at"],
                   restart_count=row["restart_count"], spec=spec_from_json(row["spec"]),
                   bundle=row["bundle"], runtime=row["runtime"], monitor_pid=row["monitor_pid"],
                   stopped_by_user=bool(row["stopped_by_user"]), oom_killed=bool(row["oom_killed"]),
                   error=row["error"], extra=_json.loads(row["extra"] or "{}"))


def spec_to_json(spec: ContainerSpec) -> str:
    return _json.dumps(as_dict(spec))


def spec_from_json(text: str) -> ContainerSpec:
    data = _json.loads(text)
    data["mounts"] = [MountSpec(**m) for m in data.get("mounts") or []]
    data["restart"] = RestartPolicy(**(data.get("restart") or {}))
    data["ulimits"] = {k: tuple(v) for k, v in (data.get("ulimits") or {}).items()}
    known = ContainerSpec.__record_fields__
    return ContainerSpec(**{k: v for k, v in data.items() if k in known})


# ====================================================================== runtime
def find_runtime(name: str | None) -> str:
    """The OCI runtime binary: None -> nsbox-runtime, a name -> PATH lookup, a path -> itself."""
    if name and os.sep in name:
        if not os.access(name, os.X_OK):
            raise ConfigError(f"OCI runtime {name} is not an executable")
        return name
    if not name or name == "nsbox-runtime":
        own = own_runtime_binary()
        if own is not None:
            return own
        name = "nsbox-runtime"
    import shutil
    found = shutil.which(name)
    if not found:
        raise ConfigError(f"OCI runtime {name!r} not found in PATH")
    return found


def runtime_root(run_root: str, runtime: str) -> str:
    return state_root(run_root, runtime)


def _pid_alive(pid: int) -> bool:
    """True if PID exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _monitor_alive(pid: int, cid: str) -> bool:
    if not _pid_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        # Empty while the monitor is between its C loop and its Python finish (execve).
        if not cmdline or cid.encode() in cmdline:
            return True
        # Forked from the engine, it still shows the engine's command line.
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() == "nsbmon-" + cid[:8]
    except OSError:
        return False


def _single_threaded() -> bool:
    return len(os.listdir("/proc/self/task")) == 1


def _monitor_env_path() -> str:
    """PYTHONPATH for a monitor: the C loop's later `--resume` starts Python afresh and must find us."""
    return os.pathsep.join(p for p in [_package_parent(), os.environ.get("PYTHONPATH")] if p)


def _spawn_monitor(args: tuple) -> Callable[[], object]:
    """Start the monitor daemon as `python -m nsbox.engine.monitor`; a function that reaps its starter.

    For threaded programs (the Python API), which must not fork into more
    Python: another thread may hold a lock, an import among them, that the
    child would wait for forever.  A single-threaded caller forks instead
    (PreforkedMonitor).  ARGS are detach_and_run()'s.
    """
    import subprocess
    env = dict(os.environ, PYTHONPATH=_monitor_env_path())
    done_w, ack_r = args[10], args[11]
    keep = (args[3],) + tuple(fd for fd in (done_w, ack_r) if fd >= 0)
    argv = [sys.executable, "-m", "nsbox.engine.monitor", *map(str, args[:3]), str(args[3]),
            args[4], args[5], str(args[6]), str(args[7]), "1" if args[8] else "0", args[9],
            str(done_w), str(ack_r)]
    return subprocess.Popen(argv, pass_fds=keep, start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, cwd="/").wait


# What a monitor and its helpers import to create and watch a container: a
# preforked monitor imports them while the engine is still making the container.
_MONITOR_MODULES = (
    "_sqlite3", "nsbox.engine.monitor", "nsbox.engine.storage", "nsbox.engine.oci",
    "nsbox.runtime.container", "nsbox.runtime.init",
    "nsbox.runtime.rootfs", "nsbox.runtime.process", "nsbox.runtime.cgroups.manager",
    "nsbox.runtime.cgroups.resources", "nsbox.runtime.security.capabilities",
    "nsbox.runtime.security.seccomp", "nsbox.runtime.security.lsm", "resource",
)


# What an attached starter needs to finish the container (AttachedRun.finish):
# imported while the monitor creates the container, on the other CPU.
_FINISH_MODULES = ("nsbox.engine.logs", "nsbox.runtime.syscalls", "nsbox.runtime.container")


class PreforkedMonitor:
    """A container monitor forked from this (single-threaded) process, before it has its arguments.

    A fork has everything imported already, so no second Python starts.
    Forking a monitor and importing the runtime into it still take ~10 ms
    on the way from `start` to the container's process: forked early (as
    `nsbox run` does), the child does that on the other CPU while the
    caller creates the container.  It then waits for start(...,
    monitor=this) to send its arguments; if they never come (the caller
    failed, or called cancel()), it exits.  start() without one forks one
    itself.  NOTIFY: the monitor will hold DONE_R's write end until it is
    done, and can be handed the finish of the container's exit (ACK_W).
    """

    def __init__(self, notify: bool) -> None:
        close_all_connections()  # none should be open yet; a fork must not share one
        self.ready_r, self.ready_w = os.pipe()
        self.done_r, self.done_w = os.pipe() if notify else (-1, -1)
        self.ack_r, self.ack_w = os.pipe() if notify else (-1, -1)
        args_r, self._args_w = os.pipe()
        env_path = _monitor_env_path()
        import gc
        # Both processes go on working: a collection walking the objects they
        # share would copy every page it touches.  close() undoes it, so a
        # long-lived program still collects what it had then.
        gc.freeze()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - child
            try:
                _forked_monitor_hygiene(keep=(args_r, self.ready_w, self.done_w, self.ack_r))
                os.environ["PYTHONPATH"] = env_path
                os.chdir("/")
                for name in _MONITOR_MODULES:
                    with contextlib_suppress(ImportError):
                        __import__(name)
                chunks = []
                while chunk := os.read(args_r, 65536):
                    chunks.append(chunk)
                if chunks:
                    from nsbox.engine.monitor import detach_and_run
                    detach_and_run(*_json.loads(b"".join(chunks).decode()))
                os._exit(0)
            finally:
                os._exit(1)
        os.close(args_r)
        os.close(self.ready_w)
        for fd in (self.done_w, self.ack_r):
            if fd >= 0:
                os.close(fd)

    def go(self, args: tuple) -> None:
        """Send the monitor its detach_and_run() arguments; it becomes the daemon.

        The child exits once it has forked the daemon; close() reaps it, later,
        so that waiting for that fork stays off the way to the container."""
        data = _json.dumps(list(args)).encode()
        while data:
            data = data[os.write(self._args_w, data):]
        os.close(self._args_w)
        self._args_w = -1

    def cancel(self) -> None:
        """Let the child go without a container (it exits), and reap it."""
        if self._args_w >= 0:
            os.close(self._args_w)
            self._args_w = -1
        if self.pid > 0:
            os.waitpid(self.pid, 0)
            self.pid = 0

    def close(self) -> None:
        """cancel(), and close the pipes nobody will read."""
        if self.pid > 0:
            import gc
            gc.unfreeze()
        self.cancel()
        for fd in (self.ready_r, self.done_r, self.ack_w):
            if fd >= 0:
                with contextlib_suppress(OSError):
                    os.close(fd)
        self.ready_r = self.done_r = self.ack_w = -1


def prefork_monitor(notify: bool) -> PreforkedMonitor | None:
    """A PreforkedMonitor where forking is safe (a single thread), else None."""
    return PreforkedMonitor(notify) if _single_threaded() else None


def _forked_monitor_hygiene(keep: tuple[int, ...]) -> None:
    """In a child forked to become a monitor: drop every inherited fd but 0-2 and KEEP.

    The engine may run in a threaded program (the Python API): at the fork
    another thread may hold a pipe the monitor must not keep open (its
    reader would never see end-of-file) or a store lock fd, whose flock
    would then outlive that thread's release.  The SQLite connections whose
    fds go too are never used again here, and the garbage collector is
    turned off so that none is finalized onto a reused fd number; the
    process only ever ends with os._exit or execve.
    """
    import gc
    gc.disable()
    low = 3
    for fd in sorted(fd for fd in keep if fd >= 3):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, _max_fd())


def _max_fd() -> int:
    try:
        return max(int(name) for name in os.listdir("/proc/self/fd")) + 1
    except (OSError, ValueError):
        return os.sysconf("SC_OPEN_MAX")


def _exit_file(run_root: str, cid: str) -> str:
    return os.path.join(run_root, "exits", cid)


def _copy_into(source, fd: int) -> None:  # noqa: ANN001 - a binary file or an fd
    """Copy SOURCE into FD until either end is done, then close FD."""
    src = source if isinstance(source, int) else source.fileno()
    try:
        while True:
            data = os.read(src, 65536)
            if not data:
                break
            while data:
                data = data[os.write(fd, data):]
    except OSError:
        pass  # the container is gone (EPIPE) or our stdin was closed
    finally:
        os.close(fd)


def _netns_path(run_root: str, cid: str, network_mode: str) -> str:
    """The engine-made network namespace a slirp4netns container joins, else ""."""
    if not network_mode.startswith("slirp4netns"):
        return ""
    from nsbox.engine.network import slirp
    return slirp.netns_path(run_root, cid)


def _need_cgroups(c: Container, what: str) -> None:
    """UnsupportedError for WHAT on a container without a cgroup (rootless mode, undelegated)."""
    from nsbox.engine import rootless
    if not rootless.cgroups_usable():
        raise UnsupportedError(f"cannot {what} container {c.name}: rootless containers get no "
                               "cgroup here (no cgroup2 subtree is delegated to this user)")


def _stdin_fifo(run_root: str, cid: str) -> str:
    """Where a detached `run -i` container's stdin comes from (`attach` writes into it)."""
    return os.path.join(run_root, "stdin", cid)


def _open_stdin_fifo(run_root: str, cid: str) -> int:
    """The container's end of its stdin FIFO, read-write.

    Holding a write end itself, the container never reads end-of-file: like
    Docker's open stdin, a read waits until someone attaches and types.
    """
    path = _stdin_fifo(run_root, cid)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with contextlib_suppress(FileExistsError):
        os.mkfifo(path, 0o600)
    return os.open(path, os.O_RDWR | os.O_CLOEXEC)


# ============================================================ monitor helpers
# These run in short-lived children of the monitor (see monitor.py), so the
# monitor itself never imports sqlite3 or the engine.
def monitor_start(root: str, run_root: str, cid: str, out_w: str, err_w: str, console: str,
                  status_fd: int) -> int:
    """Mount, create and start the container; write 'ok PID', 'cancel' or 'err MESSAGE' to STATUS_FD.

    The rootfs is mounted here rather than by the starter, which then need
    not load the syscall layer (ctypes) before the container runs.
    """
    engine = Engine(root, run_root)
    db = engine.db
    row = db.container(cid)
    if row is None:
        os.write(status_fd, b"err the container was removed\n")
        return 1
    if row["stopped_by_user"] and row["state"] == RESTARTING:
        with contextlib_suppress(NsboxError):
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
    with contextlib_suppress(FileNotFoundError):
        os.unlink(pid_file)
    spec = _json.loads(row["spec"] or "{}")
    interactive = not console and spec.get("interactive", False)
    network = spec.get("network_mode") or ""
    null = _open_stdin_fifo(run_root, cid) if interactive else os.open("/dev/null", os.O_RDONLY)
    try:
        engine.storage.mount(cid)  # already mounted on a restart
        engine._fill_new_volumes(Container.from_row(row))
        if network.startswith("slirp4netns"):
            from nsbox.engine.network import slirp
            slirp.make_netns(run_root, cid)
        oci.create(cid, bundle, pid_file, console, (null, int(out_w), int(err_w)), runtime_log)
        with open(pid_file) as f:
            pid = int(f.read().strip())
        if network.startswith("slirp4netns"):
            slirp.start(run_root, cid, network)
        oci.start(cid)
    except NsboxError as exc:
        reason = str(exc).strip() or "the runtime failed"  # create's already has its --log error
        if network.startswith("slirp4netns"):
            from nsbox.engine.network import slirp
            slirp.stop(run_root, cid)
        oci.delete(cid)
        db.update_container(cid, error=reason)
        os.write(status_fd, f"err {reason}\n".encode())
        return 1
    finally:
        os.close(null)
    db.update_container(cid, state=RUNNING, pid=pid, started_at=time.time(), finished_at=0,
                        exit_code=0, monitor_pid=os.getppid(), error="")
    os.write(status_fd, f"ok {pid}\n".encode())
    return 0


class contextlib_suppress:  # noqa: N801 - a tiny stand-in to keep the helper's imports small
    def __init__(self, *errors: type[BaseException]) -> None:
        self.errors = errors

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, value, tb) -> bool:  # noqa: ANN001
        return kind is not None and issubclass(kind, self.errors)


def monitor_finish(root: str, run_root: str, cid: str, exit_code: str, failed: str,
                   status_fd: int) -> int:
    """Record the exit, delete the runtime state, apply the restart policy (3 = restart)."""
    from nsbox.engine.monitor import RESTART
    restart = Engine(root, run_root)._finish_exit(cid, int(exit_code), failed == "1")
    return RESTART if restart else 0


def _should_restart(policy: RestartPolicy, code: int, count: int) -> bool:
    if policy.name in ("always", "unless-stopped"):
        return True
    if policy.name == "on-failure":
        return code != 0 and (policy.max_retries <= 0 or count < policy.max_retries)
    return False


# ====================================================================== engine
class Engine:
    """The container engine over ROOT (persistent data) and RUN_ROOT (runtime state)."""

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
        self._loop_bin: str | None = None

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

    # ------------------------------------------------------------------ lookup
    def get(self, ref: str) -> Container:
        """The container with full id REF, name REF, or unique id prefix REF; ContainerNotFound else."""
        return self._reconcile(self._lookup(ref))

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
        """Make C's state true: a dead init or a vanished monitor is noticed here."""
        if c.state not in ACTIVE:
            return c
        if _monitor_alive(c.monitor_pid, c.id):
            if c.state == RESTARTING or _pid_alive(c.pid):
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
                if not _monitor_alive(c.monitor_pid, c.id):
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
        if state is not None:
            oci.delete(c.id)
        with contextlib_suppress(NsboxError):
            self.storage.unmount(c.id)
        code = c.exit_code if c.state == RESTARTING else 137
        self.db.update_container(c.id, state=EXITED, pid=0, exit_code=code,
                                 finished_at=time.time())
        c.state, c.pid, c.exit_code = EXITED, 0, code
        return c

    def list(self, all: bool = False, filters: dict | None = None) -> list[Container]:  # noqa: A002
        """Running containers (every one with ALL), newest first, matching FILTERS.

        Filters (Docker's names): id, name (substring), status, label ("k" or "k=v"),
        ancestor (image ref or id), exited (exit code).  A value may be a list.
        """
        out = []
        for row in self.db.containers():
            c = self._reconcile(Container.from_row(row))
            if not all and c.state not in ACTIVE:
                continue
            if filters and not self._matches(c, filters):
                continue
            out.append(c)
        return out

    def _matches(self, c: Container, filters: dict) -> bool:
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

    def _volume_users(self, name: str) -> list[str]:
        users = []
        for row in self.db.containers():
            spec = spec_from_json(row["spec"])
            extra = _json.loads(row["extra"] or "{}")
            if any(m.type == "volume" and m.source == name for m in spec.mounts) or \
                    name in extra.get("anonymous_volumes", []):
                users.append(row["id"])
        return users

    # ------------------------------------------------------------------ create
    def create(self, spec: ContainerSpec) -> Container:
        """`docker create`: the record, the rootfs and the bundle, but no process yet.

        Raises ImageNotFound, ContainerExists (name in use), BundleError (bind
        source missing) or ConfigError, leaving nothing behind.
        """
        from nsbox.engine import bundle as bundle_mod
        sqlite3 = sqlite()
        runtime = find_runtime(spec.runtime or self.default_runtime)
        bundle_mod.check_mounts(spec)
        if spec.name is not None:
            _check_name(spec.name)
            if any(r["name"] == spec.name for r in self.db.find_containers(spec.name)):
                raise ContainerExists(f"the container name {spec.name!r} is already in use")
        image = self.images.resolve(spec.image)
        peer_pids = {}
        for attr, _ in bundle_mod.NAMESPACE_MODES:
            mode = getattr(spec, attr) or ""
            if mode.startswith("container:"):
                peer_pids[mode] = bundle_mod.peer_pid_or_fail(self.get, mode)
        bundle_mod.command_of(spec, image.section)  # "no command" fails before anything exists

        if spec.network_mode == "private":
            from nsbox.engine import rootless
            if rootless.active():
                from nsbox.engine.network import slirp
                if not slirp.unavailable():
                    spec.network_mode = "slirp4netns"  # rootless Podman's default network
        cid = _new_id()
        userdata = os.path.join(self.storage.containers_dir, cid, USERDATA)
        name = spec.name
        for attempt in range(100):
            if spec.name is None:
                name = f"{_choice(_ADJECTIVES)}_{_choice(_NOUNS)}"
                if attempt > 10:
                    name += f"_{_randbelow(10 ** 6)}"
            row = {"id": cid, "name": name, "image": spec.image, "image_id": image.id,
                   "created": time.time(), "state": CREATED, "spec": spec_to_json(spec),
                   "bundle": userdata, "runtime": runtime, "extra": {}}
            try:
                self.db.insert_container(row)
                break
            except sqlite3.IntegrityError:
                if spec.name is not None:
                    raise ContainerExists(f"the container name {spec.name!r} is already in use") \
                        from None
        else:
            raise NsboxError("could not find a free container name")
        anonymous: list[str] = []
        try:
            info = self.storage.create_rootfs(cid, image)
            idmap: list[int] = []
            if spec.userns_mode in ("remap", "auto"):
                from nsbox.engine import rootless, userns
                if rootless.active():
                    raise ConfigError(f"--userns={spec.userns_mode} is for root: rootless "
                                      "containers already run in your user namespace "
                                      "(--userns=keep-id keeps your uid inside)")
                taken = [c.extra.get("idmap") for c in self.list(all=True) if c.id != cid]
                idmap = userns.allocate(spec.userns_mode, [m for m in taken if m])
                self.storage.set_idmap(cid, idmap)
            keep_id = None
            if spec.userns_mode == "keep-id":
                from nsbox.engine.rootless import KeepId
                keep_id = KeepId()
                self.storage.set_shifted(cid, keep_id.uid_map, keep_id.gid_map)
            os.makedirs(userdata, mode=0o700)
            volume_paths, volume_names = {}, {}
            for m in spec.mounts:
                if m.type == "volume":
                    vol = self.volumes.create(m.source or None,
                                              labels=None if m.source else {"nsbox.anonymous-for": cid},
                                              anonymous=not m.source)
                    if not m.source:
                        anonymous.append(vol["Name"])
                    volume_paths[os.path.normpath(m.target)] = vol["Mountpoint"]
                    volume_names[os.path.normpath(m.target)] = vol["Name"]
            covered = {os.path.normpath(m.target) for m in spec.mounts}
            for target in image.volumes:
                target = os.path.normpath(target)
                if target not in covered:
                    vol = self.volumes.create(None, labels={"nsbox.anonymous-for": cid},
                                              anonymous=True)
                    anonymous.append(vol["Name"])
                    volume_paths[target] = vol["Mountpoint"]
                    volume_names[target] = vol["Name"]
            inputs = bundle_mod.BundleInputs(
                container_id=cid, rootfs=info.merged, layer_dirs=[info.upper] + info.lower_dirs,
                userdata=userdata, runtime=runtime, volume_paths=volume_paths, peer_pids=peer_pids,
                idmap=idmap, netns_path=_netns_path(self.run_root, cid, spec.network_mode),
                keep_id=keep_id)
            config = bundle_mod.build_config(spec, image.section, inputs)
            if idmap:
                self._open_to_mapped_root(userdata, volume_paths, idmap)
            elif keep_id is not None:
                self._open_to_mapped_root(userdata, volume_paths, list(keep_id.ours(0, 0)))
            with open(os.path.join(userdata, "config.json"), "w") as f:
                f.write(_json.dumps_pretty(config, indent=" "))  # as json.dump(indent=1)
            extra = {"anonymous_volumes": anonymous, "volumes": volume_names, "path": config["process"]["args"][0],
                     "args": config["process"]["args"][1:],
                     "stop_signal": bundle_mod.stop_signal(spec, image.section),
                     "hostname": config.get("hostname", ""),
                     "env": config["process"]["env"], "cwd": config["process"]["cwd"],
                     "user": spec.user if spec.user is not None else image.user,
                     "image_entrypoint": image.entrypoint, "image_cmd": image.cmd,
                     "idmap": idmap}
            self.db.update_container(cid, extra=extra)
        except BaseException:
            import shutil
            with contextlib_suppress(Exception):
                self.storage.remove(cid)
            shutil.rmtree(os.path.join(self.storage.containers_dir, cid), ignore_errors=True)
            for vol in anonymous:
                with contextlib_suppress(Exception):
                    self.db.delete_volume(vol)
                    shutil.rmtree(os.path.join(self.volumes.dir, vol), ignore_errors=True)
            self.db.delete_container(cid)
            raise
        return self.get(cid)

    # ---------------------------------------------------------------- lifecycle
    def _open_to_mapped_root(self, userdata: str, volume_paths: dict[str, str],
                             idmap: list[int]) -> None:
        """Let a remapped container's root reach its bind sources: search permission on the
        directories above them (not read), and its /etc files and new volumes its own."""
        uid, gid = idmap[0], idmap[1]
        for name in ("hosts", "hostname", "resolv.conf"):
            path = os.path.join(userdata, name)
            if os.path.exists(path):
                os.chown(path, uid, gid)
        for path in [userdata, *volume_paths.values()]:
            if path in volume_paths.values() and not os.listdir(path):
                os.chown(path, uid, gid)  # a new volume belongs to the container's root
            path = os.path.dirname(path) if path in volume_paths.values() else path
            while path.startswith(self.root) and path != os.path.dirname(path):
                mode = os.stat(path).st_mode & 0o777
                if mode & 0o011 != 0o011:
                    os.chmod(path, mode | 0o011)
                if path == self.root:
                    break
                path = os.path.dirname(path)

    def _fill_new_volumes(self, c: Container) -> None:
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
            data = os.path.join(self.volumes.dir, name, "_data")
            if target in nocopy or not os.path.isdir(data) or os.listdir(data):
                continue
            merged = merged or self.storage.rootfs(c.id).merged
            fill_from_image(merged, target, data)

    def start(self, ref: str, notify: bool = False,
              monitor: PreforkedMonitor | None = None) -> int | None:
        """Start the container under a new monitor; returns once its process runs (NsboxError if not).

        With NOTIFY the monitor stays a Python process for this run instead of
        handing over to its small C loop, and the return value is the read end
        of a pipe that reaches end-of-file when the monitor is done (the exit
        is recorded): what an attached `run` waits on.  Otherwise None.
        MONITOR: a prefork_monitor(NOTIFY) to use; this call takes it over.
        """
        try:
            fds = self._start(self.get(ref), notify, monitor, finish_here=False)
        finally:
            if monitor is not None:
                monitor.close()
        return fds[0] if fds is not None else None

    def start_attached(self, ref: str, monitor: PreforkedMonitor | None = None) -> AttachedRun:
        """Start the container for a caller that follows it to its end (an attached `run`).

        The caller reads the output with AttachedRun.logs() and then calls
        AttachedRun.finish(), which records the exit here rather than in a
        helper of the monitor: the engine is loaded already.  A container
        with a restart policy or slirp4netns is finished by its monitor.
        """
        try:
            c = self.get(ref)
            finish_here = (c.spec.restart.name == "no"
                           and not c.spec.network_mode.startswith("slirp4netns"))
            fds = self._start(c, True, monitor, finish_here)
        finally:
            if monitor is not None:
                monitor.close()
        if fds is None:
            raise InvalidState(f"container {c.name} is already running")
        return AttachedRun(self, c.id, *fds)

    def _start(self, c: Container, notify: bool, monitor: PreforkedMonitor | None,
               finish_here: bool) -> tuple[int, int] | None:
        if c.state in (RUNNING, RESTARTING):
            return None
        if c.state == PAUSED:
            raise InvalidState(f"container {c.name} is paused: unpause it")
        self._wait_monitor_gone(c)
        # The rootfs is mounted by the monitor's start helper (monitor_start).
        self.db.update_container(c.id, stopped_by_user=0, error="", oom_killed=0)
        with contextlib_suppress(FileNotFoundError):
            os.unlink(_exit_file(self.run_root, c.id))
        loop_bin = "" if notify else self._loop_binary()
        owned = None
        if monitor is None and _single_threaded():
            monitor = owned = PreforkedMonitor(notify)
        try:
            return self._hand_over(c, notify, monitor, loop_bin, finish_here)
        finally:
            if owned is not None:
                owned.close()

    def _hand_over(self, c: Container, notify: bool, monitor: PreforkedMonitor | None,
                   loop_bin: str, finish_here: bool) -> tuple[int, int]:
        """Give C to MONITOR (or a new monitor process) once it runs: (done_r, ack_w), -1 if unused.

        DONE_R reaches end-of-file when the monitor is gone (NOTIFY);
        ACK_W is the starter's end of the finish handover (FINISH_HERE).
        """
        spec = c.spec
        if monitor is not None:
            read_end, write_end = monitor.ready_r, monitor.ready_w
            done_r, done_w, ack_r, ack_w = monitor.done_r, monitor.done_w, monitor.ack_r, monitor.ack_w
            monitor.ready_r = monitor.done_r = monitor.ack_w = -1  # ours now
        else:
            read_end, write_end = os.pipe()
            done_r, done_w = os.pipe() if notify else (-1, -1)
            ack_r, ack_w = os.pipe() if notify else (-1, -1)
        if not finish_here and ack_w >= 0:
            os.close(ack_w)
            ack_w = -1
        args = (self.root, self.run_root, c.id, write_end, c.log_path, spec.log_driver,
                _parse_size(spec.log_opts.get("max-size")),
                int(spec.log_opts.get("max-file", "1")), spec.tty, loop_bin,
                done_w, ack_r if finish_here else -1)
        if monitor is not None:
            monitor.go(args)
        else:
            reap_starter = _spawn_monitor(args)
            for fd in (write_end, done_w, ack_r):
                if fd >= 0:
                    os.close(fd)
            reap_starter()
        if finish_here:
            for name in _FINISH_MODULES:
                __import__(name)
        # One line, not end-of-file: the monitor's start helper may hold the
        # pipe a little longer while it exits.
        with os.fdopen(read_end, "rb") as pipe:
            answer = pipe.readline().decode(errors="replace").strip()
        if not answer.startswith("ok "):
            for fd in (done_r, ack_w):
                if fd >= 0:
                    os.close(fd)
            message = answer.removeprefix("err ").strip() or "the monitor failed to start"
            raise NsboxError(f"cannot start container {c.name}: {message}")
        return done_r, ack_w

    def _finish_exit(self, cid: str, code: int, failed: bool = False,
                     auto_remove: bool = True) -> bool:
        """Record CID's exit CODE (FAILED: it never started) and delete its runtime state.

        True if its restart policy restarts it; else its rootfs is unmounted,
        and with --rm (unless not AUTO_REMOVE) it is removed.
        """
        db = self.db
        row = db.container(cid)
        if row is None:
            return False
        oci = self.oci(row["runtime"])
        # Before delete removes the cgroup: was the container's process OOM-killed?
        oom_killed = code == 137 and not failed and oci.oom_kills(cid) > 0
        oci.delete(cid)
        spec = spec_from_json(row["spec"])
        if spec.network_mode.startswith("slirp4netns"):
            from nsbox.engine.network import slirp
            slirp.stop(self.run_root, cid)
        os.makedirs(os.path.join(self.run_root, "exits"), exist_ok=True)
        with open(_exit_file(self.run_root, cid), "w") as f:
            f.write(str(code if not failed else 127))
        if not failed and not row["stopped_by_user"] and _should_restart(spec.restart, code,
                                                                         row["restart_count"]):
            db.update_container(cid, exit_code=code, finished_at=time.time(), pid=0,
                                oom_killed=oom_killed)
            db.increment_restart(cid)
            db.update_container(cid, state=RESTARTING)
            return True
        with contextlib_suppress(NsboxError):
            self.storage.unmount(cid)
        if failed:
            db.update_container(cid, state=CREATED, pid=0, exit_code=127)
        else:
            db.update_container(cid, state=EXITED, pid=0, exit_code=code, finished_at=time.time(),
                                oom_killed=oom_killed)
        if spec.auto_remove and auto_remove:
            self._remove_now(cid, volumes=True, keep_exit_code=True)
        return False

    def run(self, spec: ContainerSpec, detach: bool = True) -> Container:
        """create + start.  The caller (CLI) attaches by following logs() and wait()."""
        c = self.create(spec)
        try:
            self.start(c.id)
        except NsboxError:
            if spec.auto_remove:
                with contextlib_suppress(NsboxError):
                    self._remove_now(c.id, volumes=True)
            raise
        try:
            return self.get(c.id)
        except ContainerNotFound:
            return c  # --rm and already gone

    def run_foreground(self, spec: ContainerSpec) -> int:
        """`run` without a monitor: the runtime's `run` in this process's terminal (for -it); exit code.

        Restart policies do not apply here; --rm does.
        """
        c = self.create(spec)
        self.storage.mount(c.id)
        os.makedirs(runtime_root(self.run_root, c.runtime), mode=0o700, exist_ok=True)
        pid_file = os.path.join(c.bundle, "init.pid")
        oci = self.oci(c.runtime)
        uses_slirp = c.spec.network_mode.startswith("slirp4netns")
        if uses_slirp:
            # The network namespace is the engine's, so slirp4netns can set it up
            # before the runtime's `run` puts the container into it.
            from nsbox.engine.network import slirp
            try:
                slirp.make_netns(self.run_root, c.id)
                slirp.start(self.run_root, c.id, c.spec.network_mode)
            except NsboxError:
                slirp.stop(self.run_root, c.id)
                with contextlib_suppress(NsboxError):
                    self._remove_now(c.id, volumes=True)
                raise
        try:
            code = self._run_foreground(c, oci, pid_file)
        finally:
            if uses_slirp:
                slirp.stop(self.run_root, c.id)
        if spec.auto_remove:
            self._remove_now(c.id, volumes=True)
        return code

    def _run_foreground(self, c: Container, oci, pid_file: str) -> int:  # noqa: ANN001
        import subprocess
        proc = subprocess.Popen([c.runtime, "--root", runtime_root(self.run_root, c.runtime),
                                 *oci.global_args, "run", "--bundle", c.bundle, "--pid-file",
                                 pid_file, c.id])
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with open(pid_file) as f:
                    pid = int(f.read().strip())
                self.db.update_container(c.id, state=RUNNING, pid=pid, started_at=time.time(),
                                         monitor_pid=os.getpid())
                break
            except (OSError, ValueError):
                time.sleep(0.01)
        code = proc.wait()
        oci.delete(c.id)
        with contextlib_suppress(NsboxError):
            self.storage.unmount(c.id)
        self.db.update_container(c.id, state=EXITED, pid=0, exit_code=code, finished_at=time.time())
        return code

    def _loop_binary(self) -> str:
        if self._loop_bin is None:
            from nsbox.engine.monitor import loop_binary
            self._loop_bin = "" if os.environ.get("NSBOX_MONITOR_PYTHON") else \
                loop_binary(self.run_root)
        return self._loop_bin

    def _wait_monitor_gone(self, c: Container, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while _monitor_alive(c.monitor_pid, c.id) and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self, ref: str, timeout: int | None = None) -> None:
        """The stop signal, then SIGKILL after TIMEOUT seconds (spec.stop_timeout, else 10)."""
        c = self.get(ref)
        if c.state not in ACTIVE:
            return
        self.db.update_container(c.id, stopped_by_user=1)
        if timeout is None:
            timeout = c.spec.stop_timeout if c.spec.stop_timeout is not None else DEFAULT_STOP_TIMEOUT
        self._terminate(c, c.extra.get("stop_signal") or "SIGTERM", max(timeout, 0))

    def _terminate(self, c: Container, signal_name: str, timeout: float) -> None:
        """Signal the init until the container is down (SIGKILL after TIMEOUT), then its monitor.

        A container caught between restarts may come up once more; it is
        signalled again (stopped_by_user is set, so the monitor then stops).
        """
        signalled_pid, kill_at = 0, 0.0
        deadline = time.monotonic() + timeout + 30
        while time.monotonic() < deadline:
            row = self.db.container(c.id)
            if row is None:
                return
            current = self._reconcile(Container.from_row(row))
            if current.state not in ACTIVE:
                break
            now = time.monotonic()
            if current.state in (RUNNING, PAUSED) and current.pid != signalled_pid:
                with contextlib_suppress(NsboxError):
                    self.oci(c.runtime).kill(c.id, signal_name)
                if current.state == PAUSED:
                    with contextlib_suppress(NsboxError):
                        self.oci(c.runtime).resume(c.id)
                signalled_pid, kill_at = current.pid, now + timeout
            elif signalled_pid and now >= kill_at:
                with contextlib_suppress(NsboxError):
                    self.oci(c.runtime).kill(c.id, "KILL")
                kill_at = now + 1
            time.sleep(0.02)
        self._wait_monitor_gone(c)

    def kill(self, ref: str, signal: str | int = "KILL") -> None:
        """Send SIGNAL to the container's init (the restart policy then does not apply)."""
        c = self.get(ref)
        if c.state not in (RUNNING, PAUSED):
            raise InvalidState(f"container {c.name} is not running")
        self.db.update_container(c.id, stopped_by_user=1)
        self.oci(c.runtime).kill(c.id, str(signal))

    def restart(self, ref: str, timeout: int | None = None) -> None:
        c = self.get(ref)
        self.stop(c.id, timeout)
        self.start(c.id)

    def pause(self, ref: str) -> None:
        c = self.get(ref)
        if c.state != RUNNING:
            raise InvalidState(f"container {c.name} is not running")
        _need_cgroups(c, "pause")
        self.oci(c.runtime).pause(c.id)
        self.db.update_container(c.id, state=PAUSED)

    def unpause(self, ref: str) -> None:
        c = self.get(ref)
        if c.state != PAUSED:
            raise InvalidState(f"container {c.name} is not paused")
        self.oci(c.runtime).resume(c.id)
        self.db.update_container(c.id, state=RUNNING)

    def wait(self, ref: str, wake_fd: int = -1) -> int:
        """Block until the container is not running (or is removed by --rm); its exit code.

        WAKE_FD: the pipe start(notify=True) returned, to notice the exit at once.
        """
        from nsbox.engine.logs import nap
        try:
            c = self.get(ref)
        except ContainerNotFound:
            # A --rm container may be gone already; its exit code stays behind by full id.
            try:
                with open(_exit_file(self.run_root, os.path.basename(ref))) as f:
                    return int(f.read().strip())
            except (OSError, ValueError):
                raise ContainerNotFound(f"no such container: {ref}") from None
        while True:
            row = self.db.container(c.id)
            try:
                if row is None:
                    raise ContainerNotFound(c.id)
                c = self._reconcile(Container.from_row(row))
            except ContainerNotFound:
                # Removed (--rm) meanwhile, maybe while being reconciled.
                try:
                    with open(_exit_file(self.run_root, c.id)) as f:
                        return int(f.read().strip())
                except (OSError, ValueError):
                    return c.exit_code
            if c.state in (EXITED, DEAD) or (c.state == CREATED and c.started_at):
                return c.exit_code
            wake_fd = nap(wake_fd, 0.05)

    def remove(self, ref: str, force: bool = False, volumes: bool = False) -> None:
        """Delete the container (FORCE kills a running one); VOLUMES also drops its anonymous volumes."""
        c = self.get(ref)
        if c.state in ACTIVE:
            if not force:
                raise InvalidState(f"cannot remove container {c.name}: it is {c.state}; "
                                   "stop it first or force the removal")
            self.db.update_container(c.id, stopped_by_user=1)
            self._terminate(c, "KILL", 0)
        self._wait_monitor_gone(c)
        self._remove_now(c.id, volumes)

    def _remove_now(self, cid: str, volumes: bool, keep_exit_code: bool = False) -> None:
        """Remove CID and its state now; KEEP_EXIT_CODE leaves its exit file for wait()
        (a --rm container its monitor removes may still be waited for by id)."""
        if not keep_exit_code:
            with contextlib_suppress(FileNotFoundError):
                os.unlink(_exit_file(self.run_root, cid))
        row = self.db.container(cid)
        if row is None:
            return
        self.oci(row["runtime"]).delete(cid)
        self.storage.remove(cid)
        _rmtree(os.path.join(self.storage.containers_dir, cid))
        with contextlib_suppress(FileNotFoundError):
            os.unlink(_stdin_fifo(self.run_root, cid))
        if '"slirp4netns' in (row["spec"] or ""):
            from nsbox.engine.network import slirp
            slirp.stop(self.run_root, cid)
        self.db.delete_container(cid)
        extra = _json.loads(row["extra"] or "{}")
        if volumes:
            for name in extra.get("anonymous_volumes", []):
                with contextlib_suppress(NsboxError):
                    self.volumes.remove(name, force=True)

    def prune(self) -> list[str]:
        """Remove every container that is not running; their ids."""
        removed = []
        for c in self.list(all=True):
            if c.state not in ACTIVE:
                with contextlib_suppress(ContainerNotFound):
                    self.remove(c.id)
                    removed.append(c.id)
        return removed

    def rename(self, ref: str, new_name: str) -> None:
        sqlite3 = sqlite()
        c = self.get(ref)
        _check_name(new_name)
        try:
            self.db.update_container(c.id, name=new_name)
        except sqlite3.IntegrityError:
            raise ContainerExists(f"the container name {new_name!r} is already in use") from None

    def update(self, ref: str, resources: dict) -> None:
        """Change linux.resources (OCI names) now if running, and for later starts."""
        c = self.get(ref)
        _need_cgroups(c, "update the limits of")
        if c.state in (RUNNING, PAUSED):
            self.oci(c.runtime).update(c.id, resources)
        c.spec.resources = {**c.spec.resources, **resources}
        path = os.path.join(c.bundle, "config.json")
        with open(path) as f:
            config = _json.loads(f.read())
        config["linux"].setdefault("resources", {}).update(resources)
        with open(path + ".tmp", "w") as f:
            f.write(_json.dumps_pretty(config, indent=" "))  # as json.dump(indent=1)
        os.replace(path + ".tmp", path)
        self.db.update_container(c.id, spec=spec_to_json(c.spec))

    # ------------------------------------------------------------ io and info
    def logs(self, ref: str, follow: bool = False, tail: int | None = None,
             timestamps: bool = False, since: float | None = None, wake_fd: int = -1
             ) -> Iterator[tuple[str, str, bytes]]:
        """(RFC 3339 time, "stdout"|"stderr", line bytes incl. newline), oldest first.

        TIMESTAMPS is accepted for the CLI's sake: the time is always in the tuple.
        WAKE_FD: the pipe start(notify=True) returned, to stop following at once.
        """
        from nsbox.engine.logs import read_logs
        # With WAKE_FD the monitor is alive and will say when it is done: no
        # reconcile, which would wait for it to record an exit it just saw.
        c = self._lookup(ref) if wake_fd >= 0 else self.get(ref)

        def running() -> bool:
            # Until the monitor is gone it may still be copying the last output
            # into the log, even after the container's process has exited.
            row = self.db.container(c.id)
            if row is None:
                return False
            current = Container.from_row(row)
            if current.monitor_pid and _monitor_alive(current.monitor_pid, current.id):
                return True
            return self._reconcile(current).state in ACTIVE
        return read_logs(c.log_path, c.spec.log_driver, follow, tail, since, running,
                         wake_fd=wake_fd)

    def attach(self, ref: str, stdin=None) -> Iterator[tuple[str, str, bytes]]:  # noqa: ANN001
        """Follow a running container from now on: its new output, as logs() gives it,
        until it stops (then wait() has its exit code).

        STDIN, a binary file or an fd, is copied into the container's stdin by
        a daemon thread until its end; only a container run detached with -i
        has a stdin to write to (InvalidState otherwise).  A container with a
        terminal cannot be attached to (UnsupportedError): its monitor owns
        the terminal, and `exec -it` is the way in.
        """
        c = self.get(ref)
        if c.state != RUNNING:
            raise InvalidState(f"you cannot attach to a stopped container {c.name}, start it first")
        if c.spec.tty:
            raise UnsupportedError(f"container {c.name} has a terminal: attaching to it is not "
                                   "supported; use `nsbox exec -it` or `nsbox logs -f`")
        since = time.time()
        if stdin is not None:
            if not c.spec.interactive:
                raise InvalidState(f"container {c.name} has no open stdin: run it with -i to attach one")
            try:
                fd = os.open(_stdin_fifo(self.run_root, c.id), os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                raise InvalidState(f"container {c.name}: its stdin is gone ({exc.strerror})") from None
            os.set_blocking(fd, True)
            import threading
            threading.Thread(target=_copy_into, args=(stdin, fd), daemon=True,
                             name=f"attach-stdin-{c.id[:12]}").start()
        return self.logs(c.id, follow=True, since=since)

    def _check_command(self, c: Container, cmd: list[str], env: dict[str, str],
                       workdir: str | None) -> None:
        """Docker's 127 (not found) and 126 (not executable) for `exec`, decided up front.

        The program is looked up in the container's root filesystem, mounts
        included, with openat2(RESOLVE_IN_ROOT), so its symlinks resolve as
        inside the container.
        """
        from nsbox.runtime import syscalls as sc
        if not cmd:
            raise ConfigError("exec: no command given")
        try:
            with open(os.path.join(c.bundle, "config.json")) as f:
                process = _json.loads(f.read()).get("process") or {}
        except (OSError, ValueError):
            return  # let the runtime report it
        path_env = env.get("PATH") or next(
            (e[5:] for e in process.get("env", []) if e.startswith("PATH=")), "/usr/bin:/bin")
        name = cmd[0]
        cwd = workdir or process.get("cwd") or "/"
        candidates = ([name if name.startswith("/") else os.path.join(cwd, name)] if "/" in name
                      else [os.path.join(d or ".", name) for d in path_env.split(":")])
        # The running container's own view (/proc/PID/root) includes its
        # volumes and bind mounts; the overlay alone would not.
        root = f"/proc/{c.pid}/root" if c.pid else self.storage.rootfs(c.id).merged
        try:
            root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            for candidate in candidates:
                try:
                    fd = sc.openat2(root_fd, candidate.lstrip("/") or ".", os.O_PATH | os.O_CLOEXEC,
                                    resolve=sc.RESOLVE_IN_ROOT)
                except OSError:
                    continue
                try:
                    st = os.fstat(fd)
                finally:
                    os.close(fd)
                if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
                    return
                if "/" in name:
                    raise CommandError(f"exec {name!r}: permission denied", 126)
            raise CommandError(f"exec {name!r}: executable file not found in $PATH"
                               if "/" not in name else f"exec {name!r}: no such file or directory", 127)
        finally:
            os.close(root_fd)

    def exec(self, ref: str, cmd: list[str], tty: bool = False, interactive: bool = False,
             env: dict[str, str] | None = None, user: str | None = None,
             workdir: str | None = None, detach: bool = False,
             stdin=None, stdout=None, stderr=None) -> int:  # noqa: ANN001
        """Run CMD in the running container; its exit code (0 with DETACH).

        STDIN/STDOUT/STDERR (files or fds) default to this process's; not
        interactive means stdin is /dev/null.
        """
        import subprocess

        from nsbox.engine.bundle import resolve_user
        c = self.get(ref)
        if c.state != RUNNING:
            raise InvalidState(f"container {c.name} is not running")
        args = ["exec"]
        if tty:
            args.append("--tty")
        if detach:
            args.append("--detach")
        if workdir:
            args += ["--cwd", workdir]
        for key, value in (env or {}).items():
            args += ["--env", f"{key}={value}"]
        if user:
            info = self.storage.rootfs(c.id)
            uid, gid, _ = resolve_user(user, [info.upper] + info.lower_dirs)
            args += ["--user", f"{uid}:{gid}"]
        self._check_command(c, cmd, env or {}, workdir)
        args += [c.id, *cmd]
        if stdin is None and not interactive:
            stdin = subprocess.DEVNULL
        result = subprocess.run([c.runtime, "--root", runtime_root(self.run_root, c.runtime),
                                 *self.oci(c.runtime).global_args, *args],
                                stdin=stdin, stdout=stdout, stderr=stderr, check=False)
        return result.returncode

    def top(self, ref: str) -> list[list[str]]:
        """Processes of the container: a header row (UID PID PPID CMD), then one row each."""
        c = self.get(ref)
        if c.state not in (RUNNING, PAUSED):
            raise InvalidState(f"container {c.name} is not running")
        rows = [["UID", "PID", "PPID", "CMD"]]
        for pid in self.oci(c.runtime).pids(c.id):
            try:
                with open(f"/proc/{pid}/status") as f:
                    status = dict(line.split(":", 1) for line in f if ":" in line)
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            rows.append([status["Uid"].split()[0], str(pid), status["PPid"].strip(),
                         cmdline or f"[{status['Name'].strip()}]"])
        return rows

    def port(self, ref: str) -> dict:
        """Published ports: none until networking exists."""
        self.get(ref)
        return {}

    def cp(self, src: str, dst: str) -> None:
        """Copy between the host and a container's filesystem; "CTR:/path" on either side.

        Mounted volumes are not seen (the copy goes through the overlay rootfs).
        """
        src_ctr, src_path = _split_cp(src)
        dst_ctr, dst_path = _split_cp(dst)
        if (src_ctr is None) == (dst_ctr is None):
            raise ConfigError("cp: exactly one of SRC and DST must be CONTAINER:PATH")
        c = self.get(src_ctr or dst_ctr)
        was_mounted = self.storage.is_mounted(c.id)
        merged = self.storage.mount(c.id)
        try:
            if src_ctr is not None:
                source = _secure_join(merged, src_path)
                target = os.path.abspath(dst_path)
            else:
                source = os.path.abspath(src_path)
                target = _secure_join(merged, dst_path)
            if not os.path.lexists(source):
                raise ConfigError(f"cp: {src}: no such file or directory")
            if os.path.isdir(target) and not os.path.islink(target):
                target = os.path.join(target, os.path.basename(source.rstrip("/")))
            import shutil
            if os.path.isdir(source) and not os.path.islink(source):
                shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
            else:
                shutil.copy2(source, target, follow_symlinks=False)
        finally:
            if not was_mounted and self.get(c.id).state not in ACTIVE:
                self.storage.unmount(c.id)

    def inspect(self, ref: str) -> dict:
        """Docker-shaped inspect JSON, plus "Namespaces" and "Cgroups" (nsbox's additions)."""
        from nsbox.engine.images.config import format_time
        c = self.get(ref)
        spec, extra = c.spec, c.extra
        res = spec.resources or {}
        memory = res.get("memory") or {}
        cpu = res.get("cpu") or {}
        nano_cpus = 0
        if cpu.get("quota") and cpu.get("period"):
            nano_cpus = int(cpu["quota"] * 1e9 / cpu["period"])
        try:
            info = self.storage.rootfs(c.id)
            graph = {"LowerDir": ":".join(info.lower_dirs), "UpperDir": info.upper,
                     "WorkDir": info.work, "MergedDir": info.merged}
        except ContainerNotFound:
            graph = {}
        mounts = []
        for m in spec.mounts:
            entry = {"Type": m.type, "Destination": m.target, "Mode": "",
                     "RW": not m.read_only, "Propagation": "rprivate" if m.type != "tmpfs" else ""}
            if m.type == "bind":
                entry["Source"] = os.path.abspath(m.source)
            elif m.type == "volume":
                entry["Name"] = extra.get("volumes", {}).get(os.path.normpath(m.target), m.source)
                entry["Driver"] = "local"
                entry["Source"] = os.path.join(self.volumes.dir, entry["Name"], "_data")
            mounts.append(entry)
        for name in extra.get("anonymous_volumes", []):
            if not any(m.get("Name") == name for m in mounts):
                mounts.append({"Type": "volume", "Name": name, "Driver": "local",
                               "Source": os.path.join(self.volumes.dir, name, "_data"), "RW": True})
        running = c.state in (RUNNING, PAUSED)
        return {
            "Id": c.id,
            "Created": format_time(c.created),
            "Path": extra.get("path", ""),
            "Args": extra.get("args", []),
            "State": {
                "Status": c.state, "Running": running, "Paused": c.state == PAUSED,
                "Restarting": c.state == RESTARTING, "OOMKilled": c.oom_killed,
                "Dead": c.state == DEAD, "Pid": c.pid if running else 0, "ExitCode": c.exit_code,
                "Error": c.error,
                "StartedAt": format_time(c.started_at) if c.started_at else "0001-01-01T00:00:00Z",
                "FinishedAt": format_time(c.finished_at) if c.finished_at else "0001-01-01T00:00:00Z",
            },
            "Image": c.image_id,
            "ResolvConfPath": os.path.join(c.bundle, "resolv.conf"),
            "HostnamePath": os.path.join(c.bundle, "hostname"),
            "HostsPath": os.path.join(c.bundle, "hosts"),
            "LogPath": c.log_path,
            "Name": "/" + c.name,
            "RestartCount": c.restart_count,
            "Driver": "overlay",
            "Platform": "linux",
            "HostConfig": {
                "Binds": [f"{m.source}:{m.target}{':ro' if m.read_only else ''}"
                          for m in spec.mounts if m.type in ("bind", "volume") and m.source],
                "LogConfig": {"Type": spec.log_driver, "Config": dict(spec.log_opts)},
                "NetworkMode": spec.network_mode,
                "RestartPolicy": {"Name": spec.restart.name,
                                  "MaximumRetryCount": spec.restart.max_retries},
                "AutoRemove": spec.auto_remove,
                "CapAdd": list(spec.cap_add), "CapDrop": list(spec.cap_drop),
                "IpcMode": spec.ipc_mode, "PidMode": spec.pid_mode, "UTSMode": spec.uts_mode,
                "UsernsMode": spec.userns_mode, "CgroupnsMode": spec.cgroupns_mode,
                "OomScoreAdj": spec.oom_score_adj or 0,
                "Privileged": spec.privileged, "ReadonlyRootfs": spec.read_only,
                "SecurityOpt": list(spec.security_opt),
                "ShmSize": spec.shm_size or 64 * 1024 * 1024,
                "Sysctls": dict(spec.sysctls),
                "Runtime": os.path.basename(c.runtime),
                "Memory": memory.get("limit", 0) or 0,
                "MemoryReservation": memory.get("reservation", 0) or 0,
                "MemorySwap": memory.get("swap", 0) or 0,
                "NanoCpus": nano_cpus,
                "CpuShares": cpu.get("shares", 0) or 0,
                "CpuPeriod": cpu.get("period", 0) or 0,
                "CpuQuota": cpu.get("quota", 0) or 0,
                "CpusetCpus": cpu.get("cpus", "") or "",
                "CpusetMems": cpu.get("mems", "") or "",
                "PidsLimit": (res.get("pids") or {}).get("limit") or None,
                "BlkioWeight": (res.get("blockIO") or {}).get("weight", 0) or 0,
                "Devices": [{"PathOnHost": d.split(":")[0], "PathInContainer":
                             (d.split(":") + [d.split(":")[0]])[1], "CgroupPermissions": "rwm"}
                            for d in spec.devices],
                "Ulimits": [{"Name": k, "Soft": v[0], "Hard": v[1]} for k, v in spec.ulimits.items()],
                "Init": spec.init,
            },
            "GraphDriver": {"Name": "overlay", "Data": graph},
            "Mounts": mounts,
            "Config": {
                "Hostname": extra.get("hostname", ""),
                "User": extra.get("user", "") or "",
                "Env": extra.get("env", []),
                "Cmd": spec.command if spec.command is not None else (
                    [] if spec.entrypoint is not None else extra.get("image_cmd")),
                "Entrypoint": spec.entrypoint if spec.entrypoint is not None
                else extra.get("image_entrypoint"),
                "WorkingDir": extra.get("cwd", "/"),
                "Labels": dict(spec.labels),
                "Image": c.image,
                "Tty": spec.tty,
                "OpenStdin": spec.interactive,
                "StopSignal": extra.get("stop_signal", "SIGTERM"),
                "StopTimeout": spec.stop_timeout if spec.stop_timeout is not None
                else DEFAULT_STOP_TIMEOUT,
            },
            "NetworkSettings": {},
            "Namespaces": _namespaces(c.pid) if running else {},
            "Cgroups": self._cgroups(c) if running else {},
        }

    def security_posture(self, ref: str) -> dict:
        """The container's security posture (security.posture) with its name and id."""
        from nsbox.engine.security import posture
        c = self.get(ref)
        try:
            with open(os.path.join(c.bundle, "config.json")) as f:
                config = _json.loads(f.read())
        except (OSError, ValueError) as exc:
            raise NsboxError(f"container {c.name}: cannot read its config.json: {exc}") from None
        # Namespace paths of joined containers are /proc/PID/ns/TYPE: name their owners.
        peers = {f"/proc/{other.pid}": other.name for other in self.list(all=False)
                 if other.pid and other.id != c.id}
        report = posture(config, c.pid if c.state in (RUNNING, PAUSED) else 0, peers)
        return {"Id": c.id, "Name": c.name, **report}

    def _cgroups(self, c: Container) -> dict[str, str]:
        """controller -> host cgroup directory, from the runtime's state.json, else /proc/PID/cgroup."""
        path = os.path.join(runtime_root(self.run_root, c.runtime), c.id, "state.json")
        try:
            with open(path) as f:
                paths = _json.loads(f.read()).get("cgroup_paths") or {}
            if paths:
                return dict(paths)
        except (OSError, ValueError):
            pass
        out = {}
        try:
            with open(f"/proc/{c.pid}/cgroup") as f:
                for line in f:
                    _, controllers, rel = line.rstrip("\n").split(":", 2)
                    if not controllers:
                        out["unified"] = "/sys/fs/cgroup/unified" + rel if os.path.isdir(
                            "/sys/fs/cgroup/unified") else "/sys/fs/cgroup" + rel
                        continue
                    for ctrl in controllers.split(","):
                        ctrl = ctrl.removeprefix("name=")
                        out[ctrl] = f"/sys/fs/cgroup/{controllers.removeprefix('name=')}{rel}"
        except OSError:
            pass
        return out


class AttachedRun:
    """A container started by Engine.start_attached(): follow logs(), then finish().

    When the monitor hands the finish over (see nsbox.engine.monitor), it
    says `exit CODE` on the done pipe once the output is in the log, and
    waits on the ack pipe for `done`.  The exit is recorded the moment it
    is heard, before the rest of the output is read (a slow reader of
    ours must not keep the container `running`), and then `done` is sent.
    Closing the ack pipe without it (close(), or the process dies) leaves
    the finish to the monitor.
    """

    def __init__(self, engine: Engine, cid: str, done_fd: int, ack_fd: int) -> None:
        self.engine = engine
        self.id = cid
        self._done_fd = done_fd
        self._ack_fd = ack_fd
        self._said = b""
        self._monitor_gone = False
        self.exit_code: int | None = None  # once the monitor has told it

    def _listen(self, timeout: float | None) -> None:
        """Take in what the monitor says on the done pipe within TIMEOUT seconds (None: until it does)."""
        if self._monitor_gone or self.exit_code is not None:
            return
        if timeout is not None:
            import select
            readable, _, _ = select.select([self._done_fd], [], [], timeout)
            if not readable:
                return
        try:
            chunk = os.read(self._done_fd, 64)
        except OSError:
            chunk = b""
        if not chunk:
            self._monitor_gone = True
            return
        self._said += chunk
        if self._said.startswith(b"exit ") and self._said.endswith(b"\n"):
            self._record(int(self._said[5:]))

    def _record(self, code: int) -> None:
        self.exit_code = code
        # No --rm removal yet: the log is still being read.
        self.engine._finish_exit(self.id, code, auto_remove=False)
        with contextlib_suppress(OSError):  # a monitor that is gone already needs no answer
            os.write(self._ack_fd, b"done\n")

    def _following(self) -> bool:
        self._listen(0)
        return self.exit_code is None and not self._monitor_gone

    def logs(self) -> Iterator[tuple[str, str, bytes]]:
        """The container's output from the start until its process has exited."""
        if self._ack_fd < 0:
            return self.engine.logs(self.id, follow=True, wake_fd=self._done_fd)
        from nsbox.engine.logs import read_logs
        c = self.engine._lookup(self.id)
        return read_logs(c.log_path, c.spec.log_driver, True, None, None, self._following,
                         sleep=self._listen)

    def finish(self, remove: bool = False) -> int:
        """Wait for the exit, record it (REMOVE: remove the container, as --rm); the exit code."""
        try:
            while self._ack_fd >= 0 and self.exit_code is None and not self._monitor_gone:
                self._listen(None)
            if self.exit_code is None:  # the monitor records it (or is gone)
                code = self.engine.wait(self.id, wake_fd=-1 if self._monitor_gone else self._done_fd)
                if remove:
                    self.engine.remove(self.id, force=True, volumes=True)
                return code
            if remove:
                self.engine._remove_now(self.id, volumes=True)
            return self.exit_code
        finally:
            self.close()

    def close(self) -> None:
        """Stop attending: the monitor records the exit itself."""
        for fd in (self._done_fd, self._ack_fd):
            if fd >= 0:
                with contextlib_suppress(OSError):
                    os.close(fd)
        self._done_fd = self._ack_fd = -1


def asdict_row(c: Container) -> dict:
    row = {k: getattr(c, k) for k in ("id", "name", "image", "image_id", "created", "state",
                                      "exit_code", "pid", "monitor_pid", "started_at",
                                      "finished_at", "restart_count", "stopped_by_user",
                                      "oom_killed", "error", "bundle", "runtime")}
    row["spec"] = spec_to_json(c.spec)
    row["extra"] = _json.dumps(c.extra)
    return row


def _new_id() -> str:
    """A new container id: 64 random hex digits (secrets.token_hex(32) without importing secrets)."""
    return os.urandom(32).hex()


def _randbelow(n: int) -> int:
    """A random int in [0, N) from os.urandom (what `secrets` would do, without importing it)."""
    return int.from_bytes(os.urandom(8), "big") % n


def _choice(items: tuple[str, ...]) -> str:
    return items[_randbelow(len(items))]


def _rmtree(path: str) -> None:
    """shutil.rmtree(PATH, ignore_errors=True), without importing shutil."""
    from nsbox.engine.storage import remove_tree
    remove_tree(path)


def _namespaces(pid: int) -> dict[str, dict]:
    out = {}
    for name in NAMESPACES:
        path = f"/proc/{pid}/ns/{name}"
        try:
            inode = os.stat(path).st_ino
            host = os.stat(f"/proc/self/ns/{name}").st_ino
        except OSError:
            continue
        out[name] = {"inode": inode, "path": path, "shared_with_host": inode == host}
    return out


def _check_name(name: str) -> None:
    import re
    if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", name or ""):
        raise ConfigError(f"invalid container name {name!r}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*")
    if len(name) > 253:
        raise ConfigError("container name too long")


def _parse_size(text: str | None) -> int:
    from nsbox.engine.logs import parse_size
    try:
        return parse_size(text)
    except ValueError:
        raise ConfigError(f"invalid log max-size {text!r}") from None


def _package_parent() -> str:
    import nsbox
    return os.path.dirname(os.path.dirname(os.path.abspath(nsbox.__file__)))


def _split_cp(text: str) -> tuple[str | None, str]:
    head, sep, tail = text.partition(":")
    if sep and head and "/" not in head:
        return head, tail or "/"
    return None, text


def _secure_join(root: str, path: str) -> str:
    """ROOT/PATH with every symlink resolved as if ROOT were / (no escaping it)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        if os.path.islink(candidate) and parts is not None:
            hops += 1
            if hops > 40:
                raise ConfigError(f"cp: too many symlinks in {path}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)
