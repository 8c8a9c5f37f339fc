"""`--network slirp4netns[:OPTION=VALUE,...]`: user-mode networking, as rootless Podman has it.

slirp4netns puts a tap device (`tap0`, 10.0.2.100/24, gateway 10.0.2.2,
DNS 10.0.2.3) into the container's network namespace and carries its
traffic through ordinary sockets of the process that started it, so no
privilege is needed.  The engine starts it after the runtime has created
the container and before the container's process runs, waits until the
interface is configured, and stops it when the container stops.

Published ports (`-p`, network/slirp_ports.py): when the container's ports
record exists at start, slirp4netns gets `--api-socket` and, once ready,
one `add_hostfwd` request per mapping; it listens on the host ports itself,
so they go with it when the container stops.

Options (Podman's names): `allow_host_loopback=true` lets the container
reach the host's 127.0.0.1 as 10.0.2.2 (refused by default: local services
trust loopback callers), `mtu=N`, `cidr=A.B.C.D/N`, `enable_ipv6=true`.
"""

from __future__ import annotations

import os
import signal

from nsbox.engine.network.netns import (
    netns_path,
    unmount_netns,
    wait_gone,
)
from nsbox.engine.network.netns import (
    slirp_unavailable as unavailable,
)
from nsbox.errors import ConfigError, NsboxError

_OPTIONS = {"allow_host_loopback": "bool", "enable_ipv6": "bool", "mtu": "int", "cidr": "str"}


def parse_options(mode: str) -> dict[str, str]:
    """The OPTION=VALUE pairs after `slirp4netns:`; ConfigError on an unknown or bad one."""
    _, _, text = mode.partition(":")
    options: dict[str, str] = {}
    for item in filter(None, text.split(",")):
        key, eq, value = item.partition("=")
        kind = _OPTIONS.get(key)
        if kind is None or not eq:
            raise ConfigError(f"invalid slirp4netns option {item!r}: use "
                              + ", ".join(f"{k}=" for k in _OPTIONS))
        if kind == "bool" and value not in ("true", "false"):
            raise ConfigError(f"invalid slirp4netns option {item!r}: use true or false")
        if kind == "int" and not value.isdigit():
            raise ConfigError(f"invalid slirp4netns option {item!r}: not a number")
        options[key] = value
    return options


def _pid_file(run_root: str, cid: str) -> str:
    return os.path.join(run_root, "slirp4netns", cid + ".pid")


def api_socket_path(run_root: str, cid: str) -> str:
    """slirp4netns's API socket (a short name: a unix socket path has 108 bytes)."""
    return os.path.join(run_root, "slirp4netns", cid[:24] + ".sock")


def _forwards(run_root: str, cid: str) -> list[dict]:
    """The mappings recorded for CID (network/slirp_ports.py), [] without any."""
    path = os.path.join(run_root, "ports", cid + ".json")
    if not os.path.exists(path):
        return []
    from nsbox import _json
    try:
        with open(path) as f:
            return list(_json.loads(f.read()))
    except (OSError, ValueError):
        return []


def _api_call(path: str, request: dict, timeout: float = 5.0) -> dict:
    """One request to slirp4netns's API socket (one JSON object each way per connection)."""
    import socket
    import time

    from nsbox import _json
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        while True:  # the socket may come up just after the ready-fd says so
            try:
                s.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
        s.sendall(_json.dumps(request).encode())
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    try:
        return dict(_json.loads(data.decode(errors="replace")))
    except (ValueError, TypeError):
        return {"error": {"desc": f"unexpected answer {data[:200]!r}"}}


def add_forwards(path: str, mappings: list[dict], guest_addr: str = "",
                 to_host_port: bool = False) -> None:
    """`add_hostfwd` per mapping through the API socket PATH (to the container's port, or
    TO_HOST_PORT: to the same port, for a DNAT behind); NsboxError naming the first one
    slirp4netns refuses."""
    for m in mappings:
        args = {"proto": m["proto"], "host_addr": m.get("host_ip") or "0.0.0.0",
                "host_port": int(m["host_port"]),
                "guest_port": int(m["host_port" if to_host_port else "container_port"])}
        if guest_addr:
            args["guest_addr"] = guest_addr
        try:
            answer = _api_call(path, {"execute": "add_hostfwd", "arguments": args})
        except OSError as exc:
            answer = {"error": {"desc": str(exc)}}
        if "error" in answer:
            desc = answer["error"].get("desc", "") if isinstance(answer["error"], dict) else ""
            raise NsboxError(f"cannot publish {args['host_addr']}:{args['host_port']}/"
                             f"{args['proto']}: slirp4netns: {desc or answer['error']}")


def remove_forwards(path: str, mappings: list[dict]) -> None:
    """`remove_hostfwd` for each of MAPPINGS' host ports slirp4netns forwards (quietly:
    what is not there any more is already done)."""
    try:
        answer = _api_call(path, {"execute": "list_hostfwd"})
    except OSError:
        return
    # slirp4netns answers {"entries": [...]} (its "return" wrapper is for other commands)
    body = answer.get("return", answer) if isinstance(answer, dict) else {}
    entries = body.get("entries", []) if isinstance(body, dict) else []
    wanted = {(m["proto"], int(m["host_port"])) for m in mappings}
    for entry in entries:
        if (entry.get("proto"), entry.get("host_port")) in wanted:
            try:
                _api_call(path, {"execute": "remove_hostfwd",
                                 "arguments": {"id": entry.get("id")}})
            except OSError:
                pass


def _guest_addr(cidr: str) -> str:
    """The container's address in CIDR (slirp4netns configures network + 100)."""
    import ipaddress
    return str(ipaddress.ip_network(cidr, strict=False).network_address + 100)


def start(run_root: str, cid: str, mode: str, timeout: float = 10.0,
          with_api: bool = False) -> int:
    """Start slirp4netns in CID's network namespace; its pid once tap0 is configured.
    Its API socket when CID has ports to forward, or WITH_API (for later ones).
    (pasta for `--network pasta`: network/pasta.py.)"""
    import shutil
    import subprocess

    if mode == "pasta":
        from nsbox.engine.network import pasta
        return pasta.start(run_root, cid, _forwards(run_root, cid))
    why = unavailable()
    if why:
        raise NsboxError(f"--network slirp4netns: {why}")
    binary = shutil.which("slirp4netns")
    options = parse_options(mode)
    argv = [binary, "--configure", f"--mtu={options.get('mtu', '65520')}"]
    if options.get("allow_host_loopback") != "true":
        argv.append("--disable-host-loopback")
    if options.get("enable_ipv6") == "true":
        argv.append("--enable-ipv6")
    if "cidr" in options:
        argv.append(f"--cidr={options['cidr']}")
    forwards = _forwards(run_root, cid)
    api = api_socket_path(run_root, cid) if forwards or with_api else ""
    if api:
        os.makedirs(os.path.dirname(api), mode=0o700, exist_ok=True)
        _unlink(api)
        argv.append(f"--api-socket={api}")
    ready_r, ready_w = os.pipe()
    argv += [f"--ready-fd={ready_w}", "--netns-type=path", netns_path(run_root, cid), "tap0"]
    with open(os.devnull, "r+b") as null:
        proc = subprocess.Popen(argv, pass_fds=(ready_w,), stdin=null, stdout=null,
                                stderr=subprocess.PIPE, start_new_session=True)
    os.close(ready_w)
    try:
        import select

        ready, _, _ = select.select([ready_r], [], [], timeout)
        if not ready or os.read(ready_r, 1) != b"1":
            proc.kill()
            err = proc.communicate()[1].decode(errors="replace").strip().splitlines()
            raise NsboxError("slirp4netns did not configure the network"
                             + (f": {'; '.join(err)}" if err else ""))
    finally:
        os.close(ready_r)
    proc.stderr.close()
    if forwards:
        try:
            add_forwards(api, forwards, _guest_addr(options["cidr"]) if "cidr" in options else "")
        except NsboxError:
            proc.kill()
            proc.wait()
            _unlink(api)
            raise
    path = _pid_file(run_root, cid)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.write(str(proc.pid))
    os.replace(path + ".tmp", path)
    return proc.pid


def pid_of(run_root: str, cid: str) -> int | None:
    """The pid of CID's slirp4netns if it runs (its pid file, checked by name)."""
    try:
        with open(_pid_file(run_root, cid)) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/comm") as f:
            return pid if f.read().strip() == "slirp4netns" else None
    except (OSError, ValueError):
        return None


def stop(run_root: str, cid: str) -> None:
    """Stop CID's slirp4netns (or pasta), if one runs (checked by name: pids get reused),
    and drop its network namespace."""
    if os.path.exists(os.path.join(run_root, "pasta", cid + ".pid")):
        from nsbox.engine.network import pasta
        pasta.stop(run_root, cid)
    pid = pid_of(run_root, cid)
    if pid is not None:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass  # gone meanwhile
        wait_gone(pid)
        try:
            os.waitpid(pid, os.WNOHANG)  # ours when `run -it` started it
        except ChildProcessError:
            pass
    _unlink(_pid_file(run_root, cid))
    _unlink(api_socket_path(run_root, cid))
    unmount_netns(netns_path(run_root, cid))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
