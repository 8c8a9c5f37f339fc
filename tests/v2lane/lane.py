#!/usr/bin/env python3
"""Run nsbox's cgroup v2 tests on a real cgroup v2 kernel, inside qemu.

The development host is a hybrid cgroup host whose v1 controllers cannot be
moved, so the cgroup v2 code paths are proved in a guest instead:

* Debian's own kernel (the package `linux-image-amd64` points at) is fetched
  with `apt-get download` and unpacked into `.cache/v2lane/` (never installed);
* an initramfs is written here from that kernel's virtio/9p/overlay modules,
  /bin/busybox and `init.sh` beside this file;
* qemu (TCG, 2 vCPUs, no network) boots it with `cgroup_no_v1=all`, the guest
  mounts the host's root read-only over 9p, a fresh cgroup2 on /sys/fs/cgroup,
  tmpfs on /tmp, /run and /var/tmp, and an overlay over the repository, then
  runs the tests marked `cgroupv2` with the repository's own .venv;
* the guest prints an exit marker on the serial console and powers off; this
  script prints the pytest output and exits with pytest's exit code.

Exit codes: pytest's own (0 passed, 1 failed, 5 nothing selected, ...),
77 when something the lane needs is missing (qemu, the venv, root, a kernel
apt cannot fetch), 124 when it timed out, 125 when the lane itself broke (qemu
failed, the guest's init failed); the console log is kept in .cache/v2lane/.

    tests/v2lane/lane.py                          # every test marked cgroupv2
    tests/v2lane/lane.py tests/test_cgroups_v2.py -k memory -x
    tests/v2lane/lane.py --build-only             # fetch the kernel, nothing else
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import secrets
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from guest_image import (
    BUSYBOX,
    EXIT_LANE_ERROR,
    EXIT_TIMEOUT,
    META_PACKAGE,
    Kernel,
    LaneError,
    MissingPrerequisite,
    base_initramfs,
    ensure_kernel,
    job_initramfs,
    run_captured,
)

log = logging.getLogger("v2lane")

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO / ".cache" / "v2lane"
QEMU = "qemu-system-x86_64"
KERNEL_ARGS = (
    "console=ttyS0",
    "cgroup_no_v1=all",  # every controller on cgroup2, as on a pure v2 host
    "panic=-1",          # a guest panic reboots, and -no-reboot turns that into qemu's exit
    "quiet",
    "mitigations=off",   # TCG pays for every mitigation and the guest runs only our tests
    "8250.nr_uarts=1",
)
MEMORY_MIB = 2048
VCPUS = 2
DISK_MIB = 64  # a virtio disk so io.max has a real major:minor
PER_TEST_TIMEOUT = 240  # TCG is 13 to 35 times slower than the host
# For a lane that hangs as a whole; a hung test is stopped by PER_TEST_TIMEOUT.
DEFAULT_TIMEOUT = 900


# ------------------------------------------------------------------- the job
def default_test_files(repo: Path) -> list[str]:
    """Test files that mention the cgroupv2 marker (or its helper module).

    Collecting only these keeps TCG from importing the whole suite to run a
    handful of tests; `-m cgroupv2` then picks the tests inside them.
    """
    found = []
    tests = repo / "tests"
    for path in sorted(tests.rglob("*.py")):
        if not (path.name.startswith("test_") or path.name.endswith("_test.py")):
            continue
        if path.name == "test_v2lane.py":  # the lane's own launcher, never in the guest
            continue
        if re.search(r"\bcgroupv2\b", path.read_text(errors="replace")):
            found.append(str(path.relative_to(repo)))
    return found


def guest_environment() -> dict[str, str]:
    """The environment pytest gets in the guest: fixed, plus CI and NSBOX_* from here."""
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "COLUMNS": "100",
        "PYTHONDONTWRITEBYTECODE": "1",
        "NSBOX_V2LANE": "1",
        "NSBOX_V2LANE_DISK": "/dev/vda",
    }
    for key, value in os.environ.items():
        if key == "CI" or (key.startswith("NSBOX_") and key not in env):
            env[key] = value
    return env


def job_script(token: str, repo: Path, python: str, pytest_args: Sequence[str],
               env: dict[str, str]) -> str:
    """Shell text init.sh sources: lane settings, exported env, pytest's argv."""
    q = shlex.quote
    lines = [f"LANE_TOKEN={q(token)}", f"LANE_REPO={q(str(repo))}", f"LANE_PYTHON={q(python)}"]
    lines += [f"export {key}={q(value)}" for key, value in sorted(env.items())]
    lines.append("set -- " + " ".join(q(arg) for arg in pytest_args))
    return "\n".join(lines) + "\n"


def names_test_paths(args: Sequence[str], repo: Path) -> bool:
    """Does this pytest argv name files or directories (tests/x.py, dir, x.py::test)?"""
    return any(not arg.startswith("-") and (repo / arg.split("::")[0]).exists()
               for arg in args)


def pytest_argv(user_args: Sequence[str], repo: Path) -> list[str]:
    fixed = ["-p", "no:cacheprovider", "--basetemp=/tmp/v2lane-pytest", "-v", "-ra",
             f"--timeout={PER_TEST_TIMEOUT}", "-m", "cgroupv2"]
    # User arguments come last so that e.g. `-m "cgroupv2 and not slow"` wins;
    # without paths among them (`-k memory`) the default files are still used.
    paths = [] if names_test_paths(user_args, repo) else default_test_files(repo)
    return fixed + list(user_args) + paths


def precompile(python: str, guest_pytest: Sequence[str], repo: Path) -> None:
    """Have pytest on the host write the .pyc files the guest would compile.

    Compiling (and assert-rewriting) the test modules takes a few seconds
    under TCG and well under one here; the guest sees the host's __pycache__
    through 9p. Collection only: nothing runs, and a failure is left for the
    guest to report.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with contextlib.suppress(subprocess.TimeoutExpired):
        run_captured([python, "-m", "pytest", "--collect-only", "-q", *guest_pytest], cwd=repo,
             env=env, timeout=120)


# ------------------------------------------------------------------ qemu
def qemu_command(kernel: Kernel, initrd: Path, disk: Path) -> list[str]:
    argv = [QEMU, "-accel", "tcg", "-machine", "pc", "-cpu", "max",
            "-smp", str(VCPUS), "-m", str(MEMORY_MIB)]
    argv += [
        "-kernel", str(kernel.boot_image), "-initrd", str(initrd),
        "-append", " ".join(KERNEL_ARGS),
        "-nographic", "-monitor", "none", "-no-reboot", "-nic", "none",
        # multidevs=remap: the host's /, /proc, /sys ... are different devices
        # whose inode numbers would otherwise collide in the guest.
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
                   "multidevs=remap",
        "-drive", f"file={disk},if=virtio,format=raw",
    ]
    return argv


# The BIOS clears the screen; those escapes are noise in a log.
TERMINAL_CONTROL = re.compile(r"\x1b(?:\[[0-9;?]*[A-Za-z]|c)")


@dataclass
class GuestResult:
    exit_code: int | None  # pytest's, from the marker; None when none was printed
    error: str | None      # what the guest init reported as broken
    timed_out: bool
    console: list[str]
    boot_seconds: float | None = None   # qemu start to pytest start
    tests_seconds: float | None = None  # pytest start to the exit marker


def run_guest(argv: Sequence[str], token: str, timeout: float, echo: bool,
              echo_boot: bool) -> GuestResult:
    """Boot, stream the console, stop at the exit marker or the deadline."""
    begin_marker = f"NSBOX-V2LANE-BEGIN-{token}"
    exit_re = re.compile(rf"NSBOX-V2LANE-EXIT-{token}=(\d+)")
    error_re = re.compile(r"NSBOX-V2LANE-ERROR: (.*)")
    console: list[str] = []
    exit_code: int | None = None
    error: str | None = None
    in_tests = False
    pending = b""
    started = time.monotonic()
    deadline = started + timeout
    began: float | None = None
    ended: float | None = None

    def result(timed_out: bool) -> GuestResult:
        return GuestResult(exit_code, error, timed_out, console,
                           began - started if began else None,
                           ended - began if began and ended else None)

    proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return result(timed_out=exit_code is None)
            if not selector.select(timeout=min(remaining, 1.0)):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break  # qemu exited
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                line = TERMINAL_CONTROL.sub("", raw.decode(errors="replace")).rstrip("\r")
                console.append(line)
                if begin_marker in line:
                    in_tests = True
                    began = time.monotonic()
                    continue
                if match := exit_re.search(line):
                    exit_code = int(match.group(1))
                    ended = time.monotonic()
                    in_tests = False
                    # The guest powers off right after; give it a moment, then stop it.
                    deadline = min(deadline, time.monotonic() + 15)
                    continue
                if match := error_re.search(line):
                    error = match.group(1)
                if echo and (in_tests or echo_boot or error is not None):
                    print(line, flush=True)
        if pending:
            console.append(pending.decode(errors="replace").rstrip("\r"))
        return result(timed_out=False)
    finally:
        selector.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)  # only the qemu this function started
        proc.wait()
        proc.stdout.close()


# ------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run the tests marked cgroupv2 in a qemu guest booted with a "
                    "pure cgroup v2 Debian kernel.",
        epilog="Arguments after the options go to pytest in the guest (default: every "
               "tests/ file that mentions cgroupv2); `-m cgroupv2` is always passed first.")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="hard limit for the whole guest run in seconds "
                             f"(default {DEFAULT_TIMEOUT})")
    parser.add_argument("--cache", type=Path,
                        default=Path(os.environ.get("NSBOX_V2LANE_CACHE", DEFAULT_CACHE)),
                        help="kernel cache directory (default .cache/v2lane in the repo)")
    parser.add_argument("--kernel-package",
                        help=f"Debian kernel package to boot (default: what {META_PACKAGE}"
                             " depends on)")
    parser.add_argument("--python", default=str(REPO / ".venv" / "bin" / "python"),
                        help="interpreter with pytest and nsbox, as seen by the guest")
    parser.add_argument("--build-only", action="store_true",
                        help="fetch and unpack the kernel, build the initramfs, then stop")
    parser.add_argument("--show-boot", action="store_true",
                        help="echo the whole console, not just the pytest output")
    parser.add_argument("--print-qemu-command", action="store_true",
                        help="print the qemu command line before running it")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.pytest_args[:1] == ["--"]:
        args.pytest_args = args.pytest_args[1:]
    return args


def check_host(python: str) -> None:
    if shutil.which(QEMU) is None:
        raise MissingPrerequisite(f"{QEMU} not found: apt-get install --no-install-recommends "
                        "qemu-system-x86 (make test-v2 does)")
    if not Path(BUSYBOX).is_file():
        raise MissingPrerequisite(f"{BUSYBOX} missing: apt-get install busybox-static")
    if not os.access(python, os.X_OK):
        raise MissingPrerequisite(f"{python} missing: run `make deps` to create the venv")
    if os.geteuid() != 0:
        raise MissingPrerequisite("run as root: the guest sees the host's files as root over 9p")


def lane(args: argparse.Namespace) -> int:
    started = time.monotonic()
    check_host(args.python)
    kernel = ensure_kernel(args.cache.resolve(), args.kernel_package)
    base = base_initramfs(kernel)
    if args.build_only:
        log.info("kernel %s ready in %s", kernel.release, kernel.directory)
        return 0
    token = secrets.token_hex(8)
    guest_pytest = pytest_argv(args.pytest_args, REPO)
    precompile(args.python, guest_pytest, REPO)
    script = job_script(token, REPO, args.python, guest_pytest, guest_environment())
    with tempfile.TemporaryDirectory(prefix="nsbox-v2lane.") as tmp:
        initrd = Path(tmp) / "initrd.cpio"
        initrd.write_bytes(base + job_initramfs(script))
        disk = Path(tmp) / "disk.raw"
        with open(disk, "wb") as f:
            f.truncate(DISK_MIB << 20)  # sparse: costs no space until the guest writes
        argv = qemu_command(kernel, initrd, disk)
        if args.print_qemu_command:
            print("+ " + shlex.join(argv), flush=True)
        print(f"v2lane: booting {kernel.release} under qemu TCG: pytest "
              f"{shlex.join(guest_pytest)}", flush=True)
        booted = time.monotonic()
        result = run_guest(argv, token, args.timeout, echo=True, echo_boot=args.show_boot)
    log_path = args.cache / "console.log"
    with contextlib.suppress(OSError):
        log_path.write_text("\n".join(result.console) + "\n")
    elapsed = time.monotonic() - started
    if result.exit_code is not None and result.error is None:
        print(f"v2lane: guest pytest exit code {result.exit_code}; {elapsed:.1f} s in all: "
              f"{booted - started:.1f} s setup, {result.boot_seconds or 0:.1f} s boot to pytest,"
              f" {result.tests_seconds or 0:.1f} s pytest, console log: {log_path}", flush=True)
        return result.exit_code
    tail = "\n".join(result.console[-40:])
    if not args.show_boot and result.error is None:  # the error's lines were echoed
        print(f"v2lane: last console lines:\n{tail}", file=sys.stderr)
    if result.timed_out:
        print(f"v2lane: TIMEOUT after {args.timeout:.0f} s; qemu killed; console log: "
              f"{log_path}", file=sys.stderr)
        return EXIT_TIMEOUT
    reason = result.error or "qemu exited without the guest's exit marker"
    print(f"v2lane: lane broken: {reason}; console log: {log_path}", file=sys.stderr)
    return result.exit_code if result.exit_code is not None else EXIT_LANE_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="v2lane: %(message)s")
    args = parse_args(argv)
    try:
        return lane(args)
    except LaneError as exc:
        print(f"v2lane: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
