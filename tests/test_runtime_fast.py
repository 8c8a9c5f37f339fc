"""The compiled nsbox-runtime's own `start` and `delete` (bin/runtime_fast.c).

A plain container is started and deleted without Python; everything else
must still reach the Python CLI, with its messages.  Which of the two ran is
told apart by a PYTHONPATH whose `nsbox` package exits 99 as soon as it is
imported: a command that exits 99 went to Python.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import helpers
import pytest
from cgroupv2 import requires_cgroup2
from helpers import PYTHON_RAN, no_python_env, run_cli, wait_for, write_config

from nsbox.runtime.state import ContainerState, fastpath_record


@pytest.fixture
def compiled(runtime: list[str]) -> list[str]:
    with open(runtime[0], "rb") as program:
        if program.read(4) != b"\x7fELF":
            pytest.skip("nsbox-runtime is the script launcher (no C compiler at install)")
    return runtime


@pytest.fixture
def no_python(tmp_path: Path) -> dict[str, str]:
    """An environment in which any command that starts Python exits PYTHON_RAN."""
    return no_python_env(tmp_path)


def plain_bundle(bundle: Path, cg_path: str, args: list[str]) -> Path:
    def mutate(spec: dict) -> None:
        spec["process"]["args"] = args
        spec["linux"]["cgroupsPath"] = cg_path

    write_config(bundle, mutate)
    return bundle


def state_dir(runtime: list[str], cid: str) -> Path:
    return helpers.root_of(runtime) / cid


def status(runtime: list[str], cid: str) -> str:
    return json.loads(run_cli(runtime, "state", cid).stdout)["status"]


def record_lines(runtime: list[str], cid: str) -> list[str]:
    return (state_dir(runtime, cid) / "fastpath").read_text().splitlines()


def test_plain_start_and_delete_need_no_python(compiled, bundle, cg_path, container_id,
                                               no_python, tmp_path):
    """create's record names the init and the cgroups; start runs the process and
    delete removes every cgroup directory and the state, both without Python,
    with the global flags containerd passes (--log, --log-format json)."""
    plain_bundle(bundle, cg_path, ["sh", "-c", "sleep 0.2"])
    run_cli(compiled, "create", "--bundle", str(bundle), container_id)
    state = json.loads((state_dir(compiled, container_id) / "state.json").read_text())
    lines = record_lines(compiled, container_id)
    assert lines[:3] == ["nsbox-fastpath 1", f"pid {state['pid']}",
                         f"start {state['pid_start_time']}"]
    leaves = [line.split(" ", 1)[1] for line in lines if line.startswith("rmdir ")]
    assert sorted(leaves) == sorted(set(state["cgroup_paths"].values()))
    assert all(Path(d).is_dir() for d in leaves)

    log = tmp_path / "runtime.log"
    flags = ["--log", str(log), "--log-format", "json", "--systemd-cgroup=false"]
    started = run_cli([*compiled, *flags], "start", container_id, env=no_python, check=False)
    assert (started.returncode, started.stderr) == (0, "")
    assert status(compiled, container_id) == "running"
    assert log.exists() and log.read_text() == ""  # created, as Python's handler does
    wait_for(lambda: status(compiled, container_id) == "stopped", timeout=10)

    deleted = run_cli([*compiled, *flags], "delete", "--force", container_id, env=no_python,
                      check=False)
    assert (deleted.returncode, deleted.stderr) == (0, "")
    assert not state_dir(compiled, container_id).exists()
    assert [d for d in leaves if Path(d).exists()] == []
    gone = run_cli(compiled, "state", container_id, check=False)
    assert gone.returncode != 0 and "does not exist" in gone.stderr


def test_other_states_and_flags_go_to_python(compiled, bundle, cg_path, container_id,
                                             no_python):
    """What the compiled commands do not handle reaches Python, which answers
    as it always has: a running or paused container, --debug, --help, an
    unknown id, flags it does not know."""
    plain_bundle(bundle, cg_path, ["sleep", "30"])
    run_cli(compiled, "create", "--bundle", str(bundle), container_id)
    run_cli(compiled, "--debug=false", "start", container_id, env=no_python)
    assert status(compiled, container_id) == "running"

    for args in (["start", container_id],                  # not created
                 ["delete", container_id],                 # running: Python refuses
                 ["delete", "--force", container_id],      # running: Python kills
                 ["--debug", "delete", container_id],
                 ["delete", "--force=maybe", container_id],  # Python's usage error
                 ["delete", "--help"],
                 ["start", "no-such-container"],
                 ["start", container_id, "extra"],
                 ["--root", "relative", "start", container_id],
                 ["--log-format", "xml", "start", container_id],
                 ["kill", container_id, "KILL"]):
        result = run_cli(compiled, *args, env=no_python, check=False)
        assert result.returncode == PYTHON_RAN, (args, result)

    refused = run_cli(compiled, "delete", container_id, check=False)
    assert refused.returncode == 1
    assert "not stopped: running" in refused.stderr
    again = run_cli(compiled, "start", container_id, check=False)
    assert again.returncode != 0 and "running" in again.stderr

    run_cli(compiled, "pause", container_id)
    paused = run_cli(compiled, "delete", container_id, env=no_python, check=False)
    assert paused.returncode == PYTHON_RAN
    run_cli(compiled, "delete", "--force", container_id)
    assert not state_dir(compiled, container_id).exists()


def check_paused_created_container(runtime: list[str], bundle: Path, cg_path: str, cid: str,
                                   no_python: dict[str, str]) -> list[str]:
    """A created container that is paused is not started by the compiled start
    (it reads the freezer as Python does); Python refuses it.  Returns the record."""
    plain_bundle(bundle, cg_path, ["true"])
    run_cli(runtime, "create", "--bundle", str(bundle), cid)
    run_cli(runtime, "pause", cid)
    assert run_cli(runtime, "start", cid, env=no_python, check=False).returncode == PYTHON_RAN
    refused = run_cli(runtime, "start", cid, check=False)
    assert refused.returncode != 0 and "paused" in refused.stderr
    lines = record_lines(runtime, cid)
    run_cli(runtime, "resume", cid)
    run_cli(runtime, "start", cid, env=no_python)
    wait_for(lambda: status(runtime, cid) == "stopped", timeout=10)
    run_cli(runtime, "delete", cid, env=no_python)
    assert not state_dir(runtime, cid).exists()
    return lines


def test_a_paused_created_container_is_not_started(compiled, bundle, cg_path, container_id,
                                                   no_python):
    lines = check_paused_created_container(compiled, bundle, cg_path, container_id, no_python)
    assert any(line.startswith("freezer ") for line in lines)  # v1's freezer, as Python reads


@pytest.mark.cgroupv2
@requires_cgroup2
def test_a_paused_created_container_is_not_started_on_cgroup_v2(compiled, bundle, cg_path,
                                                                container_id, no_python):
    lines = check_paused_created_container(compiled, bundle, cg_path, container_id, no_python)
    assert f"unified /sys/fs/cgroup{cg_path}" in lines  # its cgroup.freeze
    assert [line for line in lines if line.startswith("rmdir ")] == [
        f"rmdir /sys/fs/cgroup{cg_path}"]


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_an_init_that_fails_is_reported_as_python_reports_it(compiled, bundle_factory,
                                                              log_format, tmp_path):
    """The program disappears between create and start: the init's exec fails
    after start's byte, and the compiled start reports it (stderr, --log in
    either format, exit 1) exactly as the Python start does."""
    name = "/gone-\u00e9-\U0001f642"
    reports = {}
    for mode in ("0", "1"):
        bundle = bundle_factory(args=[name], name=f"bundle{mode}")
        shutil.copy("/bin/true", bundle / "rootfs" / name.lstrip("/"))
        cid = helpers.new_container_id()
        run_cli(compiled, "create", "--bundle", str(bundle), cid)
        os.unlink(bundle / "rootfs" / name.lstrip("/"))
        log = tmp_path / f"log{mode}"
        result = run_cli([*compiled, "--log", str(log), "--log-format", log_format],
                         "start", cid, check=False,
                         env={**os.environ, "NSBOX_RUNTIME_FAST": mode})
        lines = log.read_text().splitlines()
        assert len(lines) == 1
        if log_format == "json":
            entry = json.loads(lines[0])
            entry.pop("time")
            logged = json.dumps(entry, sort_keys=True)
            assert lines[0].isascii()  # the json module's escapes
        else:
            logged = lines[0].split(" ", 1)[1]  # without the time stamp
        reports[mode] = (result.returncode, result.stderr, logged)
        assert status(compiled, cid) == "stopped"
        run_cli(compiled, "delete", cid)
    assert reports["1"] == reports["0"]
    code, stderr, _ = reports["1"]
    assert code == 1 and name in stderr and stderr.count("\n") == 1


def test_a_cgroup_still_in_use_goes_to_python(compiled, bundle, cg_path, container_id,
                                              no_python):
    """A sub-cgroup left in the container's cgroup stops the compiled delete
    (after removing what it could); Python's delete then finishes the job."""
    plain_bundle(bundle, cg_path, ["true"])
    run_cli(compiled, "create", "--bundle", str(bundle), container_id)
    run_cli(compiled, "start", container_id)
    wait_for(lambda: status(compiled, container_id) == "stopped", timeout=10)
    leaves = [line.split(" ", 1)[1] for line in record_lines(compiled, container_id)
              if line.startswith("rmdir ")]
    nested = Path(leaves[-1]) / "left-behind"
    nested.mkdir()

    handed = run_cli(compiled, "delete", container_id, env=no_python, check=False)
    assert handed.returncode == PYTHON_RAN
    assert (state_dir(compiled, container_id) / "state.json").exists()
    run_cli(compiled, "delete", container_id)
    assert not state_dir(compiled, container_id).exists()
    assert [d for d in leaves if Path(d).exists()] == []


def test_containers_without_a_record_run_in_python(compiled, bundle, cg_path, container_id,
                                                   no_python):
    """A poststart hook (the record is not written), and a directory left with a
    record but no state.json (a create interrupted between the two files)."""
    def mutate(spec: dict) -> None:
        spec["process"]["args"] = ["true"]
        spec["linux"]["cgroupsPath"] = cg_path
        spec["hooks"] = {"poststart": [{"path": "/bin/true"}]}

    write_config(bundle, mutate)
    run_cli(compiled, "create", "--bundle", str(bundle), container_id)
    assert not (state_dir(compiled, container_id) / "fastpath").exists()
    assert run_cli(compiled, "start", container_id, env=no_python,
                   check=False).returncode == PYTHON_RAN
    run_cli(compiled, "start", container_id)
    wait_for(lambda: status(compiled, container_id) == "stopped", timeout=10)
    run_cli(compiled, "delete", container_id)

    half = state_dir(compiled, "half-made")
    half.mkdir(parents=True)
    (half / "fastpath").write_text("nsbox-fastpath 1\npid 1\nstart 1\n")
    assert run_cli(compiled, "delete", "half-made", env=no_python,
                   check=False).returncode == PYTHON_RAN
    run_cli(compiled, "delete", "half-made")
    assert not half.exists()


def test_record_follows_the_state():
    """Which containers get a record, and the order delete removes directories in."""
    paths = {"": "/sys/fs/cgroup/unified/a/c", "freezer": "/sys/fs/cgroup/freezer/a/c",
             "cpu": "/sys/fs/cgroup/cpu/a/c", "cpuacct": "/sys/fs/cgroup/cpu/a/c"}
    created = [*set(paths.values()), "/sys/fs/cgroup/unified/a", "/sys/fs/cgroup/cpu/a",
               "/sys/fs/cgroup/freezer"]
    state = ContainerState("c", "/b", "/b/rootfs", pid=42, pid_start_time=7,
                           cgroup_paths=paths, cgroup_created=created)
    assert fastpath_record(state).decode().splitlines() == [
        "nsbox-fastpath 1", "pid 42", "start 7",
        "freezer /sys/fs/cgroup/freezer/a/c", "unified /sys/fs/cgroup/unified/a/c",
        "rmdir /sys/fs/cgroup/unified/a/c", "rmdir /sys/fs/cgroup/freezer/a/c",
        "rmdir /sys/fs/cgroup/cpu/a/c",
        "rmdir-parent /sys/fs/cgroup/unified/a", "rmdir-parent /sys/fs/cgroup/freezer",
        "rmdir-parent /sys/fs/cgroup/cpu/a"]
    # A pre-existing (shared) cgroup is not ours to remove.
    shared = ContainerState("c", "/b", "/b/rootfs", pid=42, pid_start_time=7,
                            cgroup_paths={"": "/sys/fs/cgroup/unified/s"}, cgroup_created=[])
    assert b"rmdir" not in fastpath_record(shared)
    for changes in ({"config": {"hooks": {"poststop": [{"path": "/bin/true"}]}}},
                    {"config": {"hooks": {"poststart": [{"path": "/bin/true"}]}}},
                    {"systemd_cgroup": True},
                    {"pid": 0},
                    {"cgroup_paths": {"": "/sys/fs/cgroup/unified/new\nline"}}):
        other = ContainerState("c", "/b", "/b/rootfs", **{"pid": 42, **changes})
        assert fastpath_record(other) is None, changes
