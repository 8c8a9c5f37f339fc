"""The Docker stack (dockerd 20.10 + its containerd + the runc v2 shim, docker CLI,
docker-compose 1.29) driving the OCI runtime under test in place of runc.

One private dockerd per module (tests/dockerd.py): own data/exec roots and
socket, in a mount and network namespace of its own, cgroups below ours, the
runtime registered with --add-runtime and made the default.  The busybox image
comes from `nsbox save` and is loaded with `docker load`.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import missing_binaries, run_in_pty, runtime_under_test
from dockerd import IMAGE, RUNTIME_NAME, Docker, docker_world

_missing = missing_binaries("dockerd", "docker", "docker-compose", "unshare")
pytestmark = [
    pytest.mark.clients,
    pytest.mark.slow,
    pytest.mark.skipif(bool(_missing), reason=f"not installed: {', '.join(_missing)}"),
    pytest.mark.skipif(os.geteuid() != 0, reason="dockerd needs root"),
]

# These tests read cgroup v1 file names (memory.limit_in_bytes, freezer.state...),
# as tests/test_clients_podman_limits.py does; this host layout is v1 or hybrid.
CGROUP_V1 = Path("/sys/fs/cgroup/memory").is_dir() and \
    not Path("/sys/fs/cgroup/cgroup.controllers").exists()
v1_files = pytest.mark.skipif(not CGROUP_V1, reason="reads cgroup v1 files")

SERVE = "trap 'echo got-term; exit 0' TERM; echo started; while :; do sleep 0.1; done"
LIMITS = ["--memory=64m", "--memory-swap=64m", "--cpus=0.5", "--pids-limit=50"]
RT = ["--runtime", RUNTIME_NAME]


@pytest.fixture(scope="module")
def docker() -> Iterator[Docker]:
    runtime = runtime_under_test()
    if not os.access(runtime, os.X_OK):
        pytest.fail(f"runtime under test {runtime} is not executable (set NSBOX_TEST_RUNTIME)")
    with docker_world(runtime) as world:
        yield world


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_for(predicate, timeout: float = 30, what: str = "condition") -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def host_cgroup_file(docker: Docker, name: str, controller: str, filename: str) -> Path:
    """The host's cgroup file of the container's init process, from /proc/PID/cgroup."""
    pid = docker.inspect(name, "{{.State.Pid}}")
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            assert path.startswith(docker.cgroup_parent + "/"), path
            return Path("/sys/fs/cgroup") / controller / path.lstrip("/") / filename
    raise AssertionError(f"container {name} has no {controller} cgroup")


def detached(docker: Docker, *args: str, name: str | None = None) -> str:
    name = name or unique("c")
    docker.run("run", "-d", "--name", name, *args)
    docker.all_ids()
    return name


def test_daemon_uses_the_runtime_under_test(docker: Docker) -> None:
    assert docker.run("info", "--format", "{{.DefaultRuntime}}").stdout.strip() == RUNTIME_NAME
    assert IMAGE in docker.run("images", "--format", "{{.Repository}}").stdout.split()
    before = len(docker.runtime_calls())
    docker.run("run", "--rm", IMAGE, "true")
    verbs = docker.runtime_calls()[before:]
    assert any("create" in call for call in verbs), verbs
    assert any("start" in call for call in verbs), verbs
    assert any("delete" in call for call in verbs), verbs


def test_run_rm_echo(docker: Docker) -> None:
    name = unique("echo")
    proc = docker.run("run", "--rm", *RT, "--name", name, IMAGE, "echo", "hi")
    assert proc.stdout == "hi\n"
    assert name not in docker.run("ps", "-a", "--format", "{{.Names}}").stdout.split()


def test_exit_code_propagates(docker: Docker) -> None:
    proc = docker.run("run", "--rm", *RT, IMAGE, "sh", "-c", "exit 3", check=False)
    assert proc.returncode == 3, proc.stderr
    proc = docker.run("run", "--rm", IMAGE, "sh", "-c", "echo out; echo err >&2; exit 5",
                      check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (5, "out\n", "err\n")


def test_missing_command_is_127(docker: Docker) -> None:
    proc = docker.run("run", "--rm", IMAGE, "no-such-command", check=False)
    assert proc.returncode == 127, proc.stderr
    assert "no-such-command" in proc.stderr


def test_attached_stdin(docker: Docker) -> None:
    proc = docker.run("run", "--rm", "-i", IMAGE, "cat", input_text="from stdin\n")
    assert proc.stdout == "from stdin\n"


def test_stdin_without_i_is_dev_null_read_write(docker: Docker) -> None:
    # The shim passes a read-only /dev/null; runc reopens it read-write inside.
    proc = docker.run("run", "--rm", IMAGE, "sh", "-c",
                      "ls -l /proc/self/fd/0 | cut -c1-4; cat; echo x >&0 && echo ok")
    assert proc.stdout.split() == ["lrwx", "ok"], proc.stderr


def test_detached_logs_exec(docker: Docker) -> None:
    name = detached(docker, *RT, IMAGE, "sh", "-c", SERVE)
    wait_for(lambda: "started" in docker.run("logs", name).stdout, what="first output")
    assert docker.run("exec", name, "echo", "from-exec").stdout == "from-exec\n"
    assert docker.run("exec", name, "sh", "-c", "exit 4", check=False).returncode == 4
    # exec joins the container's PID namespace: PID 1 is the container's sh.
    cmdline = docker.run("exec", name, "cat", "/proc/1/cmdline").stdout
    assert cmdline.split("\0")[:2] == ["sh", "-c"]
    proc = docker.run("exec", "-i", name, "cat", input_text="line one\nline two\n")
    assert proc.stdout == "line one\nline two\n"
    assert docker.run("exec", "-u", "1000", "-w", "/tmp", name, "sh", "-c",
                      "id -u; pwd").stdout.split() == ["1000", "/tmp"]
    assert docker.inspect(name, "{{.State.Status}}") == "running"
    docker.run("stop", name)
    assert docker.inspect(name, "{{.State.ExitCode}}") == "0"
    assert "got-term" in docker.run("logs", name).stdout
    docker.run("rm", name)


def test_stop_sends_sigterm(docker: Docker) -> None:
    # Under docker-init, sleep gets the SIGTERM and dies of it: 128 + 15.
    name = detached(docker, "--init", IMAGE, "sleep", "300")
    started = time.monotonic()
    docker.run("stop", "--time", "30", name)
    assert time.monotonic() - started < 20, "SIGTERM did not stop the container"
    assert docker.inspect(name, "{{.State.ExitCode}}") == "143"
    # A PID 1 without a TERM handler ignores it; the SIGKILL after --time ends it.
    other = detached(docker, IMAGE, "sh", "-c", "while :; do sleep 0.1; done")
    docker.run("stop", "--time", "1", other)
    assert docker.inspect(other, "{{.State.ExitCode}}") == "137"
    docker.run("rm", name, other)


def test_kill_with_signal(docker: Docker) -> None:
    script = "trap 'echo got-usr1' USR1; echo ready; while :; do sleep 0.1; done"
    name = detached(docker, IMAGE, "sh", "-c", script)
    wait_for(lambda: "ready" in docker.run("logs", name).stdout, what="the trap")
    docker.run("kill", "--signal", "USR1", name)
    wait_for(lambda: "got-usr1" in docker.run("logs", name).stdout, what="the USR1 trap")
    assert docker.inspect(name, "{{.State.Running}}") == "true"
    docker.run("kill", name)  # SIGKILL
    wait_for(lambda: docker.inspect(name, "{{.State.Running}}") == "false", what="exit")
    assert docker.inspect(name, "{{.State.ExitCode}}") == "137"
    docker.run("rm", name)


@v1_files
def test_pause_unpause(docker: Docker) -> None:
    # Written aside and renamed, so a reader never sees a truncated file.
    counter = "i=0; while :; do i=$((i+1)); echo $i > /tmp/m; mv /tmp/m /tmp/n; sleep 0.05; done"
    name = detached(docker, IMAGE, "sh", "-c", counter)
    wait_for(lambda: docker.run("exec", name, "cat", "/tmp/n", check=False).stdout.strip(),
             what="the counter")
    docker.run("pause", name)
    assert docker.inspect(name, "{{.State.Status}}") == "paused"
    freezer = host_cgroup_file(docker, name, "freezer", "freezer.state")
    assert freezer.read_text().strip() == "FROZEN"
    proc = docker.run("exec", name, "true", check=False)
    assert proc.returncode != 0 and "paused" in proc.stderr
    docker.run("unpause", name)
    assert docker.inspect(name, "{{.State.Status}}") == "running"
    assert freezer.read_text().strip() == "THAWED"
    first = int(docker.run("exec", name, "cat", "/tmp/n").stdout)
    wait_for(lambda: int(docker.run("exec", name, "cat", "/tmp/n").stdout) > first,
             what="the counter to move after unpause")
    verbs = {call[-2] for call in docker.runtime_calls() if len(call) >= 2}
    assert {"pause", "resume"} <= verbs
    docker.run("rm", "--force", name)


def test_top_and_stats(docker: Docker) -> None:
    name = detached(docker, "--memory", "64m", IMAGE, "sleep", "300")
    top = docker.run("top", name).stdout.splitlines()
    assert top[0].split()[:3] == ["UID", "PID", "PPID"]
    assert any(line.endswith("sleep 300") for line in top[1:]), top
    assert top[1].split()[1] == docker.inspect(name, "{{.State.Pid}}")
    stats = docker.run("stats", "--no-stream", "--format", "{{.MemUsage}}|{{.PIDs}}",
                       name).stdout.strip()
    usage, pids = stats.split("|")
    assert usage.endswith("/ 64MiB"), stats
    assert int(pids) == 1
    docker.run("rm", "--force", name)


@v1_files
def test_update_memory(docker: Docker) -> None:
    name = detached(docker, "--memory", "64m", "--memory-swap", "64m", IMAGE, "sleep", "300")
    limit = host_cgroup_file(docker, name, "memory", "memory.limit_in_bytes")
    assert limit.read_text().strip() == str(64 * 2**20)
    docker.run("update", "--memory", "100m", "--memory-swap", "100m", "--pids-limit", "20",
               "--cpus", "1.5", "--cpu-shares", "512", name)
    assert limit.read_text().strip() == str(100 * 2**20)
    inside = docker.run("exec", name, "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                        "/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
                        "/sys/fs/cgroup/cpu/cpu.shares").stdout.split()
    assert inside == [str(100 * 2**20), "20", "150000", "512"]
    assert docker.inspect(name, "{{.HostConfig.Memory}}") == str(100 * 2**20)
    docker.run("rm", "--force", name)


@v1_files
def test_limits_inside_and_in_host_cgroups(docker: Docker) -> None:
    script = ("cat /sys/fs/cgroup/memory/memory.limit_in_bytes;"
              " cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us;"
              " cat /sys/fs/cgroup/pids/pids.max")
    out = docker.run("run", "--rm", *LIMITS, IMAGE, "sh", "-c", script).stdout.split()
    assert out == [str(64 * 2**20), "50000", "100000", "50"]
    name = detached(docker, *LIMITS, IMAGE, "sleep", "300")
    assert host_cgroup_file(docker, name, "memory", "memory.limit_in_bytes"
                            ).read_text().strip() == str(64 * 2**20)
    assert host_cgroup_file(docker, name, "cpu", "cpu.cfs_quota_us").read_text().strip() == "50000"
    assert host_cgroup_file(docker, name, "pids", "pids.max").read_text().strip() == "50"
    docker.run("rm", "--force", name)


def test_memory_limit_oom_kills(docker: Docker) -> None:
    name = unique("oom")
    hog = "x=$(head -c 104857600 /dev/zero | tr '\\0' a); echo survived"
    proc = docker.run("run", "--name", name, *LIMITS, IMAGE, "sh", "-c", hog, check=False,
                      timeout=120)
    docker.all_ids()
    assert "survived" not in proc.stdout
    assert proc.returncode == 137, (proc.returncode, proc.stderr)
    assert docker.inspect(name, "{{.State.OOMKilled}}") == "true"
    docker.run("rm", name)


@v1_files
def test_pids_limit_caps_a_fork_bomb(docker: Docker) -> None:
    bomb = ("(i=0; while [ $i -lt 200 ]; do sleep 5 & i=$((i+1)); done) 2>/dev/null;"
            " read n < /sys/fs/cgroup/pids/pids.current; echo $n")
    proc = docker.run("run", "--rm", *LIMITS, IMAGE, "sh", "-c", bomb, check=False,
                      timeout=120)
    assert proc.stdout.split(), (proc.returncode, proc.stdout, proc.stderr)
    assert 40 <= int(proc.stdout.split()[-1]) <= 50, proc.stdout


def test_user_and_read_only(docker: Docker) -> None:
    out = docker.run("run", "--rm", "--user", "1000:1000", IMAGE, "id").stdout
    assert out.startswith("uid=1000(user) gid=1000(user)")
    proc = docker.run("run", "--rm", "--read-only", IMAGE, "touch", "/x", check=False)
    assert proc.returncode == 1 and "Read-only file system" in proc.stderr
    # --read-only still leaves the volumes docker adds writable (here: none), and /dev/shm.
    docker.run("run", "--rm", "--read-only", IMAGE, "touch", "/dev/shm/x")


def status_fields(docker: Docker, *args: str) -> dict[str, str]:
    out = docker.run("run", "--rm", *args, IMAGE, "cat", "/proc/self/status").stdout
    return dict(line.split(":\t", 1) for line in out.splitlines() if ":\t" in line)


def test_capabilities(docker: Docker) -> None:
    default = status_fields(docker)
    # Docker's default set: chown dac_override fowner fsetid kill setgid setuid setpcap
    # net_bind_service net_raw sys_chroot mknod audit_write setfcap.
    assert default["CapEff"].strip() == "00000000a80425fb"
    dropped = status_fields(docker, "--cap-drop", "ALL")
    for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(dropped[key], 16) == 0, (key, dropped[key])
    proc = docker.run("run", "--rm", "--cap-drop", "ALL", IMAGE, "chown", "1000", "/tmp",
                      check=False)
    assert proc.returncode == 1 and "Operation not permitted" in proc.stderr


def test_no_new_privileges(docker: Docker) -> None:
    assert status_fields(docker)["NoNewPrivs"].strip() == "0"
    fields = status_fields(docker, "--security-opt", "no-new-privileges")
    assert fields["NoNewPrivs"].strip() == "1"


def test_default_seccomp_profile(docker: Docker) -> None:
    assert status_fields(docker)["Seccomp"].strip() == "2"
    assert status_fields(docker, "--security-opt", "seccomp=unconfined")["Seccomp"].strip() == "0"
    # Docker's profile denies unshare without CAP_SYS_ADMIN; a user namespace needs no
    # capability, so only the filter stops this one.
    proc = docker.run("run", "--rm", IMAGE, "unshare", "-U", "true", check=False)
    assert proc.returncode == 1 and "Operation not permitted" in proc.stderr
    docker.run("run", "--rm", "--security-opt", "seccomp=unconfined", IMAGE,
               "unshare", "-U", "true")


def test_tty(docker: Docker) -> None:
    out = docker.run("run", "--rm", "-t", IMAGE, "tty").stdout
    assert re.fullmatch(r"/dev/pts/\d+\r?\n", out), out
    name = detached(docker, IMAGE, "sleep", "300")
    out = docker.run("exec", "-t", name, "sh", "-c", "tty; [ -t 0 ] && echo stdin-tty").stdout
    assert re.fullmatch(r"/dev/pts/\d+\r?\nstdin-tty\r?\n", out), out
    docker.run("rm", "--force", name)
    result = run_in_pty(docker.argv("run", "--rm", "-it", IMAGE, "sh"), docker.env, [
        ("# ", b"[ -t 0 ] && echo stdin-is-a-tty\n"),
        # The CLI sets the size through the API once the container runs: wait for it.
        ("stdin-is-a-tty", b"while [ \"$(stty size)\" = '0 0' ]; do sleep 0.1; done;"
                           b" stty size; echo $((6*7))\n"),
        ("42", b"exit 7\n"),
    ], timeout=60)
    assert re.search(r"^stdin-is-a-tty\r*$", result.output, re.M), result.output
    assert re.search(r"^24 80\r*$", result.output, re.M), result.output
    assert result.status == 7, result.output


def test_init(docker: Docker) -> None:
    out = docker.run("run", "--rm", "--init", IMAGE, "cat", "/proc/1/comm").stdout
    assert out == "docker-init\n"


def test_healthcheck(docker: Docker) -> None:
    name = detached(docker, "--health-cmd", "test -e /tmp/ready", "--health-interval", "1s",
                    "--health-retries", "1", IMAGE, "sh", "-c",
                    "sleep 2; touch /tmp/ready; exec sleep 300")
    wait_for(lambda: docker.inspect(name, "{{.State.Health.Status}}") == "healthy",
             timeout=60, what="healthy")
    docker.run("exec", name, "rm", "/tmp/ready")
    wait_for(lambda: docker.inspect(name, "{{.State.Health.Status}}") == "unhealthy",
             timeout=60, what="unhealthy")
    docker.run("rm", "--force", name)


def test_restart(docker: Docker) -> None:
    name = detached(docker, "--init", IMAGE, "sleep", "300")
    pid = docker.inspect(name, "{{.State.Pid}}")
    docker.run("restart", "--time", "5", name)
    assert docker.inspect(name, "{{.State.Running}}") == "true"
    assert docker.inspect(name, "{{.State.Pid}}") != pid
    assert docker.run("exec", name, "cat", "/proc/1/comm").stdout == "docker-init\n"
    docker.run("rm", "--force", name)


@v1_files
def test_rm_force_running(docker: Docker) -> None:
    name = detached(docker, IMAGE, "sleep", "300")
    cid = docker.inspect(name, "{{.Id}}")
    pid = int(docker.inspect(name, "{{.State.Pid}}"))
    memory_dir = host_cgroup_file(docker, name, "memory", "memory.limit_in_bytes").parent
    assert memory_dir.name == cid
    docker.run("rm", "--force", name)
    assert cid not in docker.all_ids()
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), what="the container's process to go")
    assert not memory_dir.exists(), f"{memory_dir} left behind"
    assert not (docker.runtime_state / cid).exists()


COMPOSE = """\
version: "3.7"
services:
  web:
    image: busybox
    command: ["httpd", "-f", "-p", "8080", "-h", "/etc"]
    init: true
  worker:
    image: busybox
    init: true
    depends_on: [web]
    command:
      - sh
      - -c
      - >-
        for i in $$(seq 300); do wget -q -O - http://web:8080/hostname && break;
        sleep 0.2; done; echo worker-done; exec sleep 300
"""


def test_compose_up_ps_down(docker: Docker, tmp_path: Path) -> None:
    # The project's default network is a bridge in dockerd's own network namespace.
    project = tmp_path / "proj"
    project.mkdir()
    (project / "docker-compose.yml").write_text(COMPOSE)
    docker.compose(project, "-p", "nsboxdk", "up", "-d")
    try:
        docker.all_ids()
        ps = docker.compose(project, "-p", "nsboxdk", "ps").stdout
        assert re.search(r"^nsboxdk_web_1 .* Up", ps, re.M), ps
        assert re.search(r"^nsboxdk_worker_1 .* Up", ps, re.M), ps
        web_id = docker.inspect("nsboxdk_web_1", "{{.Config.Hostname}}")
        wait_for(lambda: "worker-done" in docker.run("logs", "nsboxdk_worker_1").stdout,
                 timeout=120, what="the worker")
        # The worker fetched web's /etc/hostname through the project network's DNS.
        assert web_id in docker.run("logs", "nsboxdk_worker_1").stdout
    finally:
        docker.compose(project, "-p", "nsboxdk", "down", "--timeout", "5")
    assert docker.run("ps", "-a", "-q", "--filter", "label=com.docker.compose.project=nsboxdk"
                      ).stdout == ""
    assert "nsboxdk_default" not in docker.run("network", "ls", "--format", "{{.Name}}").stdout


@v1_files
def test_runtime_error_is_one_line_and_leaves_nothing(docker: Docker) -> None:
    # /dev/null is no block device: the blkio throttle write fails in create.
    name = unique("bad")
    docker.run("create", "--name", name, "--device-read-bps", "/dev/null:1mb", IMAGE, "true")
    docker.all_ids()
    cid = docker.inspect(name, "{{.Id}}")
    proc = docker.run("start", name, check=False)
    assert proc.returncode != 0
    assert "OCI runtime create failed" in proc.stderr and "blkio" in proc.stderr, proc.stderr
    assert docker.inspect(name, "{{.State.Status}}") == "created"
    assert not (docker.runtime_state / cid).exists()
    leftovers = [p for p in Path("/sys/fs/cgroup").glob(f"*/{docker.cgroup_parent.lstrip('/')}/{cid}")]
    assert leftovers == []
    docker.run("rm", name)
