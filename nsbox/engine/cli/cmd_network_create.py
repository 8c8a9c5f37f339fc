"""Usage:  nsbox network create [OPTIONS] NETWORK

Create a bridge network and print its id.  Without --subnet the first free
172.N.0.0/16 from 172.31 on (not overlapping another network or the host's
routes); -o com.docker.network.bridge.name=NAME names its bridge (default
nsbox1, nsbox2, ...), -o com.docker.network.driver.mtu=N sets its MTU.
--ipv6 adds an IPv6 subnet (a second --subnet, or fd4e:5342:0:N::/64).
"""

from __future__ import annotations

import sys

FLAGS = {"driver": "str", "subnet": "list", "gateway": "list", "ip-range": "str",
         "internal": "bool", "ipv6": "bool", "label": "list", "opt": "list",
         "attachable": "bool"}
ALIASES = {"d": "driver", "o": "opt"}
HELP = {
    "driver": ("string", "Driver to manage the network (only bridge)"),
    "subnet": ("list", "Subnet in CIDR format (172.31.0.0/16; with --ipv6 also an IPv6 one)"),
    "gateway": ("list", "Gateway of the subnet (default: its first address), per family"),
    "ip-range": ("string", "Allocate container addresses from this sub-range"),
    "internal": "No traffic from the network to the outside (no masquerade, no forwarding)",
    "ipv6": "Enable IPv6: an address per container from an IPv6 subnet (default fd4e:5342:0:N::/64)",
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
