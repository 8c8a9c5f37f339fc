"""The network test harness itself (tests/nethost.py): the upstream namespace is
reachable from the host namespace, the engine runs in there, the fake resolver
answers, and cleanup leaves nothing on the real host and reports what the engine
would have left."""

from __future__ import annotations

import os
import subprocess

import helpers
import host_state
import nethost
import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def test_upstream_page_reachable_from_the_host_namespace(net_host):
    page = net_host.sh(f"{helpers.BUSYBOX} wget -q -O - {net_host.upstream_url}").stdout
    assert page == nethost.UPSTREAM_PAGE
    routes = net_host.sh("ip route").stdout
    assert f"default via {nethost.UPSTREAM_IP} dev eth0" in routes, routes
    assert f"inet {nethost.HOST_IP}/24" in net_host.sh("ip -o addr show eth0").stdout
    # The real host's network is another one.
    assert os.stat(net_host.host_ns).st_ino != os.stat("/proc/self/ns/net").st_ino
    assert nethost.HOST_IP not in subprocess.run(["ip", "-o", "addr"], capture_output=True,
                                                 text=True).stdout


def test_engine_runs_inside_the_host_namespace(net_host):
    # Its overlay mount and runtime work under nsenter (the mount namespace is ours).
    out = net_host.nsbox("run", "--rm", "--network", "none", "busybox", "echo", "inside")
    assert out.stdout == "inside\n"
    cid = net_host.nsbox("run", "-d", "--network", "none", "busybox", "sleep", "60"
                         ).stdout.strip()
    assert net_host.nsbox("exec", cid, "echo", "again").stdout == "again\n"
    # The monitor runs in the host namespace; the cleanup's rm -f must end it.
    assert net_host.host_pids()


def test_fake_resolver_answers_for_the_host_nameservers(net_host):
    addresses = net_host.start_resolver({"outside.example": "198.51.100.7"},
                                        addresses=["198.51.100.53"])
    assert addresses == ["198.51.100.53"]
    out = net_host.sh(f"{helpers.BUSYBOX} nslookup outside.example 198.51.100.53").stdout
    assert "198.51.100.7" in out, out
    missing = net_host.sh(f"{helpers.BUSYBOX} nslookup nowhere.example 198.51.100.53",
                          check=False)
    assert "198.51.100.7" not in missing.stdout and missing.returncode != 0, missing


def test_cleanup_removes_everything_and_reports_engine_leftovers(tmp_path):
    links_before = host_state.links()
    host = nethost.NetHost(tmp_path / "nh", strict=True).start()
    ns_files = [host.host_ns, host.upstream_ns]
    # What an engine bug would leave: a veth pair named like the engine's and a process.
    host.sh("ip link add vnbdeadbeef00 type veth peer name nsbox9")
    sleeper = subprocess.Popen(["nsenter", f"--net={host.host_ns}", "sleep", "300"])
    try:
        problems = host.close()
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
        sleeper.wait()
    text = "; ".join(problems)
    assert "vnbdeadbeef00" in text and "nsbox9" in text, text
    assert "sleep" in text, text
    assert sleeper.returncode == -9  # killed by the cleanup
    assert not any(os.path.ismount(p) for p in ns_files)
    assert not (tmp_path / "nh").exists()
    assert host_state.links() == links_before
    assert not os.path.exists("/run/netns") or "nsbt" not in " ".join(os.listdir("/run/netns"))


def test_clean_engine_gives_no_problems(tmp_path):
    with nethost.net_host(tmp_path / "nh") as host:
        host.nsbox("run", "--rm", "--network", "none", "busybox", "true")
    assert not (tmp_path / "nh").exists()
