"""Processes as /proc shows them, for every layer of the engine (it imports nothing of nsbox)."""

from __future__ import annotations


def pid_alive(pid: int) -> bool:
    """True if PID exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False
