"""Usage:  nsbox restart [OPTIONS] CONTAINER [CONTAINER...]

Restart containers (stop with -t/--time seconds of grace, then start).
"""

from __future__ import annotations

FLAGS = {"time": "str", "timeout": "str"}
ALIASES = {"t": "time"}
HELP = {
    "time": ("int", "Seconds to wait before killing the container"),
    "timeout": ("int", "Alias of --time"),
}


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import need_args
    from nsbox.engine.cli._common import for_each
    from nsbox.engine.flags import parse_int

    refs = need_args(args, "restart", 1)
    raw = args["time"] if args["time"] is not None else args["timeout"]
    timeout = parse_int(raw, "time", -1) if raw is not None else None
    engine = ctx.engine()
    return for_each(refs, lambda ref: engine.restart(ref, timeout=timeout))
