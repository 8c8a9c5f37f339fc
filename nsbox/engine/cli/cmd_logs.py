"""Usage:  nsbox logs [OPTIONS] CONTAINER

Print a container's output: -f/--follow, --tail N|all, -t/--timestamps,
--since TIME (Unix time, RFC 3339, or a duration ago like 10m).
"""

from __future__ import annotations

import sys

FLAGS = {"follow": "bool", "tail": "str", "timestamps": "bool", "since": "str",
         "until": "str", "details": "bool", "guard": "bool"}
ALIASES = {"f": "follow", "t": "timestamps", "n": "tail"}
HELP = {
    "follow": "Follow log output",
    "tail": ("string", "Number of lines to show from the end of the logs (or all)"),
    "timestamps": "Show timestamps",
    "since": ("string", "Show logs since a time (Unix, RFC 3339, or a duration like 10m)"),
    "until": ("string", "Accepted for Docker compatibility; ignored"),
    "details": "Accepted for Docker compatibility; ignored",
    "guard": "Print the guard's alerts (JSON lines) instead of the output (docs/guard.md)",
}


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import need_args
    from nsbox.engine.cli._common import parse_since, stream_logs
    from nsbox.engine.flags import parse_int

    ref = need_args(args, "logs", 1, 1, "argument")[0]
    tail = None
    if args["tail"] not in (None, "", "all"):
        tail = parse_int(args["tail"], "tail", -1)
        tail = None if tail < 0 else tail
    engine = ctx.engine()
    if args["guard"]:
        from nsbox.engine.guard.client import follow_alerts
        for line in follow_alerts(engine, ref, follow=bool(args["follow"]), tail=tail):
            sys.stdout.write(line)
            sys.stdout.flush()
        return 0
    records = engine.logs(ref, follow=bool(args["follow"]), tail=tail,
                          timestamps=bool(args["timestamps"]), since=parse_since(args["since"]))
    stream_logs(records, bool(args["timestamps"]))
    from nsbox.errors import NsboxError
    try:
        lines, size = engine.log_drops(ref)
    except NsboxError:  # removed meanwhile (--rm)
        lines = size = 0
    if lines or size:
        sys.stdout.flush()
        print(f"nsbox: {lines} lines ({size} bytes) of output were dropped: the log could not "
              "be written (disk full?)", file=sys.stderr)
    return 0
