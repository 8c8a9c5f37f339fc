"""Usage:  nsbox network create [OPTIONS] NETWORK

Create a bridge network and print its id.  Without --subnet the first free
172.N.0.0/16 from 172.31 on (not overlapping another network or the host's
routes); -o com.docker.network.bridge.name=NAME names its bridge (default
nsbox1, nsbox2, ...), -o com.docker.network.driver.mtu=N sets its MTU.
"""

from __future__ import annotations

import sys

FLAGS = {"driver": "str", "subnet": "str", "gateway": "str", "ip-range": "str",
         "internal": "bool", "ipv6": "bool", "label": "list", "opt": "list",
         "attachable": "bool"}
ALIASES = {"d": "driver", "o": "opt"}
HELP = {
    "driver": ("string", "Driver to manage the network (only bridge)"),
    "subnet": ("string", "Subnet in CIDR format (172.31.0.0/16)"),
    "gateway": ("string", "IPv4 gateway of the subnet (default: its first address)"),
    "ip-range": ("string", "Allocate container addresses from this sub-range"),
    "internal": "No traffic from the network to the outside (no masquerade, no forwarding)",
    "ipv6": "Enable IPv6 (not supported yet)",
    "label": ("list", "Set metadata on the network (K=V)"),
    "opt": ("map", "Driver options (com.docker.network.bridge.name=, ...driver.mtu=)"),
    "attachable": "Accepted for Docker compatibility; ignored",
}


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import need_args
    from nsbox.engine.flags import parse_key_values
    from nsbox.engine.network import networks

    name = need_args(args, "network create", 1, 1)[0]
    net = networks.create(ctx.engine(), name, subnet=args["subnet"], gateway=args["gateway"],
                          ip_range=args["ip-range"], internal=bool(args["internal"]),
                          ipv6=bool(args["ipv6"]),
                          labels=parse_key_values(args["label"] or [], "label"),
                          options=parse_key_values(args["opt"] or [], "opt"),
                          driver=args["driver"] or "bridge")
    sys.stdout.write(net.id + "\n")
    return 0
