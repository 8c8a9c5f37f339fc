"""Usage:  nsbox export [OPTIONS] CONTAINER

Write a container's filesystem as a tar archive to -o/--output FILE (or stdout).
"""

from __future__ import annotations

import sys

FLAGS = {"output": "str"}
ALIASES = {"o": "output"}
HELP = {
    "output": ("string", "Write to a file, instead of STDOUT"),
}


def run(args, ctx) -> int:  # noqa: ANN001
    import os
    import shutil
    import tempfile

    from nsbox.engine.cli import need_args
    from nsbox.errors import ConfigError

    ref = need_args(args, "export", 1, 1)[0]
    engine = ctx.engine()
    container = engine.get(ref)
    dest = args["output"]
    if not dest and sys.stdout.isatty():
        raise ConfigError("cowardly refusing to save to a terminal. Use the -o flag or "
                          "redirect")
    export = getattr(engine, "export", None)
    if dest:
        (export(container.id, dest) if export else engine.storage.export(container.id, dest))
        return 0
    fd, tmp = tempfile.mkstemp(prefix=".nsbox-export-", dir=ctx.root)
    os.close(fd)
    try:
        (export(container.id, tmp) if export else engine.storage.export(container.id, tmp))
        with open(tmp, "rb") as f:
            shutil.copyfileobj(f, sys.stdout.buffer)
    finally:
        os.unlink(tmp)
    return 0
