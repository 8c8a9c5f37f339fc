"""usage: nsbox-runtime checkpoint CONTAINER_ID

Not supported by this version of nsbox-runtime yet.
"""

from __future__ import annotations

FLAGS: dict = {"help": False}
HELP = {"help": "print usage"}
STOP_AFTER = 0


def run(args, ctx) -> int:
    from nsbox.errors import UnsupportedError

    raise UnsupportedError("checkpoint is not supported by this version of nsbox-runtime")
