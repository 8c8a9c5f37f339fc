"""Usage:  nsbox network prune [OPTIONS]

Remove every user-defined network no container is connected to (-f/--force: do not ask).
"""

from __future__ import annotations

import sys

FLAGS = {"force": "bool", "filter": "list"}
ALIASES = {"f": "force"}
HELP = {
    "force": "Do not prompt for confirmation",
    "filter": ("filter", "Accepted for Docker compatibility; ignored"),
}


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli.cmd_container_prune import confirm
    from nsbox.engine.network import membership

    if not args["force"] and not confirm("This will remove all custom networks not used by at "
                                         "least one container."):
        return 0
    removed = membership.prune(ctx.engine())
    if removed:
        sys.stdout.write("Deleted Networks:\n" + "".join(f"{n}\n" for n in removed))
    return 0
