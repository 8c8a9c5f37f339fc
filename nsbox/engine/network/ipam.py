"""Address management: leases are the `attachments` rows (model.py).

allocate() picks (or checks) an address and records the attachment in one
BEGIN IMMEDIATE transaction, so two racing `run`s never get the same one
(UNIQUE(network_id, ip) holds even if they did).  The lease is recorded
BEFORE anything is made on the host, so a crash leaves a row that names
what to clean (attach.teardown_container).  reclaim() drops leases whose
container row is gone (a crash between the removal's steps, or a database
edited by hand): at allocation when a range is exhausted, and by prune.
"""

from __future__ import annotations

import ipaddress
import time

from nsbox import _json
from nsbox.engine.network import model
from nsbox.engine.network.model import Attachment, Network, NetworkError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from nsbox.engine.db import Database


def mac_for(ip: str) -> str:
    """Docker's rule: 02:42 and the four bytes of the IPv4 address."""
    return "02:42:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(ip).packed)


def check_ip(net: Network, ip: str) -> str:
    """IP as a canonical string if it is a usable host address of NET; NetworkError else."""
    return _host_address(net, ip, 4, net.subnet, net.gateway)


def check_ip6(net: Network, ip6: str) -> str:
    """IP6 as a canonical string if it is a usable host address of NET's IPv6 subnet."""
    if not net.subnet6:
        raise NetworkError(f"network {net.name} has no IPv6 (create it with --ipv6) for "
                           f"address {ip6}")
    return _host_address(net, ip6, 6, net.subnet6, net.gateway6)


def _host_address(net: Network, ip: str, version: int, subnet_text: str, gateway: str) -> str:
    """IP, an IPv<VERSION> address, canonical, if it lies in SUBNET_TEXT and is not
    reserved there (the network address, IPv4's broadcast address, the GATEWAY)."""
    try:
        addr = ipaddress.ip_address(ip)
        if addr.version != version:
            raise ValueError(ip)
    except ValueError:
        raise NetworkError(f"invalid IPv{version} address: {ip}") from None
    subnet = ipaddress.ip_network(subnet_text)
    if addr not in subnet:
        raise NetworkError(f"no configured subnet contains IP address {ip} "
                           f"(network {net.name} is {subnet_text})")
    reserved = {subnet.network_address}
    if version == 4:
        reserved.add(subnet.broadcast_address)
    if addr in reserved or str(addr) == gateway:
        raise NetworkError(f"IP address {ip} is reserved in network {net.name}")
    return str(addr)


def _candidates(net: Network):  # noqa: ANN202 - an iterator of IPv4Address
    subnet = ipaddress.IPv4Network(net.subnet)
    pool = ipaddress.IPv4Network(net.ip_range) if net.ip_range else subnet
    reserved = {subnet.network_address, subnet.broadcast_address,
                ipaddress.IPv4Address(net.gateway)}
    for addr in pool:
        if addr not in reserved:
            yield addr


def _candidates6(net: Network, used: set[str]) -> str | None:
    """The first free IPv6 host address of NET's subnet6 after its gateway's (::2 on)."""
    subnet = ipaddress.IPv6Network(net.subnet6)
    gateway = ipaddress.IPv6Address(net.gateway6)
    first = int(subnet.network_address) + 1
    for n in range(first, min(first + len(used) + 3, int(subnet.broadcast_address) + 1)):
        addr = ipaddress.IPv6Address(n)
        if addr != gateway and str(addr) not in used:
            return str(addr)
    return None


def allocate(db: Database, net: Network, container_id: str, ifname: str, ip: str | None = None,
             mac: str | None = None, aliases: list[str] | tuple = (),
             on_exhausted: Callable[[], int] | None = None,
             ip6: str | None = None) -> Attachment:
    """Lease an address of NET for CONTAINER_ID (IP if given) and record the attachment.

    ON_EXHAUSTED: called once when no address is free (or IP is taken); it
    reclaims stale leases (attach.reclaim_stale) and says how many.
    """
    wanted = check_ip(net, ip) if ip else None
    wanted6 = check_ip6(net, ip6) if ip6 else None
    model.ensure_schema(db)
    for attempt in range(2):
        def take() -> Attachment | None:
            with db.transaction() as conn:
                used = {r[0] for r in conn.execute("SELECT ip FROM attachments WHERE network_id=?",
                                                   (net.id,))}
                if conn.execute("SELECT 1 FROM attachments WHERE container_id=? AND network_id=?",
                                (container_id, net.id)).fetchone():
                    raise NetworkError(f"container is already connected to network {net.name}")
                if wanted is not None:
                    if wanted in used:
                        return None
                    address = wanted
                else:
                    address = next((str(a) for a in _candidates(net) if str(a) not in used), None)
                    if address is None:
                        return None
                address6 = ""
                if net.ipv6 and net.subnet6:
                    used6 = {r[0] for r in conn.execute(
                        "SELECT ip6 FROM attachments WHERE network_id=? AND ip6 != ''",
                        (net.id,))}
                    if wanted6 is not None:
                        if wanted6 in used6:
                            return None
                        address6 = wanted6
                    else:
                        address6 = _candidates6(net, used6) or ""
                    if not address6:
                        return None
                lease = Attachment(container_id=container_id, network_id=net.id, ifname=ifname,
                                   ip=address, prefix=net.prefix, mac=mac or mac_for(address),
                                   gateway=net.gateway, aliases=list(aliases), created=time.time(),
                                   ip6=address6, prefix6=net.prefix6 if address6 else 0,
                                   gateway6=net.gateway6 if address6 else "")
                conn.execute("INSERT INTO attachments (container_id, network_id, ifname, ip, "
                             "prefix, mac, gateway, aliases, created, ip6, prefix6, gateway6) "
                             "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                             (lease.container_id, lease.network_id, lease.ifname, lease.ip,
                              lease.prefix, lease.mac, lease.gateway, _json.dumps(lease.aliases),
                              lease.created, lease.ip6, lease.prefix6, lease.gateway6))
                return lease
        lease = db._retry(take)
        if lease is not None:
            return lease
        if attempt == 0 and on_exhausted is not None and on_exhausted():
            continue
        break
    if wanted is not None or wanted6 is not None:
        raise NetworkError(f"Address already in use: {wanted or wanted6} in network {net.name}")
    raise NetworkError(f"no free address left in network {net.name} ({net.ip_range or net.subnet})")


def release(db: Database, container_id: str, network_id: str | None = None) -> None:
    model.delete_attachment(db, container_id, network_id)


def stale(db: Database, live: set[str], network_id: str | None = None) -> list[Attachment]:
    """Leases (of NETWORK_ID, or all) whose container is not in LIVE."""
    return [a for a in model.attachments(db, network_id=network_id)
            if a.container_id not in live]


def reclaim(db: Database, live: set[str], network_id: str | None = None) -> int:
    """Drop the leases of containers not in LIVE; how many.  (Their host side, if any,
    is attach.teardown_container's: callers that can, call it first.)"""
    gone = stale(db, live, network_id)
    for lease in gone:
        release(db, lease.container_id, lease.network_id)
    return len(gone)
