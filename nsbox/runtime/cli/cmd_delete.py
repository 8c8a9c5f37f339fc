"""usage: nsbox-runtime delete [--force] CONTAINER_ID

Delete a container.  A running container needs --force, which kills it.
"""

from __future__ import annotations

FLAGS = {"force": False, "f": False, "help": False}
ALIASES = {"f": "force"}
HELP = {
    "force": "kill the container first if it is running",
    "help": "print usage",
}


def run(args, ctx) -> int:
    from nsbox.errors import ContainerNotFound
    from nsbox.runtime.cli import need_id

    cid = need_id(args, "delete")
    try:
        ctx.runtime().delete(cid, force=args["force"])
    except ContainerNotFound:
        if not args["force"]:
            raise
    return 0
