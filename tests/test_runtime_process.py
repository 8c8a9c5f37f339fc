"""End-to-end tests of process attributes applied by `nsbox-runtime`.

args/env/cwd, the user and groups, umask, rlimits, the five capability sets,
no_new_privs, oom_score_adj, sysctls, a terminal through --console-socket,
and fds passed with --preserve-fds or LISTEN_FDS.  Each container reports
what the kernel says about it (/proc/self/status, /proc/self/limits...).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import write_config

CAP_NUMBERS = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_KILL": 5,
               "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_NET_BIND_SERVICE": 10,
               "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_SYS_CHROOT": 18,
               "CAP_SYS_ADMIN": 21, "CAP_SYS_TIME": 25, "CAP_AUDIT_WRITE": 29}


def mask(*names: str) -> int:
    return sum(1 << CAP_NUMBERS[name] for name in names)


def status_fields(text: str) -> dict[str, str]:
    """/proc/<pid>/status as a dict of field -> value text."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def run_args(bundle: Path, run_runtime, container_id: str, args: list[str],
             **process: object) -> str:
    """Run ARGS (with PROCESS fields set) in BUNDLE; its stdout."""
    def mutate(spec: dict) -> None:
        spec["process"]["args"] = args
        spec["process"].update(process)

    write_config(bundle, mutate)
    return run_runtime("run", "--bundle", str(bundle), container_id).stdout


def with_tmpfs_tmp(bundle: Path) -> None:
    write_config(bundle, lambda s: s["mounts"].append(
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["mode=1777"]}))


# ------------------------------------------------------------------ args, env, cwd
def test_args_env_and_cwd(bundle, run_runtime, container_id):
    out = run_args(bundle, run_runtime, container_id,
                   ["sh", "-c", 'printf "[%s]" "$@"; echo; echo "$A|$B|$HOME"; pwd', "sh",
                    "two words", "", "*"],
                   env=["PATH=/bin", "A=1", "B=has spaces = and equals"], cwd="/home/user")
    args_line, env_line, cwd_line = out.splitlines()
    assert args_line == "[two words][][*]"
    # HOME comes from /etc/passwd when the config does not set it.
    assert env_line == "1|has spaces = and equals|/root"
    assert cwd_line == "/home/user"


def test_environment_is_exactly_the_configured_one(bundle, run_runtime, container_id):
    out = run_args(bundle, run_runtime, container_id, ["env"],
                   env=["PATH=/bin", "ONLY=this", "HOME=/custom"])
    assert sorted(out.splitlines()) == ["HOME=/custom", "ONLY=this", "PATH=/bin"]


def test_a_missing_cwd_is_created(bundle, run_runtime, container_id):
    # runc creates it too, inside the container root and before root.readonly applies.
    out = run_args(bundle, run_runtime, container_id, ["sh", "-c", "pwd; stat -c %a ."],
                   cwd="/does/not/exist")
    assert out.split() == ["/does/not/exist", "755"]
    assert not Path("/does/not/exist").exists()


def test_a_cwd_that_is_a_file_fails(bundle, run_runtime, container_id):
    write_config(bundle, lambda s: s["process"].update(cwd="/etc/passwd"))
    result = run_runtime("run", "--bundle", str(bundle), container_id, check=False)
    assert result.returncode != 0
    assert "/etc/passwd" in result.stderr


# ------------------------------------------------------------------ user
def test_user_uid_gid_and_additional_gids(bundle, run_runtime, container_id):
    out = run_args(bundle, run_runtime, container_id,
                   ["sh", "-c", "id -u; id -g; id -G; grep -E '^(Uid|Gid|Groups):' "
                                "/proc/self/status; echo $HOME"],
                   user={"uid": 1000, "gid": 1000, "additionalGids": [65534, 10, 20]})
    lines = out.splitlines()
    assert lines[0:2] == ["1000", "1000"]
    assert sorted(lines[2].split()) == sorted(["1000", "65534", "10", "20"])
    status = status_fields("\n".join(lines[3:6]))
    assert status["Uid"].split() == ["1000"] * 4  # real, effective, saved, fs
    assert status["Gid"].split() == ["1000"] * 4
    assert sorted(int(g) for g in status["Groups"].split()) == [10, 20, 65534]
    assert lines[6] == "/home/user"


def test_user_without_additional_gids_drops_the_runtimes_groups(bundle, run_runtime,
                                                               container_id):
    out = run_args(bundle, run_runtime, container_id, ["grep", "^Groups:", "/proc/self/status"],
                   user={"uid": 1000, "gid": 1000})
    assert out.split() == ["Groups:"]


# ------------------------------------------------------------------ umask
@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"),
                         [(0o077, "600", "700"), (0o027, "640", "750"), (None, "644", "755")])
def test_umask(bundle, run_runtime, container_id, umask, file_mode, dir_mode):
    with_tmpfs_tmp(bundle)
    user = {"uid": 0, "gid": 0}
    if umask is not None:
        user["umask"] = umask
    out = run_args(bundle, run_runtime, container_id,
                   ["sh", "-c", "umask; touch /tmp/f; mkdir /tmp/d; stat -c %a /tmp/f /tmp/d"],
                   user=user)
    shown, f_mode, d_mode = out.split()
    assert int(shown, 8) == (0o022 if umask is None else umask)
    assert (f_mode, d_mode) == (file_mode, dir_mode)


# ------------------------------------------------------------------ rlimits
def test_rlimits(bundle, run_runtime, container_id):
    out = run_args(bundle, run_runtime, container_id,
                   ["sh", "-c", "ulimit -n; ulimit -Hn; grep -E '^Max (open files|processes"
                                "|file locks|realtime timeout)' /proc/self/limits"],
                   rlimits=[{"type": "RLIMIT_NOFILE", "soft": 123, "hard": 456},
                            {"type": "RLIMIT_NPROC", "soft": 1000, "hard": 2000},
                            # the last number, and 2**64-1: unlimited
                            {"type": "RLIMIT_RTTIME", "soft": 5000, "hard": 2**64 - 1},
                            {"type": "RLIMIT_LOCKS", "soft": 64, "hard": 128}])
    lines = out.splitlines()
    assert lines[0:2] == ["123", "456"]
    # /proc/self/limits: a 25-column name, then soft and hard.
    limits = {line[:25].strip(): line[25:].split()[:2] for line in lines[2:]}
    assert limits["Max open files"] == ["123", "456"]
    assert limits["Max processes"] == ["1000", "2000"]
    assert limits["Max realtime timeout"] == ["5000", "unlimited"]
    assert limits["Max file locks"] == ["64", "128"]


def test_every_rlimit_the_spec_accepts_has_a_number():
    """spec.RLIMIT_TYPES (what a config may name) and syscalls.RLIMITS (their kernel
    numbers, what the init sets) list the same limits: two tables of one fact,
    kept apart so that parsing a config does not load the ctypes layer."""
    from nsbox.runtime import syscalls as sc
    from nsbox.runtime.spec import RLIMIT_TYPES

    assert set(sc.RLIMITS) == RLIMIT_TYPES
    assert sc.RLIMITS["RLIMIT_NOFILE"] == 7 and sc.RLIMITS["RLIMIT_RTTIME"] == 15


def test_rlimit_soft_above_hard_fails(bundle, run_runtime, container_id):
    write_config(bundle, lambda s: s["process"].update(
        rlimits=[{"type": "RLIMIT_NOFILE", "soft": 500, "hard": 100}]))
    result = run_runtime("run", "--bundle", str(bundle), container_id, check=False)
    assert result.returncode != 0
    assert "RLIMIT_NOFILE" in result.stderr


# ------------------------------------------------------------------ capabilities
BOUNDING = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_RAW", "CAP_SYS_TIME", "CAP_NET_ADMIN"]
PERMITTED = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_RAW", "CAP_NET_ADMIN"]
EFFECTIVE = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_ADMIN"]
INHERITABLE = ["CAP_KILL", "CAP_NET_RAW", "CAP_NET_ADMIN"]
AMBIENT = ["CAP_KILL", "CAP_NET_ADMIN"]
FIVE_SETS = {"bounding": BOUNDING, "permitted": PERMITTED, "effective": EFFECTIVE,
             "inheritable": INHERITABLE, "ambient": AMBIENT}


def caps_of(out: str) -> dict[str, int]:
    fields = status_fields(out)
    return {key: int(fields[key], 16) for key in ("CapInh", "CapPrm", "CapEff", "CapBnd",
                                                  "CapAmb")}


def test_capability_sets_of_a_non_root_process(bundle, run_runtime, container_id):
    # A non-root process without file capabilities keeps across execve only its
    # ambient set (as permitted and effective), the inheritable and the bounding set.
    out = run_args(bundle, run_runtime, container_id, ["cat", "/proc/self/status"],
                   user={"uid": 1000, "gid": 1000}, capabilities=FIVE_SETS)
    caps = caps_of(out)
    assert caps["CapBnd"] == mask(*BOUNDING)
    assert caps["CapInh"] == mask(*INHERITABLE)
    assert caps["CapAmb"] == mask(*AMBIENT)
    assert caps["CapPrm"] == mask(*AMBIENT)
    assert caps["CapEff"] == mask(*AMBIENT)


@pytest.mark.parametrize("no_new_privileges", [True, False])
def test_capability_sets_of_root(bundle, run_runtime, container_id, no_new_privileges):
    # For uid 0 execve grants permitted = bounding | inheritable and effective =
    # permitted (ambient stays: the binary has no file capabilities); under
    # no_new_privs the new permitted set cannot exceed the one set before execve.
    out = run_args(bundle, run_runtime, container_id, ["cat", "/proc/self/status"],
                   capabilities=FIVE_SETS, noNewPrivileges=no_new_privileges)
    caps = caps_of(out)
    expected = mask(*BOUNDING) | mask(*INHERITABLE)
    if no_new_privileges:
        expected &= mask(*PERMITTED)
    assert caps["CapBnd"] == mask(*BOUNDING)
    assert caps["CapInh"] == mask(*INHERITABLE)
    assert caps["CapPrm"] == expected
    assert caps["CapEff"] == expected
    assert caps["CapAmb"] == mask(*AMBIENT)


def test_capabilities_are_enforced(bundle, run_runtime, container_id):
    with_tmpfs_tmp(bundle)
    script = "touch /tmp/f; chown 1000 /tmp/f && echo chown-ok || echo chown-denied"
    without = run_args(bundle, run_runtime, container_id, ["sh", "-c", script],
                       capabilities={k: ["CAP_KILL"] for k in
                                     ("bounding", "permitted", "effective")})
    assert without.strip() == "chown-denied"
    write_config(bundle, lambda s: s["process"].update(
        capabilities={k: ["CAP_CHOWN"] for k in ("bounding", "permitted", "effective")}))
    with_cap = run_runtime("run", "--bundle", str(bundle), container_id + "b").stdout
    assert with_cap.strip() == "chown-ok"


def test_an_unknown_capability_is_ignored_with_a_warning(bundle, run_runtime, container_id):
    # runc (since 1.1) warns about and skips capabilities it does not know.
    def mutate(spec: dict) -> None:
        spec["process"]["capabilities"]["bounding"].append("CAP_DOES_NOT_EXIST")
        spec["process"]["args"] = ["grep", "^CapBnd:", "/proc/self/status"]

    write_config(bundle, mutate)
    result = run_runtime("run", "--bundle", str(bundle), container_id)
    assert "CAP_DOES_NOT_EXIST" in result.stderr
    assert int(result.stdout.split()[1], 16) == mask("CAP_AUDIT_WRITE", "CAP_KILL",
                                                    "CAP_NET_BIND_SERVICE")


# ------------------------------------------------------------------ no_new_privs, oom
@pytest.mark.parametrize(("no_new_privileges", "expected"), [(True, "1"), (False, "0")])
def test_no_new_privileges(bundle, run_runtime, container_id, no_new_privileges, expected):
    out = run_args(bundle, run_runtime, container_id, ["grep", "^NoNewPrivs:", "/proc/self/status"],
                   noNewPrivileges=no_new_privileges)
    assert out.split() == ["NoNewPrivs:", expected]


@pytest.mark.parametrize("score", [500, 1000])
def test_oom_score_adj(bundle, run_runtime, container_id, score):
    out = run_args(bundle, run_runtime, container_id, ["cat", "/proc/self/oom_score_adj"],
                   oomScoreAdj=score)
    assert out.strip() == str(score)


def test_negative_oom_score_adj_needs_cap_sys_resource(bundle, run_runtime, container_id):
    # Lowering the score below the inherited minimum takes CAP_SYS_RESOURCE,
    # which some sandboxes withhold from the runtime itself.
    have_sys_resource = bool(int(status_fields(Path("/proc/self/status").read_text())["CapEff"],
                                 16) & (1 << 24))
    write_config(bundle, lambda s: s["process"].update(
        args=["cat", "/proc/self/oom_score_adj"], oomScoreAdj=-250))
    result = run_runtime("run", "--bundle", str(bundle), container_id, check=False)
    if have_sys_resource:
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "-250"
    else:
        assert result.returncode != 0
        assert "oom_score_adj" in result.stderr
        assert "Traceback" not in result.stderr


def test_oom_score_adj_unset_is_inherited(bundle, run_runtime, container_id):
    out = run_args(bundle, run_runtime, container_id, ["cat", "/proc/self/oom_score_adj"])
    assert out.strip() == Path("/proc/self/oom_score_adj").read_text().strip()


# ------------------------------------------------------------------ sysctl
def test_sysctls_in_new_network_and_ipc_namespaces(bundle, run_runtime, container_id):
    host_forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    host_msgmax = Path("/proc/sys/kernel/msgmax").read_text()
    wanted_msgmax = "12345" if host_msgmax.strip() != "12345" else "23456"

    def mutate(spec: dict) -> None:
        spec["linux"]["sysctl"] = {"net.ipv4.ip_forward": "1", "kernel.msgmax": wanted_msgmax,
                                   "net.ipv4.ping_group_range": "0 0"}
        spec["process"]["args"] = ["cat", "/proc/sys/net/ipv4/ip_forward",
                                   "/proc/sys/kernel/msgmax",
                                   "/proc/sys/net/ipv4/ping_group_range"]

    write_config(bundle, mutate)
    out = run_runtime("run", "--bundle", str(bundle), container_id).stdout
    assert out.split() == ["1", wanted_msgmax, "0", "0"]
    # The host's values are untouched: they lived in the container's own namespaces.
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == host_forward
    assert Path("/proc/sys/kernel/msgmax").read_text() == host_msgmax


def test_a_bad_sysctl_fails(bundle, run_runtime, container_id):
    write_config(bundle, lambda s: s["linux"].update(sysctl={"kernel.no_such_knob": "1"}))
    result = run_runtime("run", "--bundle", str(bundle), container_id, check=False)
    assert result.returncode != 0
    assert "kernel.no_such_knob" in result.stderr


# ------------------------------------------------------------------ terminal
def start_recvtty(socket_path: Path, out_file: Path) -> subprocess.Popen:
    """nsbox.runtime.recvtty in single mode, its output going to OUT_FILE."""
    pid_file = socket_path.with_suffix(".pid")
    with open(out_file, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nsbox.runtime.recvtty", str(socket_path),
             "--pid-file", str(pid_file)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while not pid_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"recvtty did not start: {proc.stderr.read().decode()}")
        time.sleep(0.01)
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if proc.stderr:
        proc.stderr.close()


def test_terminal_through_console_socket(bundle, run_runtime, container_id, tmp_path):
    socket_path, out_file = tmp_path / "console.sock", tmp_path / "console.out"
    recv = start_recvtty(socket_path, out_file)
    try:
        def mutate(spec: dict) -> None:
            spec["process"]["terminal"] = True
            spec["process"]["consoleSize"] = {"height": 33, "width": 101}
            spec["process"]["args"] = ["sh", "-c", "tty; stty size; test -t 0 && echo stdin-tty"]

        write_config(bundle, mutate)
        # runc accepts --console-socket only with --detach (or create).
        result = run_runtime("run", "--detach", "--console-socket", str(socket_path),
                             "--bundle", str(bundle), container_id)
        assert result.returncode == 0
        # recvtty exits when the container side of the pty hangs up.
        assert recv.wait(timeout=10) == 0
        assert result.stdout == ""
        lines = out_file.read_bytes().decode().replace("\r\n", "\n").splitlines()
        assert lines == ["/dev/pts/0", "33 101", "stdin-tty"]
    finally:
        stop(recv)


def test_terminal_without_console_socket_fails_on_create(bundle, run_runtime, container_id):
    write_config(bundle, lambda s: s["process"].update(terminal=True))
    result = run_runtime("create", "--bundle", str(bundle), container_id, check=False)
    assert result.returncode != 0
    assert "console" in result.stderr


def test_exec_with_a_terminal_through_console_socket(bundle, run_runtime, container_id,
                                                     tmp_path):
    write_config(bundle, lambda s: s["process"].update(args=["sleep", "100"]))
    run_runtime("run", "--detach", "--bundle", str(bundle), container_id)
    socket_path, out_file = tmp_path / "exec.sock", tmp_path / "exec.out"
    recv = start_recvtty(socket_path, out_file)
    try:
        run_runtime("exec", "--tty", "--detach", "--console-socket", str(socket_path),
                    container_id, "sh", "-c", "tty; echo done")
        assert recv.wait(timeout=10) == 0
        lines = out_file.read_bytes().decode().replace("\r\n", "\n").splitlines()
        assert lines[0].startswith("/dev/pts/")
        assert lines[1] == "done"
    finally:
        stop(recv)


# ------------------------------------------------------------------ fds
def run_with_fds(runtime: list[str], fds: dict[int, Path], args: list[str],
                 env: dict[str, str] | None = None, listen_pid: str | None = None
                 ) -> subprocess.CompletedProcess:
    """Run the runtime with each FDS number opened (read-only) on its file.

    LISTEN_PID "self" sets LISTEN_PID to the runtime's own pid (the shell's,
    which exec keeps), as socket activation addresses it.
    """
    redirects = " ".join(f"{fd}<'{path}'" for fd, path in fds.items())
    prefix = {None: "", "self": "export LISTEN_PID=$$; "}.get(
        listen_pid, f"export LISTEN_PID={listen_pid}; ")
    return subprocess.run(["bash", "-c", f'{prefix}exec "$@" {redirects}', "bash", *runtime,
                           *args],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=30, env=env)


def test_preserve_fds_passes_exactly_n_extra_fds(bundle, runtime, container_id, tmp_path):
    first, second = tmp_path / "three", tmp_path / "four"
    first.write_text("through fd 3\n")
    second.write_text("must not arrive\n")
    write_config(bundle, lambda s: s["process"].update(
        args=["sh", "-c", "cat <&3; ls /proc/self/fd | sort -n | tr '\\n' ' '"]))
    result = run_with_fds(runtime, {3: first, 4: second},
                          ["run", "--preserve-fds", "1", "--bundle", str(bundle), container_id])
    assert result.returncode == 0, result.stderr
    text, fds = result.stdout.splitlines()
    assert text == "through fd 3"
    # stdio and fd 3; fd 4 was not preserved (the 5th is ls's own directory fd).
    assert fds.split()[:4] == ["0", "1", "2", "3"]
    assert "4" not in fds.split()[:-1]


def test_without_preserve_fds_no_extra_fd_leaks(bundle, runtime, container_id, tmp_path):
    leaked = tmp_path / "leak"
    leaked.write_text("secret\n")
    write_config(bundle, lambda s: s["process"].update(
        args=["sh", "-c", "ls -l /proc/self/fd/ | grep -c leak || true"]))
    result = run_with_fds(runtime, {3: leaked},
                          ["run", "--bundle", str(bundle), container_id])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"


def test_listen_fds_are_passed_through(bundle, runtime, container_id, tmp_path):
    socket_file = tmp_path / "activation"
    socket_file.write_text("activated\n")
    write_config(bundle, lambda s: s["process"].update(
        args=["sh", "-c", 'echo "$LISTEN_FDS $LISTEN_PID"; cat <&3']))
    env = dict(os.environ, LISTEN_FDS="1")
    result = run_with_fds(runtime, {3: socket_file},
                          ["run", "--bundle", str(bundle), container_id], env=env,
                          listen_pid="self")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["1 1", "activated"]


def test_listen_fds_for_another_process_are_not_passed(bundle, runtime, container_id,
                                                       tmp_path):
    # An inherited LISTEN_FDS addressed to some other pid names fds that are not ours.
    stray = tmp_path / "stray"
    stray.write_text("stray\n")
    write_config(bundle, lambda s: s["process"].update(
        args=["sh", "-c", 'echo "[${LISTEN_FDS:-}]"; ls /proc/self/fd | sort -n | tr "\\n" " "']))
    env = dict(os.environ, LISTEN_FDS="1")
    result = run_with_fds(runtime, {3: stray}, ["run", "--bundle", str(bundle), container_id],
                          env=env, listen_pid=str(os.getpid()))
    assert result.returncode == 0, result.stderr
    marker, fds = result.stdout.splitlines()
    assert marker == "[]"
    assert fds.split()[:3] == ["0", "1", "2"]
    assert len(fds.split()) == 4  # plus ls's own directory fd; no fd 3 from us


def test_exec_preserve_fds(bundle, runtime, run_runtime, container_id, tmp_path):
    write_config(bundle, lambda s: s["process"].update(args=["sleep", "100"]))
    run_runtime("run", "--detach", "--bundle", str(bundle), container_id)
    payload = tmp_path / "payload"
    payload.write_text("exec fd 3\n")
    result = run_with_fds(runtime, {3: payload},
                          ["exec", "--preserve-fds", "1", container_id, "sh", "-c", "cat <&3"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == "exec fd 3\n"


def test_listen_fds_with_preserve_fds_as_runc(bundle_factory, container_id, tmp_path, runc,
                                              register_runtime):
    """Socket activation plus --preserve-fds: the activation fds come first, the
    preserved ones after them, and LISTEN_PID comes with LISTEN_FDS (sd_listen_fds
    wants both): 1, the process's pid in its new pid namespace.  runc does the same."""
    import helpers

    activation, preserved = tmp_path / "activation", tmp_path / "preserved"
    activation.write_text("activated\n")
    preserved.write_text("preserved\n")
    outputs = {}
    for name, prefix in (("nsbox", helpers.runtime_argv(tmp_path / "state")),
                         ("runc", helpers.runtime_argv(tmp_path / "runc-root", runc))):
        register_runtime(prefix)
        with helpers.cgroup_under_own(f"listen-{name}-{container_id}") as cgroup:
            def mutate(spec: dict, c: str = cgroup) -> None:
                spec["ociVersion"] = "1.0.2"
                spec["linux"]["cgroupsPath"] = c
                spec["process"]["args"] = [
                    "sh", "-c", 'echo "$LISTEN_FDS $LISTEN_PID $$"; cat <&3; cat <&4']

            b = bundle_factory(name=f"b-{name}", mutate=mutate)
            result = run_with_fds(prefix, {3: activation, 4: preserved},
                                  ["run", "--preserve-fds", "1", "--bundle", str(b),
                                   f"{container_id}-{name}"],
                                  env=dict(os.environ, LISTEN_FDS="1"), listen_pid="self")
        assert result.returncode == 0, result.stderr
        outputs[name] = result.stdout.splitlines()
    assert outputs["nsbox"] == ["1 1 1", "activated", "preserved"]
    assert outputs["runc"] == outputs["nsbox"]


# ------------------------------------------------------------------ exec and no_new_privs
@pytest.mark.parametrize("how", ["flag", "process-file"])
def test_exec_no_new_privs_takes_effect(bundle, run_runtime, container_id, tmp_path, how):
    """exec --no-new-privs, or a process file with noNewPrivileges: true, in a
    container whose own process runs without it."""
    write_config(bundle, lambda s: s["process"].update(args=["sleep", "100"],
                                                       noNewPrivileges=False))
    run_runtime("run", "--detach", "--bundle", str(bundle), container_id)
    grep = ["grep", "^NoNewPrivs:", "/proc/self/status"]
    assert run_runtime("exec", container_id, *grep).stdout.split() == ["NoNewPrivs:", "0"]
    if how == "flag":
        out = run_runtime("exec", "--no-new-privs", container_id, *grep).stdout
    else:
        import json

        process = json.loads((bundle / "config.json").read_text())["process"]
        process.update(args=grep, noNewPrivileges=True)
        (tmp_path / "process.json").write_text(json.dumps(process))
        out = run_runtime("exec", "--process", str(tmp_path / "process.json"),
                          container_id).stdout
    assert out.split() == ["NoNewPrivs:", "1"]


def test_stdio_on_dev_null_is_reopened_read_write(bundle, runtime, container_id):
    # containerd's shim passes a read-only /dev/null as stdin (docker run without -i);
    # like runc, the container gets its own /dev/null there, open for both directions.
    write_config(bundle, lambda s: s["process"].update(
        args=["sh", "-c", "ls -l /proc/self/fd/0 | cut -c1-4; echo to-stdin >&0 && echo ok"]))
    result = subprocess.run(["bash", "-c", 'exec "$@" 0</dev/null', "bash", *runtime, "run",
                             "--bundle", str(bundle), container_id],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["lrwx", "ok"]
