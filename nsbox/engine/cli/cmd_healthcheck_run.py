"""Usage:  nsbox healthcheck run CONTAINER

Run the container's healthcheck once, now, and record the result as the
monitor's runner would (status, failing streak, the last five results).
Prints the health status after it.  Exit status: 0 if the check passed, 1 if
it failed, 125 if it could not run (no such container, not running, no
healthcheck).
"""

from __future__ import annotations

import sys

FLAGS: dict[str, str] = {}
HELP: dict[str, str] = {}


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import need_args
    from nsbox.engine.health.runner import run_now

    ref = need_args(args, "healthcheck run", 1, 1)[0]
    result, status = run_now(ctx.engine(), ref)
    sys.stdout.write(status + "\n")
    return 0 if result.exit_code == 0 else 1
