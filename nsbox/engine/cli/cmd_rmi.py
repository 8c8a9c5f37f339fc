"""Usage:  nsbox rmi [OPTIONS] IMAGE [IMAGE...]

Remove images (-f/--force: even when in use or with several names).
"""

from __future__ import annotations

import sys

FLAGS = {"force": "bool", "no-prune": "bool"}
ALIASES = {"f": "force"}
HELP = {
    "force": "Force removal of the image",
    "no-prune": "Accepted for Docker compatibility; ignored",
}


def in_use_check(ctx):  # noqa: ANN001, ANN201
    """A callable image_id -> bool, or None when the container layer is missing."""
    try:
        engine = ctx.engine()
    except ImportError:
        return None
    return lambda image_id: any(c.image_id == image_id for c in engine.list(all=True))


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import need_args
    from nsbox.engine.db import with_room
    from nsbox.errors import ImageNotFound, NsboxError

    refs = need_args(args, "rmi", 1)
    store = ctx.images()
    in_use = in_use_check(ctx)
    failed = False
    for ref in refs:
        try:
            # A full disk: the index is rewritten before the layers go (db.with_room).
            results = with_room(store.root, lambda ref=ref: store.remove(
                ref, force=bool(args["force"]), in_use=in_use))
        except ImageNotFound:
            sys.stderr.write(f"Error: No such image: {ref}\n")
            failed = True
            continue
        except NsboxError as exc:
            sys.stderr.write(f"Error: {exc}\n")
            failed = True
            continue
        for item in results:
            for key, value in item.items():
                sys.stdout.write(f"{key}: {value}\n")
    return 125 if failed else 0
