"""The engine's side of the guard: configure at create, watch before start, ask the guard process.

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

import json
import os
import platform
import socket
import subprocess
import sys
import time

from nsbox._lazylog import get_logger
from nsbox.errors import NsboxError, UnsupportedError

log = get_logger(__name__)

GUARD_DIR = "/run/nsbox-guard"
SOCKET = os.path.join(GUARD_DIR, "guard.sock")
LOCK = os.path.join(GUARD_DIR, "guard.lock")
DAEMON_LOG = os.path.join(GUARD_DIR, "guard.log")
ENV = "NSBOX_GUARD"
CONF_ENV = "NSBOX_GUARD_CONF"
CONF = "/etc/nsbox/guard.conf"
OBJECT = os.path.join(os.path.dirname(__file__), "bpf", "guard.bpf.o")
ALERTS = "guard-alerts.jsonl"  # in the container's directory below the engine root


class GuardError(NsboxError):
    """The guard process could not be started or refused a container."""


# ------------------------------------------------------------------ host support
def _lsm_list() -> str:
    """/sys/kernel/security/lsm, read with securityfs mounted in a private mount namespace."""
    for path in ("/sys/kernel/security/lsm",):
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            pass
    try:
        out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                              "mount -t securityfs none /sys/kernel/security 2>/dev/null && "
                              "cat /sys/kernel/security/lsm"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


def unavailable() -> str:
    """'' when this host can run the guard (detection), else why not."""
    if os.geteuid() != 0:
        return "the guard loads BPF programs, which needs root"
    if platform.machine() != "x86_64":
        return f"the guard's system call numbers are x86_64's (this is {platform.machine()})"
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return "the kernel has no BTF (/sys/kernel/btf/vmlinux): CO-RE programs cannot load"
    if not os.path.exists(OBJECT):
        return (f"{OBJECT} was not built (clang was missing when nsbox was installed): "
                "install clang, libbpf-dev and bpftool and reinstall")
    if cgroup2_mount() is None:
        return "no cgroup v2 hierarchy is mounted: containers are told apart by their v2 cgroup"
    from nsbox.engine.guard.libbpf import available
    return available()


def lsm_programs_load() -> bool | None:
    """Whether the kernel accepts BPF LSM programs (bpftool's probe); None: cannot tell."""
    try:
        out = subprocess.run(["bpftool", "feature", "probe", "kernel"], capture_output=True,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        if "program_type lsm " in line:
            return "NOT available" not in line
    return None


def enforcement_unavailable() -> str:
    """Why deny rules and drift cannot be enforced here (always a reason in this version)."""
    lsms = _lsm_list()
    if "bpf" not in lsms.split(","):
        return f"the BPF LSM is not active (active LSMs: {lsms or 'unknown'})"
    if lsm_programs_load() is False:
        return ("the BPF LSM is active but this kernel refuses BPF LSM programs (bpftool "
                "feature probe: program_type lsm is NOT available)")
    return ("kernel enforcement needs BPF LSM programs, which this version of the guard does "
            "not load yet (detection only)")


def host_support() -> dict:
    """What `nsbox info` shows."""
    from nsbox.runtime.security.landlock import abi
    why = unavailable()
    return {"Available": not why, "Reason": why, "LSMs": _lsm_list(),
            "BpfLsm": False, "BpfLsmReason": enforcement_unavailable(),
            "LandlockABI": abi(), "Object": OBJECT if os.path.exists(OBJECT) else ""}


def cgroup2_mount() -> str | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup/unified on a hybrid host)."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return left.split()[4]
    except OSError:
        pass
    return None


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
def default_setting() -> str:
    value = os.environ.get(ENV)
    if value is not None:
        return value.strip() or "off"
    try:
        with open(os.environ.get(CONF_ENV, CONF)) as f:
            for line in f:
                line = line.strip()
                if line.startswith("guard="):
                    return line.partition("=")[2].strip() or "off"
    except OSError:
        pass
    return "off"


def configure(setting: str | None) -> dict | None:
    """The guard's record for a new container (None: not watched); ConfigError/UnsupportedError."""
    from nsbox.engine.guard import rules as rules_mod
    value = default_setting() if setting is None else setting
    if value in ("", "off", "false", "none"):
        return None
    drift = value == "drift"
    if value in ("default", "drift"):
        text, source = rules_mod.default_rules_text(), "default"
    else:
        path = os.path.abspath(value)
        text, source = rules_mod.read_rules_file(path), path
    parsed = rules_mod.load_text(text, source)
    why = unavailable()
    if why:
        raise UnsupportedError(f"--security-opt guard={value}: {why}")
    denies: list = []
    if drift or any(r.action == "deny" for r in parsed):
        from nsbox.engine.guard import enforce
        try:
            denies = enforce.check(parsed, drift, enforcement_unavailable())
        except UnsupportedError as exc:
            raise UnsupportedError(f"--security-opt guard={value}: {exc}") from None
    return {"mode": value if value in ("default", "drift") else "file", "source": source,
            "rules": text, "drift": drift, "deny": [r.name for r in denies]}


def landlock_annotation(guard_conf: dict | None, lower_dirs: list[str]) -> dict[str, str]:
    """The OCI annotation that makes the runtime enforce GUARD_CONF's deny rules and drift."""
    if not guard_conf or not (guard_conf.get("drift") or guard_conf.get("deny")):
        return {}
    from nsbox.engine.guard import enforce
    from nsbox.engine.guard.rules import load_text
    rules = [r for r in load_text(guard_conf["rules"], guard_conf.get("source") or "rules")
             if r.name in guard_conf.get("deny", [])]
    plan = enforce.plan(rules, bool(guard_conf.get("drift")), lower_dirs)
    return {enforce.ANNOTATION: json.dumps(plan, separators=(",", ":"))} if plan else {}


# ------------------------------------------------------------------ the guard process
def _connect(timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    sock.connect(SOCKET)
    return sock


def request(message: dict, timeout: float = 30.0) -> dict:
    """One request to the running guard; OSError when none runs."""
    with _connect(timeout) as sock:
        sock.sendall(json.dumps(message).encode() + b"\n")
        answer = sock.makefile("rb").readline()
    if not answer:
        raise ConnectionResetError("the guard closed the connection")
    return json.loads(answer)


def _spawn() -> None:
    """Start `python -m nsbox.engine.guard.service` in its own session; wait for its answer."""
    os.makedirs(GUARD_DIR, mode=0o700, exist_ok=True)
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
                        out.append(json.loads(line))
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


def setting_of(security_opt: list[str]) -> str | None:
    """The guard= value among --security-opt values (the last one wins); None if none."""
    value = None
    for opt in security_opt:
        key, sep, rest = opt.partition("=")
        if not sep and ":" in opt:
            key, _, rest = opt.partition(":")
        if key == "guard":
            value = rest
    return value


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
            sock.sendall(json.dumps({"op": "subscribe", "container": container_id}).encode()
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
                        yield json.loads(line)
                    except ValueError:
                        continue


def posture_item(guard_conf: dict, container_dir: str) -> dict:
    """The guard's line in `inspect --security`: its rules and the alerts so far, by rule."""
    from nsbox.engine.guard.rules import load_text
    rules = load_text(guard_conf["rules"], guard_conf.get("source") or "rules")
    counts: dict[str, int] = {}
    for alert in read_alerts(container_dir):
        counts[alert.get("rule", "?")] = counts.get(alert.get("rule", "?"), 0) + 1
    source = "default" if guard_conf.get("mode") == "default" else guard_conf.get("source", "")
    alerts = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    return {"item": "guard", "weaker": False,
            "value": f"{source}: {len(rules)} rules, {sum(counts.values())} alerts"
                     + (f" ({alerts})" if alerts else ""),
            "why": "", "rules": [r.name for r in rules], "alerts": counts}


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
