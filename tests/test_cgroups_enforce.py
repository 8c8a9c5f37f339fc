"""The cgroup limits of linux.resources, enforced on this host's real kernel (v1 / hybrid).

Every test runs real containers through the nsbox-runtime CLI, with a
cgroupsPath below the test's own cgroup, and checks what the kernel does:
forks refused at pids.max, an OOM kill at the memory limit (and the OOM
reported by `events`), CPU time capped by the CFS quota, the CPU set,
devices refused by the device controller, block I/O throttled, and the
limits refused at create.  The commands acting on a live cgroup (pause/resume,
kill --all, update, events) are in test_cgroups_commands.py.  The cgroup v2 twins
of these tests are in test_cgroups_v2.py (run by the qemu lane).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import helpers
import host_features
import pytest
from cgroupv1 import MiB, controller_dir, read
from helpers import MEMORY_HOG, wait_for, with_mknod
from runtime_leaks import assert_nothing_left

from nsbox.runtime import cgroups

pytestmark = pytest.mark.skipif(cgroups.mode() == "v2",
                                reason="cgroup v1/hybrid host tests; test_cgroups_v2.py covers v2")


# ------------------------------------------------------------------ helpers
def proc_cpu_ticks(pid: int) -> int:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    fields = data[data.rindex(b")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def whole_disk_of(path: str) -> tuple[int, int]:
    """major:minor of the disk (not partition) holding PATH: blk-throttle wants whole disks."""
    dev = os.stat(path).st_dev
    sysdir = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    if (sysdir / "partition").exists():
        sysdir = sysdir.resolve().parent
    major, minor = read(sysdir / "dev").split(":")
    return int(major), int(minor)


# ------------------------------------------------------------------ pids
def test_fork_bomb_stops_at_pids_max(start, run_runtime, container_id, cg_path):
    limit = 12
    start(["sleep", "1000"], {"pids": {"limit": limit}})
    pids_dir = controller_dir("pids", cg_path)
    assert read(pids_dir / "pids.max") == str(limit)
    # Without a limit this starts 200 sleeps and exits 0; with it the shell
    # dies at the first fork the kernel refuses.
    bomb = run_runtime("exec", container_id, "sh", "-c",
                       "i=0; while [ $i -lt 200 ]; do sleep 1000 & i=$((i+1)); done; echo all $i",
                       check=False)
    assert bomb.returncode != 0 and "all 200" not in bomb.stdout
    assert "can't fork" in bomb.stderr, bomb.stderr
    pids = json.loads(run_runtime("ps", "--format", "json", container_id).stdout)
    assert limit - 3 <= len(pids) <= limit, pids
    assert int(read(pids_dir / "pids.current")) <= limit
    assert int(read(pids_dir / "pids.events").split()[1]) >= 1  # "max N": forks refused


# ------------------------------------------------------------------ memory
def require_oom_without_swap() -> None:
    """With swap on, a memory limit alone swaps the hog out instead of OOM-killing it."""
    if host_features.swap_active():
        pytest.skip("swap is on here: a memory limit without a swap limit swaps out, "
                    "it need not OOM-kill")


def test_memory_limit_oom_kills_and_events_report_it(start, run_runtime, runtime, container_id,
                                                     cg_path, tmp_path):
    require_oom_without_swap()
    start(["sleep", "1000"], {"memory": {"limit": 32 * MiB}})
    mem_dir = controller_dir("memory", cg_path)
    assert read(mem_dir / "memory.limit_in_bytes") == str(32 * MiB)
    with open(tmp_path / "events.out", "w") as out:
        events = subprocess.Popen([*runtime, "events", "--interval", "100s", container_id],
                                  stdout=out, stderr=subprocess.STDOUT)
        try:
            time.sleep(0.3)  # let events register its eventfd
            hog = run_runtime("exec", container_id, "sh", "-c", MEMORY_HOG, check=False)
            assert hog.returncode == 137, (hog.returncode, hog.stdout, hog.stderr)  # SIGKILL
            assert "survived" not in hog.stdout
            wait_for(lambda: '"oom"' in (tmp_path / "events.out").read_text())
        finally:
            events.kill()
            events.wait()
    lines = [json.loads(line) for line in (tmp_path / "events.out").read_text().splitlines()]
    assert {"type": "oom", "id": container_id} in lines
    stats = json.loads(run_runtime("events", "--stats", container_id).stdout)
    assert stats["type"] == "stats" and stats["id"] == container_id
    memory = stats["data"]["memory"]
    assert memory["usage"]["failcnt"] > 0
    assert memory["usage"]["limit"] == 32 * MiB
    assert memory["oom_kill"] >= 1
    # The init itself survived: only the hog was over the limit.
    assert json.loads(run_runtime("state", container_id).stdout)["status"] == "running"


def test_memory_limit_oom_kills_the_init(bundle_factory, run_runtime, container_id, cg_path):
    require_oom_without_swap()
    bundle = bundle_factory(args=["sh", "-c", MEMORY_HOG], mutate=lambda s: s["linux"].update(
        cgroupsPath=cg_path, resources={"memory": {"limit": 32 * MiB}}))
    result = run_runtime("run", "--bundle", str(bundle), container_id, check=False)
    assert result.returncode == 137, (result.stdout, result.stderr)


# ------------------------------------------------------------------ cpu
def test_cpu_quota_caps_a_busy_loop_at_half_a_cpu(start, container_id, cg_path):
    if "cpu.cfs_quota_us" not in host_features.cgroup_v1_child_files("cpu"):
        pytest.skip("the kernel offers no cpu.cfs_quota_us (CONFIG_CFS_BANDWIDTH)")
    pid = start(["sh", "-c", "while :; do :; done"],
                {"cpu": {"quota": 50000, "period": 100000}})
    cpu_dir, acct_dir = controller_dir("cpu", cg_path), controller_dir("cpuacct", cg_path)
    assert read(cpu_dir / "cpu.cfs_quota_us") == "50000"
    assert read(cpu_dir / "cpu.cfs_period_us") == "100000"
    time.sleep(0.3)
    usage0, ticks0, t0 = int(read(acct_dir / "cpuacct.usage")), proc_cpu_ticks(pid), time.monotonic()
    time.sleep(3)
    usage1, ticks1, t1 = int(read(acct_dir / "cpuacct.usage")), proc_cpu_ticks(pid), time.monotonic()
    share = (usage1 - usage0) / 1e9 / (t1 - t0)
    share_proc = (ticks1 - ticks0) / os.sysconf("SC_CLK_TCK") / (t1 - t0)
    # The cap is the point: never above half a CPU. The floor only says the loop
    # got its half, which a host busy with other work may not give it; there the
    # throttling count below still shows that the quota, not the host, held it.
    floor = 0.40 if os.getloadavg()[0] < os.cpu_count() - 1 else 0.05
    assert floor <= share <= 0.60, share
    assert floor <= share_proc <= 0.60, share_proc
    throttled = dict(line.split() for line in read(cpu_dir / "cpu.stat").splitlines())
    assert int(throttled["nr_throttled"]) > 10  # the quota, not a lack of work, held it back


def test_cpu_shares_weight_and_burst_are_written(start, container_id, cg_path):
    start(["sleep", "1000"], {"cpu": {"shares": 512, "quota": 40000, "burst": 10000}})
    cpu_dir = controller_dir("cpu", cg_path)
    assert read(cpu_dir / "cpu.shares") == "512"
    assert read(cpu_dir / "cpu.cfs_quota_us") == "40000"
    if (cpu_dir / "cpu.cfs_burst_us").exists():
        assert read(cpu_dir / "cpu.cfs_burst_us") == "10000"


def test_cpuset_pins_the_container_to_one_cpu(start, run_runtime, container_id, cg_path):
    online = sorted(cgroups_cpu_list(read(Path("/sys/devices/system/cpu/online"))))
    cpu = online[-1]
    pid = start(["sh", "-c", "while :; do :; done"], {"cpu": {"cpus": str(cpu), "mems": "0"}})
    assert read(controller_dir("cpuset", cg_path) / "cpuset.cpus") == str(cpu)
    inside = run_runtime("exec", container_id, "sh", "-c",
                         "grep Cpus_allowed_list /proc/self/status; taskset -p $$").stdout
    assert f"Cpus_allowed_list:\t{cpu}\n" in inside
    assert inside.rstrip().endswith(f"{1 << cpu:x}"), inside  # taskset's affinity mask
    status = Path(f"/proc/{pid}/status").read_text()
    assert f"Cpus_allowed_list:\t{cpu}\n" in status
    for _ in range(20):  # the busy loop only ever runs on that CPU (field 39: last CPU)
        data = Path(f"/proc/{pid}/stat").read_bytes()
        assert int(data[data.rindex(b")") + 2:].split()[36]) == cpu
        time.sleep(0.01)


def cgroups_cpu_list(text: str) -> set[int]:
    from nsbox.runtime.cgroups.convert import parse_cpu_list

    return parse_cpu_list(text)


# ------------------------------------------------------------------ devices
# dd opens the node (count=0 reads nothing); a failed open is reported on stderr.
DEVICE_PROBE = ("mknod /dev/l0 b 7 0 && echo mknod0-ok; mknod /dev/l1 b 7 1 && echo mknod1-ok;"
                " dd if=/dev/l0 of=/dev/null count=0 2>/dev/null && echo open0-ok;"
                " dd if=/dev/l1 of=/dev/null count=0 && echo open1-ok; true")


def require_loop_driver() -> None:
    # DEVICE_PROBE opens loop0 and loop1: without the driver that is ENXIO either way.
    if not host_features.registered_driver("loop"):
        pytest.skip("the kernel has no loop driver (CONFIG_BLK_DEV_LOOP, modprobe loop)")


def test_device_rules_refuse_a_device_and_allow_another(bundle_factory, run_runtime,
                                                        container_id, cg_path):
    require_loop_driver()
    rules = [{"allow": False, "access": "rwm"},
             {"allow": True, "type": "b", "major": 7, "minor": 0, "access": "r"}]

    def edit(spec: dict) -> None:
        with_mknod(spec)
        spec["linux"].update(cgroupsPath=cg_path, resources={"devices": rules})

    bundle = bundle_factory(args=["sh", "-c", DEVICE_PROBE], mutate=edit)
    out = run_runtime("run", "--bundle", str(bundle), container_id)
    # mknod is allowed for every device (the default "b *:* m"), opening only loop0.
    assert "mknod0-ok" in out.stdout and "mknod1-ok" in out.stdout, out
    assert "open0-ok" in out.stdout, out
    assert "open1-ok" not in out.stdout, out
    assert "can't open '/dev/l1': Operation not permitted" in out.stdout + out.stderr, out


def test_without_device_rules_the_same_open_works(bundle_factory, run_runtime, container_id,
                                                  cg_path):
    """The control for the test above: the EPERM came from the device cgroup."""
    require_loop_driver()
    def edit(spec: dict) -> None:
        with_mknod(spec)
        spec["linux"].update(cgroupsPath=cg_path, resources={})

    bundle = bundle_factory(args=["sh", "-c", DEVICE_PROBE], mutate=edit)
    out = run_runtime("run", "--bundle", str(bundle), container_id)
    assert "open0-ok" in out.stdout and "open1-ok" in out.stdout, out


def test_device_rules_are_written_in_order_from_deny_all(start, cg_path):
    start(["sleep", "1000"], {"devices": [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rw"},
        {"allow": False, "type": "c", "major": 1, "minor": 9, "access": "rwm"}]})
    listed = read(controller_dir("devices", cg_path) / "devices.list").splitlines()
    assert "c 10:229 rw" in listed
    assert "a *:* rwm" not in listed  # started from deny-all
    assert "c 1:3 rwm" in listed  # the defaults every container needs follow the config's rules
    assert "b 7:0 r" not in listed


# A device node of the config (linux.devices) is usable only as far as the rules say:
# the runtime adds no rule for it (runc neither).  10:229 is fuse; the runtime makes
# the node itself, so the host needs no /dev/fuse, only for an open to get past ENXIO.
FUSE_NODE = {"path": "/dev/myfuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o666}
FUSE_PROBE = ("(: > /dev/myfuse) 2>&1 && echo write-ok;"
              " dd if=/dev/myfuse of=/dev/null count=0 2>&1 && echo read-ok;"
              " (: <> /dev/myfuse) 2>&1 && echo rdwr-ok; true")


def fuse_driver_present() -> bool:
    try:
        return os.stat("/dev/fuse").st_rdev == os.makedev(10, 229)
    except OSError:
        return False


@pytest.mark.parametrize("access", ["r", "w", "rw", "m"])
def test_linux_devices_get_only_the_access_their_rule_grants(start, run_runtime, container_id,
                                                             cg_path, access):
    start(["sleep", "1000"], {"devices": [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 10, "minor": 229, "access": access}]},
        mutate=lambda s: s["linux"].update(devices=[FUSE_NODE]))
    listed = read(controller_dir("devices", cg_path) / "devices.list").splitlines()
    assert [line for line in listed if line.startswith("c 10:229 ")] == [f"c 10:229 {access}"]
    out = run_runtime("exec", container_id, "sh", "-c", FUSE_PROBE).stdout
    for op, letters in (("write", "w"), ("read", "r"), ("rdwr", "rw")):
        granted = set(letters) <= set(access)
        if granted and fuse_driver_present():
            assert f"{op}-ok" in out, (op, out)
        elif not granted:
            assert f"{op}-ok" not in out, (op, out)
    refused = sum(1 for op in ("write", "read", "rdwr") if not set(
        {"write": "w", "read": "r", "rdwr": "rw"}[op]) <= set(access))
    assert out.count("Operation not permitted") == refused, out


def test_mknod_of_a_linux_device_follows_the_runtimes_default_rule(start, run_runtime,
                                                                   container_id, cg_path):
    """Without m in its rule, mknod of the node is still allowed by the default
    "c *:* m" (as with runc); it is CAP_MKNOD that keeps it from a container."""
    def mutate(spec: dict) -> None:
        with_mknod(spec)
        spec["linux"]["devices"] = [FUSE_NODE]

    start(["sleep", "1000"], {"devices": [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rw"}]}, mutate=mutate)
    out = run_runtime("exec", container_id, "sh", "-c",
                      "mknod /dev/f c 10 229 2>&1 && echo mknod-ok; mknod /dev/b b 7 0 2>&1 && echo mknodb-ok;"
                      " dd if=/dev/b of=/dev/null count=0 2>&1; true").stdout
    assert "mknod-ok" in out and "mknodb-ok" in out, out
    assert "Operation not permitted" in out, out  # b 7:0 may be made, not opened


# ------------------------------------------------------------------ block I/O
# Which of these files a cgroup has depends on the kernel: blkio.weight came with
# CFQ (gone since 5.0), blkio.bfq.weight comes with BFQ (CONFIG_BFQ_GROUP_IOSCHED).
WEIGHT_FILES = ("blkio.weight", "blkio.bfq.weight")
WEIGHT_DEVICE_FILES = ("blkio.weight_device", "blkio.bfq.weight_device")
THROTTLE_FILES = ("blkio.throttle.read_bps_device", "blkio.throttle.write_bps_device",
                  "blkio.throttle.read_iops_device", "blkio.throttle.write_iops_device")


def require_blkio_throttle() -> None:
    missing = [n for n in THROTTLE_FILES if n not in host_features.cgroup_v1_child_files("blkio")]
    if missing:
        pytest.skip(f"the kernel offers no {', '.join(missing)} (CONFIG_BLK_DEV_THROTTLING)")


def test_blkio_throttle_values_reach_the_files(start, cg_path):
    require_blkio_throttle()
    major, minor = whole_disk_of("/")
    dev = f"{major}:{minor}"
    start(["sleep", "1000"], {"blockIO": {
        "throttleReadBpsDevice": [{"major": major, "minor": minor, "rate": 2 * MiB}],
        "throttleWriteBpsDevice": [{"major": major, "minor": minor, "rate": 3 * MiB}],
        "throttleReadIOPSDevice": [{"major": major, "minor": minor, "rate": 400}],
        "throttleWriteIOPSDevice": [{"major": major, "minor": minor, "rate": 300}]}})
    blkio = controller_dir("blkio", cg_path)
    assert read(blkio / "blkio.throttle.read_bps_device") == f"{dev} {2 * MiB}"
    assert read(blkio / "blkio.throttle.write_bps_device") == f"{dev} {3 * MiB}"
    assert read(blkio / "blkio.throttle.read_iops_device") == f"{dev} 400"
    assert read(blkio / "blkio.throttle.write_iops_device") == f"{dev} 300"


@pytest.mark.parametrize("host_has_weight", [True, False], ids=["weight-offered", "no-weight"])
def test_blkio_weight_and_throttle_values_reach_the_files(start, bundle_factory, run_runtime,
                                                          runtime_root, container_id, cg_path,
                                                          host_has_weight):
    """With a weight file (CFQ/BFQ) weight and throttle values reach the files; without
    one the runtime refuses the weight, naming the field and the files, and leaves
    nothing.  The case this host is not is skipped, with the reason."""
    require_blkio_throttle()
    offered = host_features.first_offered("blkio", *WEIGHT_FILES)
    if host_has_weight != bool(offered):
        pytest.skip(f"the kernel offers {offered} here" if offered else
                    f"the kernel offers no {' or '.join(WEIGHT_FILES)} here (no BFQ/CFQ)")
    major, minor = whole_disk_of("/")
    dev = f"{major}:{minor}"
    block_io = {
        "weight": 300,
        "throttleReadBpsDevice": [{"major": major, "minor": minor, "rate": 2 * MiB}],
        "throttleWriteIOPSDevice": [{"major": major, "minor": minor, "rate": 300}]}
    if not offered:
        bundle = bundle_factory(args=["sleep", "1000"], mutate=lambda s: s["linux"].update(
            cgroupsPath=cg_path, resources={"blockIO": block_io}))
        result = run_runtime("run", "--detach", "--bundle", str(bundle), container_id,
                             check=False)
        assert result.returncode == 1, result
        assert result.stderr.count("\n") == 1, result.stderr
        assert "linux.resources.blockIO.weight:" in result.stderr, result.stderr
        assert all(name in result.stderr for name in WEIGHT_FILES), result.stderr
        assert re.search(r"offers no|not supported", result.stderr), result.stderr
        assert_nothing_left(runtime_root, bundle, container_id)
        assert not controller_dir("blkio", cg_path).exists()
        return
    start(["sleep", "1000"], {"blockIO": block_io})
    blkio = controller_dir("blkio", cg_path)
    assert read(blkio / offered).split()[-1] == "300"  # bfq prints "default 300"
    assert read(blkio / "blkio.throttle.read_bps_device") == f"{dev} {2 * MiB}"
    assert read(blkio / "blkio.throttle.write_iops_device") == f"{dev} 300"


@pytest.mark.parametrize("case", ["set", "refused-by-scheduler", "no-weight-files"])
def test_blkio_weight_device_is_set_or_clearly_refused(bundle_factory, run_runtime, runtime_root,
                                                      container_id, cg_path, case):
    """A per-device weight needs the weight_device files (CFQ/BFQ in the kernel) and BFQ
    (or CFQ) as that device's scheduler.  Without the files create refuses up front;
    with them but another scheduler the kernel says EOPNOTSUPP, which create reports.
    Either way nothing is left.  The cases this host is not are skipped, with the reason."""
    major, minor = whole_disk_of("/")
    offered = host_features.first_offered("blkio", *WEIGHT_DEVICE_FILES)
    scheduler = host_features.io_scheduler(major, minor)
    host_case = ("no-weight-files" if not offered else
                 "set" if scheduler in ("bfq", "cfq") else "refused-by-scheduler")
    if case != host_case:
        pytest.skip(f"this host is case {host_case!r}: weight_device file "
                    f"{offered or 'absent (no BFQ/CFQ in the kernel)'}, "
                    f"scheduler of {major}:{minor} {scheduler!r}")
    bundle = bundle_factory(args=["sleep", "100"], mutate=lambda s: s["linux"].update(
        cgroupsPath=cg_path, resources={"blockIO": {"weightDevice": [
            {"major": major, "minor": minor, "weight": 200}]}}))
    result = run_runtime("run", "--detach", "--bundle", str(bundle), container_id, check=False)
    if case == "set":
        assert result.returncode == 0, result.stderr
        blkio = controller_dir("blkio", cg_path)
        assert f"{major}:{minor} 200" in read(blkio / offered)
        return
    assert result.returncode == 1, result
    assert "linux.resources.blockIO.weightDevice[0]" in result.stderr, result.stderr
    if case == "no-weight-files":
        assert all(name in result.stderr for name in WEIGHT_DEVICE_FILES), result.stderr
        assert re.search(r"offers no|not supported", result.stderr), result.stderr
    else:
        assert "not supported" in result.stderr.lower(), result.stderr
    assert_nothing_left(runtime_root, bundle, container_id)


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[tuple[str, int, int]]:
    """A loop device over an 8 MiB file of our own (the host's disk cannot be opened here)."""
    losetup = helpers.require_binary("losetup")
    if not host_features.registered_driver("loop"):
        pytest.skip("the kernel has no loop driver (CONFIG_BLK_DEV_LOOP, modprobe loop)")
    backing = tmp_path / "loop.img"
    with open(backing, "wb") as f:
        f.truncate(8 * MiB)
    device = subprocess.run([losetup, "--find", "--show", str(backing)], capture_output=True,
                            text=True, check=True).stdout.strip()
    try:
        rdev = os.stat(device).st_rdev
        yield device, os.major(rdev), os.minor(rdev)
    finally:
        subprocess.run([losetup, "-d", device], check=False)


def test_blkio_read_throttle_slows_direct_reads(bundle_factory, run_runtime, container_id, cg_path,
                                                loop_device):
    _device, major, minor = loop_device
    rules = [{"allow": False, "access": "rwm"},
             {"allow": True, "type": "b", "major": major, "minor": minor, "access": "r"}]
    script = (f"mknod /dev/disk b {major} {minor} && "
              "dd if=/dev/disk of=/dev/null bs=1M count=4 iflag=direct 2>&1")

    def edit(spec: dict, rate: int | None) -> None:
        with_mknod(spec)
        resources: dict = {"devices": rules}
        if rate:
            resources["blockIO"] = {"throttleReadBpsDevice": [{"major": major, "minor": minor,
                                                               "rate": rate}]}
        spec["linux"].update(cgroupsPath=cg_path, resources=resources)

    timings = {}
    for name, rate in (("free", None), ("throttled", 2 * MiB)):
        bundle = bundle_factory(args=["sh", "-c", script], name=name,
                                mutate=lambda s, r=rate: edit(s, r))
        begin = time.monotonic()
        out = run_runtime("run", "--bundle", str(bundle), f"{container_id}-{name}")
        timings[name] = time.monotonic() - begin
        assert "4+0 records in" in out.stdout, out
    # 4 MiB at 2 MiB/s: the first slice passes at once, the rest waits ~1.5 s.
    assert timings["throttled"] >= 1.2, timings
    assert timings["throttled"] > timings["free"] + 1.0, timings


# ------------------------------------------------------------------ refused at create
@pytest.mark.parametrize(("resources", "message"), [
    ({"cpu": {"shares": 1}}, "linux.resources.cpu.shares"),
    ({"cpu": {"cpus": "4000"}}, "linux.resources.cpu.cpus"),
    ({"memory": {"limit": 64 * MiB, "swap": 32 * MiB}}, "linux.resources.memory.swap"),
    ({"blockIO": {"leafWeight": 100}}, "linux.resources.blockIO.leafWeight"),
    ({"hugepageLimits": [{"pageSize": "3MB", "limit": 0}]}, "hugepageLimits"),
    ({"devices": [{"allow": "no"}]}, "linux.resources.devices[0].allow"),
])
def test_bad_resources_fail_create_and_leave_nothing(bundle_factory, run_runtime, runtime_root,
                                                     container_id, cg_path, resources, message):
    bundle = bundle_factory(args=["true"], mutate=lambda s: s["linux"].update(
        cgroupsPath=cg_path, resources=resources))
    result = run_runtime("create", "--bundle", str(bundle), container_id, check=False)
    assert result.returncode == 1, result
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert_nothing_left(runtime_root, bundle, container_id)
    assert not controller_dir("pids", cg_path).exists()


def test_controllers_the_host_lacks_are_refused(bundle_factory, run_runtime, runtime_root,
                                                container_id, cg_path):
    mounted = Path("/proc/self/mountinfo").read_text()
    cases = []
    if "net_cls" not in mounted:
        cases.append(({"network": {"classID": 0x100001}}, "net_cls"))
    if cgroups.mode() == "hybrid":
        unified = Path("/sys/fs/cgroup/unified/cgroup.controllers")
        if "memory" not in unified.read_text().split():
            cases.append(({"unified": {"memory.max": "1000000"}}, "memory controller"))
    else:
        cases.append(({"unified": {"memory.max": "1000000"}}, "cgroup v2"))
    if not cases:
        pytest.skip("this host has every controller these cases need missing")
    for resources, message in cases:
        bundle = bundle_factory(args=["true"], mutate=lambda s, r=resources: s["linux"].update(
            cgroupsPath=cg_path, resources=r))
        result = run_runtime("create", "--bundle", str(bundle), container_id, check=False)
        assert result.returncode == 1 and message in result.stderr, result.stderr
        assert_nothing_left(runtime_root, bundle, container_id)


def test_nested_cgroups_path_parents_are_removed_on_delete(bundle_factory, run_runtime,
                                                           container_id):
    """Parents the runtime made for a deep cgroupsPath go with the container."""
    with helpers.cgroup_under_own(f"nsbox-{container_id}") as base:
        path = base + "/inner/leaf"
        bundle = bundle_factory(args=["sleep", "100"], mutate=lambda s: s["linux"].update(
            cgroupsPath=path, resources={"pids": {"limit": 10}}))
        run_runtime("run", "--detach", "--bundle", str(bundle), container_id)
        assert read(controller_dir("pids", path) / "pids.max") == "10"
        run_runtime("delete", "--force", container_id)
        for controller in ("pids", "memory", "cpu"):
            assert not controller_dir(controller, base).exists(), controller


# ------------------------------------------------------------------ hybrid
@pytest.fixture
def unified_subtree_restored() -> Iterator[Path]:
    """Every cgroup.subtree_control under the cgroup2 mount put back as it was afterwards
    (the runtime enables hugetlb along the container's path)."""
    unified = Path("/sys/fs/cgroup/unified")

    def snapshot() -> dict[Path, set[str]]:
        return {Path(d): set((Path(d) / "cgroup.subtree_control").read_text().split())
                for d, _dirs, files in os.walk(unified) if "cgroup.subtree_control" in files}

    before = snapshot()
    try:
        yield unified / "cgroup.subtree_control"
    finally:
        for directory, now in sorted(snapshot().items(), key=lambda kv: -len(kv[0].parts)):
            for controller in now - before.get(directory, set()):
                try:
                    (directory / "cgroup.subtree_control").write_text(f"-{controller}")
                except OSError:
                    pass  # something else uses it now: leave it


def test_hybrid_hugepage_limits_go_to_cgroup2(unified_subtree_restored, start, run_runtime,
                                              container_id, cg_path):
    # unified_subtree_restored comes first, so it is torn down after the container is gone.
    """On a hybrid host without a v1 hugetlb hierarchy, hugetlb is enforced through cgroup2."""
    mounted = Path("/proc/self/mountinfo").read_text()
    unified = Path("/sys/fs/cgroup/unified")
    v1_hugetlb = any("hugetlb" in line.partition(" - ")[2].split()[2].split(",")
                     for line in mounted.splitlines() if " - cgroup " in line)
    if cgroups.mode() != "hybrid" or v1_hugetlb:
        pytest.skip("needs a hybrid host whose hugetlb is only on cgroup2")
    if "hugetlb" not in read(unified / "cgroup.controllers").split():
        pytest.skip("cgroup2 has no hugetlb here")
    if not Path("/sys/kernel/mm/hugepages/hugepages-2048kB").exists():
        pytest.skip("no 2MB huge pages")
    start(["sleep", "1000"], {"hugepageLimits": [{"pageSize": "2MB", "limit": 4 * MiB}]})
    directory = controller_dir("unified", cg_path)
    assert read(directory / "hugetlb.2MB.max") == str(4 * MiB)
    assert "hugetlb" in read(unified_subtree_restored).split()
    data = json.loads(run_runtime("events", "--stats", container_id).stdout)["data"]
    assert data["hugetlb"]["2MB"]["usage"] == 0
