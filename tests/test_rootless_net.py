"""Rootless networking: slirp4netns (and pasta where passt is installed) for an
unprivileged user these tests create, published ports across stop and start,
taken ports refused leaving nothing, and a clear error without /dev/net/tun
access.  The user comes from tests/rootless_user.py, as in test_rootless.py.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import threading
import time
from pathlib import Path

import pytest
from host_features import char_device_missing
from rootless_user import NEEDS_USER, user_fixtures

USER = "nsbox-rootless-n"
TUN = "/dev/net/tun"

pytestmark = NEEDS_USER
user, clean = user_fixtures(USER)


@pytest.fixture
def tun_for_users():
    """/dev/net/tun as Debian's udev leaves it (0666); this VM has no udev and keeps 0600."""
    missing = char_device_missing(TUN)
    if missing:
        pytest.skip(f"slirp4netns needs {TUN}: {missing}")
    before = stat.S_IMODE(os.stat(TUN).st_mode)
    os.chmod(TUN, 0o666)
    yield
    os.chmod(TUN, before)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _serve_once(sock: socket.socket) -> None:
    sock.settimeout(30)
    try:
        conn, _ = sock.accept()
        conn.sendall(b"hello from the host\n")
        conn.close()
    except OSError:
        pass


def test_slirp4netns_network(clean, tun_for_users):
    if not shutil.which("slirp4netns"):
        pytest.skip("slirp4netns is not installed")
    proc = clean.run("run", "--rm", "busybox", "sh", "-c",
                     "ip -4 addr show tap0 | grep -o 'inet [0-9.]*'; ip route; cat /etc/resolv.conf")
    assert "inet 10.0.2.100" in proc.stdout
    assert "default via 10.0.2.2" in proc.stdout
    assert "nameserver 10.0.2.3" in proc.stdout
    assert "network: slirp4netns" in clean.run("info").stdout
    # The host's loopback (a listener of this test) only with allow_host_loopback=true.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    server = threading.Thread(target=_serve_once, args=(listener,), daemon=True)
    server.start()
    try:
        refused = clean.run("run", "--rm", "busybox", "sh", "-c", f"nc -w 3 10.0.2.2 {port}",
                            check=False)
        assert refused.returncode != 0 and "hello" not in refused.stdout
        allowed = clean.run("run", "--rm", "--network", "slirp4netns:allow_host_loopback=true",
                            "busybox", "sh", "-c", f"nc -w 3 10.0.2.2 {port}")
        assert allowed.stdout == "hello from the host\n"
    finally:
        listener.close()
    # In the foreground too (slirp4netns set up before the runtime's `run`).
    proc = clean.run("run", "-i", "--rm", "busybox", "sh", "-c", "read x; ip -o link | grep -c tap0",
                     input="go\n")
    assert proc.stdout == "1\n"
    # Nothing of slirp4netns outlives its containers, not even a zombie.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(
            _comm(pid) == "slirp4netns" for pid in clean.processes()):
        time.sleep(0.1)
    assert not [pid for pid in clean.processes() if _comm(pid) == "slirp4netns"]


def test_slirp4netns_without_tun_access_says_why(clean):
    if not os.path.exists(TUN):
        pytest.skip(f"{TUN} does not exist on this host")
    if stat.S_IMODE(os.stat(TUN).st_mode) & 0o006 == 0o006:
        pytest.skip(f"{TUN} is usable by everyone on this host")
    proc = clean.run("run", "--rm", "--network", "slirp4netns", "busybox", "true", check=False)
    assert proc.returncode == 125
    assert TUN in proc.stderr and "0600" in proc.stderr
    # The default network then is loopback only, and still runs.
    proc = clean.run("run", "--rm", "busybox", "sh", "-c", "ip -o link | grep -c ': lo'")
    assert proc.stdout == "1\n"
    # But ports cannot be published there: a clear refusal, not a silent no-op.
    proc = clean.run("run", "-d", "--name", "nopub", "-p", "18081:80", "busybox", "sleep", "5",
                     check=False)
    assert proc.returncode == 125
    assert "cannot publish ports" in proc.stderr and TUN in proc.stderr
    assert clean.run("ps", "-a", "-q").stdout == ""

def _host_address() -> str | None:
    """A non-loopback address of the host (the source of its default route), if any."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") else address


def test_user_defined_networks_rootless(clean, tun_for_users):
    """A rootless user's bridge networks live in a network namespace of the user's own
    (usernet.py), with slirp4netns in front of it: containers on a user network reach
    each other by name, reach the host through NAT, publish ports across stop and
    start, and when the last one is gone so are the namespace and its slirp4netns."""
    if not shutil.which("slirp4netns"):
        pytest.skip("slirp4netns is not installed")
    from nsbox.engine.network import dns
    if dns.binary() is None:
        pytest.skip("aardvark-dns is not installed")
    run_root = Path(f"/tmp/nsbox-run-{clean.uid}")
    assert "bridge networks in the user's own network namespace" in clean.run("info").stdout
    clean.run("network", "create", "front")
    clean.run("network", "create", "back")
    assert {"front", "back"} <= set(clean.run("network", "ls", "--format", "{{.Name}}")
                                    .stdout.split())
    clean.run("run", "-d", "--name", "web", "--network", "front", "busybox", "sh", "-c",
              "mkdir /w && echo hello from web > /w/index.html && exec httpd -f -p 80 -h /w")
    subnet = json.loads(clean.run("network", "inspect", "front").stdout)[0]["IPAM"]["Config"][0]
    address = clean.run("inspect", "-f",
                        "{{.NetworkSettings.Networks.front.IPAddress}}", "web").stdout.strip()
    assert address.split(".")[:2] == subnet["Subnet"].split(".")[:2], (address, subnet)
    page = clean.run("run", "--rm", "--network", "front", "busybox", "sh", "-c",
                     "for i in 1 2 3 4 5 6 7 8 9 10; do wget -qO- http://web/ && exit; "
                     "sleep 0.3; done; exit 1").stdout
    assert page == "hello from web\n"
    other = clean.run("run", "--rm", "--network", "back", "busybox", "nslookup", "web",
                      check=False)
    assert "hello" not in other.stdout and other.returncode != 0  # another network's name
    host = _host_address()
    if host is not None:  # out through slirp4netns to the host's own address
        server = socket.socket()
        server.bind((host, 0))
        server.listen()
        threading.Thread(target=_serve_once, args=(server,), daemon=True).start()
        try:
            out = clean.run("run", "--rm", "--network", "front", "busybox", "nc", "-w", "5",
                            host, str(server.getsockname()[1]))
        finally:
            server.close()
        assert out.stdout == "hello from the host\n"
    # A published port: the host's slirp4netns listens, a DNAT in the user's namespace
    # takes it on to the container; gone with the container's stop.
    port = _free_port(18082)
    clean.run("run", "-d", "--name", "pub", "--network", "front", "-p", f"{port}:80",
              "busybox", "sh", "-c", _WEB)
    assert _fetch(port).startswith("page of ")
    assert clean.run("port", "pub").stdout.strip() == f"80/tcp -> 0.0.0.0:{port}"
    assert [_comm(pid) for pid in clean.processes()].count("slirp4netns") == 1
    clean.run("stop", "-t", "1", "pub")
    with pytest.raises(OSError):
        _fetch(port, timeout=1)
    clean.run("start", "pub")  # a new command: back into the namespace, the port again
    assert _fetch(port).startswith("page of ")
    clean.run("rm", "-f", "web", "pub")
    clean.run("network", "rm", "front", "back")
    deadline = time.monotonic() + 5  # not even a zombie
    while time.monotonic() < deadline and any(
            _comm(pid) == "slirp4netns" for pid in clean.processes()):
        time.sleep(0.1)
    assert not [pid for pid in clean.processes() if _comm(pid) == "slirp4netns"]
    assert not (run_root / "netns").exists() or not os.listdir(run_root / "netns")


def test_rootless_bridges_end_with_system_reset(clean, tun_for_users):
    """`system reset` with containers on the default bridge and a user network: the
    user's namespace of bridges, its slirp4netns and aardvark-dns all end (then the
    pause process too), and the next bridge container makes them again."""
    if not shutil.which("slirp4netns"):
        pytest.skip("slirp4netns is not installed")
    clean.run("network", "create", "front")
    clean.run("run", "-d", "--name", "a", "--network", "front", "busybox", "sleep", "100")
    clean.run("run", "-d", "--name", "b", "--network", "bridge", "busybox", "sleep", "100")
    assert "slirp4netns" in {_comm(pid) for pid in clean.processes()}
    clean.run("system", "reset", "-f")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and clean.processes():
        time.sleep(0.1)
    assert [_comm(pid) for pid in clean.processes()] == []
    out = clean.run("run", "--rm", "--network", "bridge", "busybox", "ip", "-o", "-4", "addr",
                    "show", "eth0").stdout
    assert " inet 172." in out, out


def test_rootless_bridges_after_a_crash_while_made(clean, tun_for_users):
    """A command killed between mounting the user's namespace of bridges and starting
    its slirp4netns leaves a namespace without a way out: the next command makes it
    again, and the last container's removal drops it."""
    if not shutil.which("slirp4netns"):
        pytest.skip("slirp4netns is not installed")
    run_root = Path(f"/tmp/nsbox-run-{clean.uid}")
    proc = clean.run("run", "--rm", "--network", "bridge", "busybox", "true", check=False,
                     env={"NSBOX_TEST_CRASHPOINT": "usernet.before_slirp"})
    assert proc.returncode != 0
    assert clean.run("ps", "-a", "-q").stdout == ""
    out = clean.run("run", "--rm", "--network", "bridge", "busybox", "sh", "-c",
                    "ip -o -4 addr show eth0; ip route").stdout
    assert " inet 172." in out and "default via 172." in out, out
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(
            _comm(pid) == "slirp4netns" for pid in clean.processes()):
        time.sleep(0.1)
    assert not [pid for pid in clean.processes() if _comm(pid) == "slirp4netns"]
    assert not (run_root / "netns").exists() or not os.listdir(run_root / "netns")


# ---------------------------------------------------------------- published ports (slirp4netns)
_WEB = ("mkdir -p /www && echo \"page of $(hostname)\" > /www/index.html && "
        "exec httpd -f -p 80 -h /www")


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise AssertionError("no free port")


def _fetch(port: int, timeout: float = 10.0) -> str:
    """The page at 127.0.0.1:PORT, retried until TIMEOUT (httpd may still be starting)."""
    import urllib.request
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=3) as answer:
                return answer.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _slirp_procs(user) -> list[int]:  # noqa: ANN001 - RootlessUser
    """The user's slirp4netns and pasta processes (pasta runs as passt.avx2 where it can)."""
    return [pid for pid in user.processes()
            if _comm(pid) in ("slirp4netns", "pasta", "passt", "passt.avx2")]


# The rootless default network (slirp4netns), and pasta where Debian's passt is installed.
USER_MODES = [pytest.param([], id="slirp4netns"), pytest.param(["--network", "pasta"], id="pasta")]


@pytest.fixture
def slirp(clean, tun_for_users, request):
    program = "pasta" if "pasta" in request.node.name else "slirp4netns"
    if not shutil.which(program):
        pytest.skip(f"{program} is not installed")
    yield clean
    clean.run("rm", "-f", *clean.run("ps", "-a", "-q").stdout.split(), check=False)
    deadline = time.monotonic() + 5
    while _slirp_procs(clean) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _slirp_procs(clean)
    ports_dir = Path(f"/tmp/nsbox-run-{clean.uid}/ports")
    assert not ports_dir.exists() or not os.listdir(ports_dir)


@pytest.mark.parametrize("net", USER_MODES)
def test_user_mode_network_publishes_a_fixed_port_across_stop_and_start(slirp, net):
    port = _free_port(18080)
    slirp.run("run", "-d", "--name", "web", "--hostname", "pub", *net, "-p", f"{port}:80",
              "busybox", "sh", "-c", _WEB)
    assert _fetch(port) == "page of pub\n"
    assert slirp.run("port", "web").stdout == f"80/tcp -> 0.0.0.0:{port}\n"
    ports = json.loads(slirp.run("inspect", "-f", "{{json .NetworkSettings.Ports}}", "web").stdout)
    assert ports == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(port)}]}
    slirp.run("stop", "-t", "1", "web")
    assert not _answers(port)
    assert not _slirp_procs(slirp)
    assert slirp.run("port", "web").stdout == ""
    slirp.run("start", "web")
    assert _fetch(port) == "page of pub\n"
    slirp.run("rm", "-f", "web")
    assert not _answers(port)


@pytest.mark.parametrize("net", USER_MODES)
def test_user_mode_network_publishes_a_free_port(slirp, net):
    slirp.run("run", "-d", "--name", "any", "--hostname", "any", *net, "-p", "80", "-p",
              "127.0.0.1::80/udp", "busybox", "sh", "-c", _WEB)
    lines = slirp.run("port", "any").stdout.splitlines()
    tcp = [line for line in lines if line.startswith("80/tcp -> 0.0.0.0:")]
    udp = [line for line in lines if line.startswith("80/udp -> 127.0.0.1:")]
    assert len(tcp) == 1 and len(udp) == 1, lines
    port = int(tcp[0].rsplit(":", 1)[1])
    assert _fetch(port) == "page of any\n"
    assert slirp.run("port", "any", "80/tcp").stdout.strip() == f"0.0.0.0:{port}"


@pytest.mark.parametrize("net", USER_MODES)
def test_user_mode_network_refuses_a_taken_port_leaving_nothing(slirp, net):
    holder = socket.socket()
    holder.bind(("0.0.0.0", 0))
    holder.listen()
    port = holder.getsockname()[1]
    run_root = Path(f"/tmp/nsbox-run-{slirp.uid}")
    try:
        proc = slirp.run("run", "-d", "--name", "taken", *net, "-p", f"{port}:80", "busybox",
                         "sleep", "300", check=False)
    finally:
        holder.close()
    assert proc.returncode == 125, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and str(port) in lines[0] and "in use" in lines[0], proc.stderr
    assert not _slirp_procs(slirp)
    assert not (run_root / "netns").exists() or not os.listdir(run_root / "netns")
    assert slirp.run("inspect", "-f", "{{.State.Status}}", "taken").stdout.strip() == "created"
    assert slirp.run("port", "taken").stdout == ""


def test_pasta_network(slirp):
    """--network pasta: the host's addresses copied, DNS through pasta; refused for root."""
    proc = slirp.run("run", "--rm", "--network", "pasta", "busybox", "sh", "-c",
                     "ip -o link | grep -c tap0; ip route | grep -c '^default'; "
                     "cat /etc/resolv.conf")
    assert proc.stdout.split("\n")[:3] == ["0", "1", "nameserver 169.254.1.1"], proc.stdout
    from nsbox.engine.network import pasta
    assert "rootless mode" in pasta.unavailable()  # as root (this test): refused at create
