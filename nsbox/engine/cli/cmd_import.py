"""Usage:  nsbox import [OPTIONS] FILE|DIR|URL|- [REPOSITORY[:TAG]]

Make a one-layer image from a rootfs tarball (tar, tar.gz, tar.zst) or directory;
print its id.  `-` reads the tarball from stdin, an http(s) URL downloads it.
A name without a registry is stored under localhost/.  -c/--change 'CMD ["sh"]'
applies Dockerfile instructions, -m/--message sets the history comment.
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
    from nsbox.errors import ConfigError, ImageError

    positional = need_args(args, "import", 1, 2)
    source = positional[0]
    ref = positional[1] if len(positional) > 1 else None
    store = ctx.images()
    response = None
    created_by = None
    if source == "-":
        if sys.stdin.isatty():
            raise ConfigError("requested import from stdin, but stdin is a terminal")
        source = sys.stdin.buffer
    elif source.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request
        try:
            response = urllib.request.urlopen(source, timeout=60)  # noqa: S310 - http(s) only
        except urllib.error.HTTPError as err:
            raise ImageError(f"{source}: HTTP {err.code} {err.reason}") from None
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise ImageError(f"{source}: {getattr(err, 'reason', err)}") from None
        source, created_by = response, f"nsbox import {source}"
    progress = Progress()
    try:
        image = store.import_rootfs(source, ref, changes=args["change"] or None,
                                    comment=args["message"] or "", progress=progress,
                                    created_by=created_by)
    finally:
        progress.close()
        if response is not None:
            response.close()
    sys.stdout.write(image.id + "\n")
    return 0
