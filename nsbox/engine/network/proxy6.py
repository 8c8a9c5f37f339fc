"""Published ports on the host's [::1]: Docker's userland proxy (docker-proxy).

DNAT cannot reach a container from ::1: IPv6 has no `route_localnet`, so the
kernel refuses to route a packet whose source or destination is ::1 over a
real link (the SYN goes out masqueraded, the reply, turned back to ::1, is
dropped on the bridge).  So for each IPv6 mapping that covers ::1 (`::`, the
wildcard, or `::1` itself) nsbox runs Docker's own proxy, `docker-proxy` from
the docker.io package: it listens on [::1]:HOSTPORT and opens a connection
to [container]:PORT for each one it accepts (UDP: one flow per peer).  The
firewall's DNAT rules skip ::1 (firewall.ports_added), so the two never meet.

The proxies are started detached (their own session) so they outlive the
`nsbox` command that started them; their pids with their start times are in
<run_root>/ports/<id>.proxy, written as each one is up, and `stop()` (from
ports.unpublish, at stop, rm and crash clean-up) ends exactly those processes.
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import time

from nsbox.errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nsbox.engine.lifecycle.state import EngineBase

log = logging.getLogger(__name__)

LOOPBACK6 = "::1"
READY_TIMEOUT = 10.0


def binary() -> str | None:
    """docker-proxy's path (it is in /usr/sbin, often not on a user's PATH), or None."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/usr/libexec/docker"
    return shutil.which("docker-proxy", path=path)


def covers_loopback(host_ip: str) -> bool:
    return host_ip in ("::", LOOPBACK6)


def _record(engine: EngineBase, cid: str) -> str:
    return os.path.join(engine.run_root, "ports", cid + ".proxy")


def _start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat (the start time in ticks), "" if PID is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def start(engine: EngineBase, cid: str, ip6: str, mappings: list[dict]) -> None:
    """Run one docker-proxy per mapping of MAPPINGS that covers ::1, to IP6.

    ConfigError (one line) if one cannot listen; those already up stay in the
    record for stop(), which the caller runs on any error.
    """
    wanted = [m for m in mappings if covers_loopback(m.get("host_ip") or "")]
    if not wanted:
        return
    exe = binary()
    if exe is None:
        if any(m["host_ip"] == LOOPBACK6 for m in wanted):
            raise ConfigError("publishing on [::1] needs docker-proxy (Debian package "
                              "docker.io): DNAT cannot reach a container from ::1")
        log.warning("docker-proxy not found: published ports do not answer on [::1]")
        return
    path = _record(engine, cid)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for m in wanted:
        pid = _spawn(exe, m, ip6)
        with open(path, "a") as f:  # at once: a crash after this leaves it to stop()
            f.write(f"{pid} {_start_time(pid)}\n")
        problem = _wait_ready(pid)
        if problem:
            raise ConfigError(f"cannot publish [::1]:{m['host_port']}/{m['proto']}: {problem}")


def _spawn(exe: str, m: dict, ip6: str) -> int:
    """docker-proxy for M, its readiness pipe on fd 3 (its protocol: "0\\n" or "1\\nERROR")."""
    r, w = os.pipe()
    if w == 3:  # dup2(3, 3) would keep close-on-exec
        w2 = os.dup(w)
        os.close(w)
        w = w2
    argv = [exe, "-proto", m["proto"], "-host-ip", LOOPBACK6, "-host-port", str(m["host_port"]),
            "-container-ip", ip6, "-container-port", str(m["container_port"])]
    actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
               (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
               (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
               (os.POSIX_SPAWN_DUP2, w, 3)]
    try:
        pid = os.posix_spawn(exe, argv, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                             file_actions=actions, setsid=True)
    finally:
        os.close(w)
    _pipes[pid] = r
    return pid


_pipes: dict[int, int] = {}


def _wait_ready(pid: int) -> str:
    """"" once PID listens, else its error (it has exited then)."""
    r = _pipes.pop(pid)
    data = b""
    deadline = time.monotonic() + READY_TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([r], [], [], deadline - time.monotonic())
            if not ready:
                break
            chunk = os.read(r, 4096)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(r)
    text = data.decode("utf-8", "replace")
    if text.startswith("0\n"):
        return ""
    return text.partition("\n")[2].strip() or "docker-proxy did not start"


def stop(engine: EngineBase, cid: str) -> None:
    """End CID's proxies (those the record names and that are still those processes)."""
    path = _record(engine, cid)
    try:
        with open(path) as f:
            entries = [line.split() for line in f.read().splitlines()]
    except FileNotFoundError:
        return
    for entry in entries:
        if len(entry) != 2 or not entry[0].isdigit():
            continue
        pid = int(entry[0])
        if _start_time(pid) != entry[1]:
            continue  # gone, or the pid belongs to another process now
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        _reap(pid)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _reap(pid: int) -> None:
    """Wait (up to 5 s) for PID to end: its port is free when stop() returns."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)  # our child when started by this process
            if done:
                return
        except ChildProcessError:
            if not _start_time(pid) or _zombie(pid):
                return
        time.sleep(0.01)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True
