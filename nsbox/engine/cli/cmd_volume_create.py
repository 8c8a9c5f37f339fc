"""Usage:  nsbox volume create [OPTIONS] [VOLUME]

Create a volume (a random name if none) and print its name.  -l/--label K=V.
"""

from __future__ import annotations

import sys

FLAGS = {"label": "list", "driver": "str", "opt": "list"}
ALIASES = {"l": "label", "d": "driver", "o": "opt"}
HELP = {
    "label": ("list", "Set metadata for a volume (K=V)"),
    "driver": ("string", "Volume driver name (only local)"),
    "opt": ("map", "Accepted for Docker compatibility; ignored"),
}


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import need_args
    from nsbox.engine.flags import parse_key_values
    from nsbox.errors import ConfigError

    positional = need_args(args, "volume create", 0, 1)
    if args["driver"] not in (None, "local"):
        raise ConfigError(f"volume driver {args['driver']!r} is not supported: use local")
    labels = parse_key_values(args["label"] or [], "label")
    volume = ctx.engine().volumes.create(positional[0] if positional else None, labels=labels)
    sys.stdout.write(volume["Name"] + "\n")
    return 0
