"""Usage:  nsbox network connect [OPTIONS] NETWORK CONTAINER

Connect a container on a bridge network to another network (a new ethN).
"""

from __future__ import annotations

FLAGS = {"ip": "str", "alias": "list", "ip6": "str", "link": "list", "driver-opt": "list"}
HELP = {
    "ip": ("string", "IPv4 address on the network"),
    "alias": ("list", "Add a DNS name for the container on the network"),
    "ip6": ("string", "IPv6 address on the network (made with --ipv6)"),
    "link": ("list", "Not supported"),
    "driver-opt": ("list", "Not supported"),
}


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import need_args
    from nsbox.engine.network import membership

    net, container = need_args(args, "network connect", 2, 2)
    membership.connect(ctx.engine(), net, container, ip=args["ip"],
                     aliases=list(args["alias"] or []), ip6=args["ip6"])
    return 0
