"""The kernel side of bridge networking, over netlink (pyroute2): no `ip` command per step.

Everything here acts in the caller's network namespace (the host's, or a
test's) except what is explicitly done inside a container's namespace, which
is opened by the path of its bind-mounted nsfs file.
"""

from __future__ import annotations

import errno
import os

from nsbox.errors import NsboxError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nsbox.engine.network.model import Attachment, Network


def _iproute(netns: str | None = None):  # noqa: ANN202 - pyroute2.IPRoute
    from pyroute2 import IPRoute
    if netns is None:
        return IPRoute()
    # flags=0: never create a namespace that is not there.
    return IPRoute(netns=netns, flags=0)


def _error(what: str, err: Exception) -> NsboxError:
    return NsboxError(f"{what}: {getattr(err, 'strerror', None) or err}")


def link_index(ipr, name: str) -> int | None:  # noqa: ANN001
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def ensure_bridge(net: Network) -> bool:
    """The bridge of NET, up, with the gateway address; True if it had to be made."""
    made = False
    with _iproute() as ipr:
        try:
            index = link_index(ipr, net.bridge)
            if index is None:
                ipr.link("add", ifname=net.bridge, kind="bridge")
                made = True
                index = link_index(ipr, net.bridge)
            have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                    for a in ipr.get_addr(index=index, family=2)}
            if (net.gateway, net.prefix) not in have:
                ipr.addr("add", index=index, address=net.gateway, prefixlen=net.prefix)
            ipr.link("set", index=index, mtu=net.mtu, state="up")
        except Exception as err:  # noqa: BLE001 - pyroute2's NetlinkError and OSError
            raise _error(f"cannot set up the bridge {net.bridge}", err) from None
    return made


def delete_link(name: str) -> bool:
    """Delete the link NAME of this namespace (a veth takes its peer along); True if it was there."""
    with _iproute() as ipr:
        index = link_index(ipr, name)
        if index is None:
            return False
        try:
            ipr.link("del", index=index)
        except Exception as err:  # noqa: BLE001
            if getattr(err, "code", 0) != errno.ENODEV:
                raise _error(f"cannot delete {name}", err) from None
    return True


def links_named(prefix: str) -> list[str]:
    """Names of this namespace's links that start with PREFIX."""
    with _iproute() as ipr:
        names = [link.get_attr("IFLA_IFNAME") or "" for link in ipr.get_links()]
    return [n for n in names if n.startswith(prefix)]


def host_networks() -> list[str]:
    """IPv4 networks this namespace routes or has addresses in ("a.b.c.d/n"), for overlap checks."""
    import ipaddress
    out = []
    with _iproute() as ipr:
        for route in ipr.get_routes(family=2):
            dst = route.get_attr("RTA_DST")
            if dst and route["dst_len"] > 0 and route.get_attr("RTA_TABLE") in (254, None):
                out.append(f"{dst}/{route['dst_len']}")
        for addr in ipr.get_addr(family=2):
            ip = addr.get_attr("IFA_ADDRESS")
            if ip and not ip.startswith("127."):
                out.append(str(ipaddress.IPv4Interface(f"{ip}/{addr['prefixlen']}").network))
    return out


def plug(net: Network, lease: Attachment, host_name: str, netns_path: str,
         default_route: bool) -> None:
    """A veth pair: HOST_NAME on NET's bridge, its peer as LEASE.ifname in NETNS_PATH, with
    LEASE's address and MAC, NET's MTU, lo up and (DEFAULT_ROUTE) the route via the gateway."""
    peer = "vnp" + host_name[3:]
    with _iproute() as ipr:
        try:
            ipr.link("add", ifname=host_name, kind="veth", peer={"ifname": peer, "mtu": net.mtu},
                     mtu=net.mtu)
            bridge = link_index(ipr, net.bridge)
            index = link_index(ipr, host_name)
            ipr.link("set", index=index, master=bridge, state="up")
            fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                ipr.link("set", index=link_index(ipr, peer), net_ns_fd=fd)
            finally:
                os.close(fd)
        except Exception as err:  # noqa: BLE001
            raise _error(f"cannot create the interface {host_name}", err) from None
    with _iproute(netns_path) as ns:
        try:
            index = link_index(ns, peer)
            ns.link("set", index=index, ifname=lease.ifname, address=lease.mac, mtu=net.mtu)
            ns.addr("add", index=index, address=lease.ip, prefixlen=lease.prefix)
            ns.link("set", index=index, state="up")
            lo = link_index(ns, "lo")
            ns.link("set", index=lo, state="up")
            if default_route and not net.internal:
                ns.route("add", dst="0.0.0.0/0", gateway=lease.gateway)
        except Exception as err:  # noqa: BLE001
            raise _error(f"cannot configure {lease.ifname} in the container", err) from None


def lo_up(netns_path: str) -> None:
    with _iproute(netns_path) as ns:
        ns.link("set", index=link_index(ns, "lo"), state="up")
