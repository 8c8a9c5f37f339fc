"""Small stand-ins for standard-library helpers whose imports are slow.

contextlib and functools pull in collections, reprlib and more; together
that is several milliseconds of every runtime command on a slow host.  The
runtime's hot path uses these instead; elsewhere use the standard library.
"""

from __future__ import annotations


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
