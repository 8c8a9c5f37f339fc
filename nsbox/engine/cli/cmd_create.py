"""Usage:  nsbox create [OPTIONS] IMAGE [COMMAND] [ARG...]

Create a new container (state "created") and print its id; `nsbox start` runs it.
Takes the same options as `nsbox run`.
"""

from __future__ import annotations

import sys

from nsbox.engine.run_flags import RUN_ALIASES, RUN_FLAG_HELP, RUN_FLAGS

FLAGS = dict(RUN_FLAGS)
ALIASES = RUN_ALIASES
HELP = RUN_FLAG_HELP
STOP_AFTER = 1


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox import api
    from nsbox.engine.cli.cmd_run import prepare

    spec, engine = prepare(args, ctx, "create")
    container = api.create_container(engine, spec)
    sys.stdout.write(container.id + "\n")
    return 0
