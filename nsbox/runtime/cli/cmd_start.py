"""usage: nsbox-runtime start CONTAINER_ID

Run the user process of a created container.
"""

from __future__ import annotations

FLAGS = {"help": False}
HELP = {"help": "print usage"}


def run(args, ctx) -> int:
    from nsbox.runtime.cli import need_id

    ctx.runtime().start(need_id(args, "start"))
    return 0
