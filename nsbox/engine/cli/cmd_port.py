"""Usage:  nsbox port CONTAINER [PRIVATE_PORT[/PROTO]]

List port mappings of a container.
"""

from __future__ import annotations

import sys

FLAGS: dict[str, str] = {}


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import need_args

    positional = need_args(args, "port", 1, 2)
    ports = ctx.engine().port(positional[0])
    wanted = positional[1] if len(positional) > 1 else None
    for inside, host in sorted(ports.items()):
        if wanted and inside not in (wanted, f"{wanted}/tcp"):
            continue
        for binding in host if isinstance(host, list) else [host]:
            sys.stdout.write(f"{inside} -> {binding}\n" if not wanted else f"{binding}\n")
    return 0
