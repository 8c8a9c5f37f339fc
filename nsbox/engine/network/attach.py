"""A container on bridge networks: its network namespace, leases, veths; and their removal.

The engine makes the container's network namespace itself (a bind-mounted
nsfs file at <run_root>/netns/<id>, as for slirp4netns) when the container
is created, right after its row is recorded, and sets it up before any
process of the container runs: per network a lease (ipam.py), then a veth
pair whose host side `vnb<first 10 hex of the id><n>` is on the network's
bridge and whose peer is ethN inside.  The runtime joins the namespace by
path.  Everything that is made is found again from the container's id
(the lease rows, the link names, the netns path), so teardown_container()
can undo any prefix of the set-up: it is what removal runs, also for a
create a crash cut short (lifecycle/recover.py settles it through
remove_now), and it is idempotent.  The order: netns, lease, veth; the
undoing: DNS and port rules, veths, leases, netns.
"""

from __future__ import annotations

import os

from nsbox._lite import suppress
from nsbox.engine.network import ipam, model, networks
from nsbox.engine.network.model import Attachment, Network, NetworkError
from nsbox.errors import NsboxError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nsbox.engine.lifecycle.state import EngineBase
    from nsbox.engine.model import ContainerSpec

VETH_PREFIX = "vnb"
# --network values that are not bridge networks.
NON_BRIDGE_MODES = ("none", "host", "private", "", "shareable")


def _crashpoint(name: str) -> None:
    from nsbox.engine import procs
    point = getattr(procs, "crashpoint", None)
    if point is not None:
        point(name)


def is_bridge_mode(mode: str) -> bool:
    """Is --network MODE a bridge network (`bridge` or a network's name)?"""
    return mode not in NON_BRIDGE_MODES and mode != "pasta" and \
        not mode.startswith(("container:", "slirp4netns"))


def network_names(spec: ContainerSpec) -> list[str]:
    """The networks SPEC asks for, first (the one --ip and the default route are for) first."""
    names = [spec.network_mode]
    for name in getattr(spec, "networks", None) or []:
        if name not in names:
            names.append(name)
    return names


def veth_name(cid: str, index: int) -> str:
    return f"{VETH_PREFIX}{cid[:10]}{index:x}"


def netns_path(run_root: str, cid: str) -> str:
    from nsbox.engine.network import netns
    return netns.netns_path(run_root, cid)


def _index_of(ifname: str) -> int:
    return int(ifname.removeprefix("eth") or 0)


def resolve(engine: EngineBase, spec: ContainerSpec) -> list[Network]:
    """SPEC's networks (NetworkNotFound before anything is made), checking --ip."""
    nets = [networks.get(engine, name) for name in network_names(spec)]
    if getattr(spec, "ip", None):
        if nets[0].is_default:
            raise NetworkError("user specified IP address is supported on user defined "
                               "networks only")
        ipam.check_ip(nets[0], spec.ip)
    if getattr(spec, "ip6", None):
        if nets[0].is_default:
            raise NetworkError("user specified IP address is supported on user defined "
                               "networks only")
        ipam.check_ip6(nets[0], spec.ip6)
    from nsbox.engine.network import usernet
    usernet.join(engine.run_root)  # a rootless engine's bridges: the user's namespace
    return nets


def setup_container(engine: EngineBase, cid: str, name: str, spec: ContainerSpec,
                    nets: list[Network] | None = None) -> list[Attachment]:
    """Lease CID's addresses on each of SPEC's networks and start the child that makes its
    network namespace and veths (wiring.py: join with wiring.wait); the leases.

    On an error what was made stays for teardown_container (create's undo)."""
    from nsbox.engine.network import wiring
    nets = nets if nets is not None else resolve(engine, spec)
    leases = []
    for index, net in enumerate(nets):
        leases.append(ipam.allocate(
            engine.db, net, cid, f"eth{index}",
            ip=getattr(spec, "ip", None) if index == 0 else None,
            mac=getattr(spec, "mac_address", None) if index == 0 else None,
            aliases=list(getattr(spec, "network_aliases", None) or []),
            on_exhausted=lambda net=net: reclaim_stale(engine, net.id),
            ip6=getattr(spec, "ip6", None) if index == 0 else None))
    _crashpoint("network.after_lease")
    from nsbox.engine.network import usernet
    if usernet.entered():
        # The user's namespace may be new: its bridges first, for aardvark-dns to bind
        # their gateways (root's were made by `network create`).
        for net in nets:
            networks.bring_up(net)
    wiring.start(engine.run_root, cid,
                 [(net, lease, veth_name(cid, i)) for i, (net, lease) in
                  enumerate(zip(nets, leases, strict=True))])
    for net, lease in zip(nets, leases, strict=True):
        if not net.is_default:
            from nsbox.engine.network import dns
            dns.container_attached(engine, net, cid, name, list(lease.aliases), lease.ip,
                                   lease.ip6)
        _event(engine, "connect", net, cid)
    from nsbox.engine import procs
    if getattr(procs, "_CRASHPOINT", None) == "network.after_veth":
        wiring.wait(engine.run_root, cid)  # the tests' kill -9 after the veths exist
        _crashpoint("network.after_veth")
    return leases


def rewire(engine: EngineBase, cid: str) -> None:
    """Make CID's namespace and veths again from its leases and wait for them: a start
    after a wiring that failed (a bridge name taken by another kind of link, say) or
    was killed, as Docker sets a container's network up again at each start."""
    from nsbox.engine.network import netns, usernet, wiring
    usernet.join(engine.run_root)
    wiring.settle(engine.run_root, cid)
    netns.unmount_netns(netns_path(engine.run_root, cid))
    _delete_links(VETH_PREFIX + cid[:10])
    leases = sorted(model.attachments(engine.db, container_id=cid),
                    key=lambda lease: _index_of(lease.ifname))
    if not leases:
        raise NetworkError("the container's network leases are gone: remove and create it again")
    plan = [(model.find_network(engine.db, lease.network_id), lease,
             veth_name(cid, _index_of(lease.ifname))) for lease in leases]
    wiring.start(engine.run_root, cid, plan)
    wiring.mounted(engine.run_root, cid)
    wiring.wait(engine.run_root, cid)


def attach(engine: EngineBase, cid: str, name: str, net: Network, index: int | None = None,
           ip: str | None = None, mac: str | None = None,
           aliases: list[str] | tuple = (), ip6: str | None = None) -> Attachment:
    """Lease an address of NET for CID and plug it in as eth<INDEX> (the next free one)."""
    from nsbox.engine.network import usernet
    usernet.join(engine.run_root)
    path = netns_path(engine.run_root, cid)
    if not os.path.lexists(path):
        raise NetworkError("the container has no network namespace of the engine's: "
                           "only a container on a bridge network can be connected")
    if index is None:
        used = {_index_of(a.ifname) for a in model.attachments(engine.db, container_id=cid)}
        index = next(i for i in range(16) if i not in used) if len(used) < 16 else None
        if index is None:
            raise NetworkError("a container can be on at most 16 networks")
    from nsbox.engine.network import netlink
    networks.bring_up(net)
    lease = ipam.allocate(engine.db, net, cid, f"eth{index}", ip=ip, mac=mac, aliases=aliases,
                          on_exhausted=lambda: reclaim_stale(engine, net.id), ip6=ip6)
    _crashpoint("network.after_lease")
    netlink.plug(net, lease, veth_name(cid, index), path, default_route=index == 0)
    _crashpoint("network.after_veth")
    if not net.is_default:
        from nsbox.engine.network import dns
        dns.container_attached(engine, net, cid, name, list(aliases), lease.ip, lease.ip6)
    _event(engine, "connect", net, cid)
    return lease


def _event(engine: EngineBase, action: str, net: Network, cid: str) -> None:
    """A network connect/disconnect event: the actor is the network, as in Docker."""
    from nsbox.engine import events
    events.emit(engine.root, "network", action, net.id,
                {"container": cid, "name": net.name, "type": "bridge"})


def detach(engine: EngineBase, cid: str, net: Network) -> None:
    """Unplug CID from NET and release its lease (NetworkError if it is not on NET)."""
    leases = model.attachments(engine.db, container_id=cid, network_id=net.id)
    if not leases:
        raise NetworkError(f"container {cid[:12]} is not connected to network {net.name}")
    if not net.is_default:
        from nsbox.engine.network import dns
        dns.container_detached(engine, net, cid)
    from nsbox.engine.network import netlink, usernet
    if usernet.join_existing(engine.run_root):
        netlink.delete_link(veth_name(cid, _index_of(leases[0].ifname)))
    ipam.release(engine.db, cid, net.id)
    _event(engine, "disconnect", net, cid)
    usernet.release(engine)


def teardown_container(engine: EngineBase, cid: str) -> None:
    """Undo whatever of CID's networking exists (any prefix of the set-up); idempotent.

    The veths are not deleted one by one: each has its peer inside CID's
    namespace (netlink.plug), so unmounting the namespace, once no process is
    left in it, removes both ends; the kernel does it asynchronously (some
    10-40 ms later, docs/networking.md), and a veth whose namespace some
    stray process still holds is found by prune_leftovers.  Published ports
    are undone only when CID has a ports record (ports.publish writes it before
    the rules).
    """
    from nsbox.engine.network import netns, wiring
    wiring.settle(engine.run_root, cid)  # a wiring child still at work finishes first
    leases = model.attachments(engine.db, container_id=cid)
    errors = []
    left = []
    for lease in leases:
        try:
            net = model.find_network(engine.db, lease.network_id)
        except NsboxError:
            continue
        left.append(net)
        if not net.is_default:
            try:
                from nsbox.engine.network import dns
                dns.container_detached(engine, net, cid)
            except Exception as err:  # noqa: BLE001 - go on removing; say so at the end
                errors.append(str(err))
    if os.path.exists(os.path.join(engine.run_root, "ports", cid + ".json")):
        try:
            from nsbox.engine.network import ports
            ports.unpublish(engine, cid)  # its rules and its record
        except Exception as err:  # noqa: BLE001
            errors.append(str(err))
    path = netns_path(engine.run_root, cid)
    held = os.path.lexists(path)
    netns.unmount_netns(path)
    if not held:
        # No namespace: a veth of CID here is a leftover whose peer never got in.
        _delete_links(VETH_PREFIX + cid[:10])
    ipam.release(engine.db, cid)
    for net in left:
        _event(engine, "disconnect", net, cid)
    if left:
        from nsbox.engine.network import usernet
        usernet.release(engine)  # a rootless engine's namespace of bridges, once unused
    if errors:
        raise NsboxError(f"removing the network of {cid[:12]}: {'; '.join(errors)}")


def reclaim_stale(engine: EngineBase, network_id: str | None = None) -> int:
    """Tear down the networking of containers whose row is gone (a crash); how many."""
    live = engine.db.container_ids()
    gone = {a.container_id for a in ipam.stale(engine.db, live, network_id)}
    for cid in gone:
        with suppress(NsboxError):
            teardown_container(engine, cid)
        ipam.release(engine.db, cid)
    return len(gone)


def _delete_links(prefix: str) -> None:
    from nsbox.engine.network import netns
    names = netns.links_named(prefix)
    if names:
        from nsbox.engine.network import netlink
        for name in names:
            netlink.delete_link(name)


def leftover_ids(engine: EngineBase) -> set[str]:
    """Id prefixes of veths and netns files of containers that no longer exist."""
    from nsbox.engine.network import netns
    live = engine.db.container_ids()
    out = set()
    for link in netns.links_named(VETH_PREFIX):
        prefix = link[len(VETH_PREFIX):len(VETH_PREFIX) + 10]
        if not any(c.startswith(prefix) for c in live):
            out.add(prefix)
    for directory in ("netns", "wiring"):  # namespaces; wiring.py's status files
        with suppress(OSError):
            for name in os.listdir(os.path.join(engine.run_root, directory)):
                if name not in live:
                    out.add(name)
    return out


def prune_leftovers(engine: EngineBase) -> None:
    """Remove the networking of containers that no longer exist: stale leases, then veths
    and netns files no container has (a crash between a removal's steps)."""
    reclaim_stale(engine)
    from nsbox.engine.network import netns, wiring
    for prefix in leftover_ids(engine):
        if len(prefix) == 64:
            wiring.settle(engine.run_root, prefix)
            netns.unmount_netns(netns_path(engine.run_root, prefix))
        _delete_links(VETH_PREFIX + prefix[:10])


def settings(engine: EngineBase, cid: str, spec: ContainerSpec) -> dict:
    """inspect's NetworkSettings (Docker's shape) of CID."""
    out: dict = {"Bridge": "", "SandboxID": "", "HairpinMode": False,
                 "LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0, "Ports": {},
                 "SandboxKey": "", "SecondaryIPAddresses": None, "SecondaryIPv6Addresses": None,
                 "EndpointID": "", "Gateway": "", "GlobalIPv6Address": "",
                 "GlobalIPv6PrefixLen": 0, "IPAddress": "", "IPPrefixLen": 0, "IPv6Gateway": "",
                 "MacAddress": "", "Networks": {}}
    mode = spec.network_mode
    if not is_bridge_mode(mode):
        if mode in ("none", "host"):
            out["Networks"][mode] = {"IPAddress": "", "Gateway": "", "MacAddress": "",
                                     "IPPrefixLen": 0, "NetworkID": "", "Aliases": None}
        return out
    path = netns_path(engine.run_root, cid)
    out["SandboxKey"] = path if os.path.lexists(path) else ""
    for lease in model.attachments(engine.db, container_id=cid):
        try:
            net = model.find_network(engine.db, lease.network_id)
        except NsboxError:
            continue
        entry = {"IPAMConfig": None, "Links": None, "Aliases": lease.aliases or None,
                 "NetworkID": net.id, "EndpointID": (cid + net.id)[:64][::-1],
                 "Gateway": lease.gateway, "IPAddress": lease.ip, "IPPrefixLen": lease.prefix,
                 "IPv6Gateway": lease.gateway6, "GlobalIPv6Address": lease.ip6,
                 "GlobalIPv6PrefixLen": lease.prefix6,
                 "MacAddress": lease.mac, "DriverOpts": None}
        out["Networks"][net.name] = entry
        if net.is_default:
            out["Bridge"] = net.bridge
            for key in ("Gateway", "IPAddress", "IPPrefixLen", "MacAddress", "EndpointID"):
                out[key] = entry[key]
    return out
