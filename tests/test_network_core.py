"""Bridge networking through the engine (nsbox/engine/network/): the default `bridge`
network, user networks, addresses, leases, removal and crashes, /etc files.

Every test runs the engine inside the nethost namespaces (tests/nethost.py):
nothing here touches the real host's links, routes or sysctls.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import os
import sqlite3
import time

import pytest

pytestmark = pytest.mark.slow


def ips_of(h, ref: str) -> dict[str, str]:
    """network name -> IPv4 address of container REF (inspect .NetworkSettings)."""
    out = h.nsbox("inspect", "-f", "{{json .NetworkSettings.Networks}}", ref).stdout
    return {name: entry["IPAddress"] for name, entry in json.loads(out).items()}


def leases(h) -> list[tuple]:
    db = h.root / "nsbox.db"
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        try:
            return conn.execute("SELECT container_id, network_id, ip FROM attachments").fetchall()
        except sqlite3.OperationalError:
            return []  # no table yet: never networked


def netns_files(h) -> list[str]:
    try:
        return os.listdir(h.runroot / "netns")
    except FileNotFoundError:
        return []


def assert_nothing_left(h, bridges: tuple[str, ...] = ()) -> None:
    """No container, veth, netns file or lease; none of BRIDGES."""
    assert h.nsbox("ps", "-a", "-q").stdout.split() == []
    links = h.settled_links()
    assert [n for n in links if n.startswith("vnb")] == []
    for bridge in bridges:
        assert bridge not in links
    assert netns_files(h) == []
    assert leases(h) == []


def one_line_error(result) -> str:
    assert result.returncode == 125, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def test_network_none_has_only_lo_up(net_host) -> None:
    out = net_host.nsbox("run", "--rm", "--network", "none", "busybox", "ip", "-o", "link").stdout
    names = [line.split(": ")[1].split("@")[0] for line in out.splitlines()]
    assert names == ["lo"], out
    assert "UP" in out
    assert netns_files(net_host) == [] and leases(net_host) == []


def test_default_bridge_address_route_mtu(net_host) -> None:
    h = net_host
    out = h.nsbox("run", "--rm", "busybox", "sh", "-c",
                  "ip -o -4 addr show eth0; ip route; cat /sys/class/net/eth0/mtu").stdout
    lines = out.splitlines()
    cidr = lines[0].split()[3]
    assert ipaddress.ip_interface(cidr).network == ipaddress.ip_network("172.30.0.0/16"), out
    assert "default via 172.30.0.1 dev eth0" in out
    assert lines[-1] == "1500"
    assert "nsbox0" in h.links()  # the default network's bridge, made on first use
    # the upstream web server is reached through the host (masquerade)
    assert h.nsbox("run", "--rm", "busybox", "wget", "-qO-", h.upstream_url).stdout \
        == h.upstream_page
    assert_nothing_left(h)


def test_two_containers_on_the_default_bridge_ping_each_other(net_host) -> None:
    h = net_host
    h.nsbox("run", "-d", "--name", "a", "busybox", "sleep", "100")
    ip = ips_of(h, "a")["bridge"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network("172.30.0.0/16")
    # busybox 1.35 ping needs a raw socket (nsbox's default profile has no NET_RAW)
    out = h.nsbox("run", "--rm", "--cap-add", "NET_RAW", "busybox", "ping", "-c", "1", "-W", "3",
                  ip).stdout
    assert "1 packets received" in out
    # --network container:A shares A's interfaces
    shared = h.nsbox("run", "--rm", "--network", "container:a", "busybox",
                     "ip", "-o", "-4", "addr", "show", "eth0").stdout
    assert f"{ip}/16" in shared
    h.nsbox("rm", "-f", "a")
    assert_nothing_left(h)


def test_user_network_subnet_gateway_ip(net_host) -> None:
    h = net_host
    h.nsbox("network", "create", "--subnet", "10.77.0.0/24", "--gateway", "10.77.0.254", "net1")
    inspect = json.loads(h.nsbox("network", "inspect", "net1").stdout)[0]
    assert inspect["IPAM"]["Config"] == [{"Subnet": "10.77.0.0/24", "Gateway": "10.77.0.254"}]
    bridge = inspect["Options"]["com.docker.network.bridge.name"]
    assert bridge in h.links()
    out = h.nsbox("run", "--rm", "--network", "net1", "busybox", "sh", "-c",
                  "ip -o -4 addr show eth0; ip route").stdout
    assert ipaddress.ip_interface(out.split()[3]).network == ipaddress.ip_network("10.77.0.0/24")
    assert "default via 10.77.0.254" in out
    h.nsbox("run", "-d", "--name", "fixed", "--network", "net1", "--ip", "10.77.0.42",
            "busybox", "sleep", "100")
    assert ips_of(h, "fixed") == {"net1": "10.77.0.42"}
    assert h.nsbox("run", "--rm", "--network", "net1", "busybox", "ip", "-o", "-4", "addr",
                   "show", "eth0").stdout.split()[3] != "10.77.0.42/24"
    # the address is taken, and one outside the subnet is refused: nothing is left
    before = leases(h)
    for ip in ("10.77.0.42", "10.78.0.5"):
        err = one_line_error(h.nsbox("run", "-d", "--name", "bad", "--network", "net1", "--ip",
                                     ip, "busybox", "sleep", "100", check=False))
        assert ip in err
        assert "bad" not in h.nsbox("ps", "-a", "--format", "{{.Names}}").stdout.split()
        assert leases(h) == before
        assert len(netns_files(h)) == 1
        assert len([n for n in h.links() if n.startswith("vnb")]) == 1
    # a network in use is not removed
    one_line_error(h.nsbox("network", "rm", "net1", check=False))
    h.nsbox("rm", "-f", "fixed")
    h.nsbox("network", "rm", "net1")
    assert_nothing_left(h, bridges=(bridge,))


def test_parallel_runs_get_distinct_addresses_and_all_goes(net_host) -> None:
    h = net_host
    h.nsbox("network", "create", "--subnet", "10.88.77.0/24", "par")
    count = 50
    start = time.monotonic()

    def run(i: int) -> str:
        return h.nsbox("run", "-d", "--name", f"p{i}", "--network", "par", "busybox",
                       "sleep", "300", timeout=120).stdout.strip()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(run, range(count)))
    assert len(set(ids)) == count
    addresses = [ip for _, _, ip in leases(h)]
    assert len(addresses) == count and len(set(addresses)) == count
    inside = h.nsbox("inspect", "-f", "{{.NetworkSettings.Networks}}", *ids).stdout
    assert len(netns_files(h)) == count
    assert len([n for n in h.links() if n.startswith("vnb")]) == count
    assert inside
    h.nsbox("rm", "-f", *ids, timeout=120)
    h.nsbox("network", "rm", "par")
    assert_nothing_left(h, bridges=("nsbox1",))
    assert time.monotonic() - start < 60


@pytest.mark.parametrize("cleanup", [("rm", "-f", "crashed"), ("container", "prune", "-f")])
def test_crash_between_veth_and_start_is_cleaned(net_host, cleanup) -> None:
    h = net_host
    crashed = h.nsbox("run", "-d", "--name", "crashed", "busybox", "sleep", "100",
                      env={"NSBOX_TEST_CRASHPOINT": "network.after_veth"}, check=False)
    assert crashed.returncode in (-9, 137), crashed
    assert [n for n in h.links() if n.startswith("vnb")]  # the veth was made
    assert leases(h) and netns_files(h)
    h.nsbox(*cleanup)
    assert_nothing_left(h)


def test_bad_input_is_one_line_and_leaves_nothing(net_host) -> None:
    h = net_host
    h.nsbox("run", "--rm", "--network", "none", "busybox", "true")  # the image, built quietly
    h.nsbox("network", "create", "--subnet", "10.66.0.0/16", "first")
    one_line_error(h.nsbox("network", "create", "--subnet", "10.66.5.0/24", "second",
                           check=False))
    # the host's own 203.0.113.0/24 (the nethost uplink) is not handed out either
    one_line_error(h.nsbox("network", "create", "--subnet", "203.0.113.0/25", "third",
                           check=False))
    assert "second" not in h.nsbox("network", "ls", "--format", "{{.Name}}").stdout
    assert "unknown" in one_line_error(h.nsbox("run", "--rm", "--network", "unknown", "busybox",
                                               "true", check=False))
    one_line_error(h.nsbox("run", "--rm", "--network", "first", "--ip", "300.1.1.1",
                           "busybox", "true", check=False))
    one_line_error(h.nsbox("run", "--rm", "--ip", "172.30.0.9", "busybox", "true",
                           check=False))  # the default bridge takes no --ip (Docker)
    assert h.nsbox("network", "ls", "-q").stdout.split().__len__() == 2  # bridge, first
    h.nsbox("network", "rm", "first")
    assert_nothing_left(h, bridges=("nsbox1", "nsbox2"))


def test_hosts_and_resolv_conf(net_host) -> None:
    h = net_host
    out = h.nsbox("run", "--rm", "--name", "web", "--hostname", "box", "--add-host",
                  "db.example:10.1.2.3", "--add-host", "gw:host-gateway", "--dns", "9.9.9.9",
                  "--dns-search", "example.test", "--dns-option", "ndots:2", "busybox", "sh",
                  "-c", "cat /etc/hosts; echo ---; cat /etc/resolv.conf; echo ---;"
                  " ip -o -4 addr show eth0").stdout
    hosts, resolv, addr = out.split("---\n")
    ip = addr.split()[3].split("/")[0]
    assert f"{ip}\tbox web" in hosts
    assert "10.1.2.3\tdb.example" in hosts
    assert "172.30.0.1\tgw" in hosts
    assert "127.0.0.1\tlocalhost" in hosts
    assert resolv.splitlines() == ["nameserver 9.9.9.9", "search example.test",
                                   "options ndots:2"]
    default = h.nsbox("run", "--rm", "busybox", "cat", "/etc/resolv.conf").stdout
    assert "nameserver" in default
    assert "127." not in default


def test_stop_start_keeps_the_address_and_connect_disconnect(net_host) -> None:
    h = net_host
    h.nsbox("run", "-d", "--name", "s", "busybox", "sleep", "100")
    ip = ips_of(h, "s")["bridge"]
    h.nsbox("restart", "-t", "0", "s")
    assert ips_of(h, "s") == {"bridge": ip}
    h.nsbox("network", "create", "--subnet", "10.55.0.0/24", "n2")
    h.nsbox("network", "connect", "--ip", "10.55.0.9", "n2", "s")
    assert "10.55.0.9/24" in h.nsbox("exec", "s", "ip", "-o", "-4", "addr", "show", "eth1").stdout
    assert ips_of(h, "s") == {"bridge": ip, "n2": "10.55.0.9"}
    h.nsbox("network", "disconnect", "n2", "s")
    assert "eth1" not in h.nsbox("exec", "s", "ip", "-o", "link").stdout
    h.nsbox("rm", "-f", "s")
    h.nsbox("network", "rm", "n2")
    assert_nothing_left(h)
