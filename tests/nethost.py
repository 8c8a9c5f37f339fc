"""A throwaway "host" for the network tests: two network namespaces and a veth.

The engine's bridge networking changes links, addresses, routes, nft tables and
sysctls of the network namespace it runs in.  The tests never run it in the
real host's: `net_host()` makes a network namespace "host" and a second one
"upstream", joined by a veth::

    upstream (203.0.113.1/24, eth0)  <--veth-->  host (203.0.113.2/24, eth0,
      busybox httpd on :80                          default via 203.0.113.1)
      [fake resolver on the host's                  the engine runs here:
       nameserver addresses]                         `h.nsbox(...)`, `h.sh(...)`

Both namespaces are nsfs bind mounts on files in the harness's directory (made
with `unshare --net=FILE`), not /run/netns entries: nothing appears in
/run/netns, and the commands enter them with `nsenter --net=FILE`, which keeps
the caller's mount namespace (`ip netns exec` would make a private one, and the
engine's overlay mounts would vanish with each command).  Sysctls, links and
nft tables exist only inside the two namespaces and die with them.

Usage (the `net_host` fixture in conftest.py wraps this)::

    with net_host(tmp_path / "nethost") as h:
        h.nsbox("run", "--rm", "busybox", "wget", "-qO-", h.upstream_url)
        h.sh("ip -o link")                       # in the host namespace
        h.start_resolver({"example.test": "198.51.100.7"})

Cleanup removes every container (`rm -f`), prunes the networks, then reports
what is left in the host namespace: links named nsbox*/vnb* (the default
`bridge` network's `nsbox0` is allowed unless `strict=True`) and processes
still running in it (an aardvark-dns, a monitor).  Leftover processes of the
two namespaces are killed, the namespaces unmounted and the directory removed;
`NetHost.close()` returns the problems and the fixture fails the test on them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import helpers

REPO_ROOT = Path(__file__).resolve().parent.parent
NSBOX = str(REPO_ROOT / ".venv" / "bin" / "nsbox")
PYTHON = str(REPO_ROOT / ".venv" / "bin" / "python")

UPSTREAM_IP = "203.0.113.1"
HOST_IP = "203.0.113.2"
PREFIX = 24
UPSTREAM_PAGE = "nsbox-nethost-upstream-page\n"
# Link name prefixes the engine uses: bridges nsbox0, nsbox1...; veths vnb<id>.
ENGINE_LINK_PREFIXES = ("nsbox", "vnb")
DEFAULT_BRIDGE = "nsbox0"

# A tiny DNS server for the upstream namespace: A records from argv, NXDOMAIN
# otherwise.  argv: LISTEN_IP NAME=IP ...  Hand-built packets, no library.
RESOLVER_SCRIPT = r"""
import socket, struct, sys
listen, answers = sys.argv[1], dict(a.split("=", 1) for a in sys.argv[2:])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((listen, 53))
print("ready", flush=True)
while True:
    data, peer = sock.recvfrom(4096)
    if len(data) < 12:
        continue
    qid, flags = struct.unpack("!HH", data[:4])
    pos, labels = 12, []
    while pos < len(data) and data[pos]:
        labels.append(data[pos + 1:pos + 1 + data[pos]].decode("ascii", "replace"))
        pos += 1 + data[pos]
    end = pos + 5
    question = data[12:end]
    qtype = struct.unpack("!H", data[pos + 1:pos + 3])[0] if end <= len(data) else 0
    name = ".".join(labels).lower().rstrip(".")
    ip = answers.get(name)
    rd = flags & 0x0100
    if ip is None:
        sock.sendto(struct.pack("!HHHHHH", qid, 0x8183 | rd, 1, 0, 0, 0) + question, peer)
    elif qtype != 1:
        sock.sendto(struct.pack("!HHHHHH", qid, 0x8180 | rd, 1, 0, 0, 0) + question, peer)
    else:
        answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(ip)
        sock.sendto(struct.pack("!HHHHHH", qid, 0x8180 | rd, 1, 1, 0, 0) + question + answer,
                    peer)
"""


def host_nameservers(resolv_conf: str = "/etc/resolv.conf") -> list[str]:
    """IPv4 nameservers of RESOLV_CONF that are not loopback (what aardvark-dns and
    the engine's resolv.conf hand on)."""
    found = []
    try:
        text = Path(resolv_conf).read_text()
    except OSError:
        return found
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver" and ":" not in parts[1] \
                and not parts[1].startswith("127."):
            found.append(parts[1])
    return found


def _netns_inode(path: str | Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def pids_in_netns(ns_file: str | Path) -> list[int]:
    """Processes whose network namespace is the one bound at NS_FILE."""
    inode = _netns_inode(ns_file)
    if inode is None:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                found.append(int(entry))
        except OSError:
            continue
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


class NetHost:
    """The two namespaces, the upstream web server, and the engine's dirs."""

    def __init__(self, workdir: str | Path | None = None, *, strict: bool = False,
                 env: Mapping[str, str] | None = None) -> None:
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="nsbox-nethost-"))
        self.host_ns = self.dir / "host.netns"
        self.upstream_ns = self.dir / "upstream.netns"
        self.root = self.dir / "engine" / "lib"
        self.runroot = self.dir / "engine" / "run"
        self.upstream_ip = UPSTREAM_IP
        self.host_ip = HOST_IP
        self.upstream_url = f"http://{UPSTREAM_IP}/"
        self.upstream_page = UPSTREAM_PAGE
        self.strict = strict
        # The tests' default network is `none` (NSBOX_DEFAULT_NETWORK in
        # conftest.py); in here it is the bridge, Docker's default.
        self.env = {**os.environ, "NSBOX_DEFAULT_NETWORK": "bridge"}
        self.env.update(env or {})
        self._procs: list[subprocess.Popen] = []
        self._closed = False

    # ------------------------------------------------------------------ set up
    def start(self) -> NetHost:
        helpers.require_binary("nsenter")
        helpers.require_binary("unshare")
        helpers.require_binary("ip")
        if not Path(helpers.BUSYBOX).is_file():
            helpers.skip_or_fail(f"{helpers.BUSYBOX} missing: apt-get install busybox-static")
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            for ns in (self.host_ns, self.upstream_ns):
                ns.touch()
                subprocess.run(["unshare", f"--net={ns}", "true"], check=True,
                               capture_output=True)
            self.sh("ip link set lo up")
            self.up_sh("ip link set lo up")
            # The veth: eth0 in both; the peer is made in the host namespace under
            # a temporary name, then moved and renamed.
            self.sh(f"ip link add eth0 type veth peer name nbtpeer0 &&"
                    f" ip link set nbtpeer0 netns {self.upstream_ns}")
            self.up_sh(f"ip link set nbtpeer0 name eth0 && ip addr add {UPSTREAM_IP}/{PREFIX}"
                       f" dev eth0 && ip link set eth0 up")
            self.sh(f"ip addr add {HOST_IP}/{PREFIX} dev eth0 && ip link set eth0 up &&"
                    f" ip route add default via {UPSTREAM_IP}")
            www = self.dir / "www"
            www.mkdir(exist_ok=True)
            (www / "index.html").write_text(UPSTREAM_PAGE)
            self._spawn(self.upstream_ns, [helpers.BUSYBOX, "httpd", "-f", "-p",
                                           f"{UPSTREAM_IP}:80", "-h", str(www)])
            self._wait_for(lambda: self.sh(f"timeout 2 {helpers.BUSYBOX} wget -q -O -"
                                           f" {self.upstream_url}", check=False
                                           ).stdout == UPSTREAM_PAGE,
                           "the upstream httpd")
        except BaseException:
            self.close()
            raise
        return self

    def _spawn(self, ns: Path, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(["nsenter", f"--net={ns}", *argv], stdin=subprocess.DEVNULL,
                                **kwargs)
        self._procs.append(proc)
        return proc

    @staticmethod
    def _wait_for(check, what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"nethost: {what} did not come up in {timeout:g} s")
            time.sleep(0.05)

    def start_resolver(self, answers: Mapping[str, str],
                       addresses: Sequence[str] | None = None) -> list[str]:
        """A DNS server in the upstream namespace answering A queries for ANSWERS
        (name -> IPv4; anything else NXDOMAIN), listening on ADDRESSES (default:
        the host's own nameservers from /etc/resolv.conf, which processes in the
        host namespace, aardvark-dns among them, forward to).  Each address is
        added to upstream's eth0 as a /32, reached over the default route.
        Returns the addresses."""
        addresses = list(addresses if addresses is not None else host_nameservers())
        if not addresses:
            helpers.skip_or_fail("the host's /etc/resolv.conf has no IPv4 nameserver"
                                 " outside 127.0.0.0/8 to stand in for")
        for ip in addresses:
            if ip != UPSTREAM_IP:
                self.up_sh(f"ip addr add {ip}/32 dev eth0")
            proc = self._spawn(self.upstream_ns,
                               [PYTHON, "-c", RESOLVER_SCRIPT, ip,
                                *(f"{k.lower().rstrip('.')}={v}" for k, v in answers.items())],
                               stdout=subprocess.PIPE, text=True)
            if proc.stdout is None or proc.stdout.readline().strip() != "ready":
                raise AssertionError(f"nethost: the fake resolver on {ip} did not start")
        return addresses

    # ------------------------------------------------------------ running things
    def nsbox(self, *args: str, check: bool = True, timeout: float = 60,
              input: str | bytes | None = None,
              env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
        """`nsbox --root R --runroot RR ARGS` inside the host namespace."""
        full_env = dict(self.env)
        full_env.update(env or {})
        return helpers.run_cli(["nsenter", f"--net={self.host_ns}", NSBOX,
                                "--root", str(self.root), "--runroot", str(self.runroot)],
                               *args, check=check, timeout=timeout, input=input, env=full_env)

    def run_in(self, ns: Path, argv: Sequence[str], *, check: bool = True,
               timeout: float = 60, input: str | bytes | None = None
               ) -> subprocess.CompletedProcess:
        return helpers.run_cli(["nsenter", f"--net={ns}"], *argv, check=check,
                               timeout=timeout, input=input, env=self.env)

    def sh(self, cmd: str, *, check: bool = True, timeout: float = 60
           ) -> subprocess.CompletedProcess:
        """A shell command in the host namespace."""
        return self.run_in(self.host_ns, ["sh", "-c", cmd], check=check, timeout=timeout)

    def up_sh(self, cmd: str, *, check: bool = True, timeout: float = 60
              ) -> subprocess.CompletedProcess:
        """A shell command in the upstream namespace."""
        return self.run_in(self.upstream_ns, ["sh", "-c", cmd], check=check, timeout=timeout)

    def links(self) -> list[str]:
        """Link names in the host namespace."""
        out = self.sh("ip -o link", check=False).stdout
        return sorted(line.split(": ", 2)[1].split("@", 1)[0]
                      for line in out.splitlines() if ": " in line)

    def engine_links(self) -> list[str]:
        return [name for name in self.links() if name.startswith(ENGINE_LINK_PREFIXES)]

    def settled_links(self, timeout: float = 5.0) -> list[str]:
        """links(), once no veth (vnb*) is left or TIMEOUT has passed: a removed
        container's veth goes with its network namespace, which the kernel frees
        asynchronously (tens of ms after the engine unmounted it)."""
        deadline = time.monotonic() + timeout
        while True:
            links = self.links()
            if not any(n.startswith("vnb") for n in links) or time.monotonic() > deadline:
                return links
            time.sleep(0.05)

    def host_pids(self) -> list[int]:
        """Processes running in the host namespace (aardvark-dns, monitors...)."""
        return pids_in_netns(self.host_ns)

    # ----------------------------------------------------------------- tear down
    def _remove_containers(self) -> list[str]:
        problems = []
        if not self.root.exists():
            return problems
        ps = self.nsbox("ps", "-a", "-q", "--no-trunc", check=False, timeout=60)
        ids = ps.stdout.split()
        if ids:
            rm = self.nsbox("rm", "-f", *ids, check=False, timeout=120)
            if rm.returncode != 0:
                problems.append(f"`nsbox rm -f` failed: {rm.stderr.strip()}")
        self.nsbox("network", "prune", "-f", check=False, timeout=60)
        left = self.nsbox("ps", "-a", "-q", check=False).stdout.split()
        if left:
            problems.append(f"containers left after rm -f: {left}")
        return problems

    def leftovers(self) -> list[str]:
        """What the engine left in the host namespace once its containers are gone."""
        problems = []
        allowed = () if self.strict else (DEFAULT_BRIDGE,)
        links = [n for n in self.settled_links() if n.startswith(ENGINE_LINK_PREFIXES)
                 and n not in allowed]
        if links:
            problems.append(f"links left in the host namespace: {links}")
        deadline = time.monotonic() + 5
        while (pids := self.host_pids()) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pids:
            problems.append("processes left in the host namespace: "
                            + ", ".join(f"{pid} ({_comm(pid)})" for pid in pids))
        return problems

    def close(self) -> list[str]:
        """Remove everything; return what the engine had left behind."""
        if self._closed:
            return []
        self._closed = True
        problems: list[str] = []
        if os.path.ismount(self.host_ns):
            try:
                problems += self._remove_containers()
                problems += self.leftovers()
            except Exception as exc:  # keep tearing down
                problems.append(f"cleanup: {exc}")
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()
        for ns in (self.host_ns, self.upstream_ns):
            for pid in pids_in_netns(ns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        leaked = helpers.unmount_all_under(self.dir / "engine") if self.dir.exists() else []
        if leaked:
            problems.append(f"mounts left below the engine's root: {leaked}")
        for ns in (self.host_ns, self.upstream_ns):
            while os.path.ismount(ns):
                if subprocess.run(["umount", "-l", str(ns)], capture_output=True).returncode:
                    break
        if self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
        return problems

    def __enter__(self) -> NetHost:
        return self.start()

    def __exit__(self, *exc) -> None:
        problems = self.close()
        if problems and exc[0] is None:
            raise AssertionError("nethost cleanup: " + "; ".join(problems))


@contextlib.contextmanager
def net_host(workdir: str | Path | None = None, **kwargs) -> Iterator[NetHost]:
    """`with net_host(tmp_path / "nethost") as h:` -- see the module docstring."""
    with NetHost(workdir, **kwargs) as host:
        yield host


if __name__ == "__main__":  # a manual check: bring it up, show it, tear it down
    with net_host() as h:
        print(h.sh("ip -o addr; ip route").stdout)
        print(h.sh(f"{helpers.BUSYBOX} wget -qO- {h.upstream_url}").stdout, file=sys.stderr)
