"""Name resolution on user-defined networks (nsbox/engine/network/dns.py, aardvark-dns).

Two layers, both inside the nethost harness's network namespaces (never the
real host's):

- dns.py on its own: bridges and client namespaces made here by hand stand for
  networks and containers; dns.py runs in the harness's "host" namespace (a
  python child entered with nsenter) and busybox nslookup asks from the
  clients' namespaces.
- end to end through the engine: `nsbox network create`, `run --network`,
  `--network-alias`, resolving and connecting by name, `network rm`.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import helpers
import nethost
import pytest

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="needs root"), pytest.mark.slow]

BUSYBOX = helpers.BUSYBOX
PYTHON = nethost.PYTHON
OUTSIDE_NAME, OUTSIDE_IP = "outside.example", "198.51.100.7"

# Runs one dns.py function in the calling namespace: argv[1] is JSON
# {"run_root": ..., "calls": [[func, net|None, args...], ...]}; prints JSON results.
DRIVER = r"""
import json, sys, types
from nsbox.engine.network import dns
req = json.loads(sys.argv[1])
out = []
for func, net, *args in req["calls"]:
    net = types.SimpleNamespace(**net) if net is not None else None
    fn = getattr(dns, func)
    res = fn(*([net] if func == "server_for" else [req["run_root"]] + ([net] if net else [])),
             *args)
    out.append(res)
print(json.dumps(out))
"""


@pytest.fixture
def aardvark() -> str:
    from nsbox.engine.network import dns

    found = dns.binary()
    if found is None:
        helpers.skip_or_fail("aardvark-dns is not installed (scripts/apt-packages.txt)")
    return found


class Lab:
    """Hand-made networks and "containers" (netns + veth) in the harness's host ns."""

    def __init__(self, host: nethost.NetHost, tmp: Path) -> None:
        self.host = host
        self.tmp = tmp
        self.run_root = str(tmp / "run")
        self.clients: dict[str, Path] = {}
        self.networks: list[dict] = []

    def network(self, name: str, bridge: str, subnet3: str) -> dict:
        self.host.sh(f"ip link add {bridge} type bridge && ip addr add {subnet3}.1/24 dev"
                     f" {bridge} && ip link set {bridge} up")
        self.networks.append({"name": name, "gateway": f"{subnet3}.1", "driver": "bridge"})
        return self.networks[-1]

    def client(self, name: str, bridge: str, ip: str, gateway: str) -> Path:
        ns = self.tmp / f"{name}.netns"
        ns.touch()
        subprocess.run(["unshare", f"--net={ns}", "true"], check=True)
        self.clients[name] = ns
        peer = f"tdp{len(self.clients)}"
        self.host.sh(f"ip link add tdv{len(self.clients)} type veth peer name {peer} &&"
                     f" ip link set {peer} netns {ns} && ip link set tdv{len(self.clients)}"
                     f" master {bridge} up")
        self.inside(name, f"ip link set lo up && ip link set {peer} name eth0 &&"
                          f" ip addr add {ip}/24 dev eth0 && ip link set eth0 up &&"
                          f" ip route add default via {gateway}")
        return ns

    def inside(self, client: str, cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return helpers.run_cli(["nsenter", f"--net={self.clients[client]}", "sh", "-c"], cmd,
                               check=check, timeout=30)

    def lookup(self, client: str, name: str, server: str) -> str | None:
        """The A record CLIENT gets for NAME from SERVER, or None (NXDOMAIN etc.)."""
        out = self.inside(client, f"timeout 10 {BUSYBOX} nslookup -type=a {name} {server}",
                          check=False).stdout
        answer = out.split("answer:", 1)[1] if "answer:" in out else ""
        for line in answer.splitlines():
            if line.startswith("Address:"):
                return line.split()[1]
        return None

    def dns(self, *calls: list) -> list:
        req = json.dumps({"run_root": self.run_root, "calls": list(calls)})
        out = self.host.run_in(self.host.host_ns, [PYTHON, "-c", DRIVER, req], timeout=60)
        return json.loads(out.stdout)

    def close(self) -> None:
        if self.networks:  # the server goes with the last network
            self.dns(*(["network_removed", net] for net in self.networks))
        for ns in self.clients.values():
            for pid in nethost.pids_in_netns(ns):
                os.kill(pid, 9)
            subprocess.run(["umount", "-l", str(ns)], check=False)

    def aardvark_pids(self) -> list[int]:
        return [pid for pid in self.host.host_pids() if nethost._comm(pid) == "aardvark-dns"]


@pytest.fixture
def lab(net_host, tmp_path, aardvark):
    lab = Lab(net_host, tmp_path / "lab")
    (tmp_path / "lab").mkdir()
    yield lab
    lab.close()


CID1, CID2, CID3 = ("a1" * 32), ("b2" * 32), ("c3" * 32)


def _three_containers(lab: Lab) -> tuple[dict, dict]:
    net1 = lab.network("front", "tdbr1", "10.210.1")
    net2 = lab.network("back", "tdbr2", "10.210.2")
    lab.client("c1", "tdbr1", "10.210.1.2", "10.210.1.1")
    lab.client("c2", "tdbr1", "10.210.1.3", "10.210.1.1")
    lab.client("c3", "tdbr2", "10.210.2.2", "10.210.2.1")
    lab.dns(["container_attached", net1, CID1, "web", ["www", "Frontend"], "10.210.1.2"],
            ["container_attached", net1, CID2, "db", [], "10.210.1.3"],
            ["container_attached", net2, CID3, "other", [], "10.210.2.2"])
    return net1, net2


# ------------------------------------------------------------------ dns.py alone
def test_names_resolve_on_their_network_only(lab):
    net1, net2 = _three_containers(lab)
    gw1, gw2 = net1["gateway"], net2["gateway"]
    assert lab.lookup("c2", "web", gw1) == "10.210.1.2"
    assert lab.lookup("c2", "www", gw1) == "10.210.1.2"
    assert lab.lookup("c2", "frontend", gw1) == "10.210.1.2"       # aliases are case-blind
    assert lab.lookup("c1", "db", gw1) == "10.210.1.3"
    assert lab.lookup("c1", CID2[:12], gw1) == "10.210.1.3"        # the short id
    assert lab.lookup("c3", "other", gw2) == "10.210.2.2"
    # Names of the other network do not resolve through this network's server.
    assert lab.lookup("c1", "other", gw1) is None
    assert lab.lookup("c3", "web", gw2) is None
    assert lab.lookup("c3", "db", gw2) is None
    # Podman's file format, one file per network.
    cfg = Path(lab.run_root) / "networks" / "aardvark"
    assert sorted(os.listdir(cfg)) == ["aardvark.pid", "back", "front"]
    assert (cfg / "front").read_text().splitlines() == [
        "10.210.1.1",
        f"{CID1} 10.210.1.2  web,{CID1[:12]},www,frontend",
        f"{CID2} 10.210.1.3  db,{CID2[:12]}"]
    assert len(lab.aardvark_pids()) == 1                           # one server for all


def test_detach_reload_and_stop_with_the_last_container(lab):
    net1, net2 = _three_containers(lab)
    gw1 = net1["gateway"]
    [pid] = lab.aardvark_pids()
    lab.dns(["container_detached", net1, CID2])
    assert lab.lookup("c1", "db", gw1) is None                     # reloaded (SIGHUP)
    assert lab.lookup("c2", "web", gw1) == "10.210.1.2"
    assert lab.aardvark_pids() == [pid]
    lab.dns(["container_detached", net1, CID2])                    # idempotent
    lab.dns(["container_detached", net1, CID1])
    cfg = Path(lab.run_root) / "networks" / "aardvark"
    assert sorted(os.listdir(cfg)) == ["aardvark.pid", "back"]
    assert "10.210.1.1:53" not in lab.host.sh("ss -lun").stdout    # no longer listening
    lab.dns(["container_detached", net2, CID3])
    assert lab.aardvark_pids() == []
    assert os.listdir(cfg) == []


def test_network_removed_stops_the_server(lab):
    net1, net2 = _three_containers(lab)
    lab.dns(["network_removed", net1])
    assert lab.lookup("c3", "other", net2["gateway"]) == "10.210.2.2"
    lab.dns(["network_removed", net2])
    assert lab.aardvark_pids() == []
    assert os.listdir(Path(lab.run_root) / "networks" / "aardvark") == []


def test_stale_pid_file_and_crashed_server_recover(lab):
    net1, _ = _three_containers(lab)
    [pid] = lab.aardvark_pids()
    os.kill(pid, 9)
    deadline = time.monotonic() + 5
    while lab.aardvark_pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    pid_file = Path(lab.run_root) / "networks" / "aardvark" / "aardvark.pid"
    assert pid_file.exists()                                       # left by the crash
    sleeper = subprocess.Popen(["sleep", "60"])                    # a pid that is not aardvark
    try:
        pid_file.write_text(f"{sleeper.pid}\n")
        # The next change notices and starts a new server with every network's names.
        lab.dns(["container_attached", net1, "d4" * 32, "cache", [], "10.210.1.4"])
        assert sleeper.poll() is None                              # never signalled
    finally:
        sleeper.kill()
        sleeper.wait()
    assert len(lab.aardvark_pids()) == 1
    assert lab.lookup("c1", "cache", net1["gateway"]) == "10.210.1.4"
    assert lab.lookup("c1", "db", net1["gateway"]) == "10.210.1.3"
    lab.dns(["container_removed", None, CID1], ["container_removed", None, CID2],
            ["container_removed", None, CID3], ["container_removed", None, "d4" * 32])
    assert lab.aardvark_pids() == []


def test_default_bridge_has_no_dns(lab):
    net = lab.network("bridge", "tdbr0", "10.210.9")
    lab.client("c1", "tdbr0", "10.210.9.2", "10.210.9.1")
    assert lab.dns(["server_for", net], ["server_for", {**net, "name": "user"}]) == \
        [None, "10.210.9.1"]
    lab.dns(["container_attached", net, CID1, "web", [], "10.210.9.2"])
    assert lab.aardvark_pids() == []
    assert not (Path(lab.run_root) / "networks" / "aardvark" / "bridge").exists()


def test_other_names_are_forwarded_to_the_hosts_resolvers(lab):
    # aardvark-dns forwards what it does not know to the nameservers of the
    # engine's /etc/resolv.conf; in the harness those addresses lead to the
    # upstream namespace, where a fake resolver answers.
    lab.host.start_resolver({OUTSIDE_NAME: OUTSIDE_IP})
    net1, _ = _three_containers(lab)
    assert lab.lookup("c1", OUTSIDE_NAME, net1["gateway"]) == OUTSIDE_IP
    assert lab.lookup("c1", "unknown.example", net1["gateway"]) is None


# ------------------------------------------------------------------ end to end
def _aardvarks(host: nethost.NetHost) -> list[int]:
    return [pid for pid in host.host_pids() if nethost._comm(pid) == "aardvark-dns"]


def _retry(host: nethost.NetHost, *args: str, tries: int = 20) -> str:
    """`nsbox ARGS` until it exits 0 (a server just started may miss the first query)."""
    for _ in range(tries):
        proc = host.nsbox(*args, check=False)
        if proc.returncode == 0:
            return proc.stdout
        time.sleep(0.2)
    raise AssertionError(f"nsbox {' '.join(args)} -> {proc.returncode}\n{proc.stdout}"
                         f"\n{proc.stderr}")


def test_engine_containers_resolve_and_connect_by_name_and_alias(net_host, aardvark):
    h = net_host
    h.start_resolver({OUTSIDE_NAME: OUTSIDE_IP})
    h.nsbox("network", "create", "front")
    h.nsbox("network", "create", "back")
    web = h.nsbox("run", "-d", "--name", "web", "--network", "front", "--network-alias",
                  "www", "busybox", "nc", "-ll", "-p", "8080", "-e", "echo", "hello-from-web"
                  ).stdout.strip()
    h.nsbox("run", "-d", "--name", "idle", "--network", "back", "busybox", "sleep", "600")
    web_ip = json.loads(h.nsbox("inspect", web).stdout)[0]["NetworkSettings"]["Networks"][
        "front"]["IPAddress"]
    gateway = json.loads(h.nsbox("network", "inspect", "front").stdout)[0]["IPAM"]["Config"][
        0]["Gateway"]
    client = ["run", "--rm", "--network", "front", "busybox", "sh", "-c"]
    resolv = h.nsbox(*client, "cat /etc/resolv.conf").stdout
    assert f"nameserver {gateway}" in resolv, resolv
    for name in ("web", "www", web[:12]):
        out = _retry(h, *client, f"nslookup -type=a {name} && nc {name} 8080 </dev/null")
        assert web_ip in out and "hello-from-web" in out, (name, out)
    # Outside names are forwarded to the engine's (here: the fake upstream) resolvers.
    out = _retry(h, *client, f"nslookup -type=a {OUTSIDE_NAME}")
    assert OUTSIDE_IP in out, out
    # From another network the names are unknown; its own container's name resolves.
    other = h.nsbox("run", "--rm", "--network", "back", "busybox", "sh", "-c",
                    "nslookup -type=a web; nslookup -type=a www; nslookup -type=a idle",
                    check=False).stdout
    assert web_ip not in other and other.count("NXDOMAIN") == 2, other
    # The default bridge has no container DNS: the host's resolvers, not a gateway.
    resolv = h.nsbox("run", "--rm", "busybox", "cat", "/etc/resolv.conf").stdout
    assert gateway not in resolv and "nameserver" in resolv, resolv
    assert len(_aardvarks(h)) == 1


def test_network_rm_leaves_no_aardvark(net_host, aardvark):
    h = net_host
    h.nsbox("network", "create", "solo")
    cid = h.nsbox("run", "-d", "--network", "solo", "--name", "lonely", "busybox",
                  "sleep", "600").stdout.strip()
    assert len(_aardvarks(h)) == 1
    h.nsbox("rm", "-f", cid)
    h.nsbox("network", "rm", "solo")
    deadline = time.monotonic() + 5
    while _aardvarks(h) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _aardvarks(h) == []
    cfg = h.runroot / "networks" / "aardvark"
    assert not cfg.exists() or os.listdir(cfg) == []
