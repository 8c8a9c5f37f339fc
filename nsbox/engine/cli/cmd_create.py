"""Usage:  nsbox create [OPTIONS] IMAGE [COMMAND] [ARG...]

Create a new container (state "created") and print its id; `nsbox start` runs it.
Takes the same options as `nsbox run`.
"""

from __future__ import annotations

import sys

from nsbox.engine.flags import RUN_ALIASES, RUN_FLAGS

FLAGS = dict(RUN_FLAGS)
ALIASES = RUN_ALIASES
STOP_AFTER = 1


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox import api
    from nsbox.engine.cli._format import Progress
    from nsbox.engine.cli.cmd_run import make_spec

    spec = make_spec(args, "create")
    engine = ctx.engine()
    progress = Progress()
    try:
        api.ensure_image(engine.images, spec.image, progress)
    finally:
        progress.close()
    container = api.create_container(engine, spec)
    sys.stdout.write(container.id + "\n")
    return 0
