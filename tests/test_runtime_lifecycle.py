"""End-to-end tests of the `nsbox-runtime` CLI: lifecycle, command shapes, exit codes.

Every test drives the real binary on the real kernel with busybox bundles.
Where runc behaves in a particular way (exit codes, JSON shapes, the
`delete --force` of an unknown id) the test pins that behaviour; running the
suite with NSBOX_TEST_RUNTIME=runc checks the expectations against runc.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import helpers
import pytest
from helpers import pid_is_dead, wait_for, write_config

OCI_STATE_KEYS = {"ociVersion", "id", "pid", "status", "bundle", "rootfs", "created", "owner"}

# A container init that reports each TERM it gets into the shared dir, then
# exits: as PID 1 of its namespace it only sees signals it has a handler for.
TRAP_TERM = ('trap "echo TERM > /mark/signal; exit 0" TERM; touch /mark/ready;'
             ' while :; do sleep 0.05; done')


# ------------------------------------------------------------------ helpers
def state_of(run_runtime: Callable[..., subprocess.CompletedProcess], cid: str) -> dict:
    return json.loads(run_runtime("state", cid).stdout)


def wait_status(run_runtime: Callable[..., subprocess.CompletedProcess], cid: str,
                status: str, timeout: float = 5.0) -> dict:
    return wait_for(lambda: (s := state_of(run_runtime, cid))["status"] == status and s,
                    timeout=timeout)


def with_shared_dir(bundle: Path, host_dir: Path, args: list[str]) -> Path:
    """Bind HOST_DIR read-write at /mark in BUNDLE and make ARGS the process."""
    host_dir.mkdir(exist_ok=True)
    (bundle / "rootfs" / "mark").mkdir(exist_ok=True)

    def mutate(spec: dict) -> None:
        spec["process"]["args"] = args
        spec["mounts"].append({"destination": "/mark", "type": "bind",
                               "source": str(host_dir), "options": ["rbind", "rw"]})

    write_config(bundle, mutate)
    return bundle


def nspid_chain(pid: int) -> list[int]:
    """PID as seen from each PID namespace level, outermost first (NSpid line)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError(f"no NSpid line for {pid}")


def own_leftover_cgroups(container_id: str) -> list[str]:
    """Cgroup dirs the runtime made for CONTAINER_ID (default cgroupsPath) still present."""
    found = []
    for dirpath, dirnames, _files in os.walk("/sys/fs/cgroup"):
        if f"nsbox-{container_id}" in dirnames:
            found.append(os.path.join(dirpath, f"nsbox-{container_id}"))
    return found


# ------------------------------------------------------------------ lifecycle
def test_create_does_not_run_the_process_until_start(bundle, run_runtime, container_id,
                                                      tmp_path, runtime_root):
    shared = tmp_path / "shared"
    with_shared_dir(bundle, shared, ["sh", "-c", "touch /mark/ran; exec cat /mark/go"])
    os.mkfifo(shared / "go")

    run_runtime("create", "--bundle", str(bundle), container_id)
    created = state_of(run_runtime, container_id)
    assert created["status"] == "created"
    assert created["pid"] > 0 and not pid_is_dead(created["pid"])
    time.sleep(0.2)  # give a wrongly started process the time to show itself
    assert not (shared / "ran").exists(), "the user process ran before `start`"
    assert state_of(run_runtime, container_id)["status"] == "created"

    run_runtime("start", container_id)
    wait_for(lambda: (shared / "ran").exists())
    running = state_of(run_runtime, container_id)
    assert running["status"] == "running"
    assert running["pid"] == created["pid"]

    # `start` is a one-time transition.
    again = run_runtime("start", container_id, check=False)
    assert again.returncode != 0

    # Opening the fifo for writing and closing it lets `cat` see EOF and exit.
    with open(shared / "go", "w"):
        pass
    stopped = wait_status(run_runtime, container_id, "stopped")
    assert stopped["pid"] == 0
    assert pid_is_dead(created["pid"])

    run_runtime("delete", container_id)
    assert run_runtime("state", container_id, check=False).returncode != 0
    assert helpers.list_container_ids(runtime_root) == []


def test_state_json_matches_the_oci_shape(bundle, run_runtime, container_id, tmp_path):
    write_config(bundle, lambda s: s.update(annotations={"org.example.key": "value"}))
    pid_file = tmp_path / "init.pid"
    before = dt.datetime.now(dt.UTC)
    run_runtime("create", "--bundle", str(bundle), "--pid-file", str(pid_file), container_id)
    after = dt.datetime.now(dt.UTC)

    state = state_of(run_runtime, container_id)
    assert set(state) == OCI_STATE_KEYS | {"annotations"}
    assert state["id"] == container_id
    assert state["status"] == "created"
    assert state["pid"] == int(pid_file.read_text())
    assert state["bundle"] == str(bundle)
    assert state["rootfs"] == str(bundle / "rootfs")
    assert state["owner"] == ""
    assert state["annotations"] == {"org.example.key": "value"}
    assert isinstance(state["ociVersion"], str) and state["ociVersion"].count(".") == 2
    # RFC 3339 in UTC, taken while `create` ran.
    created = dt.datetime.fromisoformat(state["created"].replace("Z", "+00:00"))
    assert state["created"].endswith("Z")
    assert before - dt.timedelta(seconds=1) <= created <= after + dt.timedelta(seconds=1)


def test_state_without_annotations_has_exactly_the_oci_keys(bundle, run_runtime, container_id):
    run_runtime("create", "--bundle", str(bundle), container_id)
    assert set(state_of(run_runtime, container_id)) == OCI_STATE_KEYS


def test_state_of_unknown_container_fails(run_runtime):
    result = run_runtime("state", "no-such-container", check=False)
    assert result.returncode != 0
    assert "no-such-container" in result.stderr


def test_create_twice_with_the_same_id_fails(bundle, run_runtime, container_id):
    run_runtime("create", "--bundle", str(bundle), container_id)
    pid = state_of(run_runtime, container_id)["pid"]
    again = run_runtime("create", "--bundle", str(bundle), container_id, check=False)
    assert again.returncode != 0
    assert "exists" in again.stderr
    # The first container is untouched.
    assert state_of(run_runtime, container_id)["pid"] == pid


def test_create_with_a_missing_program_fails_and_leaves_nothing(bundle, run_runtime,
                                                                 container_id, runtime_root):
    write_config(bundle, lambda s: s["process"].update(args=["/no/such/program"]))
    result = run_runtime("create", "--bundle", str(bundle), container_id, check=False)
    assert result.returncode != 0
    assert "/no/such/program" in result.stderr
    assert helpers.list_container_ids(runtime_root) == []
    assert not own_leftover_cgroups(container_id)


def test_systemd_cgroup_fails_clearly_without_systemd(bundle, run_runtime, container_id,
                                                      runtime_root):
    if os.path.isdir("/run/systemd/system"):
        pytest.skip("systemd runs on this host")
    result = run_runtime("--systemd-cgroup", "run", "--bundle", str(bundle), container_id,
                         check=False)
    assert result.returncode != 0
    assert "systemd" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert helpers.list_container_ids(runtime_root) == []
    assert not own_leftover_cgroups(container_id)


# ------------------------------------------------------------------ list
def test_list_table_json_and_quiet(bundle_factory, run_runtime):
    empty = run_runtime("list")
    assert empty.stdout.split() == ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
    assert json.loads(run_runtime("list", "--format", "json").stdout) in ([], None)

    ids = sorted(helpers.new_container_id() for _ in range(2))
    bundles = [bundle_factory(name=f"b{i}") for i in range(2)]
    for cid, bundle in zip(ids, bundles, strict=True):
        run_runtime("create", "--bundle", str(bundle), cid)
    states = {cid: state_of(run_runtime, cid) for cid in ids}

    table = run_runtime("list").stdout.splitlines()
    assert table[0].split() == ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert sorted(rows) == ids
    for cid in ids:
        assert rows[cid][1:5] == [str(states[cid]["pid"]), "created",
                                  states[cid]["bundle"], states[cid]["created"]]

    listed = json.loads(run_runtime("list", "--format", "json").stdout)
    assert isinstance(listed, list)
    assert sorted(s["id"] for s in listed) == ids
    for entry in listed:
        assert OCI_STATE_KEYS <= set(entry)
        assert entry["pid"] == states[entry["id"]]["pid"]
        assert entry["status"] == "created"

    assert run_runtime("list", "-q").stdout.split() == ids
    assert run_runtime("list", "--quiet").stdout.split() == ids
    assert run_runtime("list", "--format", "yaml", check=False).returncode != 0


# ------------------------------------------------------------------ kill
@pytest.mark.parametrize("signal_arg", ["TERM", "SIGTERM", "15", None])
def test_kill_delivers_term_to_init(bundle, run_runtime, container_id, tmp_path, signal_arg):
    shared = tmp_path / "shared"
    with_shared_dir(bundle, shared, ["sh", "-c", TRAP_TERM])
    run_runtime("run", "--detach", "--bundle", str(bundle), container_id)
    wait_for(lambda: (shared / "ready").exists())
    assert state_of(run_runtime, container_id)["status"] == "running"

    run_runtime("kill", container_id, *([signal_arg] if signal_arg else []))
    wait_status(run_runtime, container_id, "stopped")
    assert (shared / "signal").read_text() == "TERM\n"


@pytest.mark.parametrize("signal_arg", ["KILL", "9", "SIGKILL"])
def test_kill_with_sigkill_stops_a_signal_ignoring_init(bundle, run_runtime, container_id,
                                                       signal_arg):
    # `sleep` as PID 1 has no handlers: only SIGKILL from the host can stop it.
    write_config(bundle, lambda s: s["process"].update(args=["sleep", "100"]))
    run_runtime("run", "--detach", "--bundle", str(bundle), container_id)
    pid = state_of(run_runtime, container_id)["pid"]

    run_runtime("kill", container_id, signal_arg)
    wait_status(run_runtime, container_id, "stopped")
    wait_for(lambda: pid_is_dead(pid))


def test_kill_all_signals_every_process(bundle, run_runtime, container_id):
    write_config(bundle, lambda s: s["process"].update(
        args=["sh", "-c", "sleep 100 & sleep 100 & exec sleep 100"]))
    run_runtime("run", "--detach", "--bundle", str(bundle), container_id)
    pids = wait_for(lambda: len(p := json.loads(
        run_runtime("ps", "--format", "json", container_id).stdout)) == 3 and p)

    run_runtime("kill", "--all", container_id, "KILL")
    for pid in pids:
        wait_for(lambda pid=pid: pid_is_dead(pid))
    wait_status(run_runtime, container_id, "stopped")


def test_kill_of_a_stopped_container_fails(bundle, run_runtime, container_id):
    write_config(bundle, lambda s: s["process"].update(args=["true"]))
    run_runtime("run", "--detach", "--bundle", str(bundle), container_id)
    wait_status(run_runtime, container_id, "stopped")
    result = run_runtime("kill", container_id, "KILL", check=False)
    assert result.returncode != 0
    assert "not running" in result.stderr
    run_runtime("delete", container_id)  # a stopped container needs no --force


def test_kill_rejects_an_unknown_signal(bundle, run_runtime, container_id):
    write_config(bundle, lambda s: s["process"].update(args=["sleep", "100"]))
    run_runtime("run", "--detach", "--bundle", str(bundle), container_id)
    for bad in ("SIGNOPE", "NOPE", "0x9", "999"):
        result = run_runtime("kill", container_id, bad, check=False)
        assert result.returncode != 0, bad
    assert state_of(run_runtime, container_id)["status"] == "running"


def test_kill_of_a_created_container_stops_it(bundle, run_runtime, container_id, tmp_path):
    shared = tmp_path / "shared"
    with_shared_dir(bundle, shared, ["touch", "/mark/ran"])
    run_runtime("create", "--bundle", str(bundle), container_id)
    run_runtime("kill", container_id, "KILL")
    wait_status(run_runtime, container_id, "stopped")
    assert not (shared / "ran").exists()


# ------------------------------------------------------------------ delete
def test_delete_of_running_container_needs_force(bundle, run_runtime, container_id,
                                                  runtime_root):
    write_config(bundle, lambda s: s["process"].update(args=["sleep", "100"]))
    run_runtime("run", "--detach", "--bundle", str(bundle), container_id)
    pid = state_of(run_runtime, container_id)["pid"]

    refused = run_runtime("delete", container_id, check=False)
    assert refused.returncode != 0
    assert "running" in refused.stderr
    assert state_of(run_runtime, container_id)["status"] == "running"

    run_runtime("delete", "--force", container_id)
    assert pid_is_dead(pid)
    assert helpers.list_container_ids(runtime_root) == []
    assert not own_leftover_cgroups(container_id)
    assert run_runtime("state", container_id, check=False).returncode != 0


def test_delete_force_of_a_created_container(bundle, run_runtime, container_id, runtime_root):
    run_runtime("create", "--bundle", str(bundle), container_id)
    pid = state_of(run_runtime, container_id)["pid"]
    run_runtime("delete", "-f", container_id)
    assert pid_is_dead(pid)
    assert helpers.list_container_ids(runtime_root) == []


def test_delete_of_unknown_id_fails_with_one_line(run_runtime):
    result = run_runtime("delete", "no-such-container", check=False)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "no-such-container" in lines[0]
    assert "Traceback" not in result.stderr


def test_delete_force_of_unknown_id_succeeds(run_runtime):
    # runc: `delete --force` of an id that does not exist is not an error.
    result = run_runtime("delete", "--force", "no-such-container", check=False)
    assert result.returncode == 0, result.stderr


def test_commands_need_a_container_id(run_runtime):
    for command in ("state", "start", "delete", "kill", "ps"):
        result = run_runtime(command, check=False)
        assert result.returncode != 0, command
        assert "Traceback" not in result.stderr


def test_invalid_container_id_is_refused(bundle, run_runtime, runtime_root):
    for bad in ("../escape", "a/b", "..", "-dash"):
        result = run_runtime("create", "--bundle", str(bundle), bad, check=False)
        assert result.returncode != 0, bad
    assert helpers.list_container_ids(runtime_root) == []
    assert not (runtime_root.parent / "escape").exists()


# ------------------------------------------------------------------ run
def test_run_returns_the_container_exit_code_and_deletes_it(bundle, run_runtime, container_id,
                                                            runtime_root):
    write_config(bundle, lambda s: s["process"].update(args=["sh", "-c", "echo out; exit 7"]))
    result = run_runtime("run", "--bundle", str(bundle), container_id, check=False)
    assert result.returncode == 7
    assert result.stdout == "out\n"
    assert helpers.list_container_ids(runtime_root) == []
    assert not own_leftover_cgroups(container_id)


def test_run_reports_death_by_signal_as_128_plus_signal(bundle, run_runtime, container_id,
                                                        runtime, tmp_path):
    write_config(bundle, lambda s: s["process"].update(args=["sleep", "100"]))
    pid_file = tmp_path / "pid"
    proc = subprocess.Popen([*runtime, "run", "--bundle", str(bundle), "--pid-file",
                             str(pid_file), container_id],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        wait_for(pid_file.exists)
        pid = int(pid_file.read_text())
        # The pid file comes with `create`: kill the process once `start` ran it,
        # not while it still waits for start (then `run` fails to start it).
        wait_for(lambda: Path(f"/proc/{pid}/comm").read_text().strip() == "sleep")
        os.kill(pid, 9)
        assert proc.wait(timeout=10) == 137
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_run_forwards_sigterm_to_the_container(bundle, run_runtime, container_id, runtime,
                                               tmp_path):
    shared = tmp_path / "shared"
    with_shared_dir(bundle, shared, ["sh", "-c", TRAP_TERM.replace("exit 0", "exit 42")])
    proc = subprocess.Popen([*runtime, "run", "--bundle", str(bundle), container_id],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (shared / "ready").exists())
        proc.terminate()  # the runtime, not the container
        assert proc.wait(timeout=10) == 42
        assert (shared / "signal").read_text() == "TERM\n"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_run_detach_returns_at_once(bundle, run_runtime, container_id, tmp_path):
    write_config(bundle, lambda s: s["process"].update(args=["sleep", "100"]))
    pid_file = tmp_path / "init.pid"
    started = time.monotonic()
    run_runtime("run", "--detach", "--pid-file", str(pid_file), "--bundle", str(bundle),
                container_id, timeout=10)
    assert time.monotonic() - started < 5
    state = state_of(run_runtime, container_id)
    assert state["status"] == "running"
    assert int(pid_file.read_text()) == state["pid"]
    # The pid file names the init as the host sees it; inside it is PID 1.
    assert nspid_chain(state["pid"])[0] == state["pid"]
    assert nspid_chain(state["pid"])[-1] == 1
    assert Path(f"/proc/{state['pid']}/cmdline").read_bytes() == b"sleep\x00100\x00"


def test_run_with_a_bad_config_fails_cleanly(bundle, run_runtime, container_id, runtime_root):
    (bundle / "config.json").write_text("{not json")
    result = run_runtime("run", "--bundle", str(bundle), container_id, check=False)
    assert result.returncode != 0
    assert "config.json" in result.stderr
    assert "Traceback" not in result.stderr
    assert helpers.list_container_ids(runtime_root) == []


def test_run_with_a_missing_bundle_fails(tmp_path, run_runtime, container_id):
    result = run_runtime("run", "--bundle", str(tmp_path / "nope"), container_id, check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------ ps
def test_ps_lists_the_container_pids(bundle, run_runtime, container_id):
    write_config(bundle, lambda s: s["process"].update(
        args=["sh", "-c", "sleep 100 & exec sleep 101"]))
    run_runtime("run", "--detach", "--bundle", str(bundle), container_id)
    init_pid = state_of(run_runtime, container_id)["pid"]
    pids = wait_for(lambda: len(p := json.loads(
        run_runtime("ps", "--format", "json", container_id).stdout)) == 2 and p)
    assert init_pid in pids
    init_ns = os.stat(f"/proc/{init_pid}/ns/pid").st_ino
    for pid in pids:
        assert os.stat(f"/proc/{pid}/ns/pid").st_ino == init_ns

    table = run_runtime("ps", container_id).stdout.splitlines()
    assert "PID" in table[0].split()
    column = table[0].split().index("PID")
    assert sorted(int(line.split()[column]) for line in table[1:]) == sorted(pids)


# ------------------------------------------------------------------ exec
@pytest.fixture
def running_container(bundle, run_runtime, container_id) -> str:
    """A running container (init: sleep 100) with a tmpfs /tmp; yields its id."""
    def mutate(spec: dict) -> None:
        spec["process"]["args"] = ["sleep", "100"]
        spec["process"]["env"].append("FROM_CONFIG=yes")
        spec["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                               "options": ["mode=1777"]})

    write_config(bundle, mutate)
    run_runtime("run", "--detach", "--bundle", str(bundle), container_id)
    return container_id


def test_exec_inline_env_cwd_user(running_container, run_runtime):
    out = run_runtime("exec", "--env", "FOO=bar", "--env", "BAZ=qux", "--cwd", "/tmp",
                      "--user", "1000:1000", running_container,
                      "sh", "-c", 'echo "$FOO $BAZ $FROM_CONFIG"; pwd; id -u; id -g').stdout
    assert out.splitlines() == ["bar qux yes", "/tmp", "1000", "1000"]


def test_exec_runs_inside_the_container_namespaces(running_container, run_runtime):
    init_pid = state_of(run_runtime, running_container)["pid"]
    out = run_runtime("exec", running_container, "sh", "-c",
                      "hostname; for ns in pid mnt net; do readlink /proc/self/ns/$ns; done;"
                      " echo $$").stdout.split()
    assert out[0] == "nsbox"
    for link, name in zip(out[1:4], ("pid", "mnt", "net"), strict=True):
        assert link == os.readlink(f"/proc/{init_pid}/ns/{name}")
    assert int(out[4]) > 1  # a new process in the container's PID namespace, not its init


def test_exec_exit_code_propagates(running_container, run_runtime):
    assert run_runtime("exec", running_container, "sh", "-c", "exit 3",
                       check=False).returncode == 3
    assert run_runtime("exec", running_container, "true").returncode == 0


def test_exec_of_a_missing_program_fails(running_container, run_runtime):
    result = run_runtime("exec", running_container, "/no/such/program", check=False)
    assert result.returncode != 0
    assert "/no/such/program" in result.stderr


def cap_mask(status_text: str, field: str) -> int:
    for line in status_text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1], 16)
    raise AssertionError(f"{field} not in /proc/self/status")


def test_exec_cap_adds_a_capability(running_container, run_runtime):
    cap_net_admin = 1 << 12
    plain = run_runtime("exec", running_container, "cat", "/proc/self/status").stdout
    added = run_runtime("exec", "--cap", "CAP_NET_ADMIN", running_container,
                        "cat", "/proc/self/status").stdout
    assert not cap_mask(plain, "CapEff") & cap_net_admin
    assert cap_mask(added, "CapEff") & cap_net_admin
    assert cap_mask(added, "CapBnd") & cap_net_admin
    # Nothing else changed.
    assert cap_mask(added, "CapEff") == cap_mask(plain, "CapEff") | cap_net_admin


def test_exec_detach_and_pid_file(running_container, run_runtime, tmp_path):
    init_pid = state_of(run_runtime, running_container)["pid"]
    pid_file = tmp_path / "exec.pid"
    started = time.monotonic()
    run_runtime("exec", "--detach", "--pid-file", str(pid_file), running_container,
                "sleep", "50")
    assert time.monotonic() - started < 5
    pid = int(pid_file.read_text())
    assert Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x0050\x00"
    assert os.stat(f"/proc/{pid}/ns/pid").st_ino == os.stat(f"/proc/{init_pid}/ns/pid").st_ino
    assert pid in json.loads(run_runtime("ps", "--format", "json", running_container).stdout)


def test_exec_process_file(running_container, run_runtime, tmp_path):
    process = {
        "terminal": False,
        "user": {"uid": 1000, "gid": 1000, "additionalGids": [65534]},
        "args": ["sh", "-c", 'echo "$ONLY"; pwd; id -u; id -G; echo "${FROM_CONFIG:-unset}"'],
        "env": ["PATH=/bin", "ONLY=from-file"],
        "cwd": "/home/user",
    }
    path = tmp_path / "process.json"
    path.write_text(json.dumps(process))
    out = run_runtime("exec", "--process", str(path), running_container).stdout
    # The file replaces the config's process entirely: FROM_CONFIG is not inherited.
    assert out.splitlines() == ["from-file", "/home/user", "1000", "1000 65534", "unset"]

    missing = run_runtime("exec", "--process", str(tmp_path / "nope.json"), running_container,
                          check=False)
    assert missing.returncode != 0


def test_exec_in_a_stopped_container_fails(bundle, run_runtime, container_id):
    write_config(bundle, lambda s: s["process"].update(args=["true"]))
    run_runtime("run", "--detach", "--bundle", str(bundle), container_id)
    wait_status(run_runtime, container_id, "stopped")
    result = run_runtime("exec", container_id, "true", check=False)
    assert result.returncode != 0
    assert "stopped" in result.stderr
