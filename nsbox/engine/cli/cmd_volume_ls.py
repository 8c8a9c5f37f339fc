"""Usage:  nsbox volume ls [OPTIONS]

List volumes.  -q/--quiet names only, --format TMPL ({{.Name}} {{.Driver}} {{.Mountpoint}}).
"""

from __future__ import annotations

import sys

FLAGS = {"quiet": "bool", "format": "str", "filter": "list"}
ALIASES = {"q": "quiet", "f": "filter"}
HELP = {
    "quiet": "Only display volume names",
    "format": ("string", "Format output using a Go template, or json"),
    "filter": ("filter", "Filter output"),
}


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli._format import print_formatted

    volumes = ctx.engine().volumes.list()
    if args["quiet"]:
        sys.stdout.write("".join(v["Name"] + "\n" for v in volumes))
        return 0
    print_formatted(args["format"] or "table {{.Driver}}\t{{.Name}}", volumes)
    return 0
