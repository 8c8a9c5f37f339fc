"""Small stand-ins for standard-library helpers whose imports are slow.

contextlib and functools pull in collections, reprlib and more; together
that is several milliseconds of every runtime command on a slow host.  The
runtime's hot path uses these instead; elsewhere use the standard library.
"""

from __future__ import annotations

import os


class suppress:  # noqa: N801 - named like the contextlib helper it replaces
    """`with suppress(OSError): ...` ignores those exceptions."""

    __slots__ = ("exceptions",)

    def __init__(self, *exceptions: type[BaseException]) -> None:
        self.exceptions = exceptions

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        return exc_type is not None and issubclass(exc_type, self.exceptions)


def once(func):
    """Cache the result of a function that takes no arguments (like functools.cache)."""
    missing = cache = object()

    def wrapper():
        nonlocal cache
        if cache is missing:
            cache = func()
        return cache

    def cache_clear() -> None:
        nonlocal cache
        cache = missing

    wrapper.cache_clear = cache_clear
    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    wrapper.__wrapped__ = func
    return wrapper


class flocked:  # noqa: N801 - used like contextlib's helpers: `with flocked(fd):`
    """`with flocked(fd): ...` holds an exclusive flock on FD, a descriptor the block
    owns: closed at its end (or at once if the lock cannot be taken).  Unlocked with
    LOCK_UN before the close: a child forked meanwhile holds a copy of the descriptor,
    and closing ours alone would leave the lock held (engine/events.py's hang)."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        import fcntl  # (an extension to load: only where something is locked)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(self.fd)
            raise

    def __exit__(self, *exc: object) -> None:
        import fcntl
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
