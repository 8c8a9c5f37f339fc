"""usage: nsbox-runtime state CONTAINER_ID

Print the OCI state of a container as JSON.
"""

from __future__ import annotations

FLAGS = {"help": False}
HELP = {"help": "print usage"}


def run(args, ctx) -> int:
    import sys

    from nsbox import _json
    from nsbox.runtime.cli import need_id

    sys.stdout.write(_json.dumps_pretty(ctx.runtime().state(need_id(args, "state"))) + "\n")
    return 0
