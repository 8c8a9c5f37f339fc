"""Usage:  nsbox system reset [OPTIONS]

Reset the engine to its initial state: stop and remove every container, and
remove every image and volume and the storage (the root and the run root).
Rootless, this is the calling user's storage, and the user's pause process
ends too.  With --root/--runroot only the engine's own entries in those
directories are removed (-f/--force: do not ask).
"""

from __future__ import annotations

import sys

FLAGS = {"force": "bool"}
ALIASES = {"f": "force"}
HELP = {
    "force": "Do not prompt for confirmation",
}


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine import rootless
    from nsbox.engine.cli import fail, need_args
    from nsbox.engine.system import reset

    need_args(args, "system reset", 0, 0)
    if not args["force"]:
        if not sys.stdin.isatty():
            return fail("system reset needs confirmation: stdin is not a terminal, "
                        "use -f/--force to reset without asking")
        from nsbox.engine.cli.cmd_container_prune import confirm

        if not confirm("This will remove:\n - all containers\n - all images\n - all volumes\n"
                       f' - the root directory: "{ctx.root}"\n'
                       f' - the run root directory: "{ctx.runroot}"'):
            return 0
    report = reset(ctx.engine(), rootless=rootless.active())
    for message in report["Errors"]:
        sys.stderr.write(f"Error: {message}\n")
    if report["Left"]:
        sys.stderr.write("Kept (not the engine's): " + ", ".join(report["Left"]) + "\n")
    return 125 if report["Errors"] else 0
