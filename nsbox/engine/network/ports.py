"""Published ports: `-p`, `-P`, `--expose`, `nsbox port`, and their inspect views.

A container's request stays in its spec as Docker's flags gave it
(ContainerSpec.publish: one entry per container port, `host_port` "" for
"any free one", "8080", or a range "8000-8010" to pick one from).  At each
start, `publish()` turns it into concrete mappings: it picks free host
ports, checks every host port with a bind on the host (TCP or UDP, on the
given host IP or all) and against the ports other nsbox containers publish,
hands them to the firewall (firewall.ports_added: DNAT in one nft batch) and
records them in <run_root>/ports/<id>.json, what `nsbox port` and inspect's
NetworkSettings.Ports show.  On a network made with --ipv6 a port on all
addresses is also published on "::" (an IPv6 DNAT rule beside the IPv4 one),
and [::1], which DNAT cannot reach, gets Docker's docker-proxy (proxy6.py).
At stop `unpublish()` takes them back.  Errors are one line (ConfigError,
exit 125) and leave nothing.
"""

from __future__ import annotations

import os

from nsbox import _json
from nsbox.errors import ConfigError, NsboxError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nsbox.engine.lifecycle.record import Container
    from nsbox.engine.lifecycle.state import EngineBase
    from nsbox.engine.model import ContainerSpec

PROTOCOLS = ("tcp", "udp")


# ================================================================ flags
def _port_range(text: str, what: str, entry: str) -> tuple[int, int]:
    lo, dash, hi = text.partition("-")
    try:
        first, last = int(lo), int(hi) if dash else int(lo)
    except ValueError:
        raise ConfigError(f"invalid {what}: {text} (in {entry!r})") from None
    if not (0 < first <= last <= 65535):
        raise ConfigError(f"invalid {what}: {text} (in {entry!r})")
    return first, last


def _split_proto(text: str, entry: str) -> tuple[str, str]:
    port, _, proto = text.partition("/")
    proto = proto.lower() or "tcp"
    if proto not in PROTOCOLS:
        raise ConfigError(f"invalid protocol {proto!r} in {entry!r}: use tcp or udp")
    return port, proto


def parse_publish(entries: object) -> list[dict]:
    """-p [[IP:][HOST_PORT[-END]]:]CONTAINER_PORT[-END][/PROTO], each -> one dict per
    container port: {"container_port", "proto", "host_ip", "host_port"}."""
    from nsbox.engine.resource_flags import _as_list
    out: list[dict] = []
    for raw in _as_list(entries):
        entry = str(raw)
        rest, proto = _split_proto(entry, entry)
        host_ip, rest = _split_host_ip(rest, entry)
        parts = rest.split(":")
        if len(parts) > 2 or not parts[-1]:
            raise ConfigError(f"invalid publish spec {entry!r}: use "
                              "[[IP:][HOST_PORT]:]CONTAINER_PORT[/tcp|udp]")
        host = parts[-2] if len(parts) == 2 else ""
        c_lo, c_hi = _port_range(parts[-1], "containerPort", entry)
        count = c_hi - c_lo + 1
        if host:
            h_lo, h_hi = _port_range(host, "hostPort", entry)
            if count > 1 and h_hi - h_lo + 1 != count:
                raise ConfigError(f"Invalid ranges specified for container and host Ports: "
                                  f"{parts[-1]} and {host}")
        for i in range(count):
            if not host:
                host_port = ""
            elif count > 1:
                host_port = str(h_lo + i)
            else:
                host_port = str(h_lo) if h_lo == h_hi else f"{h_lo}-{h_hi}"
            item = {"container_port": c_lo + i, "proto": proto, "host_ip": host_ip,
                    "host_port": host_port}
            if item not in out:
                out.append(item)
    return out


def _split_host_ip(rest: str, entry: str) -> tuple[str, str]:
    """"IP:HOST:CONTAINER" -> (IP, "HOST:CONTAINER"), as Docker reads it: an IPv6
    address in brackets ("[::1]:8080:80") or bare (all before the last two colons)."""
    if rest.startswith("["):
        ip, bracket, after = rest[1:].partition("]")
        if not bracket or not after.startswith(":"):
            raise ConfigError(f"invalid publish spec {entry!r}: use [IPv6]:HOST_PORT:"
                              "CONTAINER_PORT")
        text, rest = ip, after[1:]
        if ":" not in rest:
            raise ConfigError(f"invalid publish spec {entry!r}: use [IPv6]:HOST_PORT:"
                              "CONTAINER_PORT")
    else:
        parts = rest.split(":")
        if len(parts) < 3:
            return "", rest
        text, rest = ":".join(parts[:-2]), ":".join(parts[-2:])
    import ipaddress
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(f"invalid IP address {text!r} in {entry!r}") from None
    if rest.startswith("[") or "%" in text or (addr.version == 4 and text.count(".") != 3):
        raise ConfigError(f"invalid IP address {text!r} in {entry!r}")
    return addr.compressed, rest


def is_ipv6(host_ip: str) -> bool:
    return ":" in host_ip


def parse_expose(entries: object) -> list[str]:
    """--expose PORT[-END][/PROTO] -> ["80/tcp", ...]."""
    from nsbox.engine.resource_flags import _as_list
    out: list[str] = []
    for raw in _as_list(entries):
        entry = str(raw)
        port, proto = _split_proto(entry, entry)
        lo, hi = _port_range(port, "port", entry)
        out += [f"{p}/{proto}" for p in range(lo, hi + 1) if f"{p}/{proto}" not in out]
    return out


def check_network_mode(spec: ContainerSpec, warn=None) -> None:  # noqa: ANN001
    """Docker's rules for published ports and the network mode: with --network host
    they are dropped with a warning; with none or container:X they are an error."""
    if not spec.publish and not spec.publish_all:
        return
    mode = spec.network_mode
    if mode == "host":
        if warn is not None:
            warn("WARNING: Published ports are discarded when using host network mode")
        spec.publish, spec.publish_all = [], False
    elif mode == "none" or mode.startswith("container:"):
        flag = "--publish" if spec.publish else "--publish-all"
        raise ConfigError(f"Conflicting options: {flag} and --network {mode} (the container "
                          "has no network of its own to publish from)")


# ================================================================ at start and stop
def exposed(engine: EngineBase, c: Container) -> list[str]:
    """The container's exposed ports: the image's ExposedPorts and --expose, "80/tcp" each."""
    ports = list(c.extra.get("exposed_ports") or [])
    if not ports:
        try:
            ports = list(engine.images.resolve(c.image_id).exposed_ports)
        except Exception:  # the image is gone (rmi -f): its config too
            ports = []
    for port in c.spec.expose:
        if port not in ports:
            ports.append(port)
    return [p if "/" in p else f"{p}/tcp" for p in ports]


def requested(engine: EngineBase, c: Container) -> list[dict]:
    """-p entries, and with -P every exposed port not among them (any free host port)."""
    wanted = [dict(m) for m in c.spec.publish]
    if c.spec.publish_all:
        have = {(m["container_port"], m["proto"]) for m in wanted}
        for port in exposed(engine, c):
            number, _, proto = port.partition("/")
            key = (int(number), proto or "tcp")
            if key not in have:
                have.add(key)
                wanted.append({"container_port": key[0], "proto": key[1], "host_ip": "",
                               "host_port": ""})
    return wanted


def publish(engine: EngineBase, c: Container, ip: str, bridge: str | None = None,
            ip6: str = "") -> list[dict]:
    """Publish C's ports to its address IP (on BRIDGE); the concrete mappings.

    With IP6 (a network made with --ipv6) a port on all addresses is published
    on "::" too, as Docker does, and IPv6 host addresses may be given; ::1 is
    served by docker-proxy (proxy6.py).  ConfigError (one line, nothing left
    behind) when a host port is in use on the host or published by another
    nsbox container.
    """
    from nsbox.engine.network import firewall, proxy6
    wanted = requested(engine, c)
    if not wanted:
        return []
    _drop_stale(engine, c.id)
    proxy6.stop(engine, c.id)  # a leftover of an earlier start would hold [::1]'s ports
    path = _record_path(engine, c.id)
    for attempt in range(5):
        taken = {key for key, chain in firewall.published().items()
                 if chain != firewall.chain_of(c.id)}
        mappings = _resolve(c, wanted, taken, ipv6=bool(ip6))
        # The record first: a crash after the rules leaves the record that says
        # they are to be removed (attach.teardown_container looks only there).
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path + ".tmp", "w") as f:
                f.write(_json.dumps(mappings))
            os.replace(path + ".tmp", path)
        except OSError as exc:
            raise ConfigError(f"cannot start container {c.name}: recording its ports: "
                              f"{exc}") from None
        try:
            firewall.ports_added(c.id, ip, mappings, bridge=bridge, ip6=ip6)
            proxy6.start(engine, c.id, ip6, mappings)
            break
        except firewall.PortTaken as exc:
            if attempt == 4 or all(m["host_port"] and "-" not in m["host_port"] for m in wanted):
                _unlink(path)
                raise ConfigError(f"cannot start container {c.name}: {exc}") from None
            # A port picked at random was taken meanwhile: pick again.
        except firewall.FirewallError as exc:
            _unlink(path)
            raise ConfigError(f"cannot start container {c.name}: {exc}") from None
        except ConfigError as exc:  # a proxy could not listen: undo all of it
            unpublish(engine, c.id)
            raise ConfigError(f"cannot start container {c.name}: {exc}") from None
    return mappings


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def publish_container(engine: EngineBase, c: Container) -> list[dict]:
    """At start: publish C's ports to its address on its first network (none on an
    internal network, whose traffic never leaves it, or without a bridge network)."""
    if not (c.spec.publish or c.spec.publish_all):
        return []
    from nsbox.engine.network import model
    leases = model.attachments(engine.db, container_id=c.id)
    if not leases:
        return []
    try:
        net = model.find_network(engine.db, leases[0].network_id)
    except model.NetworkNotFound:
        return []
    if net.internal:
        return []
    from nsbox.engine.network import usernet
    usernet.join(engine.run_root)
    if not usernet.entered():
        return publish(engine, c, leases[0].ip, bridge=net.bridge,
                       ip6=leases[0].ip6 if net.ipv6 else "")
    # Rootless: the rules in the user's namespace of bridges, its slirp4netns in front.
    mappings = publish(engine, c, leases[0].ip, bridge=net.bridge)
    try:
        usernet.forward(engine.run_root, mappings)
    except NsboxError as exc:
        unpublish(engine, c.id)
        raise ConfigError(f"cannot start container {c.name}: {exc}") from None
    return mappings


def _drop_stale(engine: EngineBase, cid: str) -> None:
    """Remove the port rules of containers that no longer run (their exit was not seen: a
    crash, a reboot of the monitor's world) so their host ports are free again."""
    from nsbox.engine.network import firewall
    db = getattr(engine, "db", None)
    owners = {chain[3:] for chain in firewall.published().values()} - {cid[:12]}
    if db is None or not owners:
        return
    ids = {full[:12]: full for full in db.container_ids()}
    for prefix in owners:
        row = db.container(ids[prefix]) if prefix in ids else None
        if row is None or row["state"] not in ("running", "paused", "restarting", "starting"):
            from nsbox.engine.network import proxy6
            proxy6.stop(engine, ids.get(prefix, prefix))
            firewall.ports_removed(prefix)
            with _suppress_oserror():
                os.unlink(_record_path(engine, ids.get(prefix, prefix)))


def _suppress_oserror():  # noqa: ANN202
    from nsbox._lite import suppress
    return suppress(OSError)


def unpublish(engine: EngineBase, cid: str) -> None:
    """Take back CID's published ports (rules and record).  Idempotent."""
    from nsbox.engine.network import firewall, proxy6, usernet
    path = _record_path(engine, cid)
    if not usernet.join_existing(engine.run_root):
        _unlink(path)  # rootless: the rules went with the user's namespace of bridges
        return
    if usernet.entered():
        usernet.unforward(engine.run_root, current(engine, cid))  # its slirp4netns's
    proxy6.stop(engine, cid)  # first: the record says they are to be ended
    if os.path.exists(path) or firewall.state() is not None:
        firewall.ports_removed(cid)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def current(engine: EngineBase, cid: str) -> list[dict]:
    """CID's published mappings while it runs (from its record); [] else."""
    try:
        with open(_record_path(engine, cid)) as f:
            return list(_json.loads(f.read()))
    except (OSError, ValueError):
        return []


def _record_path(engine: EngineBase, cid: str) -> str:
    return os.path.join(engine.run_root, "ports", cid + ".json")


def _resolve(c: Container, wanted: list[dict], taken: set[tuple[int, str]],
             ipv6: bool = False) -> list[dict]:
    """Concrete host ports for WANTED: fixed ones checked, free ones picked.  With
    IPV6 a port on all addresses is one mapping for 0.0.0.0 and one for "::"."""
    out: list[dict] = []
    used = set(taken)
    for m in wanted:
        proto, host_ip = m["proto"], m.get("host_ip") or ""
        text = m.get("host_port") or ""
        where = f"{_show(host_ip or '0.0.0.0')}:{text}"
        if is_ipv6(host_ip) and not ipv6:
            raise ConfigError(f"cannot start container {c.name}: cannot publish {where}: "
                              "its network has no IPv6 (network create --ipv6)")
        families = ["0.0.0.0", "::"] if ipv6 and not host_ip else [host_ip or "0.0.0.0"]
        if text and "-" not in text:
            port = int(text)
            if (port, proto) in used:
                raise ConfigError(f"cannot start container {c.name}: Bind for {where} failed: "
                                  "port is already allocated")
            problem = next(filter(None, (bind_test(a, port, proto) for a in families)), "")
            if problem:
                raise ConfigError(f"cannot start container {c.name}: cannot publish "
                                  f"{where}/{proto}: {problem}")
        else:
            port = _pick(families, text, proto, used)
            if port is None:
                raise ConfigError(f"cannot start container {c.name}: no free host port "
                                  f"{'in ' + text if text else 'left'} for "
                                  f"{m['container_port']}/{proto}")
        used.add((port, proto))
        out += [{"container_port": m["container_port"], "proto": proto, "host_ip": address,
                 "host_port": port} for address in families]
    return out


def _show(host_ip: str) -> str:
    """An address as it goes before ":PORT": IPv6 in brackets."""
    return f"[{host_ip}]" if is_ipv6(host_ip) else host_ip


def _pick(families: list[str], text: str, proto: str,
          used: set[tuple[int, str]]) -> int | None:
    """A host port free on the host (on each address of FAMILIES) and among nsbox's: from
    the range TEXT, else the kernel's."""
    if text:
        lo, _, hi = text.partition("-")
        candidates = range(int(lo), int(hi) + 1)
    else:
        candidates = range(0)
        for _ in range(50):  # the kernel's ephemeral choice, skipping nsbox's own
            port = _ephemeral(families[0], proto)
            if port and (port, proto) not in used and \
                    not any(bind_test(a, port, proto) for a in families[1:]):
                return port
    for port in candidates:
        if (port, proto) not in used and not any(bind_test(a, port, proto) for a in families):
            return port
    return None


def _socket(proto: str, host_ip: str = ""):  # noqa: ANN202
    """A socket of HOST_IP's family; an IPv6 one is IPv6 only ("::" means IPv6's all)."""
    import socket
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    if not is_ipv6(host_ip):
        return socket.socket(socket.AF_INET, kind)
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return s


def _ephemeral(host_ip: str, proto: str) -> int:
    try:
        with _socket(proto, host_ip) as s:
            s.bind((host_ip or "0.0.0.0", 0))
            return s.getsockname()[1]
    except OSError:
        return 0


def bind_test(host_ip: str, port: int, proto: str) -> str:
    """"" if PORT can be bound on HOST_IP (all addresses if "") for PROTO, else why not."""
    try:
        with _socket(proto, host_ip) as s:
            if proto == "tcp":
                import socket
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
            s.bind((host_ip or "0.0.0.0", port))
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        family = "6" if is_ipv6(host_ip) else "4"
        return f"listen {proto}{family} {_show(host_ip or '0.0.0.0')}:{port}: bind: {reason}"
    return ""


# ================================================================ views
def port_bindings(spec: ContainerSpec) -> dict:
    """inspect .HostConfig.PortBindings: what -p asked for."""
    out: dict[str, list] = {}
    for m in spec.publish:
        out.setdefault(f"{m['container_port']}/{m['proto']}", []).append(
            {"HostIp": m.get("host_ip") or "", "HostPort": m.get("host_port") or ""})
    return out


def network_ports(engine: EngineBase, c: Container) -> dict:
    """inspect .NetworkSettings.Ports: each exposed or published port -> its host bindings
    (None for exposed only); {} while the container is not running, as Docker."""
    mappings = current(engine, c.id)
    if not mappings:
        return {}
    out: dict[str, list | None] = {port: None for port in exposed(engine, c)}
    for m in c.spec.publish:
        out.setdefault(f"{m['container_port']}/{m['proto']}", None)
    for m in mappings:
        key = f"{m['container_port']}/{m['proto']}"
        out[key] = (out.get(key) or []) + [{"HostIp": m["host_ip"],
                                            "HostPort": str(m["host_port"])}]
    return out


def port_lines(engine: EngineBase, c: Container) -> dict[str, list[str]]:
    """`nsbox port`: "80/tcp" -> ["0.0.0.0:8080", ...]."""
    out: dict[str, list[str]] = {}
    for m in current(engine, c.id):
        out.setdefault(f"{m['container_port']}/{m['proto']}", []).append(
            f"{_show(m['host_ip'])}:{m['host_port']}")
    return out
