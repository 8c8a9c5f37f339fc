"""A container's health: <bundle>/health.json, Docker's State.Health.

    {"Status": "starting|healthy|unhealthy", "FailingStreak": 0,
     "Log": [{"Start": RFC3339, "End": RFC3339, "ExitCode": 0, "Output": "..."}]}

Written whole to a temporary file and renamed over (a reader never sees half
of it; a crash leaves the old or the new one), under an flock on
<bundle>/health.lock, since the runner and `healthcheck run` both update it.
It lives in the bundle, so it goes with the container, and it outlives the
monitor and its runner: a runner started again goes on from it.
"""

from __future__ import annotations

import fcntl
import os
import time

from nsbox import _json
from nsbox._lite import suppress

STATE_FILE = "health.json"
LOCK_FILE = "health.lock"
MAX_LOG = 5  # results kept, as Docker
MAX_OUTPUT = 4096  # bytes of a check's output kept, as Docker ("..." marks a cut)

STARTING, HEALTHY, UNHEALTHY = "starting", "healthy", "unhealthy"


class Result:
    """One check: when it ran (epoch seconds), its exit code (-1: timed out or failed to run)."""

    __slots__ = ("start", "end", "exit_code", "output")

    def __init__(self, start: float, end: float, exit_code: int, output: str) -> None:
        self.start, self.end, self.exit_code, self.output = start, end, exit_code, output

    def as_log(self) -> dict:
        return {"Start": rfc3339(self.start), "End": rfc3339(self.end),
                "ExitCode": self.exit_code, "Output": self.output}


def rfc3339(epoch: float) -> str:
    ns = int(epoch * 1e9)
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


def truncate_output(data: bytes, cut: bool = False) -> str:
    """The first MAX_OUTPUT bytes as text, "..." after them if there was more (or CUT)."""
    text = data[:MAX_OUTPUT].decode(errors="replace")
    return text + "..." if cut or len(data) > MAX_OUTPUT else text


def read(bundle: str) -> dict | None:
    """The recorded health, or None (never started with a check, or removed)."""
    try:
        with open(os.path.join(bundle, STATE_FILE), "rb") as f:
            data = _json.loads(f.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def status(bundle: str) -> str:
    """starting, healthy, unhealthy, or "" with no record (what `ps` shows)."""
    data = read(bundle)
    return str(data.get("Status", "")) if data else ""


class _Locked:
    def __init__(self, bundle: str) -> None:
        self.path = os.path.join(bundle, LOCK_FILE)
        self.fd = -1

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # releases the lock


def _write(bundle: str, data: dict) -> None:
    path = os.path.join(bundle, STATE_FILE)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(_json.dumps(data))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


def reset(bundle: str) -> None:
    """A (re)start: `starting` with no failures; the results of earlier runs are kept (Docker)."""
    with _Locked(bundle):
        old = read(bundle) or {}
        _write(bundle, {"Status": STARTING, "FailingStreak": 0, "Log": old.get("Log") or []})


def apply(health: dict, result: Result, retries: int, start_period: float,
          started_at: float) -> dict:
    """HEALTH after RESULT (Docker's rules), a new dict.

    A pass: healthy, streak 0.  A failure while `starting` within START_PERIOD
    seconds of STARTED_AT does not count; otherwise it adds to the streak,
    and RETRIES in a row make it unhealthy.
    """
    status_now = health.get("Status") or STARTING
    streak = int(health.get("FailingStreak") or 0)
    if result.exit_code == 0:
        status_now, streak = HEALTHY, 0
    elif not (status_now == STARTING and result.start - started_at < start_period):
        streak += 1
        if streak >= retries:
            status_now = UNHEALTHY
    log = [*(health.get("Log") or []), result.as_log()][-MAX_LOG:]
    return {"Status": status_now, "FailingStreak": streak, "Log": log}


def record(bundle: str, result: Result, retries: int, start_period: float,
           started_at: float) -> tuple[str, str]:
    """Add RESULT to the bundle's health; (status before, status after)."""
    with _Locked(bundle):
        old = read(bundle) or {"Status": STARTING, "FailingStreak": 0, "Log": []}
        new = apply(old, result, retries, start_period, started_at)
        _write(bundle, new)
    return str(old.get("Status") or STARTING), new["Status"]
