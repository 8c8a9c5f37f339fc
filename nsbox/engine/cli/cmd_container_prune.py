"""Usage:  nsbox container prune [OPTIONS]

Remove all stopped containers (-f/--force: do not ask).
"""

from __future__ import annotations

import sys

FLAGS = {"force": "bool", "filter": "list"}
ALIASES = {"f": "force"}
HELP = {
    "force": "Do not prompt for confirmation",
    "filter": ("filter", "Accepted for Docker compatibility; ignored"),
}


def confirm(question: str) -> bool:
    sys.stdout.write(f"WARNING! {question}\nAre you sure you want to continue? [y/N] ")
    sys.stdout.flush()
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")


def run(args, ctx) -> int:  # noqa: ANN001
    if not args["force"] and not confirm("This will remove all stopped containers."):
        return 0
    removed = ctx.engine().prune()
    if removed:
        sys.stdout.write("Deleted Containers:\n" + "".join(f"{cid}\n" for cid in removed) + "\n")
    sys.stdout.write("Total reclaimed space: 0B\n")
    return 0
