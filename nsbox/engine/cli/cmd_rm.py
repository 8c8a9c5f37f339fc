"""Usage:  nsbox rm [OPTIONS] CONTAINER [CONTAINER...]

Remove containers; -f/--force kills running ones first, -v/--volumes also
removes their anonymous volumes.  Exit code 1 if the only errors were
unknown containers (Docker and Podman), 125 after any other error.
"""

from __future__ import annotations

FLAGS = {"force": "bool", "volumes": "bool"}
ALIASES = {"f": "force", "v": "volumes"}
HELP = {
    "force": "Force the removal of a running container (uses SIGKILL)",
    "volumes": "Remove anonymous volumes of the container",
}


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import need_args
    from nsbox.engine.cli._common import for_each

    refs = need_args(args, "rm", 1)
    engine = ctx.engine()
    return for_each(refs, lambda ref: engine.remove(ref, force=bool(args["force"]),
                                                    volumes=bool(args["volumes"])),
                    not_found=1)
