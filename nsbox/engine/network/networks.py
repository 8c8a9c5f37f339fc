"""`nsbox network create|ls|inspect|rm|prune|connect|disconnect`: bridge networks.

The default network `bridge` (bridge nsbox0, 172.30.0.0/16, gateway
172.30.0.1, a fixed id) is recorded on first use.  A user network gets the
next free bridge name nsbox1, nsbox2, ... (or `-o com.docker.network.bridge.name=`)
and, without --subnet, the first /16 of 172.31.0.0/16, 172.32.0.0/16, ...
that overlaps neither another network nor a route or address of the host.
An overlapping --subnet is an error.  A network's bridge is made when the
network is created (the default's on first use) and again when a container
attaches if it is gone (after a reboot); the firewall (firewall.py) is told
of each network it has.
"""

from __future__ import annotations

import os
import time

from nsbox.engine.network import model
from nsbox.engine.network.model import (
    DEFAULT_BRIDGE,
    DEFAULT_GATEWAY,
    DEFAULT_ID,
    DEFAULT_MTU,
    DEFAULT_NETWORK,
    DEFAULT_SUBNET,
    Network,
    NetworkError,
    NetworkNotFound,
)
from nsbox.errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ipaddress

    from nsbox.engine.lifecycle.state import EngineBase

BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"
MTU_OPTION = "com.docker.network.driver.mtu"
# Names that are modes of --network, not networks.
RESERVED_NAMES = ("none", "host", "private", "default", "container", "slirp4netns", "pasta")


def _default() -> Network:
    return Network(id=DEFAULT_ID, name=DEFAULT_NETWORK, bridge=DEFAULT_BRIDGE,
                   subnet=DEFAULT_SUBNET, gateway=DEFAULT_GATEWAY, mtu=DEFAULT_MTU,
                   options={BRIDGE_NAME_OPTION: DEFAULT_BRIDGE}, created=time.time())


def get(engine: EngineBase, ref: str) -> Network:
    """The network REF; the default `bridge` is recorded on first use."""
    try:
        return model.find_network(engine.db, ref)
    except NetworkNotFound:
        if ref != DEFAULT_NETWORK:
            raise
    sqlite3 = __import__("nsbox.engine.db", fromlist=["sqlite"]).sqlite()
    try:
        model.insert_network(engine.db, _default())
    except sqlite3.IntegrityError:
        pass  # another command recorded it first
    return model.find_network(engine.db, ref)


def list_networks(engine: EngineBase) -> list[Network]:
    get(engine, DEFAULT_NETWORK)  # `network ls` shows it, as Docker's does
    return model.networks(engine.db)


def _overlaps(subnet: ipaddress.IPv4Network, others: list[str]) -> str | None:
    import ipaddress
    for other in others:
        try:
            if subnet.overlaps(ipaddress.IPv4Network(other, strict=False)):
                return other
        except ValueError:
            continue
    return None


def _pick_subnet(taken: list[str]) -> str:
    import ipaddress
    for second in range(31, 256):
        candidate = ipaddress.IPv4Network(f"172.{second}.0.0/16")
        if _overlaps(candidate, taken) is None:
            return str(candidate)
    raise NetworkError("no free subnet left in 172.31.0.0 - 172.255.0.0: give --subnet")


def _split_families(values: str | list | tuple | None, what: str) -> tuple[str | None, str | None]:
    """--subnet/--gateway given once per family, as Docker's: (IPv4 one, IPv6 one)."""
    items = [str(v) for v in ([values] if isinstance(values, str) else (values or [])) if v]
    v4 = [v for v in items if ":" not in v]
    v6 = [v for v in items if ":" in v]
    if len(v4) > 1 or len(v6) > 1:
        raise ConfigError(f"{what}: at most one IPv4 and one IPv6 value")
    return (v4[0] if v4 else None), (v6[0] if v6 else None)


def _ipv6_config(subnet6: str | None, gateway6: str | None, existing: list[Network]
                 ) -> tuple[str, str]:
    """The IPv6 subnet (given, or the first free fd4e:5342:0:N::/64) and its gateway."""
    import ipaddress
    taken = [ipaddress.IPv6Network(n.subnet6) for n in existing if n.subnet6]
    if subnet6:
        try:
            net6 = ipaddress.IPv6Network(subnet6, strict=False)
        except ValueError:
            raise ConfigError(f"invalid IPv6 subnet {subnet6!r}: expected X:X::/N") from None
        if net6.prefixlen > 120:
            raise ConfigError(f"IPv6 subnet {subnet6} is too small: at most /120")
        clash = next((t for t in taken if t.overlaps(net6)), None)
        if clash is not None:
            raise NetworkError(f"Pool overlaps with other one on this address space "
                               f"({subnet6} overlaps {clash} of an nsbox network)")
    else:
        net6 = next((c for c in (ipaddress.IPv6Network(f"fd4e:5342:0:{n:x}::/64")
                                 for n in range(1, 0x10000))
                     if not any(t.overlaps(c) for t in taken)), None)
        if net6 is None:
            raise NetworkError("no free IPv6 subnet left in fd4e:5342::/48: give --subnet")
    if gateway6:
        try:
            gw6 = ipaddress.IPv6Address(gateway6)
        except ValueError:
            raise ConfigError(f"invalid IPv6 gateway {gateway6!r}") from None
        if gw6 not in net6 or gw6 == net6.network_address:
            raise ConfigError(f"gateway {gateway6} is not a host address of subnet {net6}")
    else:
        gw6 = net6.network_address + 1
    return str(net6), str(gw6)


def create(engine: EngineBase, name: str, subnet: str | None = None, gateway: str | None = None,
           ip_range: str | None = None, internal: bool = False, ipv6: bool = False,
           labels: dict | None = None, options: dict | None = None,
           driver: str = "bridge") -> Network:
    """A new bridge network (and its bridge); NetworkError/ConfigError leave nothing."""
    import ipaddress

    from nsbox.engine.network import netlink, usernet
    if driver not in ("bridge", ""):
        raise ConfigError(f"network driver {driver!r} is not supported: use bridge")
    if not name or not (name[0].isalnum() and all(c.isalnum() or c in "_.-" for c in name)):
        raise ConfigError(f"invalid network name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] "
                          "are allowed")
    if name in RESERVED_NAMES or name == DEFAULT_NETWORK:
        raise NetworkError(f"network name {name} is reserved: it is a mode of --network"
                           if name != DEFAULT_NETWORK else
                           f"network with name {name} already exists")
    subnet, subnet6 = _split_families(subnet, "--subnet")
    gateway, gateway6 = _split_families(gateway, "--gateway")
    if (subnet6 or gateway6) and not ipv6:
        raise ConfigError("an IPv6 --subnet or --gateway needs --ipv6")
    options = dict(options or {})
    existing = list_networks(engine)
    if any(n.name == name for n in existing):
        raise NetworkError(f"network with name {name} already exists")
    subnet6, gateway6 = _ipv6_config(subnet6, gateway6, existing) if ipv6 else ("", "")
    taken = [n.subnet for n in existing]
    host = netlink.host_networks()
    if subnet:
        try:
            net = ipaddress.IPv4Network(subnet, strict=False)
        except ValueError:
            raise ConfigError(f"invalid subnet {subnet!r}: expected A.B.C.D/N") from None
        if net.prefixlen > 30:
            raise ConfigError(f"subnet {subnet} is too small: at most /30")
        clash = _overlaps(net, taken)
        if clash is not None:
            raise NetworkError(f"Pool overlaps with other one on this address space "
                               f"({subnet} overlaps {clash} of an nsbox network)")
        clash = _overlaps(net, [h for h in host if not _is_ours(h, existing)])
        if clash is not None:
            raise NetworkError(f"Pool overlaps with other one on this address space "
                               f"({subnet} overlaps the host's {clash})")
    else:
        if gateway or ip_range:
            raise ConfigError("--gateway and --ip-range need --subnet")
        net = ipaddress.IPv4Network(_pick_subnet(taken + host))
    if gateway:
        try:
            gw = ipaddress.IPv4Address(gateway)
        except ValueError:
            raise ConfigError(f"invalid gateway {gateway!r}") from None
        if gw not in net or gw in (net.network_address, net.broadcast_address):
            raise ConfigError(f"gateway {gateway} is not a host address of subnet {net}")
    else:
        gw = net.network_address + 1
    if ip_range:
        try:
            pool = ipaddress.IPv4Network(ip_range, strict=False)
        except ValueError:
            raise ConfigError(f"invalid --ip-range {ip_range!r}") from None
        if not pool.subnet_of(net):
            raise ConfigError(f"--ip-range {ip_range} is not within subnet {net}")
        ip_range = str(pool)
    mtu = DEFAULT_MTU
    if MTU_OPTION in options:
        try:
            mtu = int(options[MTU_OPTION])
        except ValueError:
            raise ConfigError(f"invalid {MTU_OPTION} {options[MTU_OPTION]!r}") from None
        if not 68 <= mtu <= 65535:
            raise ConfigError(f"{MTU_OPTION} {mtu} is out of range (68 to 65535)")
    bridge = options.get(BRIDGE_NAME_OPTION) or _free_bridge_name(existing)
    if len(bridge) > 15 or not bridge.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"invalid bridge name {bridge!r}")
    if any(n.bridge == bridge for n in existing):
        raise NetworkError(f"bridge name {bridge} is used by another network")
    if bridge in netlink.links_named(bridge) and not bridge.startswith("nsbox"):
        raise NetworkError(f"a link named {bridge} exists on the host already")
    record = Network(id=os.urandom(32).hex(), name=name, bridge=bridge, subnet=str(net),
                     gateway=str(gw), ip_range=ip_range or "", internal=bool(internal),
                     ipv6=bool(ipv6), subnet6=subnet6, gateway6=gateway6, mtu=mtu, labels=dict(labels or {}), options=options,
                     created=time.time())
    sqlite3 = __import__("nsbox.engine.db", fromlist=["sqlite"]).sqlite()
    try:
        model.insert_network(engine.db, record)
    except sqlite3.IntegrityError:
        raise NetworkError(f"network with name {name} already exists") from None
    try:
        if not usernet.needed(engine.run_root):
            # (A rootless engine's bridges live in the user's namespace, usernet.py:
            # the first container on the network makes its bridge there.)
            bring_up(record)
    except BaseException:
        from nsbox._lite import suppress
        with suppress(Exception):
            take_down(engine, record)
        model.delete_network(engine.db, record.id)
        raise
    event(engine, "create", record)
    return record


def event(engine: EngineBase, action: str, net: Network) -> None:
    from nsbox.engine import events
    events.emit(engine.root, "network", action, net.id, {"name": net.name, "type": "bridge"})


def _is_ours(host_net: str, existing: list[Network]) -> bool:
    return any(host_net == n.subnet for n in existing)


def _free_bridge_name(existing: list[Network]) -> str:
    used = {n.bridge for n in existing}
    for i in range(1, 10000):
        if f"nsbox{i}" not in used:
            return f"nsbox{i}"
    raise NetworkError("no free bridge name")


def bring_up(net: Network) -> None:
    """NET's bridge, and the firewall's rules for it if the bridge was new."""
    from nsbox.engine.network import netlink
    made = netlink.ensure_bridge(net)
    if made:
        from nsbox.engine.network import firewall  # (its subprocess import: ~1.5 ms)
        if not net.internal:
            firewall.ensure_forwarding(ipv6=bool(net.subnet6))
        firewall.network_added(net)


def take_down(engine: EngineBase, net: Network) -> None:
    from nsbox.engine.network import dns, firewall, netlink, usernet
    if not net.is_default:
        dns.network_removed(engine, net)
    if not usernet.join_existing(engine.run_root):
        return  # its bridge went with the user's namespace
    firewall.network_removed(net, [n for n in model.networks(engine.db) if n.id != net.id])
    netlink.delete_link(net.bridge)


def _rfc3339(t: float) -> str:
    from nsbox.engine.images.config import format_time
    return format_time(t)


def inspect(engine: EngineBase, ref: str) -> dict:
    """Docker's `network inspect` shape."""
    net = get(engine, ref)
    containers = {}
    for lease in model.attachments(engine.db, network_id=net.id):
        row = engine.db.container(lease.container_id)
        if row is None:
            continue
        containers[lease.container_id] = {
            "Name": row["name"], "EndpointID": (lease.container_id + net.id)[:64][::-1],
            "MacAddress": lease.mac, "IPv4Address": f"{lease.ip}/{lease.prefix}",
            "IPv6Address": f"{lease.ip6}/{lease.prefix6}" if lease.ip6 else ""}
    config = {"Subnet": net.subnet, "Gateway": net.gateway}
    if net.ip_range:
        config["IPRange"] = net.ip_range
    configs = [config]
    if net.subnet6:
        configs.append({"Subnet": net.subnet6, "Gateway": net.gateway6})
    return {
        "Name": net.name, "Id": net.id, "Created": _rfc3339(net.created), "Scope": "local",
        "Driver": net.driver, "EnableIPv6": net.ipv6,
        "IPAM": {"Driver": "default", "Options": {}, "Config": configs},
        "Internal": net.internal, "Attachable": False, "Ingress": False,
        "ConfigFrom": {"Network": ""}, "ConfigOnly": False, "Containers": containers,
        "Options": {BRIDGE_NAME_OPTION: net.bridge, **net.options}, "Labels": net.labels,
    }


def summary(engine: EngineBase, net: Network) -> dict:
    """A row of `network ls`."""
    return {"ID": net.id[:12], "Name": net.name, "Driver": net.driver, "Scope": "local",
            "Id": net.id, "Subnet": net.subnet, "Gateway": net.gateway,
            "Internal": net.internal, "Labels": net.labels,
            "CreatedAt": _rfc3339(net.created)}
