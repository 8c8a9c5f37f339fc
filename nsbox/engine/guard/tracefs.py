"""tracefs for the guard process: where libbpf finds the system call tracepoints' ids.

The guard's programs attach to `syscalls/sys_exit_NAME` tracepoints (one per
watched call, so the calls nobody watches run no BPF).  libbpf resolves such a
tracepoint through tracefs (/sys/kernel/tracing, or /sys/kernel/debug/tracing),
which hosts often leave unmounted.  The guard then mounts it in a mount
namespace of its own (made rslave first, so nothing it mounts reaches the
host and the host's later mounts still reach it): the host's mount table is
never changed, and the mount goes away with the guard process.
"""

from __future__ import annotations

import os

from nsbox.runtime import syscalls as sc

TRACEFS = "/sys/kernel/tracing"
_CANDIDATES = (TRACEFS, "/sys/kernel/debug/tracing")


def events_dir() -> str | None:
    """The mounted tracefs's events/ directory, or None."""
    for top in _CANDIDATES:
        if os.path.isdir(os.path.join(top, "events")):
            return os.path.join(top, "events")
    return None


def ensure() -> str:
    """The events/ directory, mounting tracefs privately first when needed (OSError if it cannot)."""
    found = events_dir()
    if found:
        return found
    # unshare(CLONE_NEWNS) needs a single-threaded caller: the guard calls this first.
    sc.unshare(sc.CLONE_NEWNS)
    sc.mount(None, "/", None, sc.MS_SLAVE | sc.MS_REC)
    sc.mount("tracefs", TRACEFS, "tracefs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    return os.path.join(TRACEFS, "events")


def has_event(events: str, section: str) -> bool:
    """Whether a program's SEC("tracepoint/CATEGORY/NAME") names a tracepoint this kernel has."""
    _kind, _, rest = section.partition("/")
    return os.path.isdir(os.path.join(events, rest))
