"""Which containers a network has: `network rm`, `prune`, `connect` and `disconnect`.

These operations need both the network records (networks.py) and the
containers' attachments (attach.py), so they live above both; networks.py
and attach.py never import this module.
"""

from __future__ import annotations

from nsbox.engine.network import attach, model, networks
from nsbox.engine.network.model import DEFAULT_NETWORK, Network, NetworkError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nsbox.engine.lifecycle.state import EngineBase


def containers_of(engine: EngineBase, net: Network) -> list[model.Attachment]:
    """NET's attachments whose container still exists (stale leases are reclaimed first)."""
    attach.reclaim_stale(engine, net.id)
    return model.attachments(engine.db, network_id=net.id)


def remove(engine: EngineBase, ref: str) -> Network:
    net = model.find_network(engine.db, ref) if ref != DEFAULT_NETWORK else networks.get(engine, ref)
    if net.is_default:
        raise NetworkError(f"{net.name} is a pre-defined network and cannot be removed")
    users = containers_of(engine, net)
    if users:
        names = []
        for lease in users:
            row = engine.db.container(lease.container_id)
            names.append(row["name"] if row else lease.container_id[:12])
        raise NetworkError(f"error while removing network: network {net.name} id {net.id} has "
                           f"active endpoints ({', '.join(names)})")
    networks.take_down(engine, net)
    model.delete_network(engine.db, net.id)
    networks.event(engine, "destroy", net)
    return net


def prune(engine: EngineBase) -> list[str]:
    """Remove every user network no container uses; their names."""
    attach.reclaim_stale(engine)
    removed = []
    for net in model.networks(engine.db):
        if net.is_default:
            continue
        if not model.attachments(engine.db, network_id=net.id):
            networks.take_down(engine, net)
            model.delete_network(engine.db, net.id)
            networks.event(engine, "destroy", net)
            removed.append(net.name)
    return removed


def _record_networks(engine: EngineBase, cid: str, names: list[str]) -> None:
    from nsbox.engine.lifecycle.record import spec_from_json, spec_to_json
    row = engine.db.container(cid)
    if row is None:
        return
    spec = spec_from_json(row["spec"])
    spec.networks = names
    engine.db.update_container(cid, spec=spec_to_json(spec))


def connect(engine: EngineBase, net_ref: str, container_ref: str, ip: str | None = None,
            aliases: list[str] | tuple = (), ip6: str | None = None) -> model.Attachment:
    """`network connect`: NET as the container's next ethN (it must be on a bridge network)."""
    from nsbox.engine.network import ipam
    c = engine.get(container_ref)
    net = networks.get(engine, net_ref)
    if not attach.is_bridge_mode(c.spec.network_mode):
        raise NetworkError(f"container {c.name} has --network {c.spec.network_mode}: only a "
                           "container on a bridge network can be connected to another")
    if ip:
        if net.is_default:
            raise NetworkError("user specified IP address is supported on user defined "
                               "networks only")
        ip = ipam.check_ip(net, ip)
    if ip6:
        if net.is_default:
            raise NetworkError("user specified IP address is supported on user defined "
                               "networks only")
        ip6 = ipam.check_ip6(net, ip6)
    try:
        lease = attach.attach(engine, c.id, c.name, net, ip=ip, aliases=aliases, ip6=ip6)
    except BaseException:
        from nsbox._lite import suppress
        if model.attachments(engine.db, container_id=c.id, network_id=net.id):
            with suppress(Exception):
                attach.detach(engine, c.id, net)
        raise
    _record_networks(engine, c.id, [*attach.network_names(c.spec), net.name])
    return lease


def disconnect(engine: EngineBase, net_ref: str, container_ref: str) -> None:
    """`network disconnect`: the container's interface on NET goes, and its lease."""
    c = engine.get(container_ref)
    net = networks.get(engine, net_ref)
    attach.detach(engine, c.id, net)
    names = [n for n in attach.network_names(c.spec) if n not in (net.name, net.id)]
    _record_networks(engine, c.id, names)
