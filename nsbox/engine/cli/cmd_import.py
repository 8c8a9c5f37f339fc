"""Usage:  nsbox import [OPTIONS] FILE|DIR [REPOSITORY[:TAG]]

Make a one-layer image from a rootfs tarball (tar, tar.gz, tar.zst) or directory;
print its id.  -c/--change 'CMD ["sh"]' applies Dockerfile instructions, -m/--message
sets the history comment.
"""

from __future__ import annotations

import sys

FLAGS = {"change": "list", "message": "str"}
ALIASES = {"c": "change", "m": "message"}
HELP = {
    "change": ("list", 'Apply Dockerfile instructions to the image (CMD ["sh"])'),
    "message": ("string", "Set the commit message of the image"),
}


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import need_args
    from nsbox.engine.cli._format import Progress

    positional = need_args(args, "import", 1, 2)
    source = positional[0]
    ref = positional[1] if len(positional) > 1 else None
    progress = Progress()
    try:
        image = ctx.images().import_rootfs(source, ref, changes=args["change"] or None,
                                           comment=args["message"] or "", progress=progress)
    finally:
        progress.close()
    sys.stdout.write(image.id + "\n")
    return 0
