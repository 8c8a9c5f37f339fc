"""The health runner's lock, and starting a runner again for a container whose runner died.

Below the engine's lifecycle modules (lifecycle/state.py calls ensure_runner
from get/list): it imports nothing of the engine but procs.  runner.py
holds the lock for a runner's life; see its docstring.
"""

from __future__ import annotations

import fcntl
import os
import sys

RUNNER_LOCK = "health.runner"


def try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def open_lock(bundle: str) -> int:
    return os.open(os.path.join(bundle, RUNNER_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def ensure_runner(engine, c) -> None:  # noqa: ANN001
    """Start a runner for the running C if none holds its lock (its monitor's died with it).

    Called by EngineBase for a container with a healthcheck: the status
    recorded so far stands, the new runner goes on from it.
    """
    from nsbox.engine.procs import pid_alive
    if not c.pid or not pid_alive(c.pid) or not os.path.isdir(c.bundle):
        return
    try:
        fd = open_lock(c.bundle)
    except OSError:
        return
    try:
        if not try_lock(fd):
            return  # a runner holds it
    finally:
        os.close(fd)
    spawn(engine.root, engine.run_root, c.id, c.pid, c.bundle)


def spawn(root: str, run_root: str, cid: str, init_pid: int, bundle: str) -> None:
    """`python -m nsbox.engine.health.runner ...`, detached.

    Its first process takes the lock (or exits if a runner holds it) and
    forks the runner, which keeps it: once this returns, the lock is held,
    so the next command starts no second runner.  Not a fork here: the
    caller may be a threaded program (the Python API).
    """
    import subprocess

    import nsbox
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(nsbox.__file__)))
    path = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p)
    subprocess.Popen([sys.executable, "-m", "nsbox.engine.health.runner", root, run_root, cid,
                      str(init_pid), bundle], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True,
                     env=dict(os.environ, PYTHONPATH=path), cwd="/").wait()
