"""nsbox/_lite.py: the small stand-ins for slow standard-library helpers."""

from __future__ import annotations

import fcntl
import os

import pytest

from nsbox._lite import flocked, once, suppress


def _held(path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def test_flocked_holds_the_lock_for_the_block_and_closes_its_descriptor(tmp_path):
    path = tmp_path / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    with flocked(fd):
        assert _held(path)
    assert not _held(path)
    with pytest.raises(OSError):
        os.fstat(fd)  # closed


def test_flocked_releases_even_when_a_child_forked_inside_keeps_the_descriptor(tmp_path):
    # A child forked while the lock is held inherits the descriptor; closing ours alone
    # would leave the lock held as long as the child lives (engine/events.py's hang).
    path = tmp_path / "lock"
    read_end, write_end = os.pipe()
    with flocked(os.open(path, os.O_RDWR | os.O_CREAT, 0o600)):
        pid = os.fork()
        if pid == 0:  # the child: waits until the parent is done checking, then exits
            os.close(write_end)
            os.read(read_end, 1)
            os._exit(0)
    try:
        assert not _held(path)
    finally:
        os.close(read_end)
        os.close(write_end)
        os.waitpid(pid, 0)


def test_suppress_and_once():
    with suppress(KeyError):
        {}["x"]
    calls = []
    cached = once(lambda: calls.append(1) or len(calls))
    assert cached() == 1 and cached() == 1 and calls == [1]
    cached.cache_clear()
    assert cached() == 2
