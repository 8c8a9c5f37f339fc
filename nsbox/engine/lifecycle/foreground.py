"""`run -it`: the runtime's own `run` in the caller's terminal, with no monitor.

The same as `podman run` without conmon.  The state and the exit code are
recorded here, and --rm is honoured; restart policies do not apply.
"""

from __future__ import annotations

import os
import time

from nsbox._lite import suppress
from nsbox.engine.lifecycle.host import runtime_root
from nsbox.engine.lifecycle.record import Container
from nsbox.engine.lifecycle.remove import remove_now
from nsbox.engine.model import EXITED, RUNNING
from nsbox.errors import NsboxError

TYPE_CHECKING = False  # typing's own constant costs an import of typing
if TYPE_CHECKING:
    from nsbox.engine.lifecycle.state import EngineBase


def run_foreground(engine: EngineBase, c: Container) -> int:
    """Run C, just created, without a monitor: the runtime's `run` in this process's terminal
    (for -it); the exit code.  Restart policies do not apply here; --rm does.
    """
    engine.storage.mount(c.id)
    os.makedirs(runtime_root(engine.run_root, c.runtime), mode=0o700, exist_ok=True)
    pid_file = os.path.join(c.bundle, "init.pid")
    oci = engine.oci(c.runtime)
    uses_slirp = c.spec.network_mode.startswith("slirp4netns") or c.spec.network_mode == "pasta"
    if uses_slirp:
        # The network namespace is the engine's, so slirp4netns can set it up
        # before the runtime's `run` puts the container into it.
        from nsbox.engine.network import netns, slirp
        try:
            if c.spec.publish or c.spec.publish_all:
                from nsbox.engine.network import slirp_ports
                slirp_ports.publish(engine, c)
            netns.make_netns(engine.run_root, c.id)
            slirp.start(engine.run_root, c.id, c.spec.network_mode)
        except NsboxError:
            slirp.stop(engine.run_root, c.id)
            _forget_ports(engine, c)
            with suppress(NsboxError):
                remove_now(engine, c.id, volumes=True)
            raise
    if os.path.exists(os.path.join(engine.run_root, "wiring", c.id)):
        from nsbox.engine.network import wiring  # a bridge network's interfaces first
        try:
            if wiring.failed(engine.run_root, c.id):  # an earlier start failed there
                from nsbox.engine.network import attach
                attach.rewire(engine, c.id)
            wiring.wait(engine.run_root, c.id)
        except NsboxError:
            with suppress(NsboxError):
                remove_now(engine, c.id, volumes=True)
            raise
    try:
        code = _run_foreground(engine, c, oci, pid_file)
    finally:
        if uses_slirp:
            slirp.stop(engine.run_root, c.id)
            _forget_ports(engine, c)
    if c.spec.auto_remove:
        remove_now(engine, c.id, volumes=True)
    return code


def _forget_ports(engine: EngineBase, c: Container) -> None:
    if c.spec.publish or c.spec.publish_all:
        from nsbox.engine.network import slirp_ports
        slirp_ports.unpublish(engine, c.id)


def _run_foreground(engine: EngineBase, c: Container, oci, pid_file: str) -> int:  # noqa: ANN001
    import subprocess
    proc = subprocess.Popen([c.runtime, "--root", runtime_root(engine.run_root, c.runtime),
                             *oci.global_args, "run", "--bundle", c.bundle, "--pid-file",
                             pid_file, c.id])
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with open(pid_file) as f:
                pid = int(f.read().strip())
            engine.db.update_container(c.id, state=RUNNING, pid=pid, started_at=time.time(),
                                       monitor_pid=os.getpid())
            from nsbox.engine.events import emit_container
            emit_container(engine.root, c, "start")
            if c.extra.get("healthcheck"):  # no monitor here to fork its runner: start one
                from nsbox.engine.health import recover, state
                with suppress(OSError):
                    state.reset(c.bundle)
                recover.spawn(engine.root, engine.run_root, c.id, pid, c.bundle)
            break
        except (OSError, ValueError):
            time.sleep(0.01)
    code = proc.wait()
    oci.delete(c.id)
    with suppress(NsboxError):
        engine.storage.unmount(c.id)
    engine.db.update_container(c.id, state=EXITED, pid=0, exit_code=code, finished_at=time.time())
    from nsbox.engine.events import emit_container
    emit_container(engine.root, c, "die", exitCode=code)
    return code
