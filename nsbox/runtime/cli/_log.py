"""Logging for the runtime CLI: --log FILE, --log-format text|json, --debug.

Clients (containerd's shim, conmon) read the last error from the log file,
so every failure is written there as well as to stderr.
"""

from __future__ import annotations

import json
import logging
import sys
import time


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"level": record.levelname.lower().replace("warning", "warning"),
                           "msg": record.getMessage(),
                           "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))})


def setup(ctx) -> None:
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if ctx.debug else logging.WARNING)
    if ctx.log_path:
        handler: logging.Handler = logging.FileHandler(ctx.log_path)
    else:
        handler = logging.StreamHandler(sys.stderr)
    if ctx.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)


def fail(ctx, message: str, code: int) -> int:
    """Report a one-line error on stderr (and in --log) and return the exit code."""
    message = message.replace("\n", " ")
    if ctx.log_path:
        logging.getLogger("nsbox").error("%s", message)
    sys.stderr.write(f"nsbox-runtime: {message}\n")
    sys.stderr.flush()
    return code
