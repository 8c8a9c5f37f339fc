"""The Python API of the nsbox engine, in the spirit of Docker's SDK.

    import nsbox
    box = nsbox.run("busybox", ["echo", "hi"], memory="512m", cpus=1.5)
    box.wait()                      # -> 0
    box.output()                    # -> b"hi\\n"
    box.remove()

Keyword arguments are the long `docker run` flags with `_` for `-`
(`memory_swap="1g"`, `read_only=True`, `env={"A": "b"}` or `env=["A=b"]`,
`volume=["/src:/dst:ro"]`, `restart="on-failure:3"`); nsbox.engine.flags turns
them into a ContainerSpec exactly as the CLI does.  The `nsbox` CLI is a thin
shell over this module and nsbox.engine.containers.Engine.
"""

from __future__ import annotations

import os
import sys

from nsbox._lite import suppress
from nsbox.engine.images.ensure import PULL_POLICIES, ensure_image  # noqa: F401 - API names
from nsbox.engine.logs import split_record  # noqa: F401 - API name
from nsbox.errors import ConfigError, ContainerExists, NsboxError

TYPE_CHECKING = False  # typing's own constant costs an import of typing
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

DEFAULT_RUNROOT = "/run/nsbox"
# Docker SDK spellings -> our flag names.
_KWARG_ALIASES = {"environment": "env", "labels": "label", "volumes": "volume",
                  "mounts": "mount", "working_dir": "workdir", "network_mode": "network",
                  "auto_remove": "rm", "stdin_open": "interactive", "mem_limit": "memory",
                  "sysctls": "sysctl", "devices": "device", "ulimits": "ulimit"}
_default_engine = None


def default_engine(root: str | None = None, run_root: str | None = None,
                   runtime: str | None = None):  # noqa: ANN201 - Engine
    """The Engine for ROOT (default $NSBOX_ROOT or /var/lib/nsbox), cached for the defaults.

    Called by an unprivileged user, it sets up rootless mode first (see
    nsbox.engine.rootless): the process joins the user's rootless namespaces,
    which the kernel allows only while it has a single thread, so call this
    before starting threads.  The defaults are then under the user's home.
    """
    global _default_engine
    from nsbox.engine.containers import Engine

    default_root, default_run_root = "/var/lib/nsbox", DEFAULT_RUNROOT
    if os.geteuid() != 0:
        from nsbox.engine import rootless
        default_root, default_run_root = rootless.default_root(), rootless.default_run_root()
        threading = sys.modules.get("threading")
        if threading is not None and threading.active_count() > 1:
            raise rootless.RootlessError(
                "rootless: nsbox.default_engine() must be called before the program starts "
                "threads (joining a user namespace needs a single-threaded process)")
        rootless.enter(run_root or os.environ.get("NSBOX_RUNROOT") or default_run_root)
    if root is None and run_root is None and runtime is None:
        if _default_engine is None:
            _default_engine = Engine(root=os.environ.get("NSBOX_ROOT") or default_root,
                                     run_root=os.environ.get("NSBOX_RUNROOT") or default_run_root)
        return _default_engine
    return Engine(root=root or os.environ.get("NSBOX_ROOT") or default_root,
                  run_root=run_root or os.environ.get("NSBOX_RUNROOT") or default_run_root,
                  runtime=runtime)


def options_from_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Python keyword arguments -> the long flag names nsbox.engine.flags expects."""
    opts: dict[str, Any] = {}
    for key, value in kwargs.items():
        name = _KWARG_ALIASES.get(key, key).replace("_", "-")
        opts[name] = value
    return opts


def build_spec(image: str, command: list[str] | str | None = None, **kwargs: Any):  # noqa: ANN201
    """A ContainerSpec from Docker-like keyword arguments (see the module doc)."""
    from nsbox.engine import flags

    if isinstance(command, str):
        import shlex

        command = shlex.split(command)
    return flags.build_spec(image, command, options_from_kwargs(kwargs))


def name_holder(engine, name: str) -> str:  # noqa: ANN001
    """The id of the container named NAME, "" if none.  Only names count: `--name c`
    is free while a container's id merely starts with "c" (engine.get would match it)."""
    for row in engine.db.find_containers(name):
        if row["name"] == name:
            try:
                return engine.get(row["id"]).id  # get settles what a dead creator left
            except NsboxError:
                return ""
    return ""


def name_conflict(engine, name: str) -> ConfigError:  # noqa: ANN001
    """Docker's message for a container name that is taken."""
    try:
        holder = name_holder(engine, name)
    except Exception:  # noqa: BLE001 - only decorates the message
        holder = ""
    suffix = f' by container "{holder}"' if holder else ""
    return ConfigError(f'Conflict. The container name "/{name}" is already in use{suffix}. '
                       "You have to remove (or rename) that container to be able to reuse "
                       "that name.")


def create_container(engine, spec, then_start: bool = False):  # noqa: ANN001, ANN201
    """engine.create with the offline image and Docker's name-conflict message.

    THEN_START: the caller starts it next (`run`): see Engine.create."""
    ensure_image(engine.images, spec.image)
    if spec.name and name_holder(engine, spec.name):
        raise name_conflict(engine, spec.name)
    try:
        return engine.create(spec, then_start=then_start)
    except ContainerExists:
        if spec.name:
            raise name_conflict(engine, spec.name) from None
        raise


class Container:
    """A handle on one engine container; every property reads fresh state."""

    def __init__(self, engine, record) -> None:  # noqa: ANN001
        self._engine = engine
        self._record = record
        self.id: str = record.id

    def __repr__(self) -> str:
        return f"<nsbox.Container {self.id[:12]} {self.name}>"

    def reload(self) -> Container:
        self._record = self._engine.get(self.id)
        return self

    @property
    def record(self):  # noqa: ANN201 - nsbox.engine.containers.Container
        return self._record

    @property
    def name(self) -> str:
        return self._record.name

    @property
    def image(self) -> str:
        return self._record.image

    @property
    def status(self) -> str:
        """created, running, paused, restarting, exited or dead (read now)."""
        return self.reload()._record.state

    @property
    def exit_code(self) -> int | None:
        return self.reload()._record.exit_code

    @property
    def pid(self) -> int:
        return self.reload()._record.pid

    @property
    def health(self) -> dict | None:
        """Docker's State.Health, read now: {"Status": "starting|healthy|unhealthy",
        "FailingStreak": N, "Log": [last five results]}; None without a healthcheck."""
        return self._engine.health(self.id)

    def healthcheck(self) -> str:
        """Run the healthcheck once now (`nsbox healthcheck run`); the status after it."""
        return self._engine.healthcheck_run(self.id)

    def start(self) -> None:
        self._engine.start(self.id)

    def wait(self) -> int:
        """Block until the container stops; its exit code."""
        return self._engine.wait(self.id)

    def logs(self, follow: bool = False, tail: int | None = None, timestamps: bool = False,
             since: float | None = None) -> Iterator[tuple[str, str, bytes]]:
        """(stream, timestamp, data) records: stream is "stdout" or "stderr"."""
        records = self._engine.logs(self.id, follow=follow, tail=tail, timestamps=timestamps,
                                    since=since)
        return (split_record(record) for record in records)

    def attach(self, stdin=None) -> Iterator[tuple[str, str, bytes]]:  # noqa: ANN001
        """Follow the running container from now: (stream, timestamp, data) records until it
        stops.  STDIN (a binary file or an fd) is copied to its stdin: run it with interactive=True."""
        return (split_record(record) for record in self._engine.attach(self.id, stdin=stdin))

    def output(self, stream: str | None = None) -> bytes:
        """Everything the container wrote so far (STREAM: "stdout", "stderr" or both)."""
        return b"".join(data for name, _, data in self.logs()
                        if stream is None or name == stream)

    def exec(self, cmd: list[str] | str, **kwargs: Any) -> int:
        """Run CMD in the running container (tty, env, user, workdir, detach); its exit code."""
        if isinstance(cmd, str):
            import shlex

            cmd = shlex.split(cmd)
        return self._engine.exec(self.id, cmd, **kwargs)

    def stop(self, timeout: int | None = None) -> None:
        self._engine.stop(self.id, timeout=timeout)

    def kill(self, signal: str = "KILL") -> None:
        self._engine.kill(self.id, signal=signal)

    def restart(self, timeout: int | None = None) -> None:
        self._engine.restart(self.id, timeout=timeout)

    def pause(self) -> None:
        self._engine.pause(self.id)

    def unpause(self) -> None:
        self._engine.unpause(self.id)

    def remove(self, force: bool = False, volumes: bool = False) -> None:
        self._engine.remove(self.id, force=force, volumes=volumes)

    def inspect(self) -> dict:
        return self._engine.inspect(self.id)

    def top(self) -> list[list[str]]:
        return self._engine.top(self.id)

    def namespaces(self) -> dict:
        """Its 8 namespaces beside the host's, as nsbox.namespaces(name) gives them."""
        from nsbox.engine.observe import namespaces as nsmod
        return nsmod.container_view(self._engine, self.id)

    def stats(self, stream: bool = False, interval: float = 1.0) -> dict | Iterator[dict]:
        """Resource usage as the Docker Engine API's stats object (cpu_stats,
        precpu_stats, memory_stats, blkio_stats, pids_stats, networks).

        stream=False: one object whose precpu_stats is the container's start
        (CPU % from it is the average since then); stream=True: an endless
        iterator, one object per INTERVAL seconds, precpu_stats the previous
        one.  nsbox.stats() gives the same numbers computed as `nsbox stats`."""
        from nsbox.engine.observe import stats as stats_mod
        if not stream:
            return stats_mod.snapshot(self._engine, [self.id])[0].api()
        return (rows[0].api() for rows in stats_mod.stream(self._engine, [self.id],
                                                            interval=interval))

    def cgroup(self) -> dict:
        """The container's cgroups as `nsbox cgroup C --format json` prints them:
        Paths, Limits (each with its docker run flag, setting and usage) and Events."""
        from nsbox.engine.observe import cgroupview
        return cgroupview.view(self._engine, self.id).as_dict()


def create(image: str, command: list[str] | str | None = None, *, engine=None,  # noqa: ANN001
           **kwargs: Any) -> Container:
    """Create (not start) a container; kwargs as for run()."""
    engine = engine or default_engine()
    spec = build_spec(image, command, **kwargs)
    return Container(engine, create_container(engine, spec))


def run(image: str, command: list[str] | str | None = None, *, detach: bool = True,
        engine=None, **kwargs: Any) -> Container:  # noqa: ANN001
    """Create and start a container; with detach=False also wait for it to exit.

    kwargs are `docker run` flags (memory="512m", cpus=1.5, env={...}, name=..., rm=True, ...).
    """
    engine = engine or default_engine()
    spec = build_spec(image, command, **kwargs)
    record = create_container(engine, spec)
    box = Container(engine, record)
    try:
        engine.start(record.id)
    except BaseException:
        # A container that never ran is not left behind (as with --rm on failure).
        with suppress(Exception):
            engine.remove(record.id, force=True)
        raise
    if not detach:
        box.wait()
    return box


def get(ref: str, *, engine=None) -> Container:  # noqa: ANN001
    """The container with id (prefix) or name REF."""
    engine = engine or default_engine()
    return Container(engine, engine.get(ref))


def containers(all: bool = False, filters: dict | None = None, *,  # noqa: A002
               engine=None) -> list[Container]:  # noqa: ANN001
    """Running containers (every container with all=True), newest first."""
    engine = engine or default_engine()
    return [Container(engine, c) for c in engine.list(all=all, filters=filters)]


def namespaces(container: str | None = None, *, engine=None):  # noqa: ANN001, ANN201
    """lsns for containers, as `nsbox ns [--format json]` prints it.

    Without CONTAINER: a list of dicts, one per namespace any running
    container uses: ns (inode), type, nprocs, pid (its oldest process), host
    (PID 1's namespace of that type) and containers (names).  With CONTAINER:
    {"Name", "Id", "Pid", "Namespaces": [{"type", "container", "host",
    "status" ("private" | "host" | "shared"), "shared_with"}]} for its 8 types.
    """
    from nsbox.engine.observe import namespaces as nsmod
    engine = engine or default_engine()
    if container is not None:
        return nsmod.container_view(engine, container)
    return [row.as_dict() for row in nsmod.table(engine)]


def stats(*containers: str, all: bool = False, interval: float = 0.0,  # noqa: A002
          engine=None) -> list:  # noqa: ANN001
    """The rows of `nsbox stats --no-stream`: nsbox.engine.observe.stats.Stats records
    (cpu_percent, mem_usage, mem_limit, mem_percent, net_rx, net_tx, blk_read,
    blk_write, pids; .docker() gives Docker's formatted fields, .api() the API object).

    Running containers, every one with ALL, or the CONTAINERS named.  INTERVAL 0:
    CPU % since each container's start; > 0: over two samples that far apart."""
    from nsbox.engine.observe import stats as stats_mod
    engine = engine or default_engine()
    return stats_mod.snapshot(engine, containers, all=all, interval=interval)


def cgroup(container: str, *, engine=None) -> dict:  # noqa: ANN001
    """CONTAINER's cgroup view (Container.cgroup): paths, limits with their flags, events."""
    from nsbox.engine.observe import cgroupview
    engine = engine or default_engine()
    return cgroupview.view(engine, container).as_dict()


def events(since: str | float | None = None, until: str | float | None = None,
           filters: dict | list | None = None, follow: bool | None = None, *,
           engine=None) -> Iterator:  # noqa: ANN001
    """The engine's events (nsbox.engine.events.Event records), oldest first, as a generator.

    SINCE/UNTIL: Unix seconds, RFC 3339 or a duration ago ("10m"); FILTERS:
    {"container": [...], "event": [...], "image", "type", "label", "network",
    "volume"} or ["k=v", ...].  FOLLOW (default: unless UNTIL is past, as
    Docker's SDK) goes on with each new event as it is recorded, until UNTIL
    if given; without it, only the events already recorded.  Event.as_dict()
    is Docker's JSON object."""
    import time

    from nsbox.engine import events as events_mod
    engine = engine or default_engine()
    if follow is None:
        follow = until is None or events_mod.to_ns(until) > time.time_ns()
    if follow:
        return events_mod.follow(engine.root, since=since, filters=filters, until=until)
    return events_mod.read(engine.root, since=since, until=until, filters=filters)


def images(*, engine=None) -> list:  # noqa: ANN001
    """Image summaries (id, repo_tags, created, size), newest first."""
    engine = engine or default_engine()
    return engine.images.list()


def _registry_progress(progress, verb: str, done_word: str):  # noqa: ANN001, ANN202
    """Our (label, done, total) progress as docker-py's pull/push stream dicts."""
    def emit(label: str, done: int, total: int) -> None:
        words = label.split()
        if len(words) < 3 or words[0] != "Copying":
            progress({"status": label})
            return
        short = words[2]
        if label.endswith("skipped: already exists"):
            status = "Already exists" if verb == "Downloading" else "Layer already exists"
            progress({"status": status, "id": short})
        elif label.endswith(" mounted"):
            progress({"status": "Mounted from another repository", "id": short})
        elif total and done < total:
            progress({"status": verb, "progressDetail": {"current": done, "total": total},
                      "id": short})
        else:
            progress({"status": done_word, "id": short})
    return emit


def pull(ref: str, *, platform: str | None = None, tls_verify: bool | None = None,
         authfile: str | None = None, cert_dir: str | None = None,
         progress=None, engine=None):  # noqa: ANN001, ANN201
    """Pull REF (`name[:tag]` or `name@digest`) from its registry; returns the image.

    Like docker-py's images.pull: PLATFORM (`os/arch[/variant]`) picks from a
    manifest list; CERT_DIR is `--cert-dir` (CAs, client cert).  PROGRESS, if
    given, is called with dicts shaped like docker-py's pull stream: {"status": "Downloading", "progressDetail":
    {"current", "total"}, "id"}, {"status": "Download complete", "id"},
    {"status": "Already exists", "id"}, then {"status": "Digest: sha256:..."}.
    """
    engine = engine or default_engine()
    emit = _registry_progress(progress, "Downloading", "Download complete") if progress else None
    image = engine.images.pull(ref, platform=platform, tls_verify=tls_verify, authfile=authfile,
                               cert_dir=cert_dir, progress=emit)
    if progress is not None:
        progress({"status": f"Digest: {image.manifest_digest}"})
    return image


def push(ref: str, destination: str | None = None, *, tls_verify: bool | None = None,
         authfile: str | None = None, format: str | None = None,  # noqa: A002 - the CLI's name
         cert_dir: str | None = None, progress=None, engine=None) -> str:  # noqa: ANN001
    """Push the local image REF to DESTINATION (default: its name); returns the manifest digest.

    Like docker-py's images.push; FORMAT "oci" or "v2s2" (default: as
    stored).  PROGRESS gets {"status": "Pushing", "progressDetail", "id"},
    {"status": "Pushed", "id"}, {"status": "Layer already exists", "id"},
    then {"status": "Digest: sha256:..."}.
    """
    engine = engine or default_engine()
    emit = _registry_progress(progress, "Pushing", "Pushed") if progress else None
    digest = engine.images.push(ref, destination, tls_verify=tls_verify, authfile=authfile,
                                format=format, cert_dir=cert_dir, progress=emit)
    if progress is not None:
        progress({"status": f"Digest: {digest}"})
    return digest


def build(path: str | None = None, *, tag: str | list[str] | None = None,
          dockerfile: str | None = None, buildargs: dict[str, str] | None = None,
          target: str | None = None, nocache: bool = False, pull: bool = False,
          labels: dict[str, str] | None = None, network: str | None = None,
          tls_verify: bool | None = None, progress=None, stdin=None,  # noqa: ANN001
          engine=None):  # noqa: ANN001, ANN201 - nsbox.engine.images.Image
    """Build an image from the Containerfile (else Dockerfile) in the context directory PATH.

    Like docker-py's images.build: TAG (one or a list), DOCKERFILE (relative to
    PATH), BUILDARGS, TARGET, NOCACHE, PULL, LABELS, NETWORK (for RUN).
    PROGRESS, if given, is called with {"stream": text} for every step line
    and every chunk of RUN output, then {"aux": {"ID": image id}}.  STDIN (a binary stream of a context tar)
    replaces PATH.  Returns the image (its .id, .names, .config).
    """
    import shutil
    import tempfile

    from nsbox.engine.build.context import unpack_context
    from nsbox.engine.build.executor import Builder, BuildOptions

    engine = engine or default_engine()
    tags = [tag] if isinstance(tag, str) else list(tag or [])
    options = BuildOptions(tags=tags, build_args=buildargs, target=target, no_cache=nocache,
                           pull=pull, labels=labels, network=network, tls_verify=tls_verify)
    emit = (lambda text: progress({"stream": text})) if progress is not None else None
    unpacked = None
    try:
        if stdin is not None or path == "-":
            from nsbox.engine.images.staging import owned_prefix
            unpacked = tempfile.mkdtemp(prefix=owned_prefix("build-context-"),
                                        dir=engine.images.layout.tmp_dir)
            unpack_context(stdin if stdin is not None else sys.stdin.buffer, unpacked)
            path = unpacked
        if path is None:
            raise ConfigError("nsbox.build: give the context directory (path) or a tar (stdin)")
        image = Builder(engine, path, dockerfile, options, emit).build()
        if progress is not None:
            progress({"aux": {"ID": image.id}})  # docker-py's last build log entry
        return image
    finally:
        if unpacked is not None:
            shutil.rmtree(unpacked, ignore_errors=True)
