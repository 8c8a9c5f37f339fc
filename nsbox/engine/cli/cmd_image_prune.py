"""Usage:  nsbox image prune [OPTIONS]

Remove dangling images (-a/--all: every image no container uses; -f/--force: do not ask).
"""

from __future__ import annotations

import sys

FLAGS = {"all": "bool", "force": "bool", "filter": "list"}
ALIASES = {"a": "all", "f": "force"}
HELP = {
    "all": "Remove all unused images, not just dangling ones",
    "force": "Do not prompt for confirmation",
    "filter": ("filter", "Accepted for Docker compatibility; ignored"),
}


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli.cmd_container_prune import confirm
    from nsbox.engine.cli.cmd_rmi import in_use_check

    what = ("all images without at least one container associated to them" if args["all"]
            else "all dangling images")
    if not args["force"] and not confirm(f"This will remove {what}."):
        return 0
    removed = ctx.images().prune(in_use=in_use_check(ctx), all=bool(args["all"]))
    if removed:
        sys.stdout.write("Deleted Images:\n" + "".join(f"deleted: {i}\n" for i in removed) + "\n")
    sys.stdout.write("Total reclaimed space: 0B\n")
    return 0
