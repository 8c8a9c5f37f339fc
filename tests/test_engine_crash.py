"""Crash safety without a daemon: a SIGKILL of the CLI, the monitor or one of its helpers at
each named step of create/start/attach/finish/remove (NSBOX_TEST_CRASHPOINT), then the
invariants of docs/engine.md ("Crash safety"): one record per container, the record
matching /proc, a --rm container gone within a bounded time, and nothing left (row,
cgroup, mount, process, exit file) after the next `rm -f` and `container prune`.
Real containers, each test with its own --root/--runroot (tests/crash_harness.py).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from crash_harness import (
    Box,
    cgroups_of,
    check_consistent,
    kill_monitor_of,
    leftovers,
    wait_settled,
)

SCRIPT = "echo hi; sleep 0.2; exit 3"


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory):
    b = Box(tmp_path_factory.mktemp("crash"))
    b("run", "--rm", "busybox", "true")  # builds busybox once
    yield b
    leftovers(b, set(), set())


def fault(box: Box, point: str, *run_flags: str) -> tuple[str, object]:
    """`run RUN_FLAGS --name N busybox sh -c SCRIPT` with the process reaching POINT killed there."""
    name = "c" + os.urandom(4).hex()
    proc = box("run", *run_flags, "--name", name, "busybox", "sh", "-c", SCRIPT,
               crashpoint=point, check=False, timeout=60)
    return name, proc


def settle_and_check(box: Box, name: str, rm: bool) -> dict:
    """Wait for the container to get where it goes; check the invariants; the last inspect."""
    before = box.rows()
    ids = {cid for cid, (n, _) in before.items() if n == name}
    deadline = time.monotonic() + 15
    info = {}
    while time.monotonic() < deadline:
        rows = wait_settled(box, ids if rm else set())
        mine = {cid: row for cid, row in rows.items() if row[0] == name}
        assert len(mine) <= 1, mine
        for cid, (_, status) in mine.items():
            assert check_consistent(box, cid, status) == []
            info = box.inspect(cid)
        if rm:
            assert not mine, f"--rm container {name} left: {mine}"
            break
        state = (info.get("State") or {}) if mine else {}
        if not mine or not state.get("Running"):
            break
        time.sleep(0.1)
    left = leftovers(box, ids, ids if rm else set())
    assert left == {}, left
    return info


# (crash point, who dies there) for an attached `run --rm`.
ATTACHED_RM = [
    ("create.after_insert", "CLI: the row exists, nothing else"),
    ("create.after_rootfs", "CLI: the overlay exists"),
    ("create.after_bundle", "CLI: the bundle exists, still `creating`"),
    ("start.after_record", "CLI: `starting`, before the monitor has its arguments"),
    ("start.after_hand_over", "CLI: the monitor has its arguments"),
    ("monitor.after_detach", "monitor: before its start helper"),
    ("helper.after_create", "start helper: the runtime made the container, not started"),
    ("helper.after_running", "start helper: running and recorded, not answered"),
    ("monitor.before_ready", "monitor: the container runs, the starter not told"),
    ("monitor.watching", "monitor: while the container runs"),
    ("attached.after_exit_record", "CLI: recorded the exit, not acknowledged"),
    ("finish.after_exit_record", "CLI (its finish): exit recorded, before the --rm removal"),
    ("attached.before_remove", "CLI: output read, before its --rm removal"),
    ("remove.after_runtime_delete", "CLI: halfway through the removal"),
]


@pytest.mark.parametrize("point", [p for p, _ in ATTACHED_RM])
def test_run_rm_killed_at(box, point):
    name, _ = fault(box, point, "--rm")
    settle_and_check(box, name, rm=True)


# For `run -d` (the monitor finishes the container).
DETACHED = [
    "create.after_bundle", "start.after_record", "start.after_hand_over",
    "monitor.before_ready", "monitor.watching", "monitor.resume",
    "finish.after_runtime_delete", "finish.after_exit_record",
]


@pytest.mark.parametrize("point", DETACHED)
def test_run_d_killed_at(box, point):
    name, _ = fault(box, point, "-d")
    settle_and_check(box, name, rm=False)


@pytest.mark.parametrize("point", ["start.after_hand_over", "monitor.resume",
                                   "finish.after_exit_record", "remove.after_runtime_delete"])
def test_run_d_rm_killed_at(box, point):
    name, _ = fault(box, point, "-d", "--rm")
    settle_and_check(box, name, rm=True)


def test_cli_killed_after_hand_over_keeps_exit_code_and_output(box):
    """The issue's reproducer: `run -d` killed once the monitor has the container."""
    name, proc = fault(box, "start.after_hand_over", "-d")
    assert proc.returncode == -9
    deadline = time.monotonic() + 10
    while box("inspect", "-f", "{{.State.Status}}", name).stdout.strip() != "exited":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert box("inspect", "-f", "{{.State.ExitCode}}", name).stdout == "3\n"
    assert box("logs", name).stdout == "hi\n"
    assert "Exited (3)" in box("ps", "-a", "--filter", f"name={name}").stdout
    box("rm", name)


def test_cli_killed_after_hand_over_rm_is_honoured(box):
    name, _ = fault(box, "start.after_hand_over", "--rm")
    deadline = time.monotonic() + 10
    while name in {n for n, _ in box.rows().values()}:
        assert time.monotonic() < deadline, "--rm not honoured"
        time.sleep(0.05)


def test_exit_nobody_saw_is_unknown_not_137(box):
    """The monitor killed while the container runs: no exit code is invented."""
    name, proc = fault(box, "monitor.watching", "-d")
    assert proc.returncode == 0, proc.stderr
    time.sleep(0.6)  # the container exits (3) with nobody watching
    state = box.inspect(name)["State"]
    assert state["Status"] == "exited"
    assert state["ExitCode"] == 255 and isinstance(state["ExitCode"], int)
    assert state["Error"].startswith("exit code unknown")
    assert "Exited (unknown)" in box("ps", "-a", "--filter", f"name={name}").stdout
    assert box("wait", name).stdout == "255\n"
    box("rm", name)


def test_monitor_killed_during_start_leaves_no_cgroup(box):
    """Issue B: the start helper killed with the container half made; rm is not even needed."""
    name, proc = fault(box, "helper.after_create", "--rm")
    assert proc.returncode == 125 and "cannot start container" in proc.stderr
    assert name not in {n for n, _ in box.rows().values()}
    assert leftovers(box, set(), set()) == {}


def test_timed_monitor_kill_during_start(box):
    """Issue B by a timed kill: `run --rm` with its monitor SIGKILLed ~45 ms in."""
    import subprocess
    for delay in (0.03, 0.045, 0.06):
        name = "t" + os.urandom(4).hex()
        proc = subprocess.Popen(box.argv("run", "--rm", "--name", name, "busybox", "sleep", "1"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        cid = next((c for c, (n, _) in box.rows().items() if n == name), "")
        if cid:
            kill_monitor_of(cid)
        proc.wait(timeout=30)
        settle_and_check(box, name, rm=True)
        if cid:
            assert cgroups_of(cid) == []


def test_prune_removes_orphan_cgroups_this_root_made(box):
    """A cgroup nsbox-<id> with no row: prune removes it if this root has a trace of the id."""
    from nsbox.runtime import cgroups
    cid = os.urandom(32).hex()
    paths = cgroups.resolve(f"nsbox-{cid}", cid)
    cgroups.create(paths)
    trace = box.base / "run" / "nsbox-runtime" / cid
    trace.mkdir(parents=True)
    try:
        assert cgroups_of(cid)
        box("container", "prune", "-f")
        assert cgroups_of(cid) == []
    finally:
        cgroups.destroy(paths)
        trace.rmdir()


def test_load_of_archive_missing_a_layer_is_one_line(box, tmp_path: Path):
    """Issue D: manifest.json names a layer the tar lacks."""
    import io
    import json
    import tarfile
    archive = tmp_path / "bad.tar"
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]}}).encode()
    manifest = json.dumps([{"Config": "cfg.json", "RepoTags": ["bad:1"],
                            "Layers": ["deadbeef.tar"]}]).encode()
    with tarfile.open(archive, "w") as tar:
        for member, data in (("cfg.json", config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    proc = box("load", "-i", str(archive), check=False)
    assert proc.returncode == 125
    assert proc.stderr.strip().count("\n") == 0 and "deadbeef.tar" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
