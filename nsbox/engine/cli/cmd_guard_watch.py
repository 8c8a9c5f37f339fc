"""Usage:  nsbox guard watch [OPTIONS] [CONTAINER]

Print the guard's events as JSON lines, as they happen: every event the kernel
reports for watched containers (or CONTAINER's), with the rules that matched.
Waits for a watched container when none runs.  See docs/guard.md.
"""

from __future__ import annotations

FLAGS = {"timeout": "str"}
ALIASES: dict[str, str] = {}
HELP = {"timeout": ("seconds", "Stop after this many seconds (default: until interrupted)")}


def run(args, ctx) -> int:  # noqa: ANN001
    import json
    import sys

    from nsbox.engine.cli import need_args
    from nsbox.engine.guard.client import subscribe

    refs = need_args(args, "guard watch", 0, 1, "argument")
    cid = ctx.engine().get(refs[0]).id if refs else ""
    timeout = None
    if args["timeout"]:
        try:
            timeout = float(args["timeout"])
        except ValueError:
            timeout = -1.0
        if not timeout > 0:
            from nsbox.errors import ConfigError
            raise ConfigError(f"invalid --timeout {args['timeout']!r}: a number of seconds")
    try:
        for line in subscribe(cid, timeout):
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        return 130
    return 0
