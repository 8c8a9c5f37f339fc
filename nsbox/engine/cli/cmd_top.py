"""Usage:  nsbox top CONTAINER [ps OPTIONS]

Display the running processes of a container.  With ps OPTIONS (for example
`-o pid,comm` or `aux`) the host's ps runs with them and only the
container's processes are shown; the output must have a PID column.
"""

from __future__ import annotations

import sys

FLAGS: dict[str, str] = {}
# Everything after CONTAINER belongs to ps, dashes included.
STOP_AFTER = 1


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import need_args
    from nsbox.engine.cli._format import table

    ref, *ps_args = need_args(args, "top", 1)
    rows = ctx.engine().top(ref, ps_args or None)
    sys.stdout.write(table([list(map(str, r)) for r in rows]))
    return 0
