"""Usage:  nsbox save [OPTIONS] IMAGE [IMAGE...]

Write images to a tar archive: -o/--output FILE (or stdout),
--format docker-archive (default) | oci-archive.
"""

from __future__ import annotations

import sys

FLAGS = {"output": "str", "format": "str", "compress": "bool"}
ALIASES = {"o": "output"}
HELP = {
    "output": ("string", "Write to a file, instead of STDOUT"),
    "format": ("string", "docker-archive (default) or oci-archive"),
    "compress": "Compress the layers",
}


def run(args, ctx) -> int:  # noqa: ANN001
    import os
    import shutil
    import tempfile

    from nsbox.engine.cli import need_args
    from nsbox.engine.cli._format import Progress
    from nsbox.errors import ConfigError

    refs = need_args(args, "save", 1)
    fmt = args["format"] or "docker-archive"
    if fmt not in ("docker-archive", "oci-archive"):
        raise ConfigError(f'invalid argument "{fmt}" for "--format" flag: use docker-archive '
                          "or oci-archive")
    dest = args["output"]
    if not dest and sys.stdout.isatty():
        raise ConfigError("cowardly refusing to save to a terminal. Use the -o flag or redirect")
    store = ctx.images()
    progress = Progress()
    try:
        if dest:
            store.save(refs, dest, format=fmt, compress=bool(args["compress"]), progress=progress)
            return 0
        fd, tmp = tempfile.mkstemp(prefix="save-", dir=store.layout.tmp_dir)
        os.close(fd)
        try:
            store.save(refs, tmp, format=fmt, compress=bool(args["compress"]), progress=progress)
            with open(tmp, "rb") as f:
                shutil.copyfileobj(f, sys.stdout.buffer)
        finally:
            os.unlink(tmp)
    finally:
        progress.close()
    return 0
