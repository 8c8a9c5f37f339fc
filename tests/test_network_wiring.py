"""The wiring child (nsbox/engine/network/wiring.py): a bridge container's namespace and
veths are made by a child process alongside create/start and joined before the
container's process runs; a failed wiring fails the start with one line and is tried
again by the next start; removal is by the namespace.

In the nethost namespaces (tests/nethost.py), never the real host's.
"""

from __future__ import annotations

import json
import os

import pytest
from test_network_core import assert_nothing_left, leases, netns_files, one_line_error

pytestmark = pytest.mark.slow


def test_interfaces_are_up_before_the_process_runs(net_host) -> None:
    h = net_host
    # The first thing the container does sees its address and route: no waiting inside.
    for _ in range(5):
        out = h.nsbox("run", "--rm", "busybox", "sh", "-c",
                      "ip -4 -o addr show eth0; ip route show default").stdout
        assert " 172.30.0." in out and "default via 172.30.0.1" in out, out
    # `create` alone joins the child before it returns: the namespace is ready then
    cid = h.nsbox("create", "--name", "made", "busybox", "ip", "-4", "-o", "addr",
                  "show", "eth0").stdout.strip()
    assert (h.runroot / "wiring" / cid).read_text().strip() == "ok"
    assert "172.30.0." in h.nsbox("start", "-a", "made").stdout
    assert "172.30.0." in h.nsbox("start", "-a", "made").stdout  # and again, same namespace
    h.nsbox("rm", "made")
    assert not (h.runroot / "wiring" / cid).exists()
    assert_nothing_left(h)


def test_a_failed_wiring_fails_the_start_and_the_next_start_tries_again(net_host) -> None:
    h = net_host
    h.nsbox("run", "--rm", "--network", "none", "busybox", "true")  # the image, quietly
    # The default network's bridge name taken by a link that cannot be a master.
    h.sh("ip link add nsbox0 type veth peer name nsbx0peer")
    one_line_error(h.nsbox("run", "--rm", "busybox", "true", check=False))
    one_line_error(h.nsbox("create", "busybox", "true", check=False))
    assert h.nsbox("ps", "-a", "-q").stdout.split() == []
    assert leases(h) == [] and netns_files(h) == []
    # run -d: the container stays created (as Docker's after a failed start)
    err = one_line_error(h.nsbox("run", "-d", "--name", "later", "busybox", "sleep", "100",
                                 check=False))
    assert "nsbox0" in err or "vnb" in err, err
    state = json.loads(h.nsbox("inspect", "later").stdout)[0]["State"]
    assert state["Status"] == "created"
    one_line_error(h.nsbox("start", "later", check=False))  # still broken: same error
    h.sh("ip link del nsbox0")
    h.nsbox("start", "later")
    out = h.nsbox("exec", "later", "ip", "-4", "-o", "addr", "show", "eth0").stdout
    assert "172.30.0." in out, out
    h.nsbox("rm", "-f", "later")
    assert_nothing_left(h)
    assert not os.listdir(h.runroot / "wiring")


@pytest.mark.parametrize("cleanup", [("rm", "-f", "crashed"), ("container", "prune", "-f")])
def test_crash_between_lease_and_namespace_is_cleaned(net_host, cleanup) -> None:
    """The lease is recorded before the namespace file exists: a kill -9 in between
    leaves only the lease, which the removal of the dead create takes back."""
    h = net_host
    crashed = h.nsbox("run", "-d", "--name", "crashed", "busybox", "sleep", "100",
                      env={"NSBOX_TEST_CRASHPOINT": "network.after_lease"}, check=False)
    assert crashed.returncode in (-9, 137), crashed
    assert leases(h) and netns_files(h) == []
    h.nsbox(*cleanup)
    assert_nothing_left(h)


def test_rootless_bridges_refuse_a_threaded_program(tmp_path):
    # usernet.enter() moves the process with setns(2), which moves one thread only.
    import threading

    from nsbox.engine.network import usernet
    from nsbox.engine.network.model import NetworkError

    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()
    try:
        with pytest.raises(NetworkError, match="threads"):
            usernet.enter(str(tmp_path))
        assert not usernet.entered()
        assert not os.listdir(tmp_path)  # nothing made
    finally:
        stop.set()
        worker.join()
