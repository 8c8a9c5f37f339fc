"""Usage:  nsbox load [OPTIONS]

Load images from a docker-archive or OCI archive: -i/--input FILE, or stdin
(without -i, or with -i -).
"""

from __future__ import annotations

import sys

FLAGS = {"input": "str", "quiet": "bool"}
ALIASES = {"i": "input", "q": "quiet"}
HELP = {
    "input": ("string", "Read from a tar archive file, instead of STDIN"),
    "quiet": "Suppress the load output",
}


def run(args, ctx) -> int:  # noqa: ANN001
    import os
    import shutil
    import tempfile

    from nsbox.engine.cli._format import Progress
    from nsbox.errors import ConfigError

    source = args["input"]
    store = ctx.images()
    tmp = None
    if not source or source == "-":
        if sys.stdin.isatty():
            raise ConfigError("requested load from stdin, but stdin is empty")
        fd, tmp = tempfile.mkstemp(prefix="load-", dir=store.layout.tmp_dir)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(sys.stdin.buffer, out)
        source = tmp
    progress = None if args["quiet"] else Progress()
    try:
        loaded = store.load(source, progress=progress)
    finally:
        if progress:
            progress.close()
        if tmp:
            os.unlink(tmp)
    for name in loaded:
        label = "Loaded image ID" if name.startswith("sha256:") else "Loaded image"
        sys.stdout.write(f"{label}: {name}\n")
    return 0
