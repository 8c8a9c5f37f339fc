"""Usage:  nsbox volume prune [OPTIONS]

Remove volumes no container uses (-f/--force: do not ask).
"""

from __future__ import annotations

import sys

FLAGS = {"force": "bool", "filter": "list", "all": "bool"}
ALIASES = {"f": "force", "a": "all"}
HELP = {
    "force": "Do not prompt for confirmation",
    "filter": ("filter", "Accepted for Docker compatibility; ignored"),
    "all": "Remove all unused volumes, not just anonymous ones",
}


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli.cmd_container_prune import confirm

    if not args["force"] and not confirm("This will remove all local volumes not used by at "
                                         "least one container."):
        return 0
    removed = ctx.engine().volumes.prune()
    if removed:
        sys.stdout.write("Deleted Volumes:\n" + "".join(f"{n}\n" for n in removed) + "\n")
    sys.stdout.write("Total reclaimed space: 0B\n")
    return 0
