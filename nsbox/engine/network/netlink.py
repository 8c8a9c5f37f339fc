"""The kernel side of bridge networking, over netlink (pyroute2's messages, rtnl.py):
no `ip` command per step.

Everything here acts in the caller's network namespace (the host's, or a
test's) except what is explicitly done inside a container's namespace,
which is entered by the path of its bind-mounted nsfs file (rtnl.in_netns).
A container's veth is made with its peer already inside the container's
namespace under its final name, MAC and MTU (VETH_INFO_PEER with
IFLA_NET_NS_FD): there is no moment where the peer sits in the host's
namespace, so the pair lives exactly as long as the container's namespace
and unmounting that namespace removes both ends.
"""

from __future__ import annotations

import errno
import os
import socket

from nsbox.engine.network import rtnl
from nsbox.errors import NsboxError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nsbox.engine.network.model import Attachment, Network


def _error(what: str, err: Exception) -> NsboxError:
    return NsboxError(f"{what}: {getattr(err, 'strerror', None) or err}")


def link_index(name: str) -> int | None:
    """The index of this namespace's link NAME, or None."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None


def ensure_bridge(net: Network) -> bool:
    """The bridge of NET, up, with the gateway address; True if it had to be made."""
    made = False
    try:
        with rtnl.Rtnl() as nl:
            index = link_index(net.bridge)
            if index is None:
                try:
                    nl.link(rtnl.RTM_NEWLINK, rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL,
                            ifname=net.bridge, linkinfo=rtnl.linkinfo("bridge"))
                    made = True
                except FileExistsError:
                    pass  # another command made it first
                index = link_index(net.bridge)
                if index is None:
                    raise OSError(errno.ENODEV, "the bridge vanished")
            try:
                nl.add_address(index, socket.AF_INET, net.gateway, net.prefix)
            except FileExistsError:
                pass
            if net.subnet6:
                _ipv6_on(net.bridge)
                try:
                    nl.add_address(index, socket.AF_INET6, net.gateway6, net.prefix6,
                                   rtnl.IFA_F_NODAD)
                except FileExistsError:
                    pass
            nl.link(rtnl.RTM_NEWLINK, index=index, up=True, mtu=net.mtu)
    except OSError as err:
        raise _error(f"cannot set up the bridge {net.bridge}", err) from None
    return made


def delete_link(name: str) -> bool:
    """Delete the link NAME of this namespace (a veth takes its peer along); True if it was there."""
    index = link_index(name)
    if index is None:
        return False
    try:
        with rtnl.Rtnl() as nl:
            nl.link(rtnl.RTM_DELLINK, index=index)
    except OSError as err:
        if err.errno != errno.ENODEV:
            raise _error(f"cannot delete {name}", err) from None
    return True


def links_named(prefix: str) -> list[str]:
    """Names of this namespace's links that start with PREFIX."""
    from nsbox.engine.network import netns
    return netns.links_named(prefix)


def host_networks() -> list[str]:
    """IPv4 networks this namespace routes or has addresses in ("a.b.c.d/n"), for overlap checks."""
    import ipaddress
    out = []
    with rtnl.Rtnl() as nl:
        for route in nl.routes(socket.AF_INET):
            dst = route.get_attr("RTA_DST")
            if dst and route["dst_len"] > 0 and route.get_attr("RTA_TABLE") in (254, None):
                out.append(f"{dst}/{route['dst_len']}")
        for addr in nl.addresses(socket.AF_INET):
            ip = addr.get_attr("IFA_ADDRESS")
            if ip and not ip.startswith("127."):
                out.append(str(ipaddress.IPv4Interface(f"{ip}/{addr['prefixlen']}").network))
    return out


def plug(net: Network, lease: Attachment, host_name: str, netns_path: str,
         default_route: bool) -> None:
    """A veth pair: HOST_NAME on NET's bridge, up; its peer made inside NETNS_PATH as
    LEASE.ifname with LEASE's MAC and address, NET's MTU, and (DEFAULT_ROUTE) the
    route via the gateway."""
    try:
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with rtnl.Rtnl() as nl:
                bridge = link_index(net.bridge)
                if bridge is None:
                    raise OSError(errno.ENODEV, f"no bridge {net.bridge}")
                nl.link(rtnl.RTM_NEWLINK, rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL,
                        ifname=host_name, mtu=net.mtu, master=bridge, up=True,
                        linkinfo=rtnl.linkinfo("veth", rtnl.veth_peer(lease.ifname, fd,
                                                                       net.mtu, lease.mac)))
        finally:
            os.close(fd)
    except OSError as err:
        raise _error(f"cannot create the interface {host_name}", err) from None
    try:
        with rtnl.in_netns(netns_path), rtnl.Rtnl() as ns:
            index = link_index(lease.ifname)
            if index is None:
                raise OSError(errno.ENODEV, f"no {lease.ifname}")
            ns.add_address(index, socket.AF_INET, lease.ip, lease.prefix)
            if lease.ip6:
                _ipv6_on(lease.ifname)
                ns.add_address(index, socket.AF_INET6, lease.ip6, lease.prefix6,
                               rtnl.IFA_F_NODAD)
            ns.link(rtnl.RTM_NEWLINK, index=index, up=True)
            if default_route and not net.internal:
                ns.add_default_route(socket.AF_INET, lease.gateway)
                if lease.ip6:
                    ns.add_default_route(socket.AF_INET6, lease.gateway6)
    except OSError as err:
        raise _error(f"cannot configure {lease.ifname} in the container", err) from None


def _ipv6_on(ifname: str) -> None:
    """IPv6 enabled on IFNAME of this thread's namespace (a host may have it off by default)."""
    path = f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"
    try:
        with open(path) as f:
            if f.read().strip() == "0":
                return
        with open(path, "w") as f:
            f.write("0")
    except OSError as err:
        raise OSError(err.errno, f"cannot enable IPv6 on {ifname}: {err.strerror}") from None


def lo_up_here() -> None:
    """lo up in the namespace this thread is in."""
    with rtnl.Rtnl() as nl:
        nl.link(rtnl.RTM_NEWLINK, index=link_index("lo") or 1, up=True)


def lo_up(netns_path: str) -> None:
    with rtnl.in_netns(netns_path):
        lo_up_here()
