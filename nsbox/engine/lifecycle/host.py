"""What the engine finds on the host rather than in its database.

The OCI runtime binary and its state directory, whether an init or a
monitor process is alive, the engine's own files under <run_root>:
exits/<id> (the last exit code, read by wait() after --rm) and stdin/<id>
(a `run -d -i` container's stdin FIFO), and paths inside a rootfs.
"""

from __future__ import annotations

import os

from nsbox._lite import suppress
from nsbox.engine.monitor_protocol import monitor_name
from nsbox.engine.oci import own_runtime_binary, state_root
from nsbox.engine.procs import pid_alive
from nsbox.errors import ConfigError


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


def monitor_alive(pid: int, cid: str) -> bool:
    if not pid_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        # Empty while the monitor is between its C loop and its Python finish (execve).
        if not cmdline or cid.encode() in cmdline:
            return True
        # Forked from the engine, it still shows the engine's command line.
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() == monitor_name(cid)
    except OSError:
        return False


def single_threaded() -> bool:
    return len(os.listdir("/proc/self/task")) == 1


def exit_file(run_root: str, cid: str) -> str:
    return os.path.join(run_root, "exits", cid)


def stdin_fifo(run_root: str, cid: str) -> str:
    """Where a detached `run -i` container's stdin comes from (`attach` writes into it)."""
    return os.path.join(run_root, "stdin", cid)


def open_stdin_fifo(run_root: str, cid: str) -> int:
    """The container's end of its stdin FIFO, read-write.

    Holding a write end itself, the container never reads end-of-file: like
    Docker's open stdin, a read waits until someone attaches and types.
    """
    path = stdin_fifo(run_root, cid)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with suppress(FileExistsError):
        os.mkfifo(path, 0o600)
    return os.open(path, os.O_RDWR | os.O_CLOEXEC)


def rmtree(path: str) -> None:
    """shutil.rmtree(PATH, ignore_errors=True), without importing shutil."""
    from nsbox.engine.storage import remove_tree
    remove_tree(path)
