"""Usage:  nsbox cp [OPTIONS] CONTAINER:SRC_PATH DEST_PATH|-
        nsbox cp [OPTIONS] SRC_PATH|- CONTAINER:DEST_PATH

Copy files/folders between a container and the local filesystem.

The container's volumes and bind mounts are seen as in the container.  Use
'-' as DEST_PATH to write a tar archive of SRC_PATH to stdout, or as SRC_PATH
to extract a tar archive from stdin into the directory DEST_PATH.
"""

from __future__ import annotations

FLAGS = {"archive": "bool", "follow-link": "bool"}
ALIASES = {"a": "archive", "L": "follow-link"}
HELP = {
    "archive": "Archive mode (copy all uid/gid information)",
    "follow-link": "Always follow symbol link in SRC_PATH",
}


def run(args, ctx) -> int:  # noqa: ANN001
    import sys

    from nsbox.engine.cli import fail, need_args
    from nsbox.engine.lifecycle import copy
    from nsbox.errors import ConfigError, NsboxError

    src, dst = need_args(args, "cp", 2, 2)

    def in_container(path: str) -> bool:
        return copy.split(path)[0] is not None

    if in_container(src) == in_container(dst):
        raise ConfigError("copying between containers is not supported" if in_container(src)
                          else "must specify at least one container source")
    try:
        copy.cp(ctx.engine(), src, dst, archive_ids=args["archive"],
                follow_link=args["follow-link"], stdin=sys.stdin.buffer, stdout=sys.stdout.buffer)
    except OSError as exc:
        return fail(f"{exc.strerror}: {exc.filename}" if exc.filename else str(exc), 1)
    except NsboxError as exc:
        return fail(str(exc), 1 if getattr(exc, "exit_code", 1) not in (126, 127) else exc.exit_code)
    sys.stdout.flush()
    return 0
