"""Container-escape classes attempted for real through `nsbox-runtime`.

Each test makes the attack a malicious image or config would make and checks
that it fails safely:

* CVE-2019-5736: the container re-executing or opening the runtime's own
  executable (the host Python interpreter) through /proc;
* CVE-2024-21626: a file descriptor of the runtime (or inherited by it)
  reaching the container process, directly or as its working directory;
* CVE-2019-16884: a /proc that is not procfs (a symlink in the image, or a
  tmpfs mounted there), which would make the runtime's writes to /proc land
  in a fake file;
* mount destinations that are symlinks leading out of the rootfs;
* maskedPaths / readonlyPaths / root.readonly really being enforced.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import helpers
import pytest
from runtime_leaks import assert_nothing_left

SLEEP = ["sleep", "60"]


# ---------------------------------------------------------------- helpers
def runtime_interpreter() -> str:
    """The real executable of the runtime process: the shebang of nsbox-runtime, resolved."""
    script = os.environ.get("NSBOX_TEST_RUNTIME") or helpers.nsbox_runtime_path()
    with open(script, "rb") as f:
        head = f.read(256)
    if not head.startswith(b"#!"):
        return os.path.realpath(script)
    return os.path.realpath(head[2:].split(b"\n", 1)[0].split()[0].decode())


def file_fingerprint(path: str) -> tuple[str, int, int]:
    st = os.stat(path)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return digest, st.st_mtime_ns, st.st_size


def state_of(run_runtime: Callable, cid: str) -> dict:
    return json.loads(run_runtime("state", cid).stdout)


def start_detached(run_runtime: Callable, bundle: Path, cid: str) -> int:
    """`run -d` the bundle; returns the host pid of its init."""
    run_runtime("run", "--detach", "--bundle", str(bundle), cid)
    return state_of(run_runtime, cid)["pid"]


def one_line_error(result) -> str:
    assert result.returncode != 0, f"expected a failure, got rc=0\n{result.stdout}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{result.stderr}"
    return lines[0]


def with_inherited_dir_fd(runtime: list[str], fd: int, directory: str) -> list[str]:
    """Argv prefix running the runtime with FD open (not close-on-exec) on a host DIRECTORY.

    This is what a careless caller, or a runtime bug, hands the container:
    CVE-2024-21626 was an fd on the host's /sys/fs/cgroup reaching the init.
    """
    return ["sh", "-c", f'exec {fd}<"$0" && exec "$@"', directory, *runtime]


# `ls -l` of the shell's own fd table (the shell opens nothing while ls runs).
LIST_FDS = "ls -l /proc/$$/fd"


def parse_fd_listing(text: str) -> dict[int, str]:
    return {int(m.group(1)): m.group(2) for m in re.finditer(r" (\d+) -> (.*)", text)}


def fds_of(pid: int) -> dict[int, str]:
    out = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
    return out


# ============================================================ CVE-2019-5736
@pytest.mark.parametrize("target", ["/proc/self/exe", "/proc/./self/exe", "/tmp/link-to-exe",
                                    "/tmp/shebang.sh", "/tmp/chain.sh"])
def test_init_cannot_execute_runtime_binary(bundle_factory, run_runtime, container_id,
                                            runtime_root, target):
    """The container's own process, given the runtime's exe by any route, is refused."""
    b = bundle_factory(args=[target, "-c", "print('ESCAPED')"], root__readonly=False)
    rootfs = b / "rootfs"
    (rootfs / "tmp/link-to-exe").symlink_to("/proc/self/exe")
    (rootfs / "tmp/shebang.sh").write_text("#!/proc/self/exe\nprint('ESCAPED')\n")
    (rootfs / "tmp/chain.sh").write_text("#!/tmp/shebang.sh\n")
    for name in ("shebang.sh", "chain.sh"):
        os.chmod(rootfs / "tmp" / name, 0o755)
    exe = runtime_interpreter()
    before = file_fingerprint(exe)
    result = run_runtime("run", "--bundle", str(b), container_id, check=False)
    assert result.returncode != 0
    assert "ESCAPED" not in result.stdout + result.stderr
    assert "runtime" in result.stderr and "refus" in result.stderr, result.stderr
    assert file_fingerprint(exe) == before
    assert_nothing_left(runtime_root, b, container_id)


@pytest.mark.parametrize("target", ["/proc/self/exe", "/tmp/shebang.sh", "/tmp/link-to-exe"])
def test_exec_cannot_execute_runtime_binary(bundle_factory, run_runtime, container_id, target):
    b = bundle_factory(args=SLEEP)
    rootfs = b / "rootfs"
    (rootfs / "tmp/shebang.sh").write_text("#!/proc/self/exe\nprint('ESCAPED')\n")
    os.chmod(rootfs / "tmp/shebang.sh", 0o755)
    (rootfs / "tmp/link-to-exe").symlink_to("/proc/self/exe")
    exe = runtime_interpreter()
    before = file_fingerprint(exe)
    start_detached(run_runtime, b, container_id)
    result = run_runtime("exec", container_id, target, "-c", "print('ESCAPED')", check=False)
    assert result.returncode != 0
    assert "ESCAPED" not in result.stdout + result.stderr
    assert "refus" in result.stderr, result.stderr
    # The container is unharmed and a normal exec still works.
    assert run_runtime("exec", container_id, "echo", "ok").stdout == "ok\n"
    assert file_fingerprint(exe) == before


# A prober run as the container's init: it scans /proc for processes whose exe is
# not the container's busybox and tries to readlink and open each one, for reading
# and (without writing a byte) for appending, until /tmp/stop appears.  "SAW"
# lines are the runtime's exec setup processes (comm nsbox-runtime / python) it
# caught in their window; "LEAK" lines are successes.
PROBER = r"""
while [ ! -e /tmp/stop ]; do
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    [ "$p" = "$$" ] && continue
    comm=$(cat $d/comm 2>/dev/null) || continue
    case "$comm" in nsbox-runtime|python*) echo "SAW $p" >> /tmp/probe.log;; esac
    l=$(readlink $d/exe 2>/dev/null) || l=DENIED
    [ "$l" = /bin/busybox ] && continue
    [ "$l" = DENIED ] || echo "LEAK readlink $p $comm $l" >> /tmp/probe.log
    # What was opened is judged by the opened fd itself: by then the process may
    # have exec'd its (harmless) busybox program.
    o=$( (exec 3< $d/exe && readlink /proc/self/fd/3) 2>/dev/null ) &&
      [ "$o" != /bin/busybox ] && echo "LEAK open-read $p $comm $o" >> /tmp/probe.log
    o=$( (exec 3>> $d/exe && readlink /proc/self/fd/3) 2>/dev/null ) &&
      [ "$o" != /bin/busybox ] && echo "LEAK open-write $p $comm $o" >> /tmp/probe.log
  done
done
echo done > /tmp/finished
"""


def test_exec_setup_process_is_not_reachable_through_proc(bundle_factory, run_runtime,
                                                          container_id):
    """While `exec` sets up its process inside the container (still the host Python),
    nothing in the container can open that process's /proc/PID/exe."""
    b = bundle_factory(args=["sh", "-c", PROBER], root__readonly=False)
    exe = runtime_interpreter()
    before = file_fingerprint(exe)
    start_detached(run_runtime, b, container_id)
    deadline = time.monotonic() + 8
    execs = 0
    log = b / "rootfs/tmp/probe.log"
    while time.monotonic() < deadline and execs < 60:
        run_runtime("exec", container_id, "true")
        execs += 1
        text = log.read_text() if log.exists() else ""
        # Enough once several setup processes were caught (each probed in full).
        if execs >= 10 and (text.count("SAW") >= 5 or "LEAK" in text):
            break
    run_runtime("exec", container_id, "touch", "/tmp/stop")
    finished = b / "rootfs/tmp/finished"
    for _ in range(200):
        if finished.exists():
            break
        time.sleep(0.05)
    log_text = log.read_text() if log.exists() else ""
    leaks = [line for line in log_text.splitlines() if line.startswith("LEAK")]
    assert not leaks, f"the container reached a runtime process's exe:\n{log_text}"
    seen = log_text.count("SAW")
    # The window is short; with dozens of execs the prober always caught some here.
    # If it ever did not, the test proved nothing: say so rather than pass silently.
    assert seen > 0, f"the prober never saw an exec setup process in {execs} execs"
    assert file_fingerprint(exe) == before


def test_exec_setup_process_with_cap_sys_ptrace(bundle_factory, run_runtime, container_id):
    """With CAP_SYS_PTRACE non-dumpable is no barrier: the runtime then runs from a
    sealed memfd copy of its interpreter, so /proc/PID/exe never leads to the host's."""
    def grant_ptrace(spec):
        for key in ("bounding", "effective", "permitted"):
            spec["process"]["capabilities"][key].append("CAP_SYS_PTRACE")

    b = bundle_factory(args=["sh", "-c", PROBER], root__readonly=False, mutate=grant_ptrace)
    exe = runtime_interpreter()
    before = file_fingerprint(exe)
    start_detached(run_runtime, b, container_id)
    log = b / "rootfs/tmp/probe.log"
    for _ in range(30):
        run_runtime("exec", container_id, "true")
        if log.exists() and "LEAK" in log.read_text():
            break
    run_runtime("exec", container_id, "touch", "/tmp/stop")
    assert file_fingerprint(exe) == before
    text = log.read_text() if log.exists() else ""
    # The sealed copy may be looked at and read, never written; nothing else may be reached.
    leaks = [line for line in text.splitlines() if line.startswith("LEAK")
             and not ("/memfd:nsbox-runtime" in line and "open-write" not in line)]
    assert not leaks, text


def test_created_init_is_not_reachable_from_exec(bundle_factory, run_runtime, container_id):
    """Between create and start the init is still the runtime's Python: a process
    exec'd into the created container must not read its exe, fds or memory."""
    b = bundle_factory(args=SLEEP)
    run_runtime("create", "--bundle", str(b), container_id)
    # Listing /proc/1/fd is allowed (the directory belongs to root), using an entry is not.
    probe = ("for what in exe cwd root; do readlink /proc/1/$what && echo LEAK $what; done;"
             " for f in /proc/1/fd/*; do readlink $f && echo LEAK readlink $f;"
             " (exec 4< $f) && echo LEAK open $f; done;"
             " head -c 1 /proc/1/mem && echo LEAK mem;"
             " head -c 4 /proc/1/exe >/dev/null && echo LEAK exe-open; cat /proc/1/comm")
    result = run_runtime("exec", container_id, "sh", "-c", probe, check=False)
    assert "LEAK" not in result.stdout, result.stdout + result.stderr
    # The probe did reach the init (its comm is readable), so the denials were real.
    assert result.stdout.strip().splitlines()[-1] != "sleep"
    assert result.stderr.count("Permission denied") >= 4, result.stderr


# ============================================================ CVE-2024-21626
def test_init_gets_only_stdio_fds(bundle_factory, runtime, runtime_root, container_id, tmp_path):
    """Even with fd 7 (a host directory) inherited by the runtime, the container's
    process holds fds 0-2 only, and none of them points at the state dir or bundle."""
    b = bundle_factory(args=["sh", "-c", LIST_FDS])
    prefix = with_inherited_dir_fd(runtime, 7, str(tmp_path))
    result = helpers.run_cli(prefix, "run", "--bundle", str(b), container_id)
    fds = parse_fd_listing(result.stdout)
    assert set(fds) == {0, 1, 2}, result.stdout
    for target in fds.values():
        assert str(runtime_root) not in target and str(b) not in target, result.stdout


def test_running_init_fds_seen_from_host(bundle_factory, runtime, run_runtime, runtime_root,
                                         container_id, tmp_path):
    b = bundle_factory(args=SLEEP)
    prefix = with_inherited_dir_fd(runtime, 7, str(tmp_path))
    helpers.run_cli(prefix, "run", "--detach", "--bundle", str(b), container_id)
    pid = state_of(run_runtime, container_id)["pid"]
    fds = fds_of(pid)
    assert set(fds) == {0, 1, 2}, fds
    assert not any(str(tmp_path) in target for target in fds.values()), fds


def test_exec_gets_only_stdio_fds(bundle_factory, runtime, run_runtime, container_id, tmp_path):
    b = bundle_factory(args=SLEEP)
    start_detached(run_runtime, b, container_id)
    prefix = with_inherited_dir_fd(runtime, 7, str(tmp_path))
    result = helpers.run_cli(prefix, "exec", container_id, "sh", "-c", LIST_FDS)
    assert set(parse_fd_listing(result.stdout)) == {0, 1, 2}, result.stdout
    assert str(tmp_path) not in result.stdout
    # Seen from the host, on a detached exec that stays alive.
    pid_file = tmp_path / "exec.pid"
    helpers.run_cli(prefix, "exec", "--detach", "--pid-file", str(pid_file), container_id,
                    "sleep", "30")
    fds = fds_of(int(pid_file.read_text()))
    assert set(fds) == {0, 1, 2}, fds
    assert not any(str(tmp_path) in target for target in fds.values()), fds


def test_preserved_fds_are_the_only_extra_ones(bundle_factory, runtime, container_id, tmp_path):
    b = bundle_factory(args=["sh", "-c", LIST_FDS + "; cat <&3"])
    secret = tmp_path / "passed.txt"
    secret.write_text("handed-over\n")
    # fd 3 is the file handed over on purpose, fd 7 a host directory that must not leak.
    prefix = ["sh", "-c", 'exec 3<"$0" 7<"$1" && shift && exec "$@"', str(secret),
              str(tmp_path), *runtime]
    result = helpers.run_cli(prefix, "run", "--preserve-fds", "1", "--bundle", str(b),
                             container_id)
    fds = parse_fd_listing(result.stdout)
    assert set(fds) == {0, 1, 2, 3}, result.stdout
    assert fds[3] == str(secret)
    assert result.stdout.endswith("handed-over\n")


def cwd_probe_bundle(bundle_factory, cwd: str) -> Path:
    # Prints where it really is, and what it sees there: the state dir would show
    # exec.fifo / state.json, the test's tmp dir the bundle.
    return bundle_factory(args=["sh", "-c", "echo CWD $(readlink /proc/self/cwd); pwd -P; ls -a"],
                          process__cwd=cwd)


def assert_cwd_safe(result, tmp_path: Path) -> None:
    if result.returncode != 0:
        line = one_line_error(result)
        assert line.startswith("nsbox-runtime:") and "cwd" in line, line
        assert "CWD" not in result.stdout
        return
    out = result.stdout
    assert "unreachable" not in out, out
    assert str(tmp_path) not in out, out
    for word in out.split():
        assert word not in ("state", "exec.fifo", "state.json", "config.json"), out
        assert not word.startswith("bundle"), out
    cwd_line = next(line for line in out.splitlines() if line.startswith("CWD"))
    assert cwd_line.split()[1].startswith("/"), out


def runtime_with_fds(runtime: list[str], inherit: bool, directory: Path) -> list[str]:
    """The runtime argv, optionally with every fd 3..10 open on a host DIRECTORY."""
    if not inherit:
        return runtime
    # bash, not sh: dash cannot redirect fds above 9.
    opens = " ".join(f'{n}<"$0"' for n in range(3, 11))
    return ["bash", "-c", f'exec {opens} && exec "$@"', str(directory), *runtime]


CWD_CASES = [(fd, False) for fd in range(3, 11)] + [(fd, True) for fd in (3, 7, 10)]


@pytest.mark.parametrize(("fd", "inherit"), CWD_CASES)
def test_cwd_through_proc_self_fd(bundle_factory, runtime, runtime_root, container_id,
                                  tmp_path, fd, inherit):
    """process.cwd /proc/self/fd/N: whatever the runtime has open as fd N (its own
    files, or with `inherit` a host directory its caller left open, the worst case),
    the process must not start with a cwd outside its root."""
    b = cwd_probe_bundle(bundle_factory, f"/proc/self/fd/{fd}")
    result = helpers.run_cli(runtime_with_fds(runtime, inherit, tmp_path), "run", "--bundle",
                             str(b), container_id, check=False)
    assert_cwd_safe(result, tmp_path)
    assert_nothing_left(runtime_root, b, container_id)


@pytest.mark.parametrize(("fd", "inherit"), [(3, False), (5, False), (7, False), (10, False),
                                           (3, True), (7, True)])
def test_exec_cwd_through_proc_self_fd(bundle_factory, runtime, run_runtime, container_id,
                                       tmp_path, fd, inherit):
    b = bundle_factory(args=SLEEP)
    start_detached(run_runtime, b, container_id)
    result = helpers.run_cli(runtime_with_fds(runtime, inherit, tmp_path), "exec", "--cwd", f"/proc/self/fd/{fd}", container_id,
                             "sh", "-c", "echo CWD $(readlink /proc/self/cwd); pwd -P; ls -a",
                             check=False)
    assert_cwd_safe(result, tmp_path)
    # The container survives the attempt.
    assert run_runtime("exec", container_id, "echo", "alive").stdout == "alive\n"


# ============================================================ CVE-2019-16884
@pytest.mark.parametrize("link", ["/", "/tmp", "../../../../../../../../tmp"])
def test_proc_symlink_in_rootfs_is_refused(bundle_factory, run_runtime, runtime_root,
                                           container_id, link):
    b = bundle_factory(args=["sh", "-c", "echo RAN"])
    proc = b / "rootfs/proc"
    proc.rmdir()
    proc.symlink_to(link)
    result = run_runtime("create", "--bundle", str(b), container_id, check=False)
    line = one_line_error(result)
    assert "/proc" in line and "symlink" in line, line
    assert_nothing_left(runtime_root, b, container_id)
    assert os.readlink(proc) == link  # nothing replaced it either


def test_tmpfs_at_proc_is_refused(bundle_factory, run_runtime, runtime_root, container_id):
    """A /proc that is not procfs (here a tmpfs instead of the proc mount) is refused."""
    def fake_proc(spec):
        spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != "/proc"]
        spec["mounts"].insert(0, {"destination": "/proc", "type": "tmpfs", "source": "tmpfs"})

    b = bundle_factory(args=["sh", "-c", "echo RAN"], mutate=fake_proc)
    result = run_runtime("run", "--bundle", str(b), container_id, check=False)
    assert "RAN" not in result.stdout
    line = one_line_error(result)
    assert "/proc" in line, line
    assert_nothing_left(runtime_root, b, container_id)


def test_tmpfs_over_procfs_is_refused(bundle_factory, run_runtime, runtime_root, container_id):
    """A second mount on top of the real procfs would hide it: refused too."""
    b = bundle_factory(args=["sh", "-c", "echo RAN"], mutate=lambda s: s["mounts"].append(
        {"destination": "/proc", "type": "tmpfs", "source": "tmpfs"}))
    result = run_runtime("run", "--bundle", str(b), container_id, check=False)
    assert "RAN" not in result.stdout
    line = one_line_error(result)
    assert "/proc" in line, line
    assert_nothing_left(runtime_root, b, container_id)


def test_tmpfs_at_proc_through_symlink_is_refused(bundle_factory, run_runtime, runtime_root,
                                                  container_id):
    """The same fake /proc, reached through a symlink in the image (rootfs/p -> proc)."""
    def fake_proc(spec):
        spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != "/proc"]
        spec["mounts"].insert(0, {"destination": "/p", "type": "tmpfs", "source": "tmpfs"})

    b = bundle_factory(args=["sh", "-c", "echo RAN"], mutate=fake_proc)
    (b / "rootfs/p").symlink_to("proc")
    result = run_runtime("run", "--bundle", str(b), container_id, check=False)
    assert "RAN" not in result.stdout
    one_line_error(result)
    assert_nothing_left(runtime_root, b, container_id)


def test_bind_of_host_proc_at_proc_is_allowed(bundle_factory, run_runtime, container_id):
    """The check is about the filesystem type, not the mount type: a bind of a real
    procfs stays allowed (as runc allows it)."""
    def bind_proc(spec):
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"]
                                       if n["type"] != "pid"]
        for mount in spec["mounts"]:
            if mount["destination"] == "/proc":
                mount.update(type="bind", source="/proc", options=["rbind"])

    b = bundle_factory(args=["sh", "-c", "stat -f -c %T /proc"], mutate=bind_proc)
    result = run_runtime("run", "--bundle", str(b), container_id)
    assert result.stdout.strip() == "proc"


# ============================================================ symlinked destinations
@pytest.mark.parametrize("link", ["/etc", "../../../../../../../../etc"])
def test_mount_destination_symlink_stays_in_rootfs(bundle_factory, run_runtime, runtime_root,
                                                   container_id, link):
    host_etc = os.stat("/etc")
    host_etc_mounts = [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
                       if line.split()[4] == "/etc"]
    b = bundle_factory(
        args=["sh", "-c", "echo pwned > /evil/marker && ls /etc && grep ' /etc ' /proc/self/mountinfo"],
        mutate=lambda s: s["mounts"].append(
            {"destination": "/evil", "type": "tmpfs", "source": "tmpfs"}))
    (b / "rootfs/evil").symlink_to(link)
    result = run_runtime("run", "--bundle", str(b), container_id)
    lines = result.stdout.splitlines()
    # The tmpfs covers the container's /etc (passwd etc. hidden), not the host's.
    assert lines[0] == "marker", result.stdout
    assert " /etc " in lines[-1] and "tmpfs" in lines[-1], result.stdout
    assert not Path("/etc/marker").exists()
    assert os.stat("/etc").st_mtime_ns == host_etc.st_mtime_ns
    assert [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4] == "/etc"] == host_etc_mounts
    assert (b / "rootfs/etc/passwd").exists()  # the image itself is untouched underneath
    assert_nothing_left(runtime_root, b, container_id)


def test_escaping_destination_does_not_propagate_to_host(bundle_factory, run_runtime,
                                                         container_id, tmp_path):
    """With a shared root, a mount that escaped the rootfs would show up on the host:
    the destination symlink points at a host directory, which must stay empty."""
    outside = tmp_path / "outside"
    outside.mkdir()
    b = bundle_factory(args=SLEEP, linux__rootfsPropagation="shared",
                       mutate=lambda s: s["mounts"].append(
                           {"destination": "/evil", "type": "tmpfs", "source": "tmpfs"}))
    (b / "rootfs/evil").symlink_to(str(outside))
    start_detached(run_runtime, b, container_id)
    assert helpers.mounts_under(outside) == []
    # It landed at the same path, but inside the rootfs.
    assert run_runtime("exec", container_id, "sh", "-c",
                       f"stat -f -c %T {outside}").stdout.strip() == "tmpfs"
    assert list(outside.iterdir()) == []


# ============================================================ masked / read-only
def test_masked_paths_read_empty(bundle_factory, run_runtime, container_id):
    """Masked files are /dev/null binds (read empty), masked directories empty
    read-only tmpfs mounts."""
    # (/proc/kcore is masked too when the container's procfs has one; 6.x kernels
    # may not show it there at all.)
    script = ("for f in /proc/kcore /proc/keys /proc/timer_list; do [ -e $f ] &&"
              " echo \"$f $(stat -c %t:%T $f) $(head -c 100 $f | wc -c)\"; done;"
              " for d in /proc/acpi /proc/scsi /sys/firmware; do"
              " [ -d $d ] && echo \"$d $(stat -f -c %T $d) $(ls -A $d | wc -l)\"; done;"
              " touch /sys/firmware/x; true")
    result = run_runtime("run", "--bundle", str(bundle_factory(args=["sh", "-c", script])),
                         container_id)
    seen = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()}
    assert {"/proc/keys", "/proc/timer_list"} <= set(seen), result.stdout
    for name in ("/proc/kcore", "/proc/keys", "/proc/timer_list"):
        if name in seen:
            assert seen[name] == ["1:3", "0"], result.stdout  # /dev/null, nothing to read
    assert "/sys/firmware" in seen, result.stdout
    for _name, (fstype, count) in ((k, v) for k, v in seen.items() if not k.startswith("/proc/k")
                                  and k != "/proc/timer_list"):
        assert (fstype, count) == ("tmpfs", "0"), result.stdout
    assert "Read-only file system" in result.stderr
    # On the host these are real: the masking is what emptied them.
    assert Path("/proc/timer_list").read_text() and any(Path("/sys/firmware").iterdir())


def test_readonly_paths_and_readonly_root(bundle_factory, run_runtime, container_id):
    # Opening for writing (`true >`) is enough to get EROFS and writes nothing.
    script = ("echo x > /proc/sys/kernel/hostname; true > /proc/irq/default_smp_affinity;"
              " touch /newfile; mkdir /tmp/d; echo end")
    result = run_runtime("run", "--bundle", str(bundle_factory(args=["sh", "-c", script])),
                         container_id)
    assert result.stdout == "end\n"
    errors = result.stderr.splitlines()
    assert len(errors) == 4 and all("Read-only file system" in e for e in errors), result.stderr


def test_writable_root_when_not_readonly(bundle_factory, run_runtime, container_id):
    """Control for the test above: the same writes to / succeed without root.readonly,
    while readonlyPaths stay read-only."""
    b = bundle_factory(args=["sh", "-c", "touch /newfile && echo ok; true > /proc/irq/default_smp_affinity"],
                       root__readonly=False)
    result = run_runtime("run", "--bundle", str(b), container_id, check=False)
    assert result.stdout == "ok\n"
    assert "Read-only file system" in result.stderr
    assert (b / "rootfs/newfile").exists()
