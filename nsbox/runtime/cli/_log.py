"""Logging for the runtime CLI: --log FILE, --log-format text|json, --debug.

Clients (containerd's shim, conmon) read the last error from the log file,
so every failure is written there as well as to stderr.  The logging package
is configured only for debug output; otherwise warnings and errors are
written by `_sink`, in the formats logging would use (the handlers below, or
its last resort on stderr), and the logging package is never loaded: ~9 ms of
a command with --log, which every client passes, and a container init could
not load it anyway once it has switched to the container's root.
"""

from __future__ import annotations

import os
import sys
import time

from nsbox import _json, _lazylog


def _timestamp(seconds: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


_LEVEL_NAMES = {_lazylog.WARNING: "WARNING", _lazylog.ERROR: "ERROR", 50: "CRITICAL"}


def _json_line(level_name: str, message: str) -> str:
    return _json.dumps({"level": level_name.lower(), "msg": message, "time": _timestamp()})


def _sink(fd: int, log_format: str | None):
    """Write each record to FD as logging would: LOG_FORMAT for a --log file
    (FD opened before any fork: the container's init logs through it after
    pivot_root too, where the file's path leads nowhere), None for stderr,
    where logging's last resort writes the bare message."""
    def write(level: int, name: str, message: str) -> None:
        level_name = _LEVEL_NAMES.get(level, f"Level {level}")
        if log_format is None:
            line = message
        elif log_format == "json":
            line = _json_line(level_name, message)
        else:  # logging.Formatter's asctime: local time, then milliseconds
            now = time.time()
            line = (f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))},"
                    f"{int((now - int(now)) * 1000):03d} {level_name} {name}: {message}")
        try:
            os.write(fd, f"{line}\n".encode())
        except OSError:
            pass

    return write


def setup(ctx):
    """Send this command's warnings where its flags say; returns what undoes
    that (main() also runs in-process: tests, programs calling it).  OSError
    when the --log file cannot be opened."""
    fd = -1
    if ctx.log_path:
        fd = os.open(ctx.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
    saved = (_lazylog.debug_enabled, _lazylog.sink)
    _lazylog.debug_enabled = ctx.debug
    handler = level = None
    if ctx.debug:
        handler, level = _logging_handler(ctx)
    else:
        _lazylog.sink = _sink(fd, ctx.log_format) if fd >= 0 else _sink(2, None)

    def undo() -> None:
        _lazylog.debug_enabled, _lazylog.sink = saved
        if fd >= 0:
            os.close(fd)
        if handler is not None:
            import logging

            logging.getLogger().removeHandler(handler)
            logging.getLogger().setLevel(level)
            handler.close()

    return undo


def _logging_handler(ctx):
    """The logging package set up for --debug; returns the handler and the
    root logger's level before."""
    import logging

    class JsonFormatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return _json.dumps({"level": record.levelname.lower(), "msg": record.getMessage(),
                                "time": _timestamp(record.created)})

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.DEBUG if ctx.debug else logging.WARNING)
    handler: logging.Handler = (logging.FileHandler(ctx.log_path) if ctx.log_path
                                else logging.StreamHandler(sys.stderr))
    handler.setFormatter(JsonFormatter() if ctx.log_format == "json"
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    return handler, level


def fail(ctx, message: str, code: int) -> int:
    """Report a one-line error on stderr (and in --log) and return the exit code."""
    message = message.replace("\n", " ")
    if ctx.log_path:
        if ctx.log_format == "json":
            line = _json_line("error", message)
        else:
            line = f"{_timestamp()} ERROR nsbox-runtime: {message}"
        try:
            with open(ctx.log_path, "a") as f:
                f.write(line + "\n")
        except OSError:
            pass
    sys.stderr.write(f"nsbox-runtime: {message}\n")
    sys.stderr.flush()
    return code
