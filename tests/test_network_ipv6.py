"""IPv6 on bridge networks (`network create --ipv6 [--subnet X::/N]`): an address per
container from IPAM, the default route via the network's IPv6 gateway, masquerade
out of the network and isolation through the same nft table, inspect's fields.

The engine runs inside the nethost namespaces (tests/nethost.py); the test gives
the fake upstream an IPv6 address (2001:db8:1::1) and a web server on it.  The
upstream has no route back to the containers' fd00:77::/64: a page fetched from
there proves the masquerade.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import helpers
import pytest
from test_network_core import assert_nothing_left, leases, one_line_error

pytestmark = pytest.mark.slow

UP6, HOST6 = "2001:db8:1::1", "2001:db8:1::2"


def _upstream_v6(h) -> None:
    """IPv6 on the nethost uplink and a busybox httpd on [UP6]:80 in the upstream."""
    h.up_sh(f"ip -6 addr add {UP6}/64 dev eth0 nodad")
    h.sh(f"ip -6 addr add {HOST6}/64 dev eth0 nodad && ip -6 route add default via {UP6}")
    h._spawn(h.upstream_ns, [helpers.BUSYBOX, "httpd", "-f", "-p", f"[{UP6}]:80",
                             "-h", str(h.dir / "www")])
    deadline = time.monotonic() + 10
    while h.sh(f"{helpers.BUSYBOX} wget -q -O - http://[{UP6}]/", check=False).stdout \
            != h.upstream_page:
        assert time.monotonic() < deadline, "the upstream IPv6 httpd did not come up"
        time.sleep(0.1)


def _v6(h, ref: str, network: str) -> dict:
    out = h.nsbox("inspect", "-f", "{{json .NetworkSettings.Networks}}", ref).stdout
    return json.loads(out)[network]


def test_ipv6_network_addresses_routes_nat_and_isolation(net_host) -> None:
    h = net_host
    _upstream_v6(h)
    h.nsbox("network", "create", "--ipv6", "--subnet", "fd00:77::/64", "v6net")
    info = json.loads(h.nsbox("network", "inspect", "v6net").stdout)[0]
    assert info["EnableIPv6"] is True
    assert {"Subnet": "fd00:77::/64", "Gateway": "fd00:77::1"} in info["IPAM"]["Config"]
    # an IPv4 subnet is picked as without --ipv6
    assert any(":" not in c["Subnet"] for c in info["IPAM"]["Config"])

    h.nsbox("run", "-d", "--name", "srv", "--network", "v6net", "busybox",
            "httpd", "-f", "-p", "[::]:8080", "-h", "/etc")
    srv = _v6(h, "srv", "v6net")
    assert srv["GlobalIPv6Address"] == "fd00:77::2"
    assert srv["GlobalIPv6PrefixLen"] == 64 and srv["IPv6Gateway"] == "fd00:77::1"
    out = h.nsbox("run", "--rm", "--network", "v6net", "busybox", "sh", "-c",
                  "ip -6 -o addr show dev eth0 scope global; ip -6 route show default").stdout
    assert "fd00:77::3/64" in out, out  # the next lease: never the same address twice
    assert "default via fd00:77::1" in out, out
    # the container's own names in /etc/hosts with both addresses; others' by DNS (AAAA too)
    hosts = h.nsbox("exec", "srv", "cat", "/etc/hosts").stdout
    assert "fd00:77::2\t" in hosts and "srv" in hosts.split("fd00:77::2\t", 1)[1], hosts
    from nsbox.engine.network import dns
    if dns.binary() is not None:  # without aardvark-dns, no container DNS at all
        answer = h.nsbox("run", "--rm", "--network", "v6net", "busybox", "nslookup",
                         "-type=AAAA", "srv").stdout
        assert "fd00:77::2" in answer, answer
    # container to container over IPv6, and out through the masquerade
    page = h.nsbox("run", "--rm", "--network", "v6net", "busybox", "wget", "-q", "-O", "-",
                   "http://[fd00:77::2]:8080/hostname").stdout
    assert page.strip(), page
    # (no wget -T: busybox's wget crashes with it on IPv6 addresses)
    got = h.nsbox("run", "--rm", "--network", "v6net", "busybox", "wget", "-q",
                  "-O", "-", f"http://[{UP6}]/").stdout
    assert got == h.upstream_page
    ruleset = h.sh("nft list table inet nsbox").stdout
    assert "fd00:77::/64" in ruleset and "ip6 saddr @masq_nets6" in ruleset
    assert h.sh("cat /proc/sys/net/ipv6/conf/all/forwarding").stdout.strip() == "1"

    # an --internal IPv6 network reaches neither the upstream nor v6net
    h.nsbox("network", "create", "--ipv6", "--internal", "--subnet", "fd00:78::/64", "v6int")
    blocked = h.nsbox("run", "--rm", "--network", "v6int", "busybox", "sh", "-c",
                      f"ip -6 route; wget -q -O - http://[{UP6}]/ ||"
                      " wget -q -O - http://[fd00:77::2]:8080/hostname || echo blocked",
                      timeout=90).stdout
    assert "blocked" in blocked and "default" not in blocked, blocked

    h.nsbox("rm", "-f", "srv")
    h.nsbox("network", "rm", "v6net", "v6int")
    assert_nothing_left(h, bridges=("nsbox1", "nsbox2"))
    assert "inet nsbox" not in h.sh("nft list tables").stdout or \
        "fd00:77" not in h.sh("nft list table inet nsbox", check=False).stdout


def test_ipv6_defaults_and_bad_input(net_host) -> None:
    h = net_host
    h.nsbox("network", "create", "--ipv6", "auto6")
    config = json.loads(h.nsbox("network", "inspect", "auto6").stdout)[0]["IPAM"]["Config"]
    v6 = [c for c in config if ":" in c["Subnet"]]
    assert v6 == [{"Subnet": "fd4e:5342:0:1::/64", "Gateway": "fd4e:5342:0:1::1"}]
    # an overlapping IPv6 subnet, an IPv6 subnet without --ipv6, two IPv6 subnets, garbage
    for args in (["--ipv6", "--subnet", "fd4e:5342:0:1:8000::/65"],
                 ["--subnet", "fd00:99::/64"],
                 ["--ipv6", "--subnet", "fd00:1::/64", "--subnet", "fd00:2::/64"],
                 ["--ipv6", "--subnet", "fd00:zz::/64"]):
        one_line_error(h.nsbox("network", "create", *args, "bad6", check=False))
        assert "bad6" not in h.nsbox("network", "ls", "--format", "{{.Name}}").stdout
    h.nsbox("network", "rm", "auto6")
    assert leases(h) == []
    assert_nothing_left(h, bridges=("nsbox1",))


def test_ipv6_leases_survive_a_database_made_before_ipv6(net_host) -> None:
    """A database whose tables predate the IPv6 columns gets them on first use."""
    h = net_host
    h.nsbox("run", "--rm", "--network", "none", "busybox", "true")  # the image, the db
    db = h.root / "nsbox.db"
    subprocess.run(["sqlite3", str(db),
                    "CREATE TABLE networks (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
                    " driver TEXT NOT NULL DEFAULT 'bridge', bridge TEXT NOT NULL UNIQUE,"
                    " subnet TEXT NOT NULL, gateway TEXT NOT NULL, ip_range TEXT NOT NULL"
                    " DEFAULT '', internal INTEGER NOT NULL DEFAULT 0, ipv6 INTEGER NOT NULL"
                    " DEFAULT 0, mtu INTEGER NOT NULL DEFAULT 1500, labels TEXT NOT NULL"
                    " DEFAULT '{}', options TEXT NOT NULL DEFAULT '{}', created REAL NOT NULL);"
                    "CREATE TABLE attachments (container_id TEXT NOT NULL, network_id TEXT NOT"
                    " NULL, ifname TEXT NOT NULL, ip TEXT NOT NULL, prefix INTEGER NOT NULL,"
                    " mac TEXT NOT NULL, gateway TEXT NOT NULL, aliases TEXT NOT NULL DEFAULT"
                    " '[]', created REAL NOT NULL, PRIMARY KEY (container_id, network_id),"
                    " UNIQUE (network_id, ip));"], check=True, capture_output=True)
    h.nsbox("network", "create", "--ipv6", "--subnet", "fd00:79::/64", "old6")
    out = h.nsbox("run", "--rm", "--network", "old6", "busybox", "ip", "-6", "-o", "addr",
                  "show", "dev", "eth0", "scope", "global").stdout
    assert "fd00:79::2/64" in out, out
    h.nsbox("network", "rm", "old6")
    assert_nothing_left(h, bridges=("nsbox1",))


def test_ip6_flag_and_connect(net_host) -> None:
    h = net_host
    h.nsbox("network", "create", "--ipv6", "--subnet", "fd00:7a::/64", "v6a")
    h.nsbox("run", "-d", "--name", "fixed6", "--network", "v6a", "--ip6", "fd00:7a::42",
            "busybox", "sleep", "100")
    assert _v6(h, "fixed6", "v6a")["GlobalIPv6Address"] == "fd00:7a::42"
    out = h.nsbox("exec", "fixed6", "ip", "-6", "-o", "addr", "show", "dev", "eth0",
                  "scope", "global").stdout
    assert "fd00:7a::42/64" in out, out
    # taken, outside the subnet, the gateway, on the default bridge, not IPv6 at all
    before = leases(h)
    for args in (["--network", "v6a", "--ip6", "fd00:7a::42"],
                 ["--network", "v6a", "--ip6", "fd00:99::5"],
                 ["--network", "v6a", "--ip6", "fd00:7a::1"],
                 ["--ip6", "fd00:7a::43"],
                 ["--network", "v6a", "--ip6", "10.1.2.3"]):
        one_line_error(h.nsbox("run", "--rm", *args, "busybox", "true", check=False))
        assert leases(h) == before
    # network connect --ip6: a second interface with the asked-for address
    h.nsbox("network", "create", "--ipv6", "--subnet", "fd00:7b::/64", "v6b")
    h.nsbox("network", "connect", "--ip6", "fd00:7b::9", "v6b", "fixed6")
    out = h.nsbox("exec", "fixed6", "ip", "-6", "-o", "addr", "show", "dev", "eth1",
                  "scope", "global").stdout
    assert "fd00:7b::9/64" in out, out
    h.nsbox("rm", "-f", "fixed6")
    h.nsbox("network", "rm", "v6a", "v6b")
    assert_nothing_left(h, bridges=("nsbox1", "nsbox2"))


def _proxies(h) -> list[int]:
    """docker-proxy processes in the nethost's host namespace."""
    from nethost import _comm
    return [pid for pid in h.host_pids() if _comm(pid) == "docker-proxy"]


def test_ipv6_published_ports(net_host) -> None:
    """-p on an --ipv6 network: DNAT on the host's IPv6 addresses, docker-proxy on [::1]."""
    from test_network_firewall import _httpd, _wait_fetch, fetch, nft_table
    h = net_host
    h.sh(f"ip -6 addr add {HOST6}/64 dev eth0 nodad")
    h.nsbox("network", "create", "--ipv6", "--subnet", "fd00:7c::/64", "v6p")
    assert _httpd(h, "--network", "v6p", "-p", "8080:80", "--hostname", "w6").returncode == 0
    for url in (f"http://[{HOST6}]:8080/", "http://[::1]:8080/",
                f"http://{h.host_ip}:8080/", "http://127.0.0.1:8080/"):
        assert _wait_fetch(h, url) == "hello-w6\n", url
    assert h.nsbox("port", "web").stdout == "80/tcp -> 0.0.0.0:8080\n80/tcp -> [::]:8080\n"
    ports = json.loads(h.nsbox("inspect", "-f", "{{json .NetworkSettings.Ports}}",
                               "web").stdout)
    assert ports == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"},
                                {"HostIp": "::", "HostPort": "8080"}]}
    assert len(_proxies(h)) == 1
    # another container on the network, through the host's IPv6 address (back into the bridge)
    page = h.nsbox("run", "--rm", "--network", "v6p", "busybox", "wget", "-q", "-O", "-",
                   f"http://[{HOST6}]:8080/").stdout
    assert page == "hello-w6\n"
    h.nsbox("stop", "-t", "1", "web")
    for url in (f"http://[{HOST6}]:8080/", "http://[::1]:8080/"):
        assert fetch(h, None, url) is None, url
    assert _proxies(h) == [] and "pc-" not in (nft_table(h) or "")
    assert h.nsbox("port", "web").stdout == ""
    h.nsbox("start", "web")
    assert _wait_fetch(h, "http://[::1]:8080/") == "hello-w6\n"
    h.nsbox("rm", "-f", "web")
    assert _proxies(h) == [] and "pc-" not in (nft_table(h) or "")

    # one IPv6 host address each: only there
    assert _httpd(h, "--network", "v6p", "-p", "[::1]:8081:80", "-p", f"[{HOST6}]:8082:80",
                  "--hostname", "one", name="one").returncode == 0
    assert _wait_fetch(h, "http://[::1]:8081/") == "hello-one\n"
    assert _wait_fetch(h, f"http://[{HOST6}]:8082/") == "hello-one\n"
    for url in (f"http://[{HOST6}]:8081/", "http://[::1]:8082/", "http://127.0.0.1:8082/"):
        assert fetch(h, None, url) is None, url
    assert h.nsbox("port", "one").stdout == f"80/tcp -> [::1]:8081\n80/tcp -> [{HOST6}]:8082\n"
    h.nsbox("rm", "-f", "one")

    # taken: a host process on [::]:8500 (IPv6 only); an IPv6 address on an IPv4 network
    listener = h._spawn(h.host_ns, [sys.executable, "-c",
                                    "import socket, time; s = socket.socket(socket.AF_INET6);"
                                    "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1);"
                                    "s.bind(('::', 8500)); s.listen(); print('up', flush=True);"
                                    "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline() == "up\n"
        out = _httpd(h, "--network", "v6p", "-p", "8500:80", name="taken6")
        line = one_line_error(out)
        assert "[::]:8500" in line and "address already in use" in line, line
    finally:
        listener.kill()
        listener.wait()
    out = _httpd(h, "-p", "[::1]:8501:80", name="nov6")
    assert "no IPv6" in one_line_error(out)
    assert "pc-" not in (nft_table(h) or "") and _proxies(h) == []
    h.nsbox("rm", "-f", "taken6", "nov6")
    h.nsbox("network", "rm", "v6p")
    assert_nothing_left(h, bridges=("nsbox1",))


def test_ipv6_published_ports_across_a_policy_restart(net_host) -> None:
    """A restart by --restart keeps [::1] answering with one docker-proxy; rm -f ends it."""
    import os
    import signal

    from test_network_firewall import _httpd, _wait_fetch
    h = net_host
    h.nsbox("network", "create", "--ipv6", "--subnet", "fd00:7d::/64", "v6r")
    assert _httpd(h, "--network", "v6r", "--restart", "always", "-p", "8090:80",
                  "--hostname", "rs").returncode == 0
    assert _wait_fetch(h, "http://[::1]:8090/") == "hello-rs\n"
    pid = int(h.nsbox("inspect", "-f", "{{.State.Pid}}", "web").stdout)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while h.nsbox("inspect", "-f", "{{.RestartCount}}", "web").stdout.strip() in ("", "0"):
        assert time.monotonic() < deadline, "not restarted"
        time.sleep(0.2)
    assert _wait_fetch(h, "http://[::1]:8090/", timeout=20) == "hello-rs\n"
    assert len(_proxies(h)) == 1
    h.nsbox("rm", "-f", "web")
    assert _proxies(h) == []
    h.nsbox("network", "rm", "v6r")
    assert_nothing_left(h, bridges=("nsbox1",))
