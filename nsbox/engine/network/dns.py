"""Name resolution on user-defined networks, through aardvark-dns (Podman's resolver).

Docker's rule: containers on a user-defined network find each other by
container name, short id (12 hex) and `--network-alias`; the default `bridge`
network has no such DNS (containers there get the host's resolvers).  One
aardvark-dns process per engine (per run root) serves every user-defined
network, as with netavark: it reads a configuration directory

    <run_root>/networks/aardvark/NETWORK     one file per network (Podman's format):
        GATEWAY_IP[,GATEWAY_IPV6]            first line: the addresses it listens on
        CONTAINER_ID IPV4 IPV6 NAME,ALIAS... one line per container (IPV6 may be empty)
    <run_root>/networks/aardvark/aardvark.pid   written by aardvark-dns itself
    <run_root>/networks/aardvark.lock        flock: one change at a time
    <run_root>/networks/aardvark.log         aardvark-dns's stderr

and listens on port 53 of each network's gateway address in the engine's own
network namespace (the one the nsbox command runs in).  A network's file
exists while at least one container is attached to it; the server is started
by the first attachment (`run --network NET`, `network connect`), reloaded
with SIGHUP after every change, and stopped when the last file goes
(`network rm`, or the last container leaving).  A query is answered from the
network whose gateway it was sent to; names of other networks are NXDOMAIN;
any other name is forwarded to the resolvers of the engine's
/etc/resolv.conf.

Crash safety: every call first drops a pid file whose process is gone (or is
not this directory's aardvark-dns) and starts the server again when files
remain; a file is rewritten through a temporary file and rename, outside the
directory aardvark-dns reads.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from typing import Any

from nsbox._lite import flocked
from nsbox.errors import NsboxError

# Debian's aardvark-dns package (and Fedora's) install it here, for netavark.
AARDVARK_PATHS = ("/usr/lib/podman/aardvark-dns", "/usr/libexec/podman/aardvark-dns")
AARDVARK_ENV = "NSBOX_AARDVARK_DNS"
PORT = 53
PID_FILE = "aardvark.pid"
DEFAULT_NETWORK = "bridge"
START_TIMEOUT = 5.0
STOP_TIMEOUT = 3.0


# ------------------------------------------------------------------ where things are
def binary() -> str | None:
    """The aardvark-dns program, or None when it is not installed."""
    override = os.environ.get(AARDVARK_ENV)
    if override:
        return override if os.access(override, os.X_OK) else None
    for path in AARDVARK_PATHS:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("aardvark-dns")


def _run_root(engine: Any) -> str:
    return engine if isinstance(engine, str) else engine.run_root


def config_dir(engine: Any) -> str:
    return os.path.join(_run_root(engine), "networks", "aardvark")


def _side(engine: Any, suffix: str) -> str:
    return os.path.join(_run_root(engine), "networks", "aardvark" + suffix)


def server_for(net: Any) -> str | None:
    """The address a container on NET asks for names (its resolv.conf's
    nameserver), or None: the default `bridge` network, a network without a
    gateway, or no aardvark-dns installed."""
    if getattr(net, "name", None) == DEFAULT_NETWORK or not getattr(net, "gateway", None):
        return None
    if getattr(net, "driver", "bridge") != "bridge" or binary() is None:
        return None
    return str(net.gateway)


# ------------------------------------------------------------------ the files
def _names(cid: str, name: str, aliases: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for item in (name.lstrip("/"), cid[:12], *aliases):
        item = item.strip().lower()
        if item and item not in seen and " " not in item and "," not in item:
            seen.append(item)
    return seen


def _read(path: str) -> tuple[str, dict[str, str]]:
    """(first line, {container id: its line}) of a network file; ("", {}) if absent."""
    try:
        with open(path) as f:
            lines = [line for line in f.read().split("\n") if line]
    except FileNotFoundError:
        return "", {}
    if not lines:
        return "", {}
    return lines[0], {line.split(" ", 1)[0]: line for line in lines[1:]}


def _write(engine: Any, net_name: str, first: str, entries: dict[str, str]) -> None:
    path = os.path.join(config_dir(engine), net_name)
    if not entries:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    tmp = _side(engine, f".{net_name}.tmp")  # outside the directory aardvark-dns reads
    with open(tmp, "w") as f:
        f.write("\n".join([first, *entries.values()]) + "\n")
    os.replace(tmp, path)


def _network_files(engine: Any) -> list[str]:
    try:
        return sorted(n for n in os.listdir(config_dir(engine)) if n != PID_FILE)
    except FileNotFoundError:
        return []


def _locked(engine: Any) -> flocked:
    os.makedirs(config_dir(engine), mode=0o700, exist_ok=True)
    return flocked(os.open(_side(engine, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                           0o600))


# ------------------------------------------------------------------ the process
def _pid_file(engine: Any) -> str:
    return os.path.join(config_dir(engine), PID_FILE)


def _is_ours(pid: int, cfg: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return bool(argv) and os.path.basename(argv[0]) == b"aardvark-dns" \
        and cfg.encode() in argv


def running_pid(engine: Any) -> int | None:
    """The pid of this run root's aardvark-dns; a stale pid file is removed."""
    path = _pid_file(engine)
    try:
        with open(path) as f:
            pid = int(f.read().strip() or 0)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        pid = 0
    if pid > 0 and _is_ours(pid, config_dir(engine)):
        return pid
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return None


def _listening(ips: Iterable[str], port: int = PORT) -> bool:
    """Whether every IPv4 address in IPS has a UDP socket on PORT in this netns."""
    wanted = set()
    for ip in ips:
        if ":" in ip:
            continue
        packed = bytes(int(p) for p in ip.split("."))
        wanted.add(f"{packed[::-1].hex().upper()}:{port:04X}")
    try:
        with open("/proc/net/udp") as f:
            bound = {line.split()[1] for line in f.readlines()[1:]}
    except OSError:
        return True
    return wanted <= bound


def _start(engine: Any, program: str) -> int:
    log = _side(engine, ".log")
    with open(log, "wb") as err:
        proc = subprocess.run(
            [program, "--config", config_dir(engine), "-p", str(PORT), "run"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            start_new_session=True, timeout=START_TIMEOUT, check=False)
    deadline = time.monotonic() + START_TIMEOUT
    while (pid := running_pid(engine)) is None and proc.returncode == 0 \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    if proc.returncode != 0 or pid is None:
        raise NsboxError(f"aardvark-dns did not start: {_last_error(log)}")
    return pid


def _last_error(log: str) -> str:
    try:
        with open(log, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()
                     and "failed to connect to syslog" not in line]
    except OSError:
        lines = []
    return lines[-1] if lines else "no message (see its log in syslog)"


def _stop(engine: Any) -> None:
    pid = running_pid(engine)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while _is_ours(pid, config_dir(engine)):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + STOP_TIMEOUT
            time.sleep(0.01)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_pid_file(engine))


def _gateways(engine: Any) -> list[str]:
    ips = []
    for name in _network_files(engine):
        first, _ = _read(os.path.join(config_dir(engine), name))
        ips += first.split(" ", 1)[0].split(",") if first else []
    return ips


def _apply(engine: Any) -> None:
    """Make the server match the files: stopped when none is left, else started
    or reloaded, and listening on every gateway before returning."""
    if not _network_files(engine):
        _stop(engine)
        return
    program = binary()
    if program is None:
        return
    pid = running_pid(engine)
    if pid is None:
        _start(engine, program)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGHUP)
    gateways = _gateways(engine)
    deadline = time.monotonic() + START_TIMEOUT
    while not _listening(gateways):
        if time.monotonic() > deadline:
            raise NsboxError(f"aardvark-dns is not listening on {', '.join(gateways)} port"
                             f" {PORT}: {_last_error(_side(engine, '.log'))}")
        time.sleep(0.01)


def _apply_quietly(engine: Any) -> None:
    """_apply on the way down (detach, removal): a server that cannot be started
    again for the other networks must not stop a container's teardown."""
    with contextlib.suppress(NsboxError, OSError, subprocess.SubprocessError):
        _apply(engine)


# ------------------------------------------------------------------ the API
def container_attached(engine: Any, net: Any, cid: str, name: str,
                       aliases: Iterable[str] = (), ip: str = "", ip6: str = "") -> None:
    """CID (NAME, ALIASES) now has IP on NET: add its names and make sure the
    server runs.  A no-op on networks without DNS (server_for is None)."""
    gateway = server_for(net)
    if gateway is None or not (ip or ip6):
        return
    with _locked(engine):
        path = os.path.join(config_dir(engine), net.name)
        first, entries = _read(path)
        listen = [gateway] + ([str(net.gateway6)] if getattr(net, "gateway6", None) else [])
        first = ",".join(listen)
        entries[cid] = f"{cid} {ip} {ip6} {','.join(_names(cid, name, aliases))}"
        _write(engine, net.name, first, entries)
        _apply(engine)


def container_detached(engine: Any, net: Any, cid: str) -> None:
    """CID left NET: drop its names; stop the server if no container is left.
    Idempotent, and safe for networks that never had DNS."""
    with _locked(engine):
        path = os.path.join(config_dir(engine), net.name)
        first, entries = _read(path)
        if entries.pop(cid, None) is not None:
            _write(engine, net.name, first, entries)
        _apply_quietly(engine)


def container_removed(engine: Any, cid: str) -> None:
    """Drop CID from every network's file (recovery of a container whose
    networks are not known any more)."""
    with _locked(engine):
        for name in _network_files(engine):
            first, entries = _read(os.path.join(config_dir(engine), name))
            if entries.pop(cid, None) is not None:
                _write(engine, name, first, entries)
        _apply_quietly(engine)


def network_removed(engine: Any, net: Any) -> None:
    """NET is gone: its file goes, and the server with it when it was the last."""
    with _locked(engine):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(config_dir(engine), net.name))
        _apply_quietly(engine)


def names(engine: Any, net: Any) -> dict[str, list[str]]:
    """{container id: [names]} NET's server answers for (for inspect and tests)."""
    _, entries = _read(os.path.join(config_dir(engine), net.name))
    return {cid: line.split(" ")[3].split(",") for cid, line in entries.items()}
