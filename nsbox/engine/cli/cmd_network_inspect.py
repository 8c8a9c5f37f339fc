"""Usage:  nsbox network inspect [OPTIONS] NETWORK [NETWORK...]

Describe networks as JSON (Docker's shape), or with -f/--format.
"""

from __future__ import annotations

import sys

FLAGS = {"format": "str", "verbose": "bool"}
ALIASES = {"f": "format", "v": "verbose"}
HELP = {
    "format": ("string", "Format output using a Go template"),
    "verbose": "Accepted for Docker compatibility; ignored",
}


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import need_args
    from nsbox.engine.cli.cmd_inspect import emit
    from nsbox.engine.network import networks
    from nsbox.errors import NsboxError

    refs = need_args(args, "network inspect", 1)
    engine = ctx.engine()
    items, failed = [], False
    for ref in refs:
        try:
            items.append(networks.inspect(engine, ref))
        except NsboxError as exc:
            sys.stderr.write(f"Error: {exc}\n")
            failed = True
    emit(items, args["format"])
    return 125 if failed else 0
