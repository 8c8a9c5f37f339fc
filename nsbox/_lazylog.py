"""Loggers that import `logging` only when something is actually logged.

Importing logging costs a noticeable part of a runtime command's start-up on
a slow host, and most commands log nothing.  A LazyLogger forwards to the
real logging.getLogger(name) as soon as logging is in use: when debug output
was asked for, when a warning or error is emitted, or when the program that
imported nsbox already uses logging (so library users see every record).
"""

from __future__ import annotations

import sys

DEBUG = 10
INFO = 20
WARNING = 30
ERROR = 40

debug_enabled = False  # set by the CLI for --debug

# Set by a CLI that writes warnings and errors itself when no debug output was
# asked for (nsbox/runtime/cli/_log.py: to stderr or its --log file): called
# with (level, logger name, message) for each such record, so that the logging
# package is not loaded (~9 ms, half of a `run`) for a few lines.
sink = None


class LazyLogger:
    __slots__ = ("name", "_logger")

    def __init__(self, name: str) -> None:
        self.name = name
        self._logger = None

    def _real(self):
        if self._logger is None:
            import logging

            self._logger = logging.getLogger(self.name)
        return self._logger

    def _wanted(self, level: int) -> bool:
        return level >= WARNING or debug_enabled or "logging" in sys.modules

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 - the logging.Logger name
        return self._wanted(level) and self._real().isEnabledFor(level)

    def log(self, level: int, msg: str, *args, **kwargs) -> None:
        if sink is not None and level >= WARNING and not kwargs:
            sink(level, self.name, msg % args if args else msg)
        elif self._wanted(level):
            self._real().log(level, msg, *args, **kwargs)

    def debug(self, msg: str, *args, **kwargs) -> None:
        self.log(DEBUG, msg, *args, **kwargs)

    def info(self, msg: str, *args, **kwargs) -> None:
        self.log(INFO, msg, *args, **kwargs)

    def warning(self, msg: str, *args, **kwargs) -> None:
        self.log(WARNING, msg, *args, **kwargs)

    def error(self, msg: str, *args, **kwargs) -> None:
        self.log(ERROR, msg, *args, **kwargs)

    def exception(self, msg: str, *args, **kwargs) -> None:
        kwargs.setdefault("exc_info", True)
        self.log(ERROR, msg, *args, **kwargs)


def get_logger(name: str) -> LazyLogger:
    return LazyLogger(name)
