"""The runtime's commands that act on a live container's v1/hybrid cgroups, on this
host's real kernel: pause/resume through the freezer (CPU time stops and comes
back), delete --force of a paused container, kill --all reaching every process
of the cgroup, update changing live limits (and refusing bad ones), and events
(the stats shape, the interval stream, the end when the container stops).

The limits themselves, enforced at create, are in test_cgroups_enforce.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from cgroupv1 import MiB, controller_dir, has_memsw, read
from helpers import first_lines, wait_for
from runtime_leaks import assert_nothing_left

from nsbox.runtime import cgroups

pytestmark = pytest.mark.skipif(cgroups.mode() == "v2",
                                reason="cgroup v1/hybrid host tests; test_cgroups_v2.py covers v2")


# ------------------------------------------------------------------ freezer
def test_pause_stops_cpu_time_and_resume_restores_it(start, run_runtime, container_id, cg_path):
    start(["sh", "-c", "while :; do :; done"], {})
    acct = controller_dir("cpuacct", cg_path) / "cpuacct.usage"
    run_runtime("pause", container_id)
    assert json.loads(run_runtime("state", container_id).stdout)["status"] == "paused"
    assert read(controller_dir("freezer", cg_path) / "freezer.state") == "FROZEN"
    before = int(read(acct))
    time.sleep(1)
    frozen_delta = int(read(acct)) - before
    assert frozen_delta < 5_000_000, frozen_delta  # < 5 ms of CPU in 1 s
    run_runtime("resume", container_id)
    assert json.loads(run_runtime("state", container_id).stdout)["status"] == "running"
    # The loop runs again: 200 ms of CPU, which takes 0.2 s on an idle CPU and
    # longer on a busy host, so wait for it rather than for a fixed time.
    before = int(read(acct))
    deadline = time.monotonic() + 10
    while int(read(acct)) - before <= 200_000_000 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert int(read(acct)) - before > 200_000_000


def test_pause_and_resume_refuse_wrong_states(start, run_runtime, container_id, cg_path):
    start(["sleep", "1000"], {})
    result = run_runtime("resume", container_id, check=False)
    assert result.returncode == 1 and "not paused" in result.stderr
    run_runtime("pause", container_id)
    result = run_runtime("pause", container_id, check=False)
    assert result.returncode == 1 and "paused" in result.stderr
    result = run_runtime("exec", container_id, "true", check=False)
    assert result.returncode == 1 and "paused" in result.stderr


def test_delete_force_removes_a_paused_container(start, run_runtime, runtime_root, bundle,
                                                 container_id, cg_path):
    pid = start(["sh", "-c", "sleep 1000 & sleep 1000 & while :; do :; done"], {})
    run_runtime("pause", container_id)
    begin = time.monotonic()
    run_runtime("delete", "--force", container_id)
    assert time.monotonic() - begin < 3
    assert not Path(f"/proc/{pid}").exists() or b") Z" in Path(f"/proc/{pid}/stat").read_bytes()
    assert not controller_dir("freezer", cg_path).exists()
    assert not controller_dir("pids", cg_path).exists()
    assert_nothing_left(runtime_root, bundle, container_id)


def test_kill_all_signals_every_process_in_the_cgroup(start, run_runtime, container_id, cg_path):
    start(["sleep", "1000"], {})
    run_runtime("exec", "--detach", container_id, "sleep", "1001")
    run_runtime("exec", "--detach", container_id, "sh", "-c", "sleep 1002 & sleep 1003")
    pids = wait_for(lambda: (p := json.loads(run_runtime("ps", "--format", "json",
                                                         container_id).stdout)) and len(p) >= 4 and p)
    run_runtime("kill", "--all", container_id, "KILL")
    wait_for(lambda: all(not Path(f"/proc/{p}").exists()
                         or b") Z" in Path(f"/proc/{p}/stat").read_bytes() for p in pids))
    assert not (controller_dir("pids", cg_path) / "cgroup.procs").read_text().split()


# ------------------------------------------------------------------ update
def test_update_changes_a_live_pids_limit_and_it_holds(start, run_runtime, runtime_root,
                                                       container_id, cg_path):
    start(["sleep", "1000"], {"pids": {"limit": 100}})
    pids_max = controller_dir("pids", cg_path) / "pids.max"
    assert read(pids_max) == "100"
    run_runtime("update", "--pids-limit", "6", container_id)
    assert read(pids_max) == "6"
    bomb = run_runtime("exec", container_id, "sh", "-c",
                       "i=0; while [ $i -lt 50 ]; do sleep 1000 & i=$((i+1)); done; echo all $i",
                       check=False)
    assert bomb.returncode != 0 and "can't fork" in bomb.stderr
    assert len(json.loads(run_runtime("ps", "--format", "json", container_id).stdout)) <= 6
    time.sleep(0.3)
    assert read(pids_max) == "6"
    if not os.environ.get("NSBOX_TEST_RUNTIME"):
        saved = json.loads((runtime_root / container_id / "state.json").read_text())
        assert saved["config"]["linux"]["resources"]["pids"] == {"limit": 6}


def test_update_memory_and_cpu_from_flags_and_resources_file(start, run_runtime, container_id,
                                                             cg_path):
    start(["sleep", "1000"], {"memory": {"limit": 64 * MiB}, "cpu": {"quota": 20000,
                                                                     "period": 100000}})
    mem = controller_dir("memory", cg_path)
    cpu = controller_dir("cpu", cg_path)
    # Raising memory above the old memory+swap needs memsw written first.  Without
    # swap accounting (no memory.memsw.*) the runtime refuses any swap value, so the
    # swap parts are left out there.
    memsw = has_memsw()
    swap_flags = ["--memory-swap", "256m"] if memsw else []
    run_runtime("update", "--memory", "128m", *swap_flags, container_id)
    assert read(mem / "memory.limit_in_bytes") == str(128 * MiB)
    if memsw:
        assert read(mem / "memory.memsw.limit_in_bytes") == str(256 * MiB)
    # A lone --cpu-period keeps the quota.
    run_runtime("update", "--cpu-period", "50000", container_id)
    assert read(cpu / "cpu.cfs_period_us") == "50000" and read(cpu / "cpu.cfs_quota_us") == "20000"
    resources = {"memory": {"limit": 96 * MiB, **({"swap": 96 * MiB} if memsw else {})},
                 "pids": {"limit": 33}}
    run_runtime("update", "-r", "-", container_id, input=json.dumps(resources))
    assert read(mem / "memory.limit_in_bytes") == str(96 * MiB)
    assert read(controller_dir("pids", cg_path) / "pids.max") == "33"


def test_update_refuses_bad_values_and_keeps_the_old_ones(start, run_runtime, container_id,
                                                          cg_path):
    start(["sleep", "1000"], {"pids": {"limit": 50}})
    result = run_runtime("update", "--cpu-shares", "1", container_id, check=False)
    assert result.returncode == 1 and "cpu.shares" in result.stderr
    result = run_runtime("update", "--memory", "lots", container_id, check=False)
    assert result.returncode == 1 and "--memory" in result.stderr
    result = run_runtime("update", container_id, check=False)
    assert result.returncode == 1 and "nothing to change" in result.stderr
    assert read(controller_dir("pids", cg_path) / "pids.max") == "50"


def test_update_check_before_update_refuses_a_limit_below_usage(start, run_runtime, container_id,
                                                                cg_path):
    start(["sleep", "1000"], {"memory": {"limit": 64 * MiB}})
    limit_file = controller_dir("memory", cg_path) / "memory.limit_in_bytes"
    usage = int(read(limit_file.with_name("memory.usage_in_bytes")))
    result = run_runtime("update", "-r", "-", container_id, check=False, input=json.dumps(
        {"memory": {"limit": usage // 2, "checkBeforeUpdate": True}}))
    assert result.returncode == 1 and "below the current usage" in result.stderr, result.stderr
    assert read(limit_file) == str(64 * MiB)


def test_events_stats_shape(start, run_runtime, container_id, cg_path):
    start(["sleep", "1000"], {"pids": {"limit": 20}, "memory": {"limit": 64 * MiB}})
    out = run_runtime("events", "--stats", container_id).stdout
    assert out.count("\n") == 1
    event = json.loads(out)
    data = event["data"]
    assert {"cpu", "memory", "pids", "blkio", "hugetlb"} <= set(data)
    assert data["pids"] == {"current": 1, "limit": 20}
    assert data["memory"]["usage"]["limit"] == 64 * MiB
    assert data["memory"]["usage"]["usage"] > 0
    assert data["cpu"]["usage"]["total"] > 0
    assert isinstance(data["cpu"]["usage"]["percpu"], list)


def test_events_stream_stats_at_the_interval(start, runtime, container_id, cg_path):
    start(["sleep", "1000"], {})
    lines = first_lines([*runtime, "events", "--interval", "200ms", container_id], 3)
    events = [json.loads(line) for line in lines]
    assert all(e["type"] == "stats" and e["id"] == container_id for e in events)


def test_events_end_when_the_container_stops(start, run_runtime, runtime, container_id, cg_path):
    start(["sleep", "1000"], {})
    proc = subprocess.Popen([*runtime, "events", "--interval", "100s", container_id],
                            stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        run_runtime("kill", container_id, "KILL")
        assert proc.wait(timeout=5) == 0
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
