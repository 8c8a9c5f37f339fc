"""Usage:  nsbox image inspect [OPTIONS] IMAGE [IMAGE...]

Low-level information on images (JSON array, or -f/--format Go template).
"""

from __future__ import annotations

FLAGS = {"format": "str"}
ALIASES = {"f": "format"}
HELP = {
    "format": ("string", "Format output using a Go template"),
}


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import cmd_inspect

    args.flags["type"] = "image"
    return cmd_inspect.run(args, ctx)
