"""usage: nsbox-runtime state CONTAINER_ID

Print the OCI state of a container as JSON.
"""

from __future__ import annotations

FLAGS = {"help": False}


def run(args, ctx) -> int:
    import json
    import sys

    from nsbox.runtime.cli import need_id

    sys.stdout.write(json.dumps(ctx.runtime().state(need_id(args, "state")), indent=2) + "\n")
    return 0
