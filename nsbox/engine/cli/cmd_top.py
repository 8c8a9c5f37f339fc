"""Usage:  nsbox top CONTAINER

Display the running processes of a container.
"""

from __future__ import annotations

import sys

FLAGS: dict[str, str] = {}


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import need_args
    from nsbox.engine.cli._format import table

    ref = need_args(args, "top", 1)[0]
    rows = ctx.engine().top(ref)
    sys.stdout.write(table([list(map(str, r)) for r in rows]))
    return 0
