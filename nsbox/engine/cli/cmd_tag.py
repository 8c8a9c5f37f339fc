"""Usage:  nsbox tag SOURCE_IMAGE[:TAG] TARGET_IMAGE[:TAG]

Create a name TARGET_IMAGE that refers to SOURCE_IMAGE.
"""

from __future__ import annotations

FLAGS: dict[str, str] = {}


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import need_args
    from nsbox.errors import ImageNotFound

    src, target = need_args(args, "tag", 2, 2)
    try:
        ctx.images().tag(src, target)
    except ImageNotFound:
        raise ImageNotFound(f"No such image: {src}") from None
    return 0
