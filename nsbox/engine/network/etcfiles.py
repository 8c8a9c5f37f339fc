"""A container's /etc/hosts, /etc/resolv.conf and /etc/hostname (files in its userdata/).

hosts: the localhost lines, the container's hostname (and name) -> its
address on its first network (127.0.1.1 without one), then each --add-host
`HOST:IP` (`host-gateway` is the first network's gateway).
resolv.conf: --dns / --dns-search / --dns-option when given; otherwise on a
user-defined network the network's DNS server (dns.server_for) and else the
host's resolvers without loopback ones (127.x, ::1: unreachable from the
container's namespace; systemd-resolved's upstream list is used then, and
Docker's fallback 8.8.8.8/8.8.4.4 if nothing is left), with the host's
search and options lines.
"""

from __future__ import annotations

import os

from nsbox.errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nsbox.engine.model import ContainerSpec

HOST_RESOLV = "/etc/resolv.conf"
RESOLVED_UPSTREAM = "/run/systemd/resolve/resolv.conf"
FALLBACK_DNS = ("8.8.8.8", "8.8.4.4")
HOST_GATEWAY = "host-gateway"
_LOCALHOST = ("127.0.0.1\tlocalhost\n"
              "::1\tlocalhost ip6-localhost ip6-loopback\n"
              "fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\n"
              "ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n")


def parse_add_host(entry: str) -> tuple[str, str]:
    """`HOST:IP` (or Docker's newer `HOST=IP`) -> (host, ip); IP may be host-gateway."""
    text = str(entry)
    sep = "=" if "=" in text else ":"
    host, _, ip = text.partition(sep)
    if not host or not ip:
        raise ConfigError(f'invalid argument "{entry}" for "--add-host" flag: '
                          "bad format for add-host: expected HOST:IP")
    if ip != HOST_GATEWAY:
        import ipaddress
        try:
            ip = str(ipaddress.ip_address(ip.strip("[]")))
        except ValueError:
            raise ConfigError(f'invalid argument "{entry}" for "--add-host" flag: '
                              f"invalid IP address in add-host: {ip!r}") from None
    return host, ip


def hosts_text(hostname: str, name: str, ip: str, gateway: str, extra_hosts: list[str],
               ip6: str = "") -> str:
    lines = [_LOCALHOST]
    names = hostname if not name or name == hostname else f"{hostname} {name}"
    lines.append(f"{ip}\t{names}\n" if ip else f"127.0.1.1\t{names}\n")
    if ip6:  # a network made with --ipv6: the container's names have both, as Docker's
        lines.append(f"{ip6}\t{names}\n")
    for entry in extra_hosts:
        host, addr = parse_add_host(entry)
        if addr == HOST_GATEWAY:
            if not gateway:
                raise ConfigError(f"--add-host {entry}: host-gateway needs a bridge network")
            addr = gateway
        lines.append(f"{addr}\t{host}\n")
    return "".join(lines)


def _read_resolv(path: str) -> tuple[list[str], list[str], list[str]]:
    servers, search, options = [], [], []
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return servers, search, options
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0].startswith(("#", ";")):
            continue
        if parts[0] == "nameserver" and len(parts) > 1:
            servers.append(parts[1])
        elif parts[0] in ("search", "domain"):
            search = parts[1:]
        elif parts[0] == "options":
            options += parts[1:]
    return servers, search, options


def _reachable(servers: list[str]) -> list[str]:
    return [s for s in servers if not s.startswith("127.") and s not in ("::1", "0:0:0:0:0:0:0:1")]


def host_resolvers() -> tuple[list[str], list[str], list[str]]:
    """(nameservers without loopback ones, search, options) of the host."""
    servers, search, options = _read_resolv(HOST_RESOLV)
    usable = _reachable(servers)
    if servers and not usable:
        usable = _reachable(_read_resolv(RESOLVED_UPSTREAM)[0])
    return usable or list(FALLBACK_DNS), search, options


def resolv_text(dns: list[str], dns_search: list[str], dns_options: list[str],
                server: str | None) -> str:
    servers, search, options = host_resolvers()
    if server:
        servers = [server]
    if dns:
        servers = list(dns)
    if dns_search:
        search = [] if dns_search == ["."] else list(dns_search)
    if dns_options:
        options = list(dns_options)
    text = "".join(f"nameserver {s}\n" for s in servers)
    if search:
        text += "search " + " ".join(search) + "\n"
    if options:
        text += "options " + " ".join(options) + "\n"
    return text


def _write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write(userdata: str, spec: ContainerSpec, hostname: str, name: str, ip: str = "",
          gateway: str = "", dns_server: str | None = None, networked: bool = False,
          ip6: str = "") -> None:
    """Rewrite USERDATA's hosts (and resolv.conf when NETWORKED or --dns* was given)."""
    _write(os.path.join(userdata, "hosts"),
           hosts_text(hostname, name, ip, gateway, list(getattr(spec, "extra_hosts", None) or []),
                      ip6))
    dns = list(getattr(spec, "dns", None) or [])
    search = list(getattr(spec, "dns_search", None) or [])
    options = list(getattr(spec, "dns_options", None) or [])
    if networked or dns or search or options:
        _write(os.path.join(userdata, "resolv.conf"), resolv_text(dns, search, options,
                                                                  dns_server))
