"""The container-escape battery: build the probe, run it in containers, judge and report.

tests/escape/probe.c is compiled (static, cached by its hash) and bind-mounted
read-only into busybox containers made by the real `nsbox` CLI.  Each probe
line is `NAME blocked ERRNO`, `NAME ok ...` (safe) or `NAME ALLOWED ...` /
`NAME WEAK ...` (unsafe).

Used by tests/test_security_battery.py, and as a script to regenerate the
table in docs/security.md (`make security-report`):

    .venv/bin/python tests/security_battery.py [--out docs/security.md]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROBE_SOURCE = REPO / "tests" / "escape" / "probe.c"
NSBOX = str(REPO / ".venv" / "bin" / "nsbox")

# (check, what it tries) in report order; the probe prints these names.
CHECKS: list[tuple[str, str]] = [
    ("caps-bounding", "bounding set within Podman's 11 capabilities"),
    ("caps-effective", "effective set within Podman's 11 capabilities"),
    ("caps-inheritable-ambient", "CapInh and CapAmb empty"),
    ("seccomp-mode", "seccomp filter mode (2) in the container's processes"),
    ("no-new-privs", "no_new_privs set"),
    ("keyctl", "keyctl(KEYCTL_JOIN_SESSION_KEYRING)"),
    ("add_key", "add_key to the session keyring"),
    ("request_key", "request_key"),
    ("unshare-user", "unshare(CLONE_NEWUSER)"),
    ("unshare-mount", "unshare(CLONE_NEWNS)"),
    ("clone-newuser", "clone(CLONE_NEWUSER)"),
    ("clone-newns", "clone(CLONE_NEWNS)"),
    ("clone3-newuser", "clone3 with CLONE_NEWUSER"),
    ("mount-tmpfs", "mount a tmpfs"),
    ("mount-cgroup-v1", "mount a cgroup v1 hierarchy (CVE-2022-0492)"),
    ("mount-cgroup2", "mount cgroup2"),
    ("mount-proc", "mount another procfs"),
    ("bind-mount-root", "bind-mount /"),
    ("umount", "umount2"),
    ("pivot_root", "pivot_root"),
    ("open_tree", "open_tree(OPEN_TREE_CLONE) of /"),
    ("fsopen", "fsopen(\"tmpfs\")"),
    ("move_mount", "move_mount"),
    ("cgroup-release-agent", "open a cgroup release_agent for writing (CVE-2022-0492)"),
    ("setns", "setns into a namespace"),
    ("bpf", "bpf(BPF_MAP_CREATE)"),
    ("perf_event_open", "perf_event_open"),
    ("userfaultfd", "userfaultfd"),
    ("io_uring_setup", "io_uring_setup"),
    ("socket-af-alg", "socket(AF_ALG)"),
    ("socket-af-vsock", "socket(AF_VSOCK)"),
    ("init_module", "init_module"),
    ("finit_module", "finit_module"),
    ("delete_module", "delete_module"),
    ("kexec_load", "kexec_load"),
    ("kexec_file_load", "kexec_file_load"),
    ("reboot", "reboot"),
    ("swapon", "swapon"),
    ("clock_settime", "clock_settime(CLOCK_REALTIME)"),
    ("settimeofday", "settimeofday"),
    ("sethostname", "sethostname"),
    ("setdomainname", "setdomainname"),
    ("syslog-read", "read the kernel log (dmesg)"),
    ("kallsyms-addresses", "kernel addresses in /proc/kallsyms"),
    ("open_by_handle_at", "open_by_handle_at (the shocker escape)"),
    ("personality-read-implies-exec", "personality(READ_IMPLIES_EXEC)"),
    ("ptrace-attach-pid1", "ptrace PID 1"),
    ("ptrace-attach-child", "ptrace another process"),
    ("kcmp", "kcmp of another process"),
    ("process_vm_readv", "process_vm_readv of another process"),
    ("socket-raw", "raw IP socket"),
    ("socket-packet", "packet socket"),
    ("net-admin-set-mtu", "network administration (SIOCSIFMTU)"),
    ("mknod-block", "mknod a block device"),
    ("mknod-char-mem", "mknod /dev/mem"),
    ("dev-contents", "/dev holds only the standard devices"),
    ("open-host-block-device", "open the host's block device"),
    ("read-proc-kcore", "read /proc/kcore"),
    ("read-proc-keys", "read /proc/keys"),
    ("read-proc-timer-list", "read /proc/timer_list"),
    ("read-sys-firmware", "read /sys/firmware"),
    ("write-sysrq-trigger", "write /proc/sysrq-trigger"),
    ("write-core-pattern", "write /proc/sys/kernel/core_pattern (its own value)"),
    ("write-proc-sys-vm", "write /proc/sys/vm/swappiness (its own value)"),
    ("write-sys-kernel-uevent-helper", "write /sys/kernel/uevent_helper (its own value)"),
    ("write-sys-module-param", "write a module parameter in /sys/module (its own value)"),
    ("fd-hygiene", "no fds but stdio in the container's process"),
    ("cwd-inside-root", "working directory inside the container"),
    ("write-proc-self-exe", "open /proc/self/exe for writing (CVE-2019-5736)"),
    ("write-proc-1-exe", "open /proc/1/exe for writing (CVE-2019-5736)"),
    ("tiocsti", "TIOCSTI terminal input injection"),
    ("fork-bomb", "fork bomb (stopped by the pids limit)"),
    ("fill-shm", "fill /dev/shm (stopped at its size)"),
]
# Checks the probe runs one by one (they are not part of `probe all`).
SLOW_CHECKS = ("fork-bomb", "fill-shm")
SAFE = ("blocked", "ok")


def build_probe(cache_dir: Path) -> Path:
    """The static probe binary, compiled once per source version."""
    digest = hashlib.sha256(PROBE_SOURCE.read_bytes()).hexdigest()[:16]
    target = cache_dir / f"probe-{digest}"
    if not target.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = target.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run(["cc", "-static", "-O1", "-o", str(staging), str(PROBE_SOURCE)],
                       check=True, capture_output=True)
        staging.rename(target)
    return target


def parse(output: str) -> dict[str, tuple[str, str]]:
    """{check: (verdict, detail)} from probe output."""
    results = {}
    for line in output.splitlines():
        parts = line.split(" ", 2)
        if len(parts) >= 2 and parts[1] in ("blocked", "ok", "ALLOWED", "WEAK"):
            results[parts[0]] = (parts[1], parts[2] if len(parts) > 2 else "")
    return results


class Engine:
    """The nsbox CLI over a private --root/--runroot."""

    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        self.prefix = [NSBOX, "--root", str(root / "lib"), "--runroot", str(root / "run")]
        self.env = env

    def __call__(self, *args: str, check: bool = False, timeout: float = 120
                 ) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self.prefix, *args], capture_output=True, text=True,
                              timeout=timeout, env=self.env)
        if check and proc.returncode != 0:
            raise RuntimeError(f"nsbox {' '.join(args)} -> {proc.returncode}: {proc.stderr}")
        return proc

    def remove_all(self) -> None:
        ids = self("ps", "-a", "-q", "--no-trunc").stdout.split()
        if ids:
            self("rm", "-f", *ids)


def run_battery(engine: Engine, probe: Path, run_args: list[str]) -> dict[str, tuple[str, str]]:
    """Every check, in a container made with RUN_ARGS; one result per check."""
    mount = ["-v", f"{probe}:/probe:ro"]
    # PID 1 is a shell, so ptrace of PID 1 targets another process than the probe.
    main = engine("run", "--rm", *mount, *run_args, "busybox", "sh", "-c", "/probe all; true")
    results = parse(main.stdout)
    for check in SLOW_CHECKS:
        out = engine("run", "--rm", *mount, *run_args, "busybox", "/probe", check)
        results.update(parse(out.stdout))
    tail = (main.stderr or main.stdout).strip().splitlines()
    for name, _ in CHECKS:
        results.setdefault(name, ("MISSING", tail[-1] if tail else ""))
    return results


def exec_results(engine: Engine, probe: Path, run_args: list[str]) -> dict[str, tuple[str, str]]:
    """Capabilities, seccomp and fd hygiene of a process started with `nsbox exec`."""
    name = f"battery-exec-{os.getpid()}"
    engine("run", "-d", "--name", name, "-v", f"{probe}:/probe:ro", *run_args, "busybox",
           "sleep", "600", check=True)
    try:
        out = engine("exec", name, "/probe", "caps", "seccomp", "fds")
        return parse(out.stdout)
    finally:
        engine("rm", "-f", name)


def write_report(out: Path, default: dict, privileged: dict, exec_default: dict) -> None:
    lines = [
        "# Security: the default profile and the escape battery",
        "",
        "Generated by `make security-report` (tests/security_battery.py); the same checks run in",
        "the test suite (tests/test_security_battery.py).  Each row is one step of a container",
        "escape, attempted with the real system call by a static probe (tests/escape/probe.c)",
        "inside a busybox container: **blocked** / **ok** is the safe outcome, **ALLOWED** /",
        "**WEAK** means the container could do it.  The `--privileged` column shows what that",
        "flag gives away.",
        "",
        "| check | what the probe tries | default | --privileged |",
        "|---|---|---|---|",
    ]

    def cell(results: dict, name: str) -> str:
        verdict, detail = results.get(name, ("-", ""))
        detail = detail.replace("|", "\\|").strip()
        shown = f"**{verdict}**" if verdict not in SAFE else verdict
        return f"{shown} {detail}".strip()

    for name, what in CHECKS:
        lines.append(f"| `{name}` | {what} | {cell(default, name)} | {cell(privileged, name)} |")
    lines += ["", "In a process started by `nsbox exec` (default profile):", "",
              "| check | result |", "|---|---|"]
    for name in sorted(exec_default):
        lines.append(f"| `{name}` | {cell(exec_default, name)} |")
    weak = [n for n, _ in CHECKS if default.get(n, ("MISSING",))[0] not in SAFE]
    lines += ["", f"Default profile: {len(CHECKS) - len(weak)} of {len(CHECKS)} checks safe"
              + (f"; not safe: {', '.join(weak)}." if weak else "."), ""]
    text = out.read_text() if out.exists() else ""
    start, end = "<!-- battery:start -->", "<!-- battery:end -->"
    table = "\n".join(lines)
    if start in text and end in text:
        text = text[:text.index(start) + len(start)] + "\n" + table + "\n" + text[text.index(end):]
    else:
        text = f"{start}\n{table}\n{end}\n" + text
    out.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "security.md"))
    args = parser.parse_args()
    # Root's default network is the bridge: never on the real host's network (as conftest.py).
    os.environ.setdefault("NSBOX_DEFAULT_NETWORK", "none")
    work = Path(tempfile.mkdtemp(prefix="nsbox-battery-"))
    engine = Engine(work)
    try:
        probe = build_probe(work / "probe")
        default = run_battery(engine, probe, [])
        privileged = run_battery(engine, probe, ["--privileged"])
        exec_default = exec_results(engine, probe, [])
        write_report(Path(args.out), default, privileged, exec_default)
    finally:
        engine.remove_all()
        shutil.rmtree(work, ignore_errors=True)
    unsafe = [n for n, _ in CHECKS if default.get(n, ("MISSING",))[0] not in SAFE]
    print(f"wrote {args.out}; default profile unsafe checks: {unsafe or 'none'}")
    return 1 if unsafe else 0


if __name__ == "__main__":
    sys.exit(main())
