"""Usage:  nsbox port CONTAINER [PRIVATE_PORT[/PROTO]]

List port mappings or a specific mapping for the container.
"""

from __future__ import annotations

import sys

FLAGS: dict[str, str] = {}


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import fail, need_args

    positional = need_args(args, "port", 1, 2)
    ports = ctx.engine().port(positional[0])
    wanted = positional[1] if len(positional) > 1 else None
    if wanted is not None:
        key = wanted if "/" in wanted else f"{wanted}/tcp"
        if not ports.get(key):
            return fail(f"No public port '{key}' published for {positional[0]}", 1)
        for binding in ports[key]:
            sys.stdout.write(f"{binding}\n")
        return 0
    for inside, host in sorted(ports.items(), key=lambda kv: (int(kv[0].split("/")[0]), kv[0])):
        for binding in host if isinstance(host, list) else [host]:
            sys.stdout.write(f"{inside} -> {binding}\n")
    return 0
