"""Usage:  nsbox rename CONTAINER NEW_NAME

Rename a container.
"""

from __future__ import annotations

FLAGS: dict[str, str] = {}


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import need_args

    ref, new = need_args(args, "rename", 2, 2)
    ctx.engine().rename(ref, new)
    return 0
