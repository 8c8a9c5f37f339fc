"""The guard's configuration: --security-opt guard=, the host-wide default, host support.

Light on purpose (os alone at import): `create` calls configure() for every
container when a guard setting or default exists, and must not pay for the
guard's client, YAML or ctypes with guard=default.

`--security-opt guard=default|RULES_FILE|drift|off` is resolved at create
(configure): a rules file is read and checked then, and the rules are kept
in the container's record, so a start never depends on a file that
changed.  The host-wide default when no guard= is given: $NSBOX_GUARD, else
the first `guard=VALUE` line of /etc/nsbox/guard.conf ($NSBOX_GUARD_CONF),
else off.
"""

from __future__ import annotations

import os

from nsbox.errors import UnsupportedError

GUARD_DIR = "/run/nsbox-guard"
SOCKET = os.path.join(GUARD_DIR, "guard.sock")
LOCK = os.path.join(GUARD_DIR, "guard.lock")
DAEMON_LOG = os.path.join(GUARD_DIR, "guard.log")
ENV = "NSBOX_GUARD"
CONF_ENV = "NSBOX_GUARD_CONF"
CONF = "/etc/nsbox/guard.conf"
OBJECT = os.path.join(os.path.dirname(__file__), "bpf", "guard.bpf.o")
LIBBPF_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/lib/x86_64-linux-gnu")
DEFAULT_RULES = os.path.join(os.path.dirname(__file__), "default-rules.yaml")
ALERTS_NAME = "guard-alerts.jsonl"  # in the container's directory below the engine root


def _lsm_list() -> str:
    import subprocess

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
    if os.uname().machine != "x86_64":
        return f"the guard's system call numbers are x86_64's (this is {os.uname().machine})"
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return "the kernel has no BTF (/sys/kernel/btf/vmlinux): CO-RE programs cannot load"
    if not os.path.exists(OBJECT):
        return (f"{OBJECT} was not built (clang was missing when nsbox was installed): "
                "install clang, libbpf-dev and bpftool and reinstall")
    if cgroup2_mount() is None:
        return "no cgroup v2 hierarchy is mounted: containers are told apart by their v2 cgroup"
    if not any(os.path.exists(os.path.join(d, "libbpf.so.1")) for d in LIBBPF_DIRS):
        return "libbpf.so.1 is missing: install libbpf1"
    return ""


def lsm_programs_load() -> bool | None:
    """Whether the kernel accepts BPF LSM programs (bpftool's probe); None: cannot tell."""
    import subprocess
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
    value = default_setting() if setting is None else setting
    if value in ("", "off", "false", "none"):
        return None
    why = unavailable()
    if why:
        raise UnsupportedError(f"--security-opt guard={value}: {why}")
    drift = value == "drift"
    if value in ("default", "drift"):
        # Shipped and tested: not parsed here (YAML costs ~20 ms), by the guard instead.
        with open(DEFAULT_RULES, encoding="utf-8") as f:
            text, source = f.read(), "default"
        if not drift:
            return {"mode": value, "source": source, "rules": text, "drift": False, "deny": []}
    from nsbox.engine.guard import rules as rules_mod
    if value not in ("default", "drift"):
        path = os.path.abspath(value)
        text, source = rules_mod.read_rules_file(path), path
    parsed = rules_mod.load_text(text, source)
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
    from nsbox import _json
    return {enforce.ANNOTATION: _json.dumps(plan)} if plan else {}


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
