"""The bridge networks' firewall (network/firewall.py) and published ports (network/ports.py).

Everything runs in the nethost harness's "host" network namespace (tests/nethost.py),
never the real host's.  The first half drives the modules directly against
hand-made bridges and "container" namespaces (veth + address + default route):
NAT out to the upstream namespace, internal networks, isolation between
networks, DNAT of published ports from the host's own address, 127.0.0.1 and
the upstream side, the port checks, and the table's life.  The second half
runs the engine's CLI on its bridge networks (-p, -P, ranges, port, stop and
start, a taken port, network rm).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import textwrap
import time
from pathlib import Path

import helpers
import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

BB = helpers.BUSYBOX


# ================================================================ helpers
def py(h, code: str, check: bool = True) -> subprocess.CompletedProcess:
    """Python CODE (with firewall, ports, Network imported) in the host namespace."""
    # Network stands in for network/model.Network: the firewall reads bridge, subnet, internal
    prelude = ("from types import SimpleNamespace as Network\n"
               "from nsbox.engine.network import firewall, ports\n")
    return h.run_in(h.host_ns, [str(Path(helpers.REPO_ROOT) / ".venv/bin/python"), "-c",
                                prelude + textwrap.dedent(code)], check=check)


def net_literal(name: str, bridge: str, subnet: str, internal: bool = False) -> str:
    gateway = subnet.rsplit(".", 2)[0] + ".0.1"
    return (f"Network(id={name!r} * 64, name={name!r}, bridge={bridge!r}, subnet={subnet!r}, "
            f"gateway={gateway!r}, internal={internal})")


class FakeContainers:
    """Bridges and container namespaces made by hand in the host namespace."""

    def __init__(self, h) -> None:
        self.h = h
        self.namespaces: list[Path] = []
        self.bridges: list[str] = []
        self.procs: list[subprocess.Popen] = []

    def bridge(self, name: str, subnet: str) -> None:
        gw = subnet.rsplit(".", 2)[0] + ".0.1"
        self.h.sh(f"ip link add {name} type bridge && ip addr add {gw}/16 dev {name} && "
                  f"ip link set {name} up")
        self.bridges.append(name)

    def container(self, name: str, bridge: str, ip: str) -> Path:
        ns = self.h.dir / f"{name}.netns"
        ns.touch()
        subprocess.run(["unshare", f"--net={ns}", "true"], check=True)
        self.namespaces.append(ns)
        gw = ip.rsplit(".", 2)[0] + ".0.1"
        self.h.sh(f"ip link add vt{name} type veth peer name vp{name} && "
                  f"ip link set vp{name} netns {ns} && ip link set vt{name} master {bridge} && "
                  f"ip link set vt{name} up")
        self.sh(ns, f"ip link set lo up && ip link set vp{name} name eth0 && "
                    f"ip addr add {ip}/16 dev eth0 && ip link set eth0 up && "
                    f"ip route add default via {gw}")
        return ns

    def sh(self, ns: Path, cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.h.run_in(ns, ["sh", "-c", cmd], check=check)

    def httpd(self, ns: Path, page: str, port: int = 80) -> None:
        www = self.h.dir / f"www-{ns.stem}-{port}"
        www.mkdir()
        (www / "index.html").write_text(page)
        self.procs.append(subprocess.Popen(["nsenter", f"--net={ns}", BB, "httpd", "-f", "-p",
                                            str(port), "-h", str(www)]))
        time.sleep(0.2)

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        for name in self.bridges:
            self.h.sh(f"ip link del {name}", check=False)
        for ns in self.namespaces:
            subprocess.run(["umount", "-l", str(ns)], check=False)


@pytest.fixture
def fake(net_host):
    f = FakeContainers(net_host)
    try:
        yield f
    finally:
        f.close()


def fetch(h, ns: Path | None, url: str) -> str | None:
    """The page at URL fetched from namespace NS (the host's if None); None on failure."""
    # busybox's wget -T crashes (SIGSEGV) on this busybox: timeout(1) instead
    argv = ["timeout", "3", BB, "wget", "-q", "-O", "-", url]
    result = h.run_in(ns or h.host_ns, argv, check=False, timeout=20)
    return result.stdout if result.returncode == 0 else None


def nft_table(h) -> str | None:
    result = h.sh("nft list table inet nsbox", check=False)
    return result.stdout if result.returncode == 0 else None


# ================================================================ the modules
def test_nat_out_of_a_network(net_host, fake):
    h = net_host
    fake.bridge("nsbtA", "172.31.0.0/16")
    c1 = fake.container("c1", "nsbtA", "172.31.0.2")
    h.sh("sysctl -qw net.ipv4.ip_forward=0")
    assert fetch(h, c1, h.upstream_url) is None  # no forwarding, no NAT
    py(h, f"firewall.ensure_forwarding(); firewall.network_added({net_literal('a', 'nsbtA', '172.31.0.0/16')})")
    assert h.sh("cat /proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    assert fetch(h, c1, h.upstream_url) == h.upstream_page
    # upstream saw the host's address, not the container's (masquerade)
    assert "masquerade" in nft_table(h)


def test_internal_network_reaches_nothing_out(net_host, fake):
    h = net_host
    fake.bridge("nsbtI", "172.33.0.0/16")
    c1 = fake.container("i1", "nsbtI", "172.33.0.2")
    py(h, f"firewall.ensure_forwarding(); firewall.network_added({net_literal('i', 'nsbtI', '172.33.0.0/16', True)})")
    assert fetch(h, c1, h.upstream_url) is None
    # the host itself (the gateway) stays reachable, as on Docker's internal networks
    fake.httpd(h.host_ns, "gw\n", 8081)
    assert fetch(h, c1, "http://172.33.0.1:8081/") == "gw\n"


def test_two_networks_cannot_reach_each_other(net_host, fake):
    h = net_host
    fake.bridge("nsbtA", "172.31.0.0/16")
    fake.bridge("nsbtB", "172.32.0.0/16")
    a1 = fake.container("a1", "nsbtA", "172.31.0.2")
    b1 = fake.container("b1", "nsbtB", "172.32.0.2")
    b2 = fake.container("b2", "nsbtB", "172.32.0.3")
    fake.httpd(b1, "b1\n")
    h.sh("sysctl -qw net.ipv4.ip_forward=1")
    assert fetch(h, a1, "http://172.32.0.2/") == "b1\n"  # routed by the host: no isolation yet
    py(h, f"""
        firewall.network_added({net_literal('a', 'nsbtA', '172.31.0.0/16')})
        firewall.network_added({net_literal('b', 'nsbtB', '172.32.0.0/16')})
    """)
    assert fetch(h, a1, "http://172.32.0.2/") is None
    assert fetch(h, b2, "http://172.32.0.2/") == "b1\n"  # on one network: reachable
    assert fetch(h, a1, h.upstream_url) == h.upstream_page


def test_published_port_dnat(net_host, fake):
    h = net_host
    fake.bridge("nsbtA", "172.31.0.0/16")
    c1 = fake.container("c1", "nsbtA", "172.31.0.2")
    c2 = fake.container("c2", "nsbtA", "172.31.0.3")
    fake.httpd(c1, "published\n")
    urls = [f"http://{h.host_ip}:8080/", "http://127.0.0.1:8080/"]
    assert [fetch(h, None, u) for u in urls] == [None, None]
    py(h, f"""
        firewall.ensure_forwarding()
        firewall.network_added({net_literal('a', 'nsbtA', '172.31.0.0/16')})
        firewall.ports_added('c' * 64, '172.31.0.2', [dict(host_ip='', host_port=8080,
                             container_port=80, proto='tcp')])
    """)
    assert [fetch(h, None, u) for u in urls] == ["published\n", "published\n"]
    assert h.sh("cat /proc/sys/net/ipv4/conf/nsbtA/route_localnet").stdout.strip() == "1"
    # from the upstream side, and from another container through the host's address
    assert fetch(h, h.upstream_ns, urls[0]) == "published\n"
    assert fetch(h, c2, urls[0]) == "published\n"
    # the rules carry the container's id
    assert f'comment "nsbox:{"c" * 64}"' in nft_table(h)
    py(h, "firewall.ports_removed('c' * 64); firewall.ports_removed('c' * 64)")
    assert [fetch(h, None, u) for u in urls] == [None, None]
    assert "pc-cccc" not in nft_table(h)


def test_published_port_on_one_host_address(net_host, fake):
    h = net_host
    fake.bridge("nsbtA", "172.31.0.0/16")
    c1 = fake.container("c1", "nsbtA", "172.31.0.2")
    fake.httpd(c1, "lo only\n")
    py(h, f"""
        firewall.ensure_forwarding()
        firewall.network_added({net_literal('a', 'nsbtA', '172.31.0.0/16')})
        firewall.ports_added('c' * 64, '172.31.0.2', [dict(host_ip='127.0.0.1', host_port=9090,
                             container_port=80, proto='tcp')])
    """)
    assert fetch(h, None, "http://127.0.0.1:9090/") == "lo only\n"
    assert fetch(h, None, f"http://{h.host_ip}:9090/") is None


PORTS_CODE = """
    import types
    from nsbox.engine.model import ContainerSpec
    from nsbox.errors import ConfigError
    engine = types.SimpleNamespace(run_root={run_root!r}, images=None)
    def container(cid, publish, publish_all=False, expose=()):
        spec = ContainerSpec(image='x', publish=ports.parse_publish(publish),
                             publish_all=publish_all, expose=ports.parse_expose(list(expose)))
        return types.SimpleNamespace(id=cid * 64, name='c-' + cid, spec=spec, image_id='',
                                     extra={{'exposed_ports': ['7000/tcp']}})
    firewall.network_added({net})
"""


def test_ports_picked_checked_and_recorded(net_host, fake):
    h = net_host
    fake.bridge("nsbtA", "172.31.0.0/16")
    code = textwrap.dedent(PORTS_CODE.format(run_root=str(h.dir / "run"),
                                             net=net_literal("a", "nsbtA", "172.31.0.0/16")))
    out = py(h, code + textwrap.dedent("""
        import json, socket
        a = container('a', ['8080:80', '80', '127.0.0.1:5353:53/udp', '8000-8002:90-92'])
        got = ports.publish(engine, a, '172.31.0.2')
        print(json.dumps(ports.port_lines(engine, a)))
        # taken by another nsbox container, in a range and picked: errors / other ports
        b = container('b', ['8080:80'])
        try:
            ports.publish(engine, b, '172.31.0.3')
        except ConfigError as exc:
            print('B:', exc)
        c = container('c', ['8080-8081:80'], publish_all=True, expose=['7001'])
        print('C:', json.dumps(ports.publish(engine, c, '172.31.0.4')))
        # taken by a process of the host (TCP, then UDP)
        s = socket.socket(); s.bind(('0.0.0.0', 8500)); s.listen()
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('0.0.0.0', 8501))
        for spec in (['9000:80', '8500:80'], ['8501:53/udp']):
            try:
                ports.publish(engine, container('d', spec), '172.31.0.5')
            except ConfigError as exc:
                print('D:', exc)
        print('D ports:', ports.current(engine, 'd' * 64))
        print(json.dumps(sorted(f'{p}/{proto}' for (p, proto) in firewall.published())))
        ports.unpublish(engine, a.id); ports.unpublish(engine, a.id)
        print(ports.current(engine, a.id))
    """)).stdout.splitlines()
    lines = json.loads(out[0])
    assert lines["80/tcp"][0] == "0.0.0.0:8080"
    assert len(lines["80/tcp"]) == 2 and lines["80/tcp"][1] != "0.0.0.0:8080"
    assert lines["53/udp"] == ["127.0.0.1:5353"]
    assert [lines[f"{p}/tcp"] for p in (90, 91, 92)] == [["0.0.0.0:8000"], ["0.0.0.0:8001"],
                                                          ["0.0.0.0:8002"]]
    assert out[1] == "B: cannot start container c-b: Bind for 0.0.0.0:8080 failed: " \
        "port is already allocated"
    picked = json.loads(out[2].removeprefix("C: "))
    assert picked[0]["host_port"] == 8081 and picked[0]["container_port"] == 80
    assert {m["container_port"] for m in picked} == {80, 7000, 7001}  # -P: image's + --expose
    assert out[3] == "D: cannot start container c-d: cannot publish 0.0.0.0:8500/tcp: " \
        "listen tcp4 0.0.0.0:8500: bind: address already in use"
    assert out[4].startswith("D: cannot start container c-d: cannot publish 0.0.0.0:8501/udp")
    assert out[5] == "D ports: []"
    taken = json.loads(out[6])
    assert "9000/tcp" not in taken and "8500/tcp" not in taken  # nothing of d was left
    assert "8080/tcp" in taken and "5353/udp" in taken
    assert out[7] == "[]"


def test_table_goes_with_the_last_network(net_host):
    h = net_host
    a, b = net_literal("a", "nsbtA", "172.31.0.0/16"), net_literal("b", "nsbtB", "172.32.0.0/16")
    py(h, f"firewall.network_added({a}); firewall.network_added({b})")
    # a table of someone else's stays as it is
    h.sh("nft add table inet other && nft add chain inet other c && nft add rule inet other c accept")
    py(h, f"firewall.network_removed({b})")
    table = nft_table(h)
    assert table is not None and "nsbtB" not in table and "nsbtA" in table
    py(h, f"firewall.network_removed({a}); firewall.network_removed({a})")
    assert nft_table(h) is None
    assert "accept" in h.sh("nft list table inet other").stdout
    # with the caller's list of the networks left
    py(h, f"firewall.network_added({a}); firewall.network_added({b}); "
          f"firewall.network_removed({a}, remaining=[])")
    assert nft_table(h) is None


# ================================================================ the engine
def _engine_has_bridge(h) -> bool:
    return h.nsbox("network", "ls", check=False).returncode == 0


@pytest.fixture
def engine_host(net_host):
    if not _engine_has_bridge(net_host):
        pytest.fail("the engine has no bridge networks (`nsbox network ls` failed)")
    return net_host


def _httpd(h, *flags: str, name: str = "web") -> subprocess.CompletedProcess:
    return h.nsbox("run", "-d", "--name", name, *flags, "busybox", "sh", "-c",
                   "mkdir -p /www && echo hello-$HOSTNAME > /www/index.html && "
                   "exec httpd -f -p 80 -h /www", check=False)


def _wait_fetch(h, url: str, want_ok: bool = True, timeout: float = 10.0) -> str | None:
    deadline = time.monotonic() + timeout
    while True:
        page = fetch(h, None, url)
        if (page is not None) == want_ok or time.monotonic() > deadline:
            return page
        time.sleep(0.2)


def test_engine_container_reaches_upstream(engine_host):
    h = engine_host
    out = h.nsbox("run", "--rm", "busybox", "wget", "-q", "-O", "-", h.upstream_url)
    assert out.stdout == h.upstream_page
    h.nsbox("network", "create", "--internal", "closed")
    out = h.nsbox("run", "--rm", "--network", "closed", "busybox", "sh", "-c",
                  f"timeout 3 wget -q -O - {h.upstream_url}; echo rc=$?")
    assert out.stdout.strip().splitlines()[-1] != "rc=0"


def test_engine_publish_stop_start(engine_host):
    h = engine_host
    assert _httpd(h, "-p", "8080:80", "--hostname", "w1").returncode == 0
    for url in (f"http://{h.host_ip}:8080/", "http://127.0.0.1:8080/"):
        assert _wait_fetch(h, url) == "hello-w1\n"
    assert h.nsbox("port", "web").stdout == "80/tcp -> 0.0.0.0:8080\n"
    assert h.nsbox("port", "web", "80").stdout == "0.0.0.0:8080\n"
    assert h.nsbox("ps", "--format", "{{.Ports}}").stdout == "0.0.0.0:8080->80/tcp\n"
    out = h.nsbox("port", "web", "81", check=False)
    assert out.returncode == 1 and "No public port '81/tcp' published" in out.stderr
    info = json.loads(h.nsbox("inspect", "web").stdout)[0]
    assert info["HostConfig"]["PortBindings"] == {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}
    assert info["NetworkSettings"]["Ports"] == {"80/tcp": [{"HostIp": "0.0.0.0",
                                                            "HostPort": "8080"}]}
    h.nsbox("stop", "-t", "1", "web")
    assert fetch(h, None, f"http://{h.host_ip}:8080/") is None
    assert "pc-" not in (nft_table(h) or "")
    assert h.nsbox("port", "web").stdout == ""
    h.nsbox("start", "web")
    assert _wait_fetch(h, f"http://{h.host_ip}:8080/") == "hello-w1\n"
    h.nsbox("rm", "-f", "web")
    assert "pc-" not in (nft_table(h) or "")


def test_engine_free_port_ranges_and_publish_all(engine_host):
    h = engine_host
    assert _httpd(h, "-p", "80", name="any").returncode == 0
    line = h.nsbox("port", "any", "80/tcp").stdout.strip()
    host_port = int(line.rpartition(":")[2])
    assert _wait_fetch(h, f"http://127.0.0.1:{host_port}/") is not None
    assert _httpd(h, "-p", "8000-8001:80-81", "--expose", "90", "-P", name="rng").returncode == 0
    lines = h.nsbox("port", "rng").stdout.splitlines()
    assert "80/tcp -> 0.0.0.0:8000" in lines and "81/tcp -> 0.0.0.0:8001" in lines
    assert any(line.startswith("90/tcp -> 0.0.0.0:") for line in lines)
    assert _wait_fetch(h, f"http://{h.host_ip}:8000/") is not None


def test_engine_taken_port_is_an_error(engine_host):
    h = engine_host
    assert _httpd(h, "-p", "8080:80", name="first").returncode == 0
    before = nft_table(h)
    out = _httpd(h, "-p", "8080:80", "-p", "8090:80", name="second")
    assert out.returncode == 125
    assert out.stderr.strip().count("\n") == 0 and "port is already allocated" in out.stderr
    assert nft_table(h) == before  # nothing of the second one (8090) is left
    # a port a host process listens on
    listener = subprocess.Popen(["nsenter", f"--net={h.host_ns}", BB, "nc", "-l", "-p", "8500"])
    try:
        time.sleep(0.3)
        out = _httpd(h, "-p", "8500:80", name="third")
        assert out.returncode == 125 and "address already in use" in out.stderr
    finally:
        listener.kill()
        listener.wait()
    # As a port, not inside a container id of a rule's comment (hex ids contain digits).
    assert not re.search(r"\b8500\b", nft_table(h) or "")


def test_engine_publish_conflicts_with_network_modes(engine_host):
    h = engine_host
    out = h.nsbox("create", "--network", "none", "-p", "80", "busybox", check=False)
    assert out.returncode == 125 and "Conflicting options" in out.stderr
    out = h.nsbox("create", "--network", "host", "-p", "80", "busybox", check=False)
    assert out.returncode == 0 and "discarded" in out.stderr


def test_engine_networks_isolated_and_table_removed(engine_host):
    h = engine_host
    h.nsbox("network", "create", "left")
    h.nsbox("network", "create", "right")
    assert _httpd(h, "--network", "right", name="r").returncode == 0
    ip = json.loads(h.nsbox("inspect", "r").stdout)[0]["NetworkSettings"]["Networks"][
        "right"]["IPAddress"]
    # (timeout as PID 1 could not kill wget: sh stays the container's init)
    out = h.nsbox("run", "--rm", "--network", "left", "busybox", "sh", "-c",
                  f"timeout 3 wget -q -O - http://{ip}/; echo rc=$?")
    assert out.stdout.strip().splitlines()[-1] != "rc=0"
    out = h.nsbox("run", "--rm", "--network", "right", "busybox", "wget", "-q", "-O",
                  "-", f"http://{ip}/")
    assert out.stdout.startswith("hello-")
    h.nsbox("rm", "-f", "r")
    with contextlib.suppress(Exception):
        h.nsbox("network", "prune", "-f")
    for name in ("left", "right"):
        h.nsbox("network", "rm", name, check=False)
    assert nft_table(h) is None  # the default network was never brought up here
