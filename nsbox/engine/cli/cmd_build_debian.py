"""Usage:  nsbox image build-debian [OPTIONS] [SUITE]

Build a Debian image (default bookworm) with debootstrap from the host's apt
mirror; named debian:SUITE unless -t/--tag.  Built once, then kept.
  --mirror URL   --variant minbase|buildd|...   --include pkg,pkg
"""

from __future__ import annotations

import sys

FLAGS = {"tag": "str", "mirror": "str", "variant": "str", "include": "str"}
ALIASES = {"t": "tag"}
HELP = {
    "tag": ("string", "Name of the image (default debian:SUITE)"),
    "mirror": ("URL", "Debian mirror (default the host's apt mirror)"),
    "variant": ("string", "debootstrap variant: minbase (default), buildd, ..."),
    "include": ("pkg,pkg", "Extra packages to install"),
}


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import need_args
    from nsbox.engine.cli._format import Progress
    from nsbox.engine.images import build_debian

    positional = need_args(args, "image build-debian", 0, 1)
    suite = positional[0] if positional else "bookworm"
    progress = Progress()
    try:
        image = build_debian(ctx.images(), suite, args["tag"], progress,
                             mirror=args["mirror"], variant=args["variant"] or "minbase",
                             include=[p for p in (args["include"] or "").split(",") if p] or None)
    finally:
        progress.close()
    sys.stdout.write(image.id + "\n")
    return 0
