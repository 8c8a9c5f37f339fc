"""usage: nsbox-runtime list [--format table|json] [--quiet]

List the containers under the runtime root.
"""

from __future__ import annotations

FLAGS = {"format": "table", "f": "table", "quiet": False, "q": False, "help": False}
ALIASES = {"f": "format", "q": "quiet"}
HELP = {
    "format": ("FORMAT", "table or json"),
    "quiet": "print only the container ids",
    "help": "print usage",
}


def run(args, ctx) -> int:
    import sys

    from nsbox import _json
    from nsbox.runtime.cli import UsageError

    states = ctx.runtime().list()
    if args["quiet"]:
        sys.stdout.write("".join(s["id"] + "\n" for s in states))
        return 0
    if args["format"] == "json":
        sys.stdout.write(_json.dumps(states) + "\n")
        return 0
    if args["format"] != "table":
        raise UsageError(f"invalid format option {args['format']!r}: use table or json")
    rows = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")]
    rows += [(s["id"], str(s["pid"]), s["status"], s["bundle"], s["created"], s["owner"] or "root")
             for s in states]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        sys.stdout.write("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")
    return 0
