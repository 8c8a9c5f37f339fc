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


# Tests inject crashes by name: NSBOX_TEST_CRASHPOINT=start.after_hand_over makes
# the process that reaches crashpoint("start.after_hand_over") SIGKILL itself
# there (tests/test_engine_crash.py; the names are listed in docs/reliability.md).
# Read once at import: unset, a crash point costs one comparison.
def _crashpoint_from_env() -> str:
    import os
    return os.environ.get("NSBOX_TEST_CRASHPOINT", "")


_CRASHPOINT = _crashpoint_from_env()


def crashpoint(name: str) -> None:
    """SIGKILL this process if NSBOX_TEST_CRASHPOINT names NAME (tests only)."""
    if _CRASHPOINT and _CRASHPOINT == name:
        import os
        os.kill(os.getpid(), 9)
