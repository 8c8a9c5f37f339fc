"""Usage:  nsbox volume inspect [OPTIONS] VOLUME [VOLUME...]

Describe volumes as JSON, or with -f/--format.
"""

from __future__ import annotations

import sys

FLAGS = {"format": "str"}
ALIASES = {"f": "format"}
HELP = {
    "format": ("string", "Format output using a Go template"),
}


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import need_args
    from nsbox.engine.cli.cmd_inspect import emit
    from nsbox.errors import NsboxError

    names = need_args(args, "volume inspect", 1)
    volumes = ctx.engine().volumes
    items, failed = [], False
    for name in names:
        try:
            items.append(volumes.inspect(name))
        except NsboxError as exc:
            sys.stderr.write(f"Error: {exc}\n")
            failed = True
    emit(items, args["format"])
    return 125 if failed else 0
