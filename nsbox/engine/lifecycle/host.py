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
from nsbox.errors import ConfigError, NsboxError


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


def monitor_processes(cid: str) -> list[int]:
    """Pids of every live process of CID's monitor (the daemon, its helpers, its C loop).

    Found by name, not by the record: a monitor that is still starting the
    container has not recorded its pid yet.  Reads all of /proc: only for
    records whose owner is dead (lifecycle/recover.py).
    """
    name = monitor_name(cid).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm", "rb") as f:
                comm = f.read().strip()
            if comm != name:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read()
                # The C loop and the Python monitor it resumes name the id in their argv.
                if cid.encode() not in cmdline or b"nsbox.engine.monitor\0--resume" not in cmdline:
                    continue
        except OSError:
            continue
        if pid_alive(int(entry)):
            found.append(int(entry))
    return found


def cgroup_dirs(cid: str, cgroups_path: str, parent: str) -> dict[str, str]:
    """The container's cgroup directory per hierarchy, as the runtime resolved CGROUPS_PATH.

    PARENT is the starter's /proc/self/cgroup text: a relative path goes
    below it (nsbox.runtime.cgroups.resolve does the same with its own).
    A systemd path (slice:prefix:name) is the unit's: systemd removes it.
    """
    if cgroups_path.count(":") == 2 and not cgroups_path.startswith("/"):
        return {}
    if not parent and not cgroups_path.startswith("/"):
        return {}
    from nsbox.runtime import cgroups
    base = {}
    for line in parent.splitlines():
        hid, ctrls, path = line.split(":", 2)
        base[cgroups.UNIFIED if hid == "0" else ",".join(sorted(ctrls.split(",")))] = path
    out = {}
    for h in cgroups.hierarchies():
        rel = cgroups_path if cgroups_path.startswith("/") else \
            os.path.join(base.get(h.key, "/"), cgroups_path or f"nsbox-{cid}")
        if not rel.startswith(h.root):
            rel = os.path.join(h.root, rel.lstrip("/"))
        out[h.key] = os.path.normpath(os.path.join(h.mountpoint, os.path.relpath(rel, h.root)))
    return out


def remove_cgroups(row: dict) -> None:
    """Kill what is left in the row's recorded cgroups and remove them (no-op once gone)."""
    from nsbox import _json
    extra = _json.loads(row.get("extra") or "{}")
    dirs = cgroup_dirs(row["id"], extra.get("cgroups_path", f"nsbox-{row['id']}"),
                       row.get("cgroup_parent") or "")
    existing = {k: p for k, p in dirs.items() if os.path.isdir(p)}
    if existing:
        from nsbox.runtime import cgroups
        with suppress(NsboxError, OSError):
            cgroups.destroy(existing)


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
