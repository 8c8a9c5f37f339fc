"""`--network pasta`: user-mode networking through pasta (Debian's `passt` package).

Like slirp4netns (network/slirp.py), pasta gives a network namespace the
engine made (network/netns.py) a tap device and carries its traffic
through ordinary sockets of an unprivileged process; unlike it, the
container gets copies of the host's addresses and routes (`--config-net`),
so it sees the host's address as its own.  DNS: queries to
169.254.1.1 (the container's only nameserver) are forwarded to the host's
first resolver (`--dns-forward`), as Podman does.  The host's loopback is
not reachable through the gateway address (`--no-map-gw`), as with
slirp4netns's default.

Published ports (network/slirp_ports.py's record) become pasta's own
`-t`/`-u` options: pasta listens on the host ports itself, so they go with
it.  pasta is told to forward nothing else (`-t none`, `-u none`, and no
ports from the namespace to the host: `-T none -U none`).

pasta refuses to run as the host's root (it switches to `nobody`, who may
not enter the engine's namespace): this mode is for rootless nsbox.
"""

from __future__ import annotations

import os
import signal

from nsbox.errors import NsboxError

DNS_ADDRESS = "169.254.1.1"
COMMS = ("pasta", "passt", "passt.avx2")  # pasta re-executes passt.avx2 where it can


def unavailable() -> str:
    """Why pasta cannot run for this user, or "" when it can."""
    import shutil

    if shutil.which("pasta") is None:
        return "the pasta program is not installed (Debian's passt package)"
    from nsbox.engine import rootless
    if not rootless.active():
        return "pasta is for rootless mode (as root it would switch to nobody)"
    from nsbox.engine.network import netns
    return netns.tun_problem()


def _pid_file(run_root: str, cid: str) -> str:
    return os.path.join(run_root, "pasta", cid + ".pid")


def port_options(forwards: list[dict]) -> list[str]:
    """pasta's -t/-u options for the mappings: [ADDR/]HOST_PORT:CONTAINER_PORT each."""
    argv: list[str] = []
    for proto, flag in (("tcp", "-t"), ("udp", "-u")):
        specs = []
        for m in forwards:
            if m["proto"] != proto:
                continue
            addr = m.get("host_ip") or "0.0.0.0"
            prefix = "" if addr == "0.0.0.0" else f"{addr}/"
            specs.append(f"{prefix}{int(m['host_port'])}:{int(m['container_port'])}")
        for spec in specs or ["none"]:
            argv += [flag, spec]
    return argv


def start(run_root: str, cid: str, forwards: list[dict], timeout: float = 10.0) -> int:
    """Start pasta for CID's network namespace, publishing FORWARDS; its pid once ready
    (pasta goes to the background when the namespace is configured and ports bound)."""
    import shutil
    import subprocess

    from nsbox.engine.network import netns

    why = unavailable()
    if why:
        raise NsboxError(f"--network pasta: {why}")
    pid_path = _pid_file(run_root, cid)
    os.makedirs(os.path.dirname(pid_path), mode=0o700, exist_ok=True)
    _unlink(pid_path)
    argv = [shutil.which("pasta"), "--config-net", "--quiet", "--no-map-gw",
            "--dns-forward", DNS_ADDRESS, "--pid", pid_path, "-T", "none", "-U", "none",
            *port_options(forwards), "--netns", netns.netns_path(run_root, cid)]
    log = pid_path[:-len(".pid")] + ".log"
    try:
        # A file, not a pipe: the daemon pasta leaves behind could hold a pipe open.
        with open(log, "w+b") as err, open(os.devnull, "r+b") as null:
            proc = subprocess.run(argv, stdin=null, stdout=null, stderr=err, timeout=timeout,
                                  start_new_session=True)
            err.seek(0)
            text = err.read().decode(errors="replace")
    except subprocess.TimeoutExpired:
        proc, text = None, "timed out"
    finally:
        _unlink(log)
    pid = _read_pid(pid_path)
    if proc is None or proc.returncode != 0 or not pid:
        if pid:
            _kill(pid)
        _unlink(pid_path)
        lines = [line for line in text.splitlines()
                 if line.strip() and "to syslog" not in line]
        raise NsboxError("pasta did not configure the network"
                         + (f": {'; '.join(lines)}" if lines else ""))
    return pid


def _read_pid(path: str) -> int:
    try:
        with open(path) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def _kill(pid: int) -> None:
    """SIGTERM to PID if it is pasta (checked by name: pids get reused), until it is gone."""
    from nsbox.engine.network import netns
    try:
        with open(f"/proc/{pid}/comm") as f:
            if f.read().strip() not in COMMS:
                return
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return
    netns.wait_gone(pid)


def stop(run_root: str, cid: str) -> None:
    """Stop CID's pasta, if one runs.  Idempotent; the namespace is slirp.stop()'s."""
    path = _pid_file(run_root, cid)
    pid = _read_pid(path)
    if pid:
        _kill(pid)
    _unlink(path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
