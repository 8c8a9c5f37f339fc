"""Usage:  nsbox network rm [OPTIONS] NETWORK [NETWORK...]

Remove networks no container is connected to (-f/--force: no error for missing ones).
"""

from __future__ import annotations

FLAGS = {"force": "bool"}
ALIASES = {"f": "force"}
HELP = {
    "force": "Do not fail on networks that do not exist",
}


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import need_args
    from nsbox.engine.cli._common import for_each
    from nsbox.engine.network import membership
    from nsbox.engine.network.model import NetworkNotFound

    refs = need_args(args, "network rm", 1)
    engine = ctx.engine()

    def remove(ref: str) -> str:
        try:
            membership.remove(engine, ref)
        except NetworkNotFound:
            if args["force"]:
                return ref
            raise
        return ref
    return for_each(refs, remove)
