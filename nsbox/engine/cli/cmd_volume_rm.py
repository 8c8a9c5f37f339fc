"""Usage:  nsbox volume rm [OPTIONS] VOLUME [VOLUME...]

Remove volumes (-f/--force: no error for missing ones).
"""

from __future__ import annotations

FLAGS = {"force": "bool"}
ALIASES = {"f": "force"}
HELP = {
    "force": "Do not fail on volumes that do not exist",
}


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import need_args
    from nsbox.engine.cli._common import for_each

    names = need_args(args, "volume rm", 1)
    volumes = ctx.engine().volumes
    return for_each(names, lambda name: volumes.remove(name, force=bool(args["force"])))
