"""Reading cgroup files: small tolerant helpers shared by the v1 and v2 backends.

Stats readers must not fail because one file is missing (a controller the
kernel lacks, a container that just went away), so these return None or an
empty result instead of raising.
"""

from __future__ import annotations

import os


def read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def read_int(path: str) -> int | None:
    """An integer file; "max" reads as -1."""
    text = read(path)
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return -1
    try:
        return int(text)
    except ValueError:
        return None


def read_keyed(path: str) -> dict[str, int]:
    """Files of "key value" lines (memory.stat, cpu.stat, memory.events, ...)."""
    out: dict[str, int] = {}
    text = read(path)
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = -1 if parts[1] == "max" else int(parts[1])
            except ValueError:
                continue
    return out


def read_ints(path: str) -> list[int]:
    """Space-separated integers (cpuacct.usage_percpu)."""
    text = read(path)
    try:
        return [int(x) for x in (text or "").split()]
    except ValueError:
        return []


def write(path: str, value: str) -> None:
    """One write(2) of VALUE (cgroup files take one value per write); raises OSError."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)
