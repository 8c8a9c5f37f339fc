"""Usage:  nsbox cp CONTAINER:SRC_PATH DEST_PATH
        nsbox cp SRC_PATH CONTAINER:DEST_PATH

Copy files between a container and the host.
"""

from __future__ import annotations

FLAGS = {"archive": "bool", "follow-link": "bool"}
ALIASES = {"a": "archive", "L": "follow-link"}
HELP = {
    "archive": "Accepted for Docker compatibility; ignored",
    "follow-link": "Accepted for Docker compatibility; ignored",
}


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import need_args
    from nsbox.errors import ConfigError

    src, dst = need_args(args, "cp", 2, 2)
    def in_container(path: str) -> bool:
        return ":" in path and not path.startswith(("/", "."))

    if in_container(src) == in_container(dst):
        raise ConfigError("copying between containers is not supported" if in_container(src)
                          else "must specify at least one container source")
    ctx.engine().cp(src, dst)
    return 0
