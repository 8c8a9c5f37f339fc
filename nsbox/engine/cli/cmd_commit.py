"""Usage:  nsbox commit [OPTIONS] CONTAINER [REPOSITORY[:TAG]]

Create a new image from a container's changes: the image's layers plus one
layer made from the container's overlay upper directory (deleted files as
OCI whiteouts), with -c instructions applied to the config.  Prints the id.
"""

from __future__ import annotations

import sys

FLAGS = {"message": "str", "author": "str", "change": "list", "quiet": "bool"}
ALIASES = {"m": "message", "a": "author", "c": "change", "q": "quiet"}
HELP = {
    "message": ("string", "Commit message (the history comment)"),
    "author": ("string", "Author of the image"),
    "change": ("instruction", "Apply a Dockerfile instruction (CMD, ENTRYPOINT, ENV, WORKDIR, "
               "LABEL, EXPOSE, USER, VOLUME, STOPSIGNAL, ONBUILD); repeatable"),
    "quiet": "Print only the image id (the default)",
}


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine import rootless
    from nsbox.engine.cli import need_args

    positional = need_args(args, "commit", 1, 2)
    engine = ctx.engine()
    container = engine.get(positional[0])
    info = engine.storage.rootfs(container.id)
    image = ctx.images().commit(info.upper, info.image_id,
                                positional[1] if len(positional) > 1 else None,
                                changes=args["change"] or [], author=args["author"] or "",
                                comment=args["message"] or "",
                                overlay="user" if rootless.active() else "trusted")
    sys.stdout.write(image.id.removeprefix("sha256:") + "\n")
    return 0
