"""A container that cannot start makes `create` (or `run`, `exec`) fail, with the init's reason.

Everything the init does up to execve (rlimits, user, capabilities, cwd,
seccomp) happens before it reports ready, so its failure is create's error
and nothing is left behind; an execve that fails after `start` is start's
error.  The seccomp filter leaves the runtime only write, read, close and
execve to do, so a profile written before close_range (and the other recent
system calls) existed, or a bare allowlist, still runs a container.
runc 1.1 is the reference for which command reports what.
"""

from __future__ import annotations

import json
import os
import time

import helpers
import pytest
from runtime_leaks import assert_nothing_left

# System calls newer than an old Docker default profile (2019-2020): a profile
# written before them allows none, and answers them with its default EPERM.
NEW_SYSCALLS = {"close_range", "clone3", "faccessat2", "openat2", "epoll_pwait2", "pidfd_open",
                "pidfd_send_signal", "pidfd_getfd", "process_madvise", "mount_setattr",
                "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
                "memfd_secret", "process_mrelease", "futex_waitv", "set_mempolicy_home_node",
                "cachestat", "fchmodat2", "map_shadow_stack", "futex_wake", "futex_wait",
                "futex_requeue", "statmount", "listmount", "lsm_get_self_attr",
                "lsm_set_self_attr", "lsm_list_modules", "mseal", "rseq", "io_uring_setup",
                "io_uring_enter", "io_uring_register"}

# All the runtime itself does once the filter is loaded with no_new_privs:
# what runc needs, and no more.
RUNTIME_NEEDS = ["read", "write", "close", "execve", "exit_group"]
# What the test rootfs's static busybox needs to start (strace of /bin/true).
BUSYBOX_NEEDS = ["brk", "mprotect", "arch_prctl", "set_tid_address", "set_robust_list",
                 "prlimit64", "getrandom", "readlink", "getuid", "prctl"]
MINIMAL_ALLOWLIST = RUNTIME_NEEDS + BUSYBOX_NEEDS


def old_docker_profile(caps: list[str]) -> dict:
    from nsbox.engine import security

    section = security.oci_seccomp(security.default_seccomp_profile(), caps)
    rules = []
    for rule in section["syscalls"]:
        names = [n for n in rule["names"] if n not in NEW_SYSCALLS]
        if names:
            rules.append(dict(rule, names=names))
    section["syscalls"] = rules
    assert section["defaultAction"] == "SCMP_ACT_ERRNO"
    return section


def allowlist(names: list[str]) -> dict:
    return {"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": names, "action": "SCMP_ACT_ALLOW"}]}


def wait_status(run_runtime, cid: str, wanted: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = json.loads(run_runtime("state", cid).stdout)["status"]
        if status == wanted or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert status == wanted


@pytest.mark.parametrize("no_new_privs", [True, False], ids=["nnp", "no-nnp"])
def test_profile_without_close_range_runs_the_container(bundle_factory, run_runtime, container_id,
                                                        no_new_privs):
    def edit(spec: dict) -> None:
        caps = spec["process"]["capabilities"]["bounding"]
        spec["linux"]["seccomp"] = old_docker_profile(caps)
        spec["process"]["noNewPrivileges"] = no_new_privs

    b = bundle_factory(args=["sh", "-c", "grep '^Seccomp:' /proc/self/status; echo ok"],
                       mutate=edit)
    result = run_runtime("run", "--bundle", str(b), container_id)
    assert result.stdout == "Seccomp:\t2\nok\n", result.stdout + result.stderr
    assert "close_range" not in result.stderr

    # create + start: the init waits for start with the filter loaded.
    out = b / "rootfs/tmp/out"
    b2 = bundle_factory(args=["sh", "-c", "echo started > /tmp/out; sleep 30"], name="b2",
                        mutate=edit, root__readonly=False)
    cid = container_id + "b"
    run_runtime("create", "--bundle", str(b2), cid)
    wait_status(run_runtime, cid, "created")
    run_runtime("start", cid)
    wait_status(run_runtime, cid, "running")
    ex = run_runtime("exec", cid, "sh", "-c", "cat /tmp/out; grep '^Seccomp:' /proc/self/status")
    assert ex.stdout == "started\nSeccomp:\t2\n"
    assert not out.exists()  # b's rootfs is a different copy
    run_runtime("delete", "--force", cid)


def test_minimal_allowlist_runs_the_container(bundle_factory, run_runtime, container_id):
    b = bundle_factory(args=["/bin/true"], linux__seccomp=allowlist(MINIMAL_ALLOWLIST),
                       process__noNewPrivileges=True)
    result = run_runtime("run", "--bundle", str(b), container_id, check=False)
    assert result.returncode == 0, result.stderr
    # exec into a container under the same bare filter (sleep needs its clock).
    b2 = bundle_factory(args=["sleep", "30"], name="b2", process__noNewPrivileges=True,
                        linux__seccomp=allowlist(MINIMAL_ALLOWLIST + ["nanosleep",
                                                                      "clock_nanosleep"]))
    cid = container_id + "b"
    run_runtime("run", "--detach", "--bundle", str(b2), cid)
    assert run_runtime("exec", cid, "/bin/true", check=False).returncode == 0
    assert run_runtime("exec", cid, "/bin/false", check=False).returncode == 1
    run_runtime("delete", "--force", cid)


def _user_outside_userns(spec: dict) -> None:
    spec["linux"]["namespaces"].append({"type": "user"})
    spec["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 0, "size": 65536}]
    spec["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 0, "size": 65536}]
    spec["process"]["user"] = {"uid": 70000, "gid": 0}


def _deny_capset_early(spec: dict) -> None:
    # Without no_new_privs the filter is loaded before the capabilities are set.
    spec["process"]["noNewPrivileges"] = False
    spec["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW",
                                "syscalls": [{"names": ["capset"], "action": "SCMP_ACT_ERRNO"}]}


# (case, config edit, what create's error says)
CREATE_FAILURES = [
    ("rlimit-soft-above-hard",
     lambda s: s["process"].__setitem__("rlimits", [{"type": "RLIMIT_NOFILE", "soft": 2000,
                                                     "hard": 1000}]),
     "RLIMIT_NOFILE"),
    ("capset-denied-by-seccomp", _deny_capset_early, "capset"),
    ("seccomp-load-fails",
     # Only valid with a notify listener: the kernel refuses it in the init.
     lambda s: s["linux"].__setitem__("seccomp", {
         "defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"],
         "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}),
     "seccomp: cannot load the filter"),
    ("uid-unmapped-in-userns", _user_outside_userns, "switch to uid 70000"),
    ("cwd-is-a-file", lambda s: s["process"].__setitem__("cwd", "/etc/passwd"), "/etc/passwd"),
    ("program-missing", lambda s: s["process"].__setitem__("args", ["/no/such/program"]),
     "/no/such/program"),
]


@pytest.mark.parametrize("edit,message", [c[1:] for c in CREATE_FAILURES],
                         ids=[c[0] for c in CREATE_FAILURES])
@pytest.mark.parametrize("command", ["create", "run"])
def test_init_failure_fails_create_and_leaves_nothing(bundle_factory, run_runtime, runtime_root,
                                                      container_id, edit, message, command):
    b = bundle_factory(args=["/bin/true"], mutate=edit)
    result = run_runtime(command, "--bundle", str(b), container_id, check=False)
    assert result.returncode != 0, result.stdout + result.stderr
    assert message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr  # one line: the init's reason
    assert_nothing_left(runtime_root, b, container_id)
    state = run_runtime("state", container_id, check=False)
    assert state.returncode != 0 and "does not exist" in state.stderr


@pytest.mark.parametrize("edit", [c[1] for c in CREATE_FAILURES],
                         ids=[c[0] for c in CREATE_FAILURES])
def test_runc_fails_these_at_create_too(bundle_factory, register_runtime, tmp_path, container_id,
                                        runc, edit):
    runc_cli = register_runtime([runc, "--root", str(tmp_path / "runc-state")])
    with helpers.cgroup_under_own(f"nsbox-{container_id}") as cg:
        b = bundle_factory(args=["/bin/true"], mutate=edit, linux__cgroupsPath=cg)
        result = helpers.run_cli(runc_cli, "create", "--bundle", str(b), container_id,
                                 check=False)
        assert result.returncode != 0, result.stdout + result.stderr


def test_exec_failure_after_start_fails_start(bundle_factory, run_runtime, runtime_root,
                                              container_id):
    """runc's split: the program exists, so create succeeds; its execve fails
    (no #! line: ENOEXEC) only after start, and start says so and exits 1."""
    def add_script(spec: dict) -> None:
        spec["process"]["args"] = ["/not-a-binary"]

    b = bundle_factory(mutate=add_script)
    script = b / "rootfs/not-a-binary"
    script.write_text("echo this is no program\n")
    script.chmod(0o755)
    run_runtime("create", "--bundle", str(b), container_id)
    result = run_runtime("start", container_id, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "exec /not-a-binary: Exec format error" in result.stderr
    wait_status(run_runtime, container_id, "stopped")
    run_runtime("delete", container_id)
    assert_nothing_left(runtime_root, b, container_id)

    # run: the same error, and the container is gone.
    result = run_runtime("run", "--bundle", str(b), container_id, check=False)
    assert result.returncode != 0 and "Exec format error" in result.stderr
    assert result.stderr.count("Exec format error") == 1, result.stderr
    assert_nothing_left(runtime_root, b, container_id)


def test_start_of_a_working_container_waits_for_nothing_but_exec(bundle_factory, run_runtime,
                                                                  container_id):
    """A program that exits at once is no start error."""
    b = bundle_factory(args=["/bin/false"])
    run_runtime("create", "--bundle", str(b), container_id)
    assert run_runtime("start", container_id).returncode == 0
    wait_status(run_runtime, container_id, "stopped")


@pytest.mark.parametrize("case", ["missing-cwd", "enoexec", "rlimit"])
def test_exec_failures_are_exec_errors(bundle_factory, run_runtime, container_id, case):
    b = bundle_factory(args=["sleep", "30"])
    script = b / "rootfs/not-a-binary"
    script.write_text("echo this is no program\n")
    script.chmod(0o755)
    run_runtime("run", "--detach", "--bundle", str(b), container_id)
    process = json.loads((b / "config.json").read_text())["process"]
    process["args"] = ["/bin/true"]
    expected = {"missing-cwd": "/no/such/dir", "enoexec": "Exec format error",
                "rlimit": "RLIMIT_NOFILE"}[case]
    if case == "missing-cwd":
        process["cwd"] = "/no/such/dir"
    elif case == "enoexec":
        process["args"] = ["/not-a-binary"]
    else:
        process["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": 2000, "hard": 1000}]
    pfile = b / "process.json"
    pfile.write_text(json.dumps(process))
    for flags in ([], ["--detach"]):
        result = run_runtime("exec", *flags, "--process", str(pfile), container_id, check=False)
        assert result.returncode != 0, result.stdout + result.stderr
        assert expected in result.stderr and result.stderr.count("\n") == 1, result.stderr
    pids = run_runtime("ps", "--format", "json", container_id).stdout
    assert len(json.loads(pids)) == 1  # only the init: no half-started process left
    run_runtime("delete", "--force", container_id)


def test_fds_are_closed_without_close_range(bundle_factory, run_runtime, container_id):
    """The fallback when close_range is refused: every fd past stdio is still closed at execve."""
    from nsbox.runtime import process as procmod

    r, w = os.pipe2(0)  # inheritable
    keep = os.dup(r)
    try:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                import nsbox.runtime.syscalls as sc

                def refuse(*_args):
                    raise OSError(1, "Operation not permitted")

                sc.close_range = refuse
                procmod.mark_fds_cloexec(3, preserve_fds=0)
                flags = [os.get_inheritable(fd) for fd in (r, w, keep)]
                code = 0 if flags == [False, False, False] else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        for fd in (r, w, keep):
            os.close(fd)
