"""The default security profile against the container-escape battery, and its options.

A static probe (tests/escape/probe.c) attempts each escape step with the real
system call inside containers made by the `nsbox` CLI; see
tests/security_battery.py for the list and docs/security.md for the table.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import security_battery as battery


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory):
    box = battery.Engine(tmp_path_factory.mktemp("battery"))
    yield box
    box.remove_all()


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return battery.build_probe(tmp_path_factory.mktemp("probe"))


@pytest.fixture(scope="module")
def default_results(engine, probe) -> dict:
    return battery.run_battery(engine, probe, [])


@pytest.fixture(scope="module")
def privileged_results(engine, probe) -> dict:
    return battery.run_battery(engine, probe, ["--privileged"])


def run_probe(engine, probe: Path, *args: str) -> subprocess.CompletedProcess:
    return engine("run", "--rm", "-v", f"{probe}:/probe:ro", *args)


@pytest.mark.parametrize("check", [name for name, _ in battery.CHECKS])
def test_default_profile_stops_escape_step(default_results, check):
    verdict, detail = default_results[check]
    assert verdict in battery.SAFE, f"{check}: {verdict} {detail}"


def test_exec_process_is_as_confined_as_pid1(engine, probe):
    results = battery.exec_results(engine, probe, [])
    for name in ("seccomp-mode", "no-new-privs", "caps-bounding", "caps-inheritable-ambient",
                 "fd-hygiene", "cwd-inside-root"):
        assert results[name][0] in battery.SAFE, (name, results[name])


def test_privileged_weakens_what_it_says(privileged_results):
    for name in ("caps-bounding", "seccomp-mode", "mount-tmpfs", "unshare-user", "keyctl",
                 "mknod-block", "read-proc-keys"):
        assert privileged_results[name][0] in ("ALLOWED", "WEAK"), (name, privileged_results[name])


def test_privileged_prints_a_warning(engine):
    proc = engine("run", "--rm", "--privileged", "busybox", "true")
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" in proc.stderr and "--privileged" in proc.stderr


def test_memory_bomb_is_killed_inside_its_limit(engine, probe):
    proc = run_probe(engine, probe, "--memory", "32m", "busybox", "/probe", "memory-bomb")
    assert proc.returncode == 137, (proc.returncode, proc.stdout, proc.stderr)
    assert "ALLOWED" not in proc.stdout


def test_cap_add_gives_back_the_calls_it_grants(engine, probe):
    proc = run_probe(engine, probe, "--cap-add", "SYS_PTRACE", "--cap-add", "SYS_TIME",
                     "busybox", "/probe", "ptrace", "clock-host")
    results = battery.parse(proc.stdout)
    assert results["ptrace-attach-child"][0] == "ALLOWED", results
    assert results["kcmp"][0] == "ALLOWED", results
    # Past the filter the bad argument reaches the kernel, which answers EINVAL.
    assert results["clock_settime"] == ("ALLOWED", "reached the kernel (EINVAL) "), results
    # Still blocked: what the added capabilities do not grant.
    assert results["sethostname"][0] == "blocked", results


def test_cap_drop_all(engine):
    proc = engine("run", "--rm", "--cap-drop", "ALL", "busybox", "grep", "Cap", "/proc/self/status")
    assert proc.returncode == 0, proc.stderr
    assert all(line.split()[1] == "0000000000000000" for line in proc.stdout.splitlines())


def status_field(engine, field: str, *args: str) -> str:
    proc = engine("run", "--rm", *args, "busybox", "grep", f"^{field}:", "/proc/self/status")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()[1]


def test_seccomp_unconfined_and_no_new_privileges_opt_out(engine):
    assert status_field(engine, "Seccomp") == "2"
    assert status_field(engine, "Seccomp", "--security-opt", "seccomp=unconfined") == "0"
    assert status_field(engine, "NoNewPrivs") == "1"
    assert status_field(engine, "NoNewPrivs", "--security-opt", "no-new-privileges=false") == "0"


def test_seccomp_profile_file_in_docker_format(engine, tmp_path):
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "archMap": [{"architecture": "SCMP_ARCH_X86_64",
                     "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            # Only for a capability the container does not have: must not apply.
            {"names": ["uname"], "action": "SCMP_ACT_ERRNO", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        ],
    }
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    proc = engine("run", "--rm", "--security-opt", f"seccomp={path}", "busybox", "sh", "-c",
                  "uname -s; mkdir /tmp/x")
    assert "Linux" in proc.stdout
    assert proc.returncode != 0 and "Operation not permitted" in proc.stderr, proc.stderr


def test_bad_seccomp_file_is_a_one_line_error(engine, tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    proc = engine("run", "--rm", "--security-opt", f"seccomp={tmp_path / 'bad.json'}", "busybox", "true")
    assert proc.returncode == 125
    assert "seccomp" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("opt, needle", [("label=type:spc_t", "SELinux"),
                                         ("apparmor=docker-default", "AppArmor")])
def test_lsm_options_without_the_lsm_fail_clearly(engine, opt, needle):
    if needle == "SELinux" and os.path.exists("/sys/fs/selinux/enforce"):
        pytest.skip("SELinux is enabled here")
    if needle == "AppArmor" and os.path.exists("/sys/module/apparmor/parameters/enabled"):
        pytest.skip("AppArmor is loaded here")
    proc = engine("run", "--rm", "--security-opt", opt, "busybox", "true")
    assert proc.returncode == 125, proc.stderr
    assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert engine("ps", "-a", "-q").stdout.strip() == ""


def test_lsm_opt_outs_run(engine):
    proc = engine("run", "--rm", "--security-opt", "label=disable", "--security-opt",
                  "apparmor=unconfined", "busybox", "true")
    assert proc.returncode == 0, proc.stderr


def test_read_only_root_with_writable_tmp_and_run(engine):
    proc = engine("run", "--rm", "--read-only", "busybox", "sh", "-c",
                  "touch /tmp/a && touch /run/b && echo writable; touch /etc/x")
    assert "writable" in proc.stdout
    assert proc.returncode != 0 and "Read-only file system" in proc.stderr


def test_workdir_through_a_leaked_fd_is_refused(engine):
    # CVE-2024-21626: a cwd of /proc/self/fd/N would be a host directory if an fd leaked.
    for fd in range(3, 9):
        proc = engine("run", "--rm", "-w", f"/proc/self/fd/{fd}", "busybox", "sh", "-c",
                      "cd .. && ls -d $PWD/../../../../etc/shadow 2>/dev/null; pwd")
        assert proc.returncode != 0, (fd, proc.stdout, proc.stderr)


def test_volume_target_symlink_stays_inside_the_root(engine, tmp_path):
    # CVE-2021-30465 class: a mount target that is a symlink pointing out of the rootfs.
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("host\n")
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    for name in ("bin", "tmp"):
        (rootfs / name).mkdir()
    busybox = Path("/bin/busybox")
    (rootfs / "bin" / "busybox").write_bytes(busybox.read_bytes())
    (rootfs / "bin" / "busybox").chmod(0o755)
    for applet in ("sh", "ls", "cat", "touch"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "data").symlink_to("../../../../../../.." + str(victim))
    assert engine("import", str(rootfs), "symlinky:1").returncode == 0
    vol = tmp_path / "vol"
    vol.mkdir()
    proc = engine("run", "--rm", "-v", f"{vol}:/data", "symlinky:1", "/bin/sh", "-c",
                  "touch /data/from-container; ls /data")
    assert (victim / "keep").read_text() == "host\n"
    assert not (victim / "from-container").exists()
    assert f" {victim} " not in Path("/proc/self/mountinfo").read_text()
    assert proc.returncode == 0, proc.stderr
    assert (vol / "from-container").exists()


def test_inspect_security_flags_each_weakened_item(engine):
    engine("run", "-d", "--name", "posture-default", "busybox", "sleep", "60", check=True)
    engine("run", "-d", "--name", "posture-weak", "--privileged", "--pid", "container:posture-default",
           "--pids-limit", "-1", "--security-opt", "no-new-privileges=false", "busybox",
           "sleep", "60", check=True)
    try:
        good = engine("inspect", "--security", "posture-default", check=True).stdout
        assert "0 item(s) weaker than the default" in good
        assert "WEAKER" not in good
        weak = engine("inspect", "--security", "-f", "{{json .}}", "posture-weak", check=True).stdout
        report = json.loads(weak)
        assert set(report["weaker"]) >= {"capabilities", "seccomp", "no_new_privs", "namespace pid",
                                         "masked paths", "read-only paths", "pids limit",
                                         "device cgroup"}
        pid_item = next(i for i in report["items"] if i["item"] == "namespace pid")
        assert pid_item["value"] == "shared with posture-default"
    finally:
        engine("rm", "-f", "posture-default", "posture-weak")


def test_info_reports_host_security(engine):
    out = engine("info", check=True).stdout
    assert "Seccomp: yes" in out
    assert "User namespaces:" in out and "Subordinate uid ranges:" in out
    assert "LSMs:" in out and "Default profile: 11 capabilities" in out
    data = json.loads(engine("info", "-f", "{{json .Security}}", check=True).stdout)
    assert data["DefaultProfile"]["PidsLimit"] == 2048
    assert "user" in data["Namespaces"]
