"""The bridge networks' firewall, NAT and published ports: one nftables table, `inet nsbox`.

Everything nsbox adds to the kernel's packet filter lives in that table,
made with the first network and deleted with the last; no other table is
read, flushed or reordered.  Each change is one `nft -f -` batch, applied by
the kernel atomically (all of it or nothing), under a lock held on the
network namespace itself (flock on /proc/self/ns/net), so concurrent engine
commands do not interleave their batches.

The table (docs/networking.md, "Firewall"):

    set bridges      {ifname}            every nsbox bridge
    set masq_nets    {ipv4 interval}     the subnets of the non-internal networks
    set masq_nets6   {ipv6 interval}     their IPv6 subnets (networks made with --ipv6)
    map from_bridge  {ifname: verdict}   bridge -> jump from-<bridge>
    map to_bridge    {ifname: verdict}   bridge -> jump to-<bridge>
    map ports_tcp    {port: verdict}     published host port -> jump pc-<container>
    map ports_udp    {port: verdict}
    chain forward      (filter, forward hook)  established/related accept;
                       iifname vmap @from_bridge; oifname vmap @to_bridge
    chain from-BR      non-internal: to another nsbox bridge drop (isolation), else on;
                       internal: to its own bridge accept, anything else drop
    chain to-BR        from its own bridge accept; published (ct status dnat) accept
                       unless internal; anything else new drop
    chain postrouting  (nat) masquerade from @masq_nets and @masq_nets6 out of the bridges; from
                       127.0.0.0/8 into a bridge (the host's own 127.0.0.1:PORT);
                       published connections from a container back into a bridge
                       (either family)
    chain prerouting / output  (nat) fib daddr type local jump published
    chain published    tcp dport vmap @ports_tcp; udp dport vmap @ports_udp
    chain pc-<cid12>   the container's DNAT rules, each with comment "nsbox:<cid>"

The base chains hold no per-network data, so every batch re-creates them
(add + flush + rules): a table someone damaged by hand is repaired by the
next change.  Per-network and per-container data sit in the sets, maps and
their own chains, added and removed by key, never by rule handle.
`create element` on a ports map fails when the port is taken, so two
containers cannot publish one host port even when racing.
"""

from __future__ import annotations

import os
import subprocess

from nsbox._lite import flocked
from nsbox.errors import NsboxError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from nsbox.engine.network.model import Network

TABLE = "inet nsbox"
PROTOCOLS = ("tcp", "udp")


class FirewallError(NsboxError):
    """nft is missing, or refused a batch."""


class PortTaken(FirewallError):
    """A host port another nsbox container publishes."""


# ================================================================ running nft
def _nft() -> str:
    """The nft program: on PATH, or in /usr/sbin and /sbin, which an unprivileged user's
    PATH (a rootless engine's) often lacks."""
    import shutil
    return shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin") or "nft"


def nft(batch: str, *, check: bool = True) -> subprocess.CompletedProcess:
    """Apply BATCH (nft syntax) atomically with `nft -f -`."""
    try:
        result = subprocess.run([_nft(), "-f", "-"], input=batch, capture_output=True, text=True,
                                check=False)
    except FileNotFoundError:
        raise FirewallError("bridge networking needs nft (Debian package nftables)") from None
    if check and result.returncode != 0:
        raise FirewallError("nft: " + _first_error(result.stderr))
    return result


def _first_error(stderr: str) -> str:
    for line in stderr.splitlines():
        if "Error:" in line:
            return line.split("Error:", 1)[1].strip()
    return (stderr.strip().splitlines() or ["failed"])[0]


def version() -> str:
    """`nft --version`, e.g. "nftables v1.0.6 (Lester Gooch #5)"."""
    try:
        out = subprocess.run([_nft(), "--version"], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise FirewallError("bridge networking needs nft (Debian package nftables)") from None
    return out.stdout.strip()


def state() -> dict | None:
    """The table as {"sets": {name: [elements]}, "chains": set(names)}; None without it."""
    from nsbox import _json
    try:
        result = subprocess.run([_nft(), "-j", "list", "table", *TABLE.split()],
                                capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise FirewallError("bridge networking needs nft (Debian package nftables)") from None
    if result.returncode != 0:
        return None
    sets: dict[str, list] = {}
    chains: set[str] = set()
    for item in _json.loads(result.stdout).get("nftables", []):
        for kind in ("set", "map"):
            if kind in item:
                sets[item[kind]["name"]] = [_element(e) for e in item[kind].get("elem", [])]
        if "chain" in item:
            chains.add(item["chain"]["name"])
    return {"sets": sets, "chains": chains}


def _element(elem: object) -> object:
    """A set element from nft's JSON: 8080, "nsbox1", "172.31.0.0/16" or (key, jump target)."""
    if isinstance(elem, dict) and "elem" in elem:  # an element with a comment or timeout
        elem = elem["elem"]["val"]
    if isinstance(elem, dict) and "prefix" in elem:
        return f"{elem['prefix']['addr']}/{elem['prefix']['len']}"
    if isinstance(elem, list) and len(elem) == 2:
        key, verdict = _element(elem[0]), elem[1]
        target = next(iter(verdict.values())).get("target", "") if isinstance(verdict, dict) \
            else ""
        return (key, target)
    return elem


def _lock() -> flocked:
    """flock on the network namespace: one firewall change at a time in it."""
    return flocked(os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC))


# ================================================================ the table
def _skeleton() -> list[str]:
    """Commands that make the table, its sets and maps, and (re)fill its base chains."""
    t = TABLE
    lines = [
        f"add table {t}",
        f"add set {t} bridges {{ type ifname; }}",
        f"add set {t} masq_nets {{ type ipv4_addr; flags interval; }}",
        f"add set {t} masq_nets6 {{ type ipv6_addr; flags interval; }}",
        f"add map {t} from_bridge {{ type ifname : verdict; }}",
        f"add map {t} to_bridge {{ type ifname : verdict; }}",
        f"add map {t} ports_tcp {{ type inet_service : verdict; }}",
        f"add map {t} ports_udp {{ type inet_service : verdict; }}",
        f"add chain {t} published",
    ]
    base = {
        "forward": ("type filter hook forward priority filter; policy accept;", [
            "ct state established,related accept",
            "iifname vmap @from_bridge",
            "oifname vmap @to_bridge"]),
        "postrouting": ("type nat hook postrouting priority srcnat; policy accept;", [
            "ip saddr @masq_nets oifname != @bridges masquerade",
            "ip6 saddr @masq_nets6 oifname != @bridges masquerade",
            "oifname @bridges ip saddr 127.0.0.0/8 masquerade",
            "oifname @bridges ip saddr @masq_nets ct status dnat masquerade",
            "oifname @bridges ip6 saddr @masq_nets6 ct status dnat masquerade"]),
        "prerouting": ("type nat hook prerouting priority dstnat; policy accept;", [
            "fib daddr type local jump published"]),
        "output": ("type nat hook output priority -100; policy accept;", [
            "fib daddr type local jump published"]),
        "published": ("", ["tcp dport vmap @ports_tcp", "udp dport vmap @ports_udp"]),
    }
    for chain, (hook, rules) in base.items():
        if hook:
            lines.append(f"add chain {t} {chain} {{ {hook} }}")
        lines.append(f"flush chain {t} {chain}")
        lines += [f"add rule {t} {chain} {rule}" for rule in rules]
    return lines


def _quote(name: str) -> str:
    if not name or any(not (c.isalnum() or c in "_.-") for c in name):
        raise FirewallError(f"bad interface name {name!r}")
    return f'"{name}"'


def network_added(net: Network) -> None:
    """Make NET's rules (and the table with the first network).  Idempotent."""
    br = _quote(net.bridge)
    t = TABLE
    lines = _skeleton()
    lines += [f"add element {t} bridges {{ {br} }}"]
    for chain in (f"from-{net.bridge}", f"to-{net.bridge}"):
        lines += [f"add chain {t} {chain}", f"flush chain {t} {chain}"]
    frm, to = f"{t} from-{net.bridge}", f"{t} to-{net.bridge}"
    if net.internal:
        lines += [f"add rule {frm} oifname {br} accept", f"add rule {frm} drop"]
        lines += [f"add rule {to} iifname {br} accept", f"add rule {to} drop"]
    else:
        lines += [f"add rule {frm} oifname {br} accept",
                  f"add rule {frm} oifname @bridges drop"]
        lines += [f"add rule {to} iifname {br} accept",
                  f"add rule {to} ct status dnat accept", f"add rule {to} drop"]
        lines.append(f"add element {t} masq_nets {{ {net.subnet} }}")
        if getattr(net, "subnet6", ""):  # (tests give a namespace with IPv4 fields only)
            lines.append(f"add element {t} masq_nets6 {{ {net.subnet6} }}")
    lines += [f"add element {t} from_bridge {{ {br} : jump from-{net.bridge} }}",
              f"add element {t} to_bridge {{ {br} : jump to-{net.bridge} }}"]
    with _lock():
        nft("\n".join(lines) + "\n")
    set_route_localnet(net.bridge)


def network_removed(net: Network, remaining: Iterable[Network] | None = None) -> None:
    """Drop NET's rules; the whole table when no nsbox network is left.

    REMAINING: the networks that still exist (NET excluded), if the caller
    knows them; else the table's own list of bridges decides.  Idempotent.
    """
    t = TABLE
    with _lock():
        current = state()
        if current is None:
            return
        # Only networks the table has count: a recorded network whose bridge was
        # never brought up (the default `bridge` before its first container) has no rules.
        others = [b for b in current["sets"].get("bridges", []) if b != net.bridge]
        if remaining is not None:
            others = [n.bridge for n in remaining if n.bridge in others]
        if not others:
            nft(f"delete table {t}\n")
            return
        br = _quote(net.bridge)
        sets = current["sets"]
        lines = []
        if net.bridge in [k for k, _ in sets.get("from_bridge", [])]:
            lines.append(f"delete element {t} from_bridge {{ {br} }}")
        if net.bridge in [k for k, _ in sets.get("to_bridge", [])]:
            lines.append(f"delete element {t} to_bridge {{ {br} }}")
        if net.bridge in sets.get("bridges", []):
            lines.append(f"delete element {t} bridges {{ {br} }}")
        if net.subnet in sets.get("masq_nets", []):
            lines.append(f"delete element {t} masq_nets {{ {net.subnet} }}")
        if getattr(net, "subnet6", "") and net.subnet6 in sets.get("masq_nets6", []):
            lines.append(f"delete element {t} masq_nets6 {{ {net.subnet6} }}")
        for chain in (f"from-{net.bridge}", f"to-{net.bridge}"):
            if chain in current["chains"]:
                lines += [f"flush chain {t} {chain}", f"delete chain {t} {chain}"]
        if lines:
            nft("\n".join(lines) + "\n")


# ================================================================ published ports
def chain_of(cid: str) -> str:
    return f"pc-{cid[:12]}"


def published() -> dict[tuple[int, str], str]:
    """(host port, proto) -> the chain (pc-<cid12>) of the container publishing it."""
    current = state()
    if current is None:
        return {}
    return {(int(port), proto): target for proto in PROTOCOLS
            for port, target in current["sets"].get(f"ports_{proto}", [])}


def ports_added(cid: str, ip: str, mappings: Iterable[dict], bridge: str | None = None,
                ip6: str = "") -> None:
    """DNAT each of MAPPINGS (host_ip, host_port, container_port, proto) to IP, or to
    IP6 for the mappings on an IPv6 host address ("::" the wildcard).

    One batch: the container's chain pc-<cid12> with its rules, and the map
    elements sending its host ports there.  PortTaken (and nothing added)
    when another container publishes one of the ports.  BRIDGE: the bridge
    IP is on (found from the routes if not given), for route_localnet.
    IPv6 rules skip ::1, which DNAT cannot serve (proxy6.py's docker-proxy does).
    """
    mappings = list(mappings)
    if not mappings:
        return
    t, chain = TABLE, chain_of(cid)
    lines = _skeleton() + [f"add chain {t} {chain}", f"flush chain {t} {chain}"]
    keys: dict[str, set[int]] = {proto: set() for proto in PROTOCOLS}
    for m in mappings:
        proto, host_port = m["proto"], int(m["host_port"])
        if proto not in PROTOCOLS:
            raise FirewallError(f"unsupported protocol {proto!r}")
        keys[proto].add(host_port)  # (an IPv4 and an IPv6 mapping share their port's element)
        host_ip = m.get("host_ip") or ""
        if ":" in host_ip:
            if not ip6:
                raise FirewallError(f"cannot publish on [{host_ip}]: the network has no IPv6")
            if host_ip == "::1":
                continue  # the proxy's alone; the element above still claims the port
            match = "ip6 daddr != ::1 " if host_ip == "::" else f"ip6 daddr {host_ip} "
            target = f"ip6 to [{ip6}]"
        else:
            match = f"ip daddr {host_ip} " if host_ip not in ("", "0.0.0.0") else ""
            target = f"ip to {ip}"
        lines.append(f"add rule {t} {chain} {match}{proto} dport {host_port} "
                     f"dnat {target}:{int(m['container_port'])} comment \"nsbox:{cid}\"")
    for proto, ports in keys.items():
        for port in sorted(ports):
            lines.append(f"create element {t} ports_{proto} {{ {port} : jump {chain} }}")
    with _lock():
        taken = {key: owner for key, owner in published().items() if owner != chain}
        for proto, ports in keys.items():
            for port in sorted(ports):
                if (port, proto) in taken:
                    raise PortTaken(f"Bind for 0.0.0.0:{port} failed: port is already allocated "
                                    f"({proto}, by container {taken[(port, proto)][3:]})")
        _remove_container(cid)  # a leftover of an earlier start
        result = nft("\n".join(lines) + "\n", check=False)
        if result.returncode != 0:
            if "File exists" in result.stderr:
                raise PortTaken("port is already allocated: " + _first_error(result.stderr))
            raise FirewallError("nft: " + _first_error(result.stderr))
    set_route_localnet(bridge or _route_device(ip))


def ports_removed(cid: str) -> None:
    """Remove CID's published ports (its map elements and chain).  Idempotent."""
    with _lock():
        _remove_container(cid)


def _remove_container(cid: str) -> None:
    current = state()
    if current is None:
        return
    t, chain = TABLE, chain_of(cid)
    lines = [f"delete element {t} ports_{proto} {{ {port} }}" for proto in PROTOCOLS
             for port, target in current["sets"].get(f"ports_{proto}", []) if target == chain]
    if chain in current["chains"]:
        lines += [f"flush chain {t} {chain}", f"delete chain {t} {chain}"]
    if lines:
        nft("\n".join(lines) + "\n")


# ================================================================ sysctls
def ensure_forwarding(ipv6: bool = False) -> bool:
    """net.ipv4.ip_forward=1 in this network namespace, as Docker sets it, and with IPV6
    (a network made with --ipv6) net.ipv6.conf.all.forwarding=1 too; True if changed."""
    changed = False
    paths = ["/proc/sys/net/ipv4/ip_forward"]
    if ipv6:
        paths.append("/proc/sys/net/ipv6/conf/all/forwarding")
    for path in paths:
        with open(path) as f:
            if f.read().strip() == "1":
                continue
        with open(path, "w") as f:
            f.write("1")
        changed = True
    return changed


def set_route_localnet(bridge: str | None) -> None:
    """route_localnet=1 on BRIDGE: 127.0.0.1:PORT of the host, DNATed, may leave by it."""
    if not bridge:
        return
    try:
        with open(f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet", "w") as f:
            f.write("1")
    except OSError:
        pass  # the bridge does not exist yet: network_added or ports_added sets it later


def _route_device(ip: str) -> str | None:
    """The interface of the most specific IPv4 route to IP (from /proc/net/route)."""
    import socket
    import struct
    try:
        target = struct.unpack("<I", socket.inet_aton(ip))[0]
    except OSError:
        return None
    best, best_mask = None, -1
    for fields in _route_lines():
        dest, mask = int(fields[1], 16), int(fields[7], 16)
        if target & mask == dest and mask.bit_count() > best_mask:
            best, best_mask = fields[0], mask.bit_count()
    return best


def _route_lines() -> Iterator[list[str]]:
    try:
        with open("/proc/net/route") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return
    for line in lines:
        fields = line.split()
        if len(fields) >= 8:
            yield fields
