"""Checks that a failed (or finished) runtime command left nothing on the machine.

Used by the runtime end-to-end tests: after an error, `assert_nothing_left`
looks for the traces a half-created container could leave behind: its state
directory, processes, mounts and cgroup directories.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _own_ancestors() -> set[str]:
    """Our pid and every ancestor's: they run pytest, never the container."""
    found, pid = set(), os.getpid()
    while pid > 0:
        found.add(str(pid))
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read()
            pid = int(data[data.rindex(b")") + 2:].split()[1])
        except (OSError, ValueError):
            break
    return found


def _is_zombie(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return True
    return data[data.rindex(b")") + 2:].split()[0] in (b"Z", b"X")


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def leftover_processes(bundle: Path | str, container_id: str) -> list[str]:
    """Live processes whose root or cwd is the bundle's rootfs (or lies inside the
    bundle), or whose cmdline names CONTAINER_ID.

    A pivoted process's /proc/PID/root reads as "/", so the root is compared by
    identity (device and inode) with the rootfs directory as well as by path.
    """
    bundle_path = os.path.realpath(bundle)
    rootfs = _identity(os.path.join(bundle_path, "rootfs"))
    skip = _own_ancestors()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid in skip or _is_zombie(pid):
            continue
        cmdline = _cmdline(pid)
        places = [_readlink(f"/proc/{pid}/cwd"), _readlink(f"/proc/{pid}/root")]
        inside = any(p == bundle_path or p.startswith(bundle_path + "/") for p in places)
        if rootfs is not None and _identity(f"/proc/{pid}/root") == rootfs:
            inside = True
        if inside or container_id in cmdline:
            found.append(f"pid {pid} ({cmdline.strip() or '?'}) cwd/root={places}")
    return found


def leftover_mounts(path: Path | str) -> list[str]:
    """Lines of our mountinfo that mention PATH (as mount point, root or source)."""
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return [line.strip() for line in f if real in line or str(path) in line]


def leftover_cgroups(container_id: str) -> list[str]:
    """Cgroup directories named after the container, in any hierarchy."""
    wanted = f"nsbox-{container_id}"
    found = []
    for dirpath, dirnames, _files in os.walk(CGROUP_ROOT):
        for name in dirnames:
            if name == wanted:
                found.append(os.path.join(dirpath, name))
    return found


def leftovers(runtime_root: Path | str, bundle: Path | str, container_id: str) -> list[str]:
    problems = []
    state_dir = Path(runtime_root) / container_id
    if state_dir.exists():
        problems.append(f"state dir {state_dir} still exists: {sorted(os.listdir(state_dir))}")
    problems += [f"process: {p}" for p in leftover_processes(bundle, container_id)]
    problems += [f"mount: {m}" for m in leftover_mounts(bundle)]
    problems += [f"cgroup: {c}" for c in leftover_cgroups(container_id)]
    return problems


def assert_nothing_left(runtime_root: Path | str, bundle: Path | str, container_id: str,
                        grace: float = 3.0) -> None:
    """Fail unless no state dir, process, mount or cgroup of the container remains.

    A killed process can take a moment to disappear, so the check is retried
    for up to GRACE seconds before it fails.
    """
    deadline = time.monotonic() + grace
    while True:
        problems = leftovers(runtime_root, bundle, container_id)
        if not problems or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not problems, "left behind:\n" + "\n".join(problems)
