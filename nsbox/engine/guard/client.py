"""The engine's side of the guard: watch before start, ask the guard process, read alerts.

`--security-opt guard=default|RULES_FILE|drift|off` is resolved at create
(configure): the rules are read and checked then, and kept in the
container's record, so a start never depends on a file that changed.  The
host-wide default when no guard= is given: $NSBOX_GUARD, else the first
`guard=VALUE` line of /etc/nsbox/guard.conf ($NSBOX_GUARD_CONF), else off.

Before the runtime's `start` runs the container's process, watch() hands
the container's cgroup to the one guard process of the host (service.py),
starting it if none runs; the guard answers once the container's keys are in
the kernel's maps, so the process is watched from its first instruction.
"""

from __future__ import annotations

import os
import socket
import sys
import time

from nsbox import _json
from nsbox._lazylog import get_logger
from nsbox.engine.guard.config import (  # noqa: F401 - the guard's names, for its users
    ALERTS_NAME,
    CONF,
    CONF_ENV,
    DAEMON_LOG,
    ENV,
    GUARD_DIR,
    LOCK,
    OBJECT,
    SOCKET,
    cgroup2_mount,
    configure,
    enforcement_unavailable,
    host_support,
    lsm_programs_load,
    setting_of,
    unavailable,
)
from nsbox.errors import NsboxError

log = get_logger(__name__)

ALERTS = ALERTS_NAME


class GuardError(NsboxError):
    """The guard process could not be started or refused a container."""


# ------------------------------------------------------------------ host support












def cgroup_dir(pid: int) -> str:
    """The cgroup v2 directory of PID."""
    base = cgroup2_mount()
    if base is None:
        raise GuardError("no cgroup v2 hierarchy is mounted")
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return os.path.join(base, line[3:].strip().lstrip("/"))
    raise GuardError(f"process {pid} has no cgroup v2 path")


# ------------------------------------------------------------------ configuration






# ------------------------------------------------------------------ the guard process
def _connect(timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    sock.connect(SOCKET)
    return sock


def request(message: dict, timeout: float = 30.0) -> dict:
    """One request to the running guard; OSError when none runs."""
    with _connect(timeout) as sock:
        sock.sendall(_json.dumps(message).encode() + b"\n")
        answer = sock.makefile("rb").readline()
    if not answer:
        raise ConnectionResetError("the guard closed the connection")
    return _json.loads(answer)


def _spawn() -> None:
    """Start `python -m nsbox.engine.guard.service` in its own session; wait for its answer."""
    import subprocess
    os.makedirs(GUARD_DIR, mode=0o700, exist_ok=True)
    try:
        if os.path.getsize(DAEMON_LOG) > 1 << 20:
            os.replace(DAEMON_LOG, DAEMON_LOG + ".1")  # one old generation is kept
    except OSError:
        pass
    read_end, write_end = os.pipe()
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))
    env = dict(os.environ)
    env["PYTHONPATH"] = package_parent + (os.pathsep + env["PYTHONPATH"]
                                          if env.get("PYTHONPATH") else "")
    with open(DAEMON_LOG, "ab") as logf, open(os.devnull, "rb") as null:
        # setsid -f: a new session, and a fork whose parent exits at once, so the guard
        # is nobody's child here (init reaps it) and outlives the command that started it.
        try:
            subprocess.run(["setsid", "-f", sys.executable, "-m", "nsbox.engine.guard.service",
                            str(write_end)], stdin=null, stdout=logf, stderr=logf,
                           pass_fds=(write_end,), env=env, cwd="/", check=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            os.close(read_end)
            raise GuardError(f"cannot start the guard: {exc}") from None
        finally:
            os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.readline().decode(errors="replace").strip()
    if answer.startswith("err "):
        raise GuardError(f"the guard could not start: {answer[4:]}")
    # "ok": ready; "": it exited at once (another guard won the lock): the caller retries


def call(message: dict) -> dict:
    """REQUEST the guard, starting it first when none runs."""
    last: Exception | None = None
    for _ in range(20):
        try:
            return request(message)
        except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError) as exc:
            last = exc
        _spawn()
        time.sleep(0.02)
    raise GuardError(f"cannot reach the guard process: {last}")


def watch(engine_root: str, container: dict, guard_conf: dict, pid: int,
          container_dir: str) -> None:
    """Watch the container whose init is PID (created, not started) under GUARD_CONF."""
    message = {"op": "watch", "cgroup": cgroup_dir(pid), "pid": pid, "root": engine_root,
               "alerts": os.path.join(container_dir, ALERTS),
               "rules": guard_conf["rules"], "source": guard_conf.get("source", ""),
               "drift": bool(guard_conf.get("drift")),
               **container}
    answer = call(message)
    if not answer.get("ok"):
        raise GuardError(f"the guard refused the container: {answer.get('error')}")


def alerts_path(container_dir: str) -> str:
    return os.path.join(container_dir, ALERTS)


def read_alerts(container_dir: str) -> list[dict]:
    out = []
    try:
        with open(alerts_path(container_dir), "rb") as f:
            for line in f:
                if line.endswith(b"\n"):
                    try:
                        out.append(_json.loads(line))
                    except ValueError:
                        continue
    except FileNotFoundError:
        pass
    return out


def status() -> dict | None:
    """The running guard's status; None when none runs."""
    try:
        return request({"op": "status"}, timeout=5)
    except OSError:
        return None




def subscribe(container_id: str = "", timeout: float | None = None):  # noqa: ANN201
    """Yield the guard's event lines (dicts) for CONTAINER_ID (all when ""), as they come.

    Waits for a guard to run (none runs while nothing is watched) and
    reconnects when one exits; ends after TIMEOUT seconds when given.
    """
    import select
    deadline = None if timeout is None else time.monotonic() + timeout
    while deadline is None or time.monotonic() < deadline:
        try:
            sock = _connect(5)
            sock.sendall(_json.dumps({"op": "subscribe", "container": container_id}).encode()
                         + b"\n")
        except OSError:
            time.sleep(0.2)
            continue
        with sock:
            sock.setblocking(False)
            buf = b""
            answered = False
            while deadline is None or time.monotonic() < deadline:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                ready, _, _ = select.select([sock], [], [], 1.0 if left is None else
                                            min(1.0, left))
                if not ready:
                    continue
                try:
                    chunk = sock.recv(1 << 16)
                except BlockingIOError:
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if not answered:
                        answered = True  # the guard's {"ok": true}
                        continue
                    try:
                        yield _json.loads(line)
                    except ValueError:
                        continue


def posture_item(guard_conf: dict, container_dir: str, cid: str = "",
                 running: bool = False) -> dict:
    """The guard's line in `inspect --security`: its rules and the alerts so far, by rule.

    A running container the guard does not watch (its guard was killed) is reported
    weaker: nothing sees it until it is restarted."""
    from nsbox.engine.guard.rules import load_text
    rules = load_text(guard_conf["rules"], guard_conf.get("source") or "rules")
    counts: dict[str, int] = {}
    for alert in read_alerts(container_dir):
        counts[alert.get("rule", "?")] = counts.get(alert.get("rule", "?"), 0) + 1
    source = "default" if guard_conf.get("mode") == "default" else guard_conf.get("source", "")
    alerts = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    watched = None
    if running and cid:
        report = status()
        watched = bool(report) and any(c.get("id") == cid for c in report.get("containers", []))
    value = f"{source}: {len(rules)} rules, {sum(counts.values())} alerts" + \
        (f" ({alerts})" if alerts else "")
    if guard_conf.get("drift"):
        value += ", drift enforced"
    if guard_conf.get("deny"):
        value += f", {len(guard_conf['deny'])} deny rule(s) enforced"
    why = "" if watched is not False else \
        "the guard process is gone: not watched until the container restarts"
    return {"item": "guard", "weaker": watched is False, "value": value, "why": why,
            "rules": [r.name for r in rules], "alerts": counts, "watched": watched}


def follow_alerts(engine, ref: str, follow: bool = False, tail: int | None = None):  # noqa: ANN001, ANN201
    """The container's alert lines (JSON text); with FOLLOW, new ones until it stops."""
    c = engine.get(ref)
    path = alerts_path(c.bundle)
    offset = 0
    lines: list[bytes] = []
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        data = b""
    complete = data[:data.rfind(b"\n") + 1]
    offset = len(complete)
    lines = complete.splitlines(keepends=True)
    if tail is not None:
        lines = lines[-tail:] if tail else []
    for line in lines:
        yield line.decode(errors="replace")
    while follow:
        try:
            state = engine.get(c.id).state
        except NsboxError:
            return
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            data = b""
        complete = data[:data.rfind(b"\n") + 1]
        offset += len(complete)
        for line in complete.splitlines(keepends=True):
            yield line.decode(errors="replace")
        if state not in ("running", "paused", "restarting") and not complete:
            return
        time.sleep(0.2)
