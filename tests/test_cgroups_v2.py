"""The cgroup limits of linux.resources on a pure cgroup v2 kernel.

The twins of test_cgroups_enforce.py for the v2 backend: the same limits,
enforced through cgroup2 files (pids.max, memory.max, cpu.max, cpuset.cpus,
io.max, cgroup.freeze) and the BPF device filter.  They skip on this hybrid
development host; `make test-v2` (tests/v2lane/) runs them in a qemu guest
booted with cgroup_no_v1=all, where pytest sits in the root cgroup with every
controller enabled for its children.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import helpers
import pytest
from cgroupv2 import CGROUPV2
from helpers import MEMORY_HOG, wait_for, with_mknod
from runtime_leaks import assert_nothing_left

pytestmark = CGROUPV2

MiB = 1 << 20
ROOT = Path("/sys/fs/cgroup")


def read(path: Path) -> str:
    return path.read_text().strip()


def keyed(path: Path) -> dict[str, str]:
    return dict(line.split(maxsplit=1) for line in path.read_text().splitlines() if " " in line)


def usage_usec(directory: Path) -> int:
    return int(keyed(directory / "cpu.stat")["usage_usec"])


@pytest.fixture
def cg_dir(cg_path: str) -> Path:
    return ROOT / cg_path.lstrip("/")



# ------------------------------------------------------------------ placement
def test_container_gets_its_own_cgroup2_directory_with_controllers(start, cg_dir, container_id):
    pid = start(["sleep", "1000"], {})
    assert Path(f"/proc/{pid}/cgroup").read_text().strip() == "0::" + str(cg_dir)[len(str(ROOT)):]
    controllers = set(read(cg_dir / "cgroup.controllers").split())
    assert {"memory", "pids", "cpu"} <= controllers


# ------------------------------------------------------------------ pids
def test_fork_bomb_stops_at_pids_max(start, run_runtime, container_id, cg_dir):
    limit = 12
    start(["sleep", "1000"], {"pids": {"limit": limit}})
    assert read(cg_dir / "pids.max") == str(limit)
    bomb = run_runtime("exec", container_id, "sh", "-c",
                       "i=0; while [ $i -lt 200 ]; do sleep 1000 & i=$((i+1)); done; echo all $i",
                       check=False)
    assert bomb.returncode != 0 and "all 200" not in bomb.stdout
    assert "can't fork" in bomb.stderr, bomb.stderr
    pids = json.loads(run_runtime("ps", "--format", "json", container_id).stdout)
    assert limit - 3 <= len(pids) <= limit, pids
    assert int(keyed(cg_dir / "pids.events")["max"]) >= 1


# ------------------------------------------------------------------ memory
def test_memory_max_oom_kills_and_events_report_it(start, run_runtime, runtime, container_id,
                                                   cg_dir, tmp_path):
    start(["sleep", "1000"], {"memory": {"limit": 32 * MiB}})
    assert read(cg_dir / "memory.max") == str(32 * MiB)
    with open(tmp_path / "events.out", "w") as out:
        events = subprocess.Popen([*runtime, "events", "--interval", "100s", container_id],
                                  stdout=out, stderr=subprocess.STDOUT)
        try:
            time.sleep(0.5)
            hog = run_runtime("exec", container_id, "sh", "-c", MEMORY_HOG, check=False)
            assert hog.returncode == 137, (hog.returncode, hog.stdout, hog.stderr)
            wait_for(lambda: '"oom"' in (tmp_path / "events.out").read_text(), timeout=10.0)
        finally:
            events.kill()
            events.wait()
    lines = [json.loads(line) for line in (tmp_path / "events.out").read_text().splitlines()]
    assert {"type": "oom", "id": container_id} in lines
    assert int(keyed(cg_dir / "memory.events")["oom_kill"]) >= 1
    memory = json.loads(run_runtime("events", "--stats", container_id).stdout)["data"]["memory"]
    assert memory["oom_kill"] >= 1 and memory["usage"]["failcnt"] >= 1
    assert memory["usage"]["limit"] == 32 * MiB


def test_memory_swap_and_reservation_are_converted(start, cg_dir):
    start(["sleep", "1000"], {"memory": {"limit": 64 * MiB, "swap": 96 * MiB,
                                         "reservation": 16 * MiB}})
    assert read(cg_dir / "memory.max") == str(64 * MiB)
    assert read(cg_dir / "memory.low") == str(16 * MiB)
    if (cg_dir / "memory.swap.max").exists():
        assert read(cg_dir / "memory.swap.max") == str(32 * MiB)  # swap - limit


# ------------------------------------------------------------------ cpu
def test_cpu_max_caps_a_busy_loop_at_half_a_cpu(start, cg_dir):
    start(["sh", "-c", "while :; do :; done"], {"cpu": {"quota": 50000, "period": 100000}})
    assert read(cg_dir / "cpu.max") == "50000 100000"
    time.sleep(0.3)
    u0, t0 = usage_usec(cg_dir), time.monotonic()
    time.sleep(3)
    u1, t1 = usage_usec(cg_dir), time.monotonic()
    share = (u1 - u0) / 1e6 / (t1 - t0)
    # The quota is a ceiling; under an emulated (TCG) guest the vCPU may get
    # less than its wall-clock share, so the floor is looser than on the host.
    assert 0.30 <= share <= 0.60, share
    assert int(keyed(cg_dir / "cpu.stat")["nr_throttled"]) > 5


def test_cpu_shares_become_cpu_weight(start, run_runtime, container_id, cg_dir):
    start(["sleep", "1000"], {"cpu": {"shares": 1024, "burst": 5000, "quota": 20000}})
    assert read(cg_dir / "cpu.weight") == "100"
    if (cg_dir / "cpu.max.burst").exists():
        assert read(cg_dir / "cpu.max.burst") == "5000"
    run_runtime("update", "--cpu-shares", "512", container_id)
    assert read(cg_dir / "cpu.weight") == "59"


def test_cpuset_pins_the_container(start, run_runtime, container_id, cg_dir):
    online = read(Path("/sys/devices/system/cpu/online"))
    cpu = int(online.replace(",", "-").split("-")[-1])
    start(["sleep", "1000"], {"cpu": {"cpus": str(cpu), "mems": "0"}})
    assert read(cg_dir / "cpuset.cpus") == str(cpu)
    inside = run_runtime("exec", container_id, "grep", "Cpus_allowed_list", "/proc/self/status")
    assert inside.stdout.split() == ["Cpus_allowed_list:", str(cpu)]


# ------------------------------------------------------------------ devices (BPF)
DEVICE_PROBE = ("mknod /dev/l0 b 7 0 && echo mknod0-ok; mknod /dev/l1 b 7 1 && echo mknod1-ok;"
                " dd if=/dev/l0 of=/dev/null count=0 2>&1 | sed 's/^/l0: /';"
                " dd if=/dev/l1 of=/dev/null count=0 2>&1 | sed 's/^/l1: /'; true")


def test_bpf_device_filter_refuses_a_device_and_allows_another(bundle_factory, run_runtime,
                                                               container_id, cg_path):
    rules = [{"allow": False, "access": "rwm"},
             {"allow": True, "type": "b", "major": 7, "minor": 0, "access": "r"}]

    def edit(spec: dict) -> None:
        with_mknod(spec)
        spec["linux"].update(cgroupsPath=cg_path, resources={"devices": rules})

    bundle = bundle_factory(args=["sh", "-c", DEVICE_PROBE], mutate=edit)
    out = run_runtime("run", "--bundle", str(bundle), container_id).stdout
    assert "mknod0-ok" in out and "mknod1-ok" in out, out
    l0 = [line for line in out.splitlines() if line.startswith("l0:")]
    l1 = [line for line in out.splitlines() if line.startswith("l1:")]
    assert any("Operation not permitted" in line for line in l1), out
    # Allowed: either it opens, or the driver (not the filter) says no.
    assert not any("Operation not permitted" in line for line in l0), out


def test_bpf_device_program_is_attached_and_default_nodes_work(start, run_runtime, container_id,
                                                                cg_dir):
    from nsbox.runtime.cgroups import devices_bpf

    start(["sleep", "1000"], {"devices": [{"allow": False, "access": "rwm"}]})
    assert devices_bpf.query(str(cg_dir))
    out = run_runtime("exec", container_id, "sh", "-c",
                      "echo x > /dev/null && head -c 4 /dev/zero | wc -c").stdout
    assert out.split() == ["4"]


# ------------------------------------------------------------------ io
def test_io_max_and_weight_values_reach_the_files(start, cg_dir):
    rdev = os.stat("/dev/vda").st_rdev if os.path.exists("/dev/vda") else None
    if rdev is None:
        pytest.skip("no /dev/vda in this guest")
    major, minor = os.major(rdev), os.minor(rdev)
    start(["sleep", "1000"], {"blockIO": {
        "weight": 500,
        "throttleReadBpsDevice": [{"major": major, "minor": minor, "rate": 2 * MiB}],
        "throttleWriteIOPSDevice": [{"major": major, "minor": minor, "rate": 120}]}})
    io_max = read(cg_dir / "io.max")
    assert io_max.startswith(f"{major}:{minor} rbps={2 * MiB} wbps=max riops=max wiops=120"), io_max
    if (cg_dir / "io.bfq.weight").exists():
        assert read(cg_dir / "io.bfq.weight").split()[-1] == "500"
    elif (cg_dir / "io.weight").exists():
        assert read(cg_dir / "io.weight").split()[-1] == "4950"  # 500 on 10..1000 -> 1..10000


# ------------------------------------------------------------------ unified / hugetlb
def test_unified_keys_are_written_last(start, cg_dir):
    start(["sleep", "1000"], {"pids": {"limit": 50},
                              "unified": {"pids.max": "7", "memory.high": str(48 * MiB)}})
    assert read(cg_dir / "pids.max") == "7"
    assert read(cg_dir / "memory.high") == str(48 * MiB)


def test_hugepage_limits(start, cg_dir):
    sizes = os.listdir("/sys/kernel/mm/hugepages") if os.path.isdir("/sys/kernel/mm/hugepages") else []
    if "hugepages-2048kB" not in sizes or "hugetlb" not in read(ROOT / "cgroup.controllers").split():
        pytest.skip("no 2MB huge pages or no hugetlb controller in this kernel")
    start(["sleep", "1000"], {"hugepageLimits": [{"pageSize": "2MB", "limit": 4 * MiB}]})
    assert read(cg_dir / "hugetlb.2MB.max") == str(4 * MiB)


def test_v1_only_values_are_refused(bundle_factory, run_runtime, runtime_root, container_id,
                                    cg_path):
    for resources, message in (({"memory": {"swappiness": 10}}, "swappiness"),
                               ({"cpu": {"realtimeRuntime": 1000}}, "realtime"),
                               ({"network": {"classID": 1}}, "net_cls")):
        bundle = bundle_factory(args=["true"], mutate=lambda s, r=resources: s["linux"].update(
            cgroupsPath=cg_path, resources=r))
        result = run_runtime("create", "--bundle", str(bundle), container_id, check=False)
        assert result.returncode == 1 and message in result.stderr, result.stderr
        assert_nothing_left(runtime_root, bundle, container_id)


# ------------------------------------------------------------------ freezer / update / kill
def test_pause_freezes_through_cgroup_freeze(start, run_runtime, container_id, cg_dir):
    start(["sh", "-c", "while :; do :; done"], {})
    run_runtime("pause", container_id)
    assert json.loads(run_runtime("state", container_id).stdout)["status"] == "paused"
    assert read(cg_dir / "cgroup.freeze") == "1"
    assert keyed(cg_dir / "cgroup.events")["frozen"] == "1"
    before = usage_usec(cg_dir)
    time.sleep(1)
    assert usage_usec(cg_dir) - before < 5000
    run_runtime("resume", container_id)
    assert json.loads(run_runtime("state", container_id).stdout)["status"] == "running"
    before = usage_usec(cg_dir)
    time.sleep(0.5)
    assert usage_usec(cg_dir) - before > 100_000


def test_update_changes_live_limits(start, run_runtime, container_id, cg_dir):
    start(["sleep", "1000"], {"pids": {"limit": 100}, "memory": {"limit": 64 * MiB}})
    run_runtime("update", "--pids-limit", "6", "--memory", "96m", "--cpu-quota", "30000",
                "--cpu-period", "100000", container_id)
    assert read(cg_dir / "pids.max") == "6"
    assert read(cg_dir / "memory.max") == str(96 * MiB)
    assert read(cg_dir / "cpu.max") == "30000 100000"
    bomb = run_runtime("exec", container_id, "sh", "-c",
                       "i=0; while [ $i -lt 50 ]; do sleep 1000 & i=$((i+1)); done", check=False)
    assert bomb.returncode != 0
    assert len(json.loads(run_runtime("ps", "--format", "json", container_id).stdout)) <= 6


def test_delete_force_of_a_paused_container(start, run_runtime, runtime_root, bundle,
                                            container_id, cg_dir):
    start(["sh", "-c", "sleep 1000 & while :; do :; done"], {})
    run_runtime("pause", container_id)
    run_runtime("delete", "--force", container_id)
    assert not cg_dir.exists()
    assert_nothing_left(runtime_root, bundle, container_id)


def test_nested_cgroups_path_gets_controllers_and_is_removed(bundle_factory, run_runtime,
                                                             container_id):
    """Intermediate directories the runtime creates must pass the controllers down."""
    with helpers.cgroup_under_own(f"nsbox-{container_id}") as base:
        path = base + "/inner/leaf"
        bundle = bundle_factory(args=["sleep", "100"], mutate=lambda s: s["linux"].update(
            cgroupsPath=path, resources={"pids": {"limit": 9}, "memory": {"limit": 64 * MiB}}))
        run_runtime("run", "--detach", "--bundle", str(bundle), container_id)
        leaf = ROOT / path.lstrip("/")
        assert read(leaf / "pids.max") == "9"
        assert read(leaf / "memory.max") == str(64 * MiB)
        run_runtime("delete", "--force", container_id)
        assert not (ROOT / base.lstrip("/")).exists()
