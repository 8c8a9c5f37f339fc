"""Logging for the runtime CLI: --log FILE, --log-format text|json, --debug.

Clients (containerd's shim, conmon) read the last error from the log file,
so every failure is written there as well as to stderr.  The logging package
is configured only when debug output or a log file is asked for; otherwise
the hot path never imports it (see nsbox._lazylog).
"""

from __future__ import annotations

import sys
import time

from nsbox import _json, _lazylog


def _timestamp(seconds: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def setup(ctx) -> None:
    _lazylog.debug_enabled = ctx.debug
    if not (ctx.debug or ctx.log_path):
        return
    import logging

    class JsonFormatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return _json.dumps({"level": record.levelname.lower(), "msg": record.getMessage(),
                                "time": _timestamp(record.created)})

    root = logging.getLogger()
    root.setLevel(logging.DEBUG if ctx.debug else logging.WARNING)
    handler: logging.Handler = (logging.FileHandler(ctx.log_path) if ctx.log_path
                                else logging.StreamHandler(sys.stderr))
    handler.setFormatter(JsonFormatter() if ctx.log_format == "json"
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)


def fail(ctx, message: str, code: int) -> int:
    """Report a one-line error on stderr (and in --log) and return the exit code."""
    message = message.replace("\n", " ")
    if ctx.log_path:
        if ctx.log_format == "json":
            line = _json.dumps({"level": "error", "msg": message, "time": _timestamp()})
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
