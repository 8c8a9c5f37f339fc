"""usage: nsbox-runtime resume CONTAINER_ID

Let the processes of a paused container run again.
"""

from __future__ import annotations

FLAGS: dict = {"help": False}
HELP = {"help": "print usage"}


def run(args, ctx) -> int:
    from nsbox.runtime.cli import need_id

    ctx.runtime().resume(need_id(args, "resume"))
    return 0
