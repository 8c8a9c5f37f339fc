"""What the kernel of this host offers, asked directly, for tests to skip on.

A test that needs an optional kernel feature (a cgroup file only some
schedulers or configs provide, a device node, a driver) asks here and calls
``pytest.skip`` with the reason when it is absent.  That is a plain skip even
under ``CI=true``: a missing kernel feature is a fact about the machine, not a
missing install step (``helpers.skip_or_fail`` is for those).

Every probe looks at the real thing, not at a kernel version or a distribution:

- cgroup v1 files are listed in a throwaway child cgroup below our own (files
  such as ``blkio.bfq.weight`` are ``CFTYPE_NOT_ON_ROOT``, so our own cgroup,
  often the hierarchy root, does not show them);
- devices: the node exists, is a character device, and opens;
- drivers: their major number is registered in /proc/devices.
"""

from __future__ import annotations

import functools
import os
import re
import stat
import subprocess
import uuid
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _v1_mountpoint(controller: str) -> Path | None:
    """Where the v1 hierarchy holding CONTROLLER is mounted, or None."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = right.split()
        if len(fields) >= 3 and fields[0] == "cgroup" and controller in fields[2].split(","):
            return Path(left.split()[4])
    return None


def _own_v1_path(controller: str) -> str | None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    return None


@functools.cache
def cgroup_v1_child_files(controller: str) -> frozenset[str]:
    """Names of the files a new cgroup gets in CONTROLLER's v1 hierarchy (empty if
    the controller is not mounted as v1).  The probe cgroup is removed at once."""
    mountpoint, own = _v1_mountpoint(controller), _own_v1_path(controller)
    if mountpoint is None or own is None:
        return frozenset()
    probe = mountpoint / own.lstrip("/") / f"nsbox-probe-{uuid.uuid4().hex[:12]}"
    probe.mkdir()
    try:
        return frozenset(os.listdir(probe))
    finally:
        probe.rmdir()


def first_offered(controller: str, *names: str) -> str | None:
    """The first of NAMES a new cgroup of CONTROLLER has, else None."""
    offered = cgroup_v1_child_files(controller)
    return next((name for name in names if name in offered), None)


def io_scheduler(major: int, minor: int) -> str:
    """The active I/O scheduler of block device MAJOR:MINOR ("none" when unknown)."""
    try:
        text = Path(f"/sys/dev/block/{major}:{minor}/queue/scheduler").read_text()
    except OSError:
        return "none"
    for word in text.split():
        if word.startswith("["):
            return word.strip("[]")
    return text.strip() or "none"


def registered_driver(name: str, kind: str = "block") -> bool:
    """True when /proc/devices lists driver NAME among the KIND ("block"/"character")."""
    section = ""
    for line in Path("/proc/devices").read_text().splitlines():
        if line.endswith("devices:"):
            section = line.split()[0].lower()
            continue
        parts = line.split()
        if len(parts) == 2 and parts[1] == name and section == kind:
            return True
    return False


def char_device_missing(path: str) -> str:
    """Why the character device PATH cannot be used here, or "" when it can be opened."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"{path} does not exist on this host"
    if not stat.S_ISCHR(mode):
        return f"{path} is not a character device here"
    try:
        os.close(os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC))
    except OSError as exc:
        return f"{path} cannot be opened here: {exc.strerror}"
    return ""


def swap_active() -> bool:
    """True when some swap area is in use (then an OOM can be a slow swap-out instead)."""
    try:
        return len(Path("/proc/swaps").read_text().splitlines()) > 1
    except OSError:
        return False


def seccomp_actions() -> frozenset[str]:
    """The seccomp return actions this kernel offers (user_notif since 5.0, log since 4.14)."""
    try:
        return frozenset(Path("/proc/sys/kernel/seccomp/actions_avail").read_text().split())
    except OSError:
        return frozenset()


def runc_version(runc: str) -> tuple[int, ...]:
    """runc's version as numbers ("runc version 1.1.5+ds1" -> (1, 1, 5)); () if unknown."""
    out = subprocess.run([runc, "--version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"version (\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(n) for n in match.groups()) if match else ()
