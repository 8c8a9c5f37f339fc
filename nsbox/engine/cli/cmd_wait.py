"""Usage:  nsbox wait CONTAINER [CONTAINER...]

Block until the containers stop, then print their exit codes.
"""

from __future__ import annotations

FLAGS: dict[str, str] = {}


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import need_args
    from nsbox.engine.cli._common import for_each

    refs = need_args(args, "wait", 1)
    engine = ctx.engine()
    return for_each(refs, lambda ref: str(engine.wait(ref)))
