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

Engine is the public face.  The work is done in nsbox/engine/lifecycle/,
one module per stage of a container's life (its __init__ lists them), as
functions that take the engine; EngineBase (lifecycle/state.py) holds the
stores and get()/list().

On disk, per container:
    <root>/containers/<id>/{upper,work,merged,rootfs.json}   storage.py's overlay
    <root>/containers/<id>/userdata/   config.json, hosts, hostname, resolv.conf, ctr.log
    <run_root>/<runtime name>/         the runtime's --root (its state.json files)
    <run_root>/exits/<id>              the last exit code (read by wait after --rm)
"""

from __future__ import annotations

from nsbox.engine.lifecycle.host import find_runtime, runtime_root
from nsbox.engine.lifecycle.record import Container, new_id, spec_from_json, spec_to_json
from nsbox.engine.lifecycle.start import PreforkedMonitor, prefork_monitor
from nsbox.engine.lifecycle.state import DEFAULT_RUN_ROOT, EngineBase
from nsbox.engine.procs import pid_alive as _pid_alive

TYPE_CHECKING = False  # typing's own constant costs an import of typing
if TYPE_CHECKING:
    from collections.abc import Iterator

    from nsbox.engine.lifecycle.attached import AttachedRun
    from nsbox.engine.model import ContainerSpec

# Names other modules and tests import from here.
__all__ = ["DEFAULT_RUN_ROOT", "Container", "Engine", "PreforkedMonitor", "_new_id", "_pid_alive",
           "find_runtime", "prefork_monitor", "runtime_root", "spec_from_json",
           "spec_to_json"]

_new_id = new_id  # Engine.create's id maker (tests replace it here)


class Engine(EngineBase):
    """The container engine over ROOT (persistent data) and RUN_ROOT (runtime state).

    EngineBase has the stores (db, volumes, images, storage), oci(), get()
    and list(); each method here hands over to one stage's module.  They
    import it when first called: `nsbox run` forks its monitor as soon as
    it has imported this module (cli/cmd_run.py), and what is imported
    after the fork is not on the monitor's way to the container.
    """

    # ------------------------------------------------------------------ create
    def create(self, spec: ContainerSpec, then_start: bool = False) -> Container:
        """`docker create`: the record, the rootfs and the bundle, but no process yet.

        THEN_START: this process starts it next (run): until then it stays
        `creating`, so that if we die first the next command removes it."""
        from nsbox.engine.lifecycle import create
        return create.create(self, spec, _new_id, then_start)

    def run(self, spec: ContainerSpec, detach: bool = True) -> Container:
        """create + start.  The caller (CLI) attaches by following logs() and wait()."""
        from nsbox._lite import suppress
        from nsbox.engine.lifecycle.remove import remove_now
        from nsbox.errors import ContainerNotFound, NsboxError
        c = self.create(spec, then_start=True)
        try:
            self.start(c.id)
        except NsboxError:
            if spec.auto_remove:
                with suppress(NsboxError):
                    remove_now(self, c.id, volumes=True)
            raise
        try:
            return self.get(c.id)
        except ContainerNotFound:
            return c  # --rm and already gone

    def run_foreground(self, spec: ContainerSpec) -> int:
        """`run` with no monitor, in this process's terminal (for -it); the exit code."""
        from nsbox.engine.lifecycle import foreground
        return foreground.run_foreground(self, self.create(spec))

    # ------------------------------------------------------------------- start
    def start(self, ref: str, notify: bool = False,
              monitor: PreforkedMonitor | None = None) -> int | None:
        """Start the container under a new monitor; returns once its process runs."""
        from nsbox.engine.lifecycle import start
        return start.start(self, ref, notify, monitor)

    def start_attached(self, ref: str, monitor: PreforkedMonitor | None = None) -> AttachedRun:
        """Start the container for a caller that follows it to its end (an attached `run`)."""
        from nsbox.engine.lifecycle import attached
        return attached.start_attached(self, ref, monitor)

    def restart(self, ref: str, timeout: int | None = None) -> None:
        """stop + start; a --rm container is not removed in between (as Docker)."""
        from nsbox.engine.lifecycle import control
        c = self.get(ref)
        control.stop(self, c.id, timeout, restarting=True)
        self.start(c.id)
        from nsbox.engine.events import emit_container
        emit_container(self.root, c, "restart")

    # ----------------------------------------------------------------- control
    def stop(self, ref: str, timeout: int | None = None) -> None:
        """The stop signal, then SIGKILL after TIMEOUT seconds (spec.stop_timeout, else 10)."""
        from nsbox.engine.lifecycle import control
        control.stop(self, ref, timeout)

    def kill(self, ref: str, signal: str | int = "KILL") -> None:
        """Send SIGNAL to the container's init (the restart policy then does not apply)."""
        from nsbox.engine.lifecycle import control
        control.kill(self, ref, signal)

    def pause(self, ref: str) -> None:
        from nsbox.engine.lifecycle import control
        control.pause(self, ref)

    def unpause(self, ref: str) -> None:
        from nsbox.engine.lifecycle import control
        control.unpause(self, ref)

    def update(self, ref: str, resources: dict) -> None:
        """Change linux.resources (OCI names) now if running, and for later starts."""
        from nsbox.engine.lifecycle import control
        control.update(self, ref, resources)

    def rename(self, ref: str, new_name: str) -> None:
        from nsbox.engine.lifecycle import control
        control.rename(self, ref, new_name)

    # ------------------------------------------------------------ exit, remove
    def wait(self, ref: str, wake_fd: int = -1) -> int:
        """Block until the container is not running (or is removed by --rm); its exit code."""
        from nsbox.engine.lifecycle import finish
        return finish.wait(self, ref, wake_fd)

    def remove(self, ref: str, force: bool = False, volumes: bool = False) -> None:
        """Delete the container (FORCE kills a running one); VOLUMES also drops its anonymous volumes."""
        from nsbox.engine.lifecycle import remove
        remove.remove(self, ref, force, volumes)

    def prune(self) -> list[str]:
        """Remove every container that is not running, and what crashes left; their ids."""
        from nsbox.engine.lifecycle import recover
        return recover.prune(self)

    # ------------------------------------------------------------ io and info
    def inspect(self, ref: str) -> dict:
        """Docker-shaped inspect JSON, plus "Namespaces" and "Cgroups" (nsbox's additions)."""
        from nsbox.engine.lifecycle import query
        return query.inspect(self, ref)

    def logs(self, ref: str, follow: bool = False, tail: int | None = None,
             timestamps: bool = False, since: float | None = None, wake_fd: int = -1
             ) -> Iterator[tuple[str, str, bytes]]:
        """(RFC 3339 time, "stdout"|"stderr", line bytes incl. newline), oldest first."""
        from nsbox.engine.lifecycle import query
        return query.logs(self, ref, follow, tail, timestamps, since, wake_fd)

    def log_drops(self, ref: str) -> tuple[int, int]:
        """(lines, bytes) of output the monitor dropped: the log could not be written (disk full)."""
        from nsbox.engine.lifecycle import query
        return query.log_drops(self, ref)

    def top(self, ref: str, ps_args: list[str] | None = None) -> list[list[str]]:
        """Processes of the container: a header row, then one row each (PS_ARGS: ps options)."""
        from nsbox.engine.lifecycle import query
        return query.top(self, ref, ps_args)

    def port(self, ref: str) -> dict:
        """Published ports: none until networking exists."""
        from nsbox.engine.lifecycle import query
        return query.port(self, ref)

    def security_posture(self, ref: str) -> dict:
        """The container's security posture (posture.posture) with its name and id."""
        from nsbox.engine.lifecycle import query
        return query.security_posture(self, ref)

    def health(self, ref: str) -> dict | None:
        """inspect's State.Health ({Status, FailingStreak, Log}); None without a healthcheck."""
        from nsbox.engine.health import runner
        return runner.health(self, ref)

    def healthcheck_run(self, ref: str) -> str:
        """Run the container's healthcheck once now and record it; the status after it."""
        from nsbox.engine.health import runner
        return runner.run_now(self, ref)[1]

    def attach(self, ref: str, stdin=None) -> Iterator[tuple[str, str, bytes]]:  # noqa: ANN001
        """Follow a running container's new output; copy STDIN into a `run -d -i` one's stdin."""
        from nsbox.engine.lifecycle import interact
        return interact.attach(self, ref, stdin)

    def exec(self, ref: str, cmd: list[str], tty: bool = False, interactive: bool = False,
             env: dict[str, str] | None = None, user: str | None = None,
             workdir: str | None = None, detach: bool = False,
             stdin=None, stdout=None, stderr=None) -> int:  # noqa: ANN001
        """Run CMD in the running container; its exit code (0 with DETACH)."""
        from nsbox.engine.lifecycle import interact
        return interact.exec_in(self, ref, cmd, tty, interactive, env, user, workdir, detach,
                                stdin, stdout, stderr)

    def cp(self, src: str, dst: str) -> None:
        """Copy between the host and a container's filesystem; "CTR:/path" on either side."""
        from nsbox.engine.lifecycle import interact
        interact.cp(self, src, dst)
