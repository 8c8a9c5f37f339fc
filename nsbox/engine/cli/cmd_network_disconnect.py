"""Usage:  nsbox network disconnect [OPTIONS] NETWORK CONTAINER

Disconnect a container from a network (its ethN goes, and the lease).
"""

from __future__ import annotations

FLAGS = {"force": "bool"}
ALIASES = {"f": "force"}
HELP = {
    "force": "Do not fail if the container is not connected",
}


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import need_args
    from nsbox.engine.network import membership
    from nsbox.engine.network.model import NetworkError

    net, container = need_args(args, "network disconnect", 2, 2)
    try:
        membership.disconnect(ctx.engine(), net, container)
    except NetworkError:
        if not args["force"]:
            raise
    return 0
