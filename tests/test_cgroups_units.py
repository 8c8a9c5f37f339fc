"""Unit tests of the cgroup layer's pure logic: value conversions, cgroupsPath
resolution, and the linux.resources planner (which files get which values on
v1 and on v2, and which configs are refused before anything is created)."""

from __future__ import annotations

import os

import pytest

from nsbox.errors import ConfigError, UnsupportedError
from nsbox.runtime import cgroups
from nsbox.runtime.cgroups import UNIFIED
from nsbox.runtime.cgroups import convert as cv
from nsbox.runtime.cgroups import resources as res


# ------------------------------------------------------------------ conversions
@pytest.mark.parametrize(("shares", "weight"), [
    (0, 0), (2, 1), (1024, 100), (262144, 10000), (1, 1), (10**7, 10000),
    (512, 59), (2048, 174), (100000, 4340),
])
def test_cpu_shares_to_weight(shares, weight):
    assert cv.cpu_shares_to_weight(shares) == weight


def test_cpu_shares_to_weight_is_monotonic_and_in_range():
    weights = [cv.cpu_shares_to_weight(s) for s in range(2, 262145, 97)]
    assert weights == sorted(weights)
    assert weights[0] >= 1 and weights[-1] <= 10000


def test_cpu_weight_to_shares_inverts_the_forward_formula():
    assert all(cv.cpu_shares_to_weight(cv.cpu_weight_to_shares(w)) == w for w in range(1, 10001))
    assert cv.cpu_weight_to_shares(100) == 1024
    assert cv.cpu_weight_to_shares(1) == 2 and cv.cpu_weight_to_shares(10000) == 262144


@pytest.mark.parametrize(("blkio", "io"), [(0, 0), (10, 1), (1000, 10000), (500, 4950), (100, 910)])
def test_blkio_weight_to_io_weight(blkio, io):
    assert cv.blkio_weight_to_io_weight(blkio) == io


def test_swap_to_v2():
    mib = 1 << 20
    assert cv.swap_to_v2(None, 100 * mib) is None
    assert cv.swap_to_v2(0, 100 * mib) is None
    assert cv.swap_to_v2(-1, 100 * mib) == -1
    assert cv.swap_to_v2(300 * mib, 100 * mib) == 200 * mib  # memsw 300 = 100 memory + 200 swap
    assert cv.swap_to_v2(100 * mib, 100 * mib) == 0  # no swap at all
    with pytest.raises(ConfigError, match="below the memory limit"):
        cv.swap_to_v2(50 * mib, 100 * mib)
    with pytest.raises(ConfigError, match="needs a memory limit"):
        cv.swap_to_v2(300 * mib, None)
    assert cv.v2_swap_to_oci(200 * mib, 100 * mib) == 300 * mib
    assert cv.v2_swap_to_oci(-1, 100 * mib) == -1


def test_limit_values():
    assert cv.v2_limit(-1) == "max" and cv.v2_limit(42) == "42"
    assert cv.v1_limit(-1) == "-1" and cv.v1_limit(42) == "42"
    assert cv.parse_v2_value("max\n") == -1 and cv.parse_v2_value("7\n") == 7
    assert cv.parse_v1_value(f"{cv.V1_UNLIMITED}\n") == -1


def test_page_sizes():
    assert cv.page_size_bytes("2MB") == 2 << 20
    assert cv.page_size_bytes("1GB") == 1 << 30
    assert cv.page_size_bytes("64KB") == 64 << 10
    assert cv.page_size_name(2 << 20) == "2MB" and cv.page_size_name(1 << 30) == "1GB"
    for bad in ("2M", "MB", "0MB", "2XB", "-2MB"):
        with pytest.raises(ConfigError, match="pageSize"):
            cv.page_size_bytes(bad)


def test_cpu_lists():
    assert cv.parse_cpu_list("0-3,5") == {0, 1, 2, 3, 5}
    assert cv.parse_cpu_list(" 1 ") == {1}
    assert cv.parse_cpu_list("") == set()
    assert cv.format_cpu_list({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    for bad in ("a", "3-1", "1-", "-1", "1,,2"):
        with pytest.raises(ConfigError):
            cv.parse_cpu_list(bad)


def test_memory_sizes_and_durations():
    assert cv.parse_memory_size("512m", "memory") == 512 << 20
    assert cv.parse_memory_size("1g", "memory") == 1 << 30
    assert cv.parse_memory_size("1GB", "memory") == 1 << 30
    assert cv.parse_memory_size("4096", "memory") == 4096
    assert cv.parse_memory_size("-1", "memory") == -1
    for bad in ("lots", "12q", "-5m"):
        with pytest.raises(ConfigError, match="--memory"):
            cv.parse_memory_size(bad, "memory")
    assert cv.parse_duration("5s", "interval") == 5
    assert cv.parse_duration("250ms", "interval") == pytest.approx(0.25)
    assert cv.parse_duration("1m30s", "interval") == 90
    assert cv.parse_duration("2", "interval") == 2
    for bad in ("5x", "s", "1m3"):
        with pytest.raises(ConfigError, match="interval"):
            cv.parse_duration(bad, "interval")


# ------------------------------------------------------------------ paths
def test_resolve_empty_path_is_under_our_own_cgroup():
    paths = cgroups.resolve("", "abc")
    mine = cgroups.own_cgroups()
    for h in cgroups.hierarchies():
        own_dir = os.path.normpath(os.path.join(h.mountpoint, mine.get(h.key, "/").lstrip("/")))
        assert paths[h.key] == os.path.join(own_dir, "nsbox-abc")


def test_resolve_relative_and_absolute():
    mine = cgroups.own_cgroups()
    rel = cgroups.resolve("a/b", "abc")
    absolute = cgroups.resolve("/x/y", "abc")
    for h in cgroups.hierarchies():
        own_dir = os.path.normpath(os.path.join(h.mountpoint, mine.get(h.key, "/").lstrip("/")))
        assert rel[h.key] == os.path.join(own_dir, "a/b")
        assert absolute[h.key] == os.path.join(h.mountpoint, "x/y")


def test_resolve_refuses_dotdot_and_systemd_without_systemd():
    with pytest.raises(ConfigError, match=r"\.\."):
        cgroups.resolve("/a/../../etc", "abc")
    if os.path.isdir("/run/systemd/system"):
        pytest.skip("systemd runs here")
    with pytest.raises(UnsupportedError, match="systemd"):
        cgroups.resolve("system.slice:nsbox:abc", "abc")
    with pytest.raises(UnsupportedError, match="systemd"):
        cgroups.resolve("", "abc", systemd=True)


def test_mode_matches_mounts():
    keys = {h.key for h in cgroups.hierarchies()}
    expected = "v2" if keys == {UNIFIED} else "hybrid" if UNIFIED in keys else "v1"
    assert cgroups.mode() == expected


# ------------------------------------------------------------------ the planner
class FakeLayout(res.Layout):
    """A layout with made-up directories: every probed file exists unless listed missing."""

    def __init__(self, paths, v2=(), missing=()):
        super().__init__(paths)
        self._v2_available = set(v2)
        self.missing = set(missing)

    def probe(self, key, name):
        return name not in self.missing


V1_PATHS = {k: f"/cg/{k}/c" for k in ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer",
                                       "blkio", "pids", "name=systemd")}
V2_PATHS = {UNIFIED: "/cg2/c"}
V2_ALL = ("cpu", "cpuset", "io", "memory", "pids", "hugetlb", "rdma")


def writes(plan):
    return [(w.key, w.choices[0][0], w.choices[0][1]) for w in plan.writes]


def test_plan_empty_resources_writes_nothing():
    assert res.plan({}, FakeLayout(V1_PATHS)).writes == []
    assert res.plan(None, FakeLayout(V1_PATHS)).writes == []


def test_plan_v1_and_v2_translate_the_same_config():
    resources = {
        "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"},
        "memory": {"limit": 100 << 20, "swap": 300 << 20, "reservation": 50 << 20},
        "pids": {"limit": 64},
        "blockIO": {"weight": 500, "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1000}],
                    "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 10}]},
    }
    v1 = writes(res.plan(resources, FakeLayout(V1_PATHS)))
    assert ("cpu", "cpu.shares", "1024") in v1
    assert ("cpu", "cpu.cfs_period_us", "100000") in v1
    assert ("cpu", "cpu.cfs_quota_us", "50000") in v1
    assert ("cpuset", "cpuset.cpus", "0") in v1
    assert ("memory", "memory.limit_in_bytes", str(100 << 20)) in v1
    assert ("memory", "memory.memsw.limit_in_bytes", str(300 << 20)) in v1
    assert ("memory", "memory.soft_limit_in_bytes", str(50 << 20)) in v1
    assert ("pids", "pids.max", "64") in v1
    assert ("blkio", "blkio.weight", "500") in v1
    assert ("blkio", "blkio.throttle.read_bps_device", "8:0 1000") in v1
    assert ("blkio", "blkio.throttle.write_iops_device", "8:0 10") in v1

    plan2 = res.plan(resources, FakeLayout(V2_PATHS, v2=V2_ALL))
    v2 = writes(plan2)
    assert ("", "cpu.weight", "100") in v2
    assert ("", "cpu.max", "50000 100000") in v2
    assert ("", "cpuset.cpus", "0") in v2
    assert ("", "memory.max", str(100 << 20)) in v2
    assert ("", "memory.swap.max", str(200 << 20)) in v2
    assert ("", "memory.low", str(50 << 20)) in v2
    assert ("", "pids.max", "64") in v2
    # BFQ takes the v1 value; io.weight the converted one.
    weight = next(w for w in plan2.writes if w.field == "blockIO.weight")
    assert weight.choices == [("io.bfq.weight", "500"), ("io.weight", "default 4950")]
    assert ("", "io.max", "8:0 rbps=1000 wiops=10") in v2
    assert plan2.v2_controllers == {"cpu", "cpuset", "memory", "pids", "io"}


def test_plan_hybrid_uses_v1_where_mounted_and_v2_for_the_rest():
    paths = dict(V1_PATHS, **{UNIFIED: "/cg2/c"})
    plan = res.plan({"pids": {"limit": 5}, "hugepageLimits": [{"pageSize": "2MB", "limit": 0}],
                     "unified": {"hugetlb.2MB.max": "4194304"}},
                    FakeLayout(paths, v2=("hugetlb",)))
    got = writes(plan)
    assert ("pids", "pids.max", "5") in got
    assert ("", "hugetlb.2MB.max", "0") in got
    assert got[-1] == ("", "hugetlb.2MB.max", "4194304")  # unified keys come last, and win
    assert plan.v2_controllers == {"hugetlb"}


def test_plan_devices_v1_lines_and_v2_bpf():
    rules = [{"allow": False, "access": "rwm"},
             {"allow": True, "type": "b", "major": 7, "minor": 0, "access": "r"},
             {"allow": False, "type": "a", "major": 1, "access": "w"}]
    plan = res.plan({"devices": rules}, FakeLayout(V1_PATHS))
    lines = [(w.choices[0][0], w.choices[0][1]) for w in plan.writes]
    assert lines[:4] == [("devices.deny", "a"), ("devices.allow", "b 7:0 r"),
                         ("devices.deny", "c 1:* w"), ("devices.deny", "b 1:* w")]
    assert ("devices.allow", "c 1:3 rwm") in lines  # the container's own /dev/null
    assert lines[-1] == ("devices.allow", "c 136:* rwm")  # the defaults come last
    plan2 = res.plan({"devices": rules}, FakeLayout(V2_PATHS, v2=V2_ALL))
    assert plan2.writes == [] and plan2.bpf_devices[0] == {"allow": False, "type": "a",
                                                            "access": "rwm"}


@pytest.mark.parametrize("access", ["r", "w", "m", "rw", "rm", "wm", "rwm"])
def test_plan_devices_keep_the_access_of_a_rule_exactly(access):
    """The rule for a --device (the engine writes it) keeps its access; like runc, the
    runtime adds no rule of its own for the node (linux.devices is not a permission)."""
    rules = [{"allow": False, "access": "rwm"},
             {"allow": True, "type": "c", "major": 10, "minor": 229, "access": access}]
    lines = [w.choices[0][1] for w in res.plan({"devices": rules}, FakeLayout(V1_PATHS)).writes]
    assert [line for line in lines if line.startswith("c 10:229")] == [f"c 10:229 {access}"]
    bpf = res.plan({"devices": rules}, FakeLayout(V2_PATHS, v2=V2_ALL)).bpf_devices
    assert [r for r in bpf if r.get("major") == 10] == [
        {"allow": True, "type": "c", "major": 10, "minor": 229, "access": access}]


def test_plan_without_device_rules_leaves_devices_alone():
    assert res.plan({"devices": []}, FakeLayout(V1_PATHS)).writes == []


@pytest.mark.parametrize(("resources", "field"), [
    ({"cpu": {"shares": 1}}, "cpu.shares"),
    ({"cpu": {"shares": "1024"}}, "cpu.shares"),
    ({"cpu": {"period": 10}}, "cpu.period"),
    ({"cpu": {"quota": 10}}, "cpu.quota"),
    ({"cpu": {"quota": 50000, "burst": 60000}}, "cpu.burst"),
    ({"cpu": {"cpus": "0-x"}}, "cpu.cpus"),
    ({"cpu": {"cpus": "4095"}}, "cpu.cpus"),
    ({"memory": {"limit": 100, "swap": 50}}, "memory.swap"),
    ({"memory": {"swappiness": 101}}, "memory.swappiness"),
    ({"memory": {"disableOOMKiller": "yes"}}, "memory.disableOOMKiller"),
    ({"pids": {"limit": True}}, "pids.limit"),
    ({"blockIO": {"weight": 5}}, "blockIO.weight"),
    ({"blockIO": {"weightDevice": [{"major": 8, "minor": 0}]}}, "blockIO.weightDevice[0]"),
    ({"blockIO": {"throttleReadBpsDevice": [{"major": 8, "rate": 1}]}},
     "blockIO.throttleReadBpsDevice[0]"),
    ({"hugepageLimits": [{"pageSize": "3XB", "limit": 1}]}, "hugepageLimits"),
    ({"devices": [{"access": "rwm"}]}, "devices[0].allow"),
    ({"devices": [{"allow": True, "type": "x"}]}, "devices[0].type"),
    ({"devices": [{"allow": True, "access": "rwx"}]}, "devices[0].access"),
    ({"memory": []}, "memory"),
    ({"unified": {"cgroup.procs": "1"}}, "unified.cgroup.procs"),
    ({"unified": {"../x": "1"}}, "unified.../x"),
])
def test_plan_refuses_bad_values_naming_the_field(resources, field):
    for layout in (FakeLayout(V1_PATHS), FakeLayout(dict(V1_PATHS, **{UNIFIED: "/u"}), v2=V2_ALL)):
        with pytest.raises(ConfigError, match=r"linux\.resources\." + field.replace(".", r"\.")
                           .replace("[", r"\[").replace("]", r"\]")):
            res.plan(resources, layout)


@pytest.mark.parametrize(("resources", "layout", "text"), [
    ({"unified": {"memory.max": "1"}}, FakeLayout(V1_PATHS), "no cgroup v2 hierarchy"),
    ({"unified": {"memory.max": "1"}}, FakeLayout(dict(V1_PATHS, **{UNIFIED: "/u"}), v2=("hugetlb",)),
     "memory controller is not available"),
    ({"network": {"classID": 1}}, FakeLayout(V1_PATHS), "net_cls"),
    ({"network": {"priorities": [{"name": "lo", "priority": 1}]}}, FakeLayout(V1_PATHS), "net_prio"),
    ({"cpu": {"realtimeRuntime": 1000}}, FakeLayout(V2_PATHS, v2=V2_ALL), "realtime"),
    ({"memory": {"swappiness": 10}}, FakeLayout(V2_PATHS, v2=V2_ALL), "swappiness"),
    ({"memory": {"kernel": 1 << 20}}, FakeLayout(V2_PATHS, v2=V2_ALL), "kernel"),
    ({"memory": {"disableOOMKiller": True}}, FakeLayout(V2_PATHS, v2=V2_ALL), "OOM killer"),
    ({"memory": {"swap": 1 << 30}}, FakeLayout(V1_PATHS, missing={"memory.memsw.limit_in_bytes"}),
     "memsw"),
    ({"blockIO": {"leafWeight": 100}}, FakeLayout(V2_PATHS, v2=V2_ALL), "leaf"),
    ({"pids": {"limit": 3}}, FakeLayout({k: v for k, v in V1_PATHS.items() if k != "pids"}),
     "no pids cgroup controller"),
    ({"rdma": {"mlx5_0": {"hcaHandles": 1}}}, FakeLayout(V1_PATHS), "rdma"),
])
def test_plan_refuses_what_the_host_cannot_do(resources, layout, text):
    with pytest.raises(UnsupportedError, match=text):
        res.plan(resources, layout)


def test_plan_hugepage_size_must_exist_on_this_kernel():
    sizes = res.supported_page_sizes()
    assert sizes == {cv.page_size_name(int(n[len("hugepages-"):-2]) * 1024): int(n[10:-2]) * 1024
                     for n in os.listdir("/sys/kernel/mm/hugepages")}
    layout = FakeLayout(V1_PATHS, v2=("hugetlb",))
    layout.paths = dict(V1_PATHS, hugetlb="/cg/hugetlb/c")
    with pytest.raises(UnsupportedError, match="no 16KB huge pages"):
        res.plan({"hugepageLimits": [{"pageSize": "16KB", "limit": 1}]}, layout)


def test_plan_update_writes_explicit_defaults():
    layout = FakeLayout(V1_PATHS)
    assert writes(res.plan({"memory": {"disableOOMKiller": False}}, layout)) == []
    assert writes(res.plan({"memory": {"disableOOMKiller": False}}, layout, updating=True)) == [
        ("memory", "memory.oom_control", "0")]
    # Lifting the memory limit lifts memory+swap too, or the kernel refuses it.
    assert writes(res.plan({"memory": {"limit": -1}}, layout)) == [
        ("memory", "memory.limit_in_bytes", "-1"), ("memory", "memory.memsw.limit_in_bytes", "-1")]


def test_apply_writes_reorders_dependent_memory_values(tmp_path):
    """memory+swap must stay >= memory: raising both needs memsw first, lowering both memory
    first.  Simulated with a fake kernel file that refuses the wrong order (EINVAL)."""
    directory = tmp_path / "memory"
    directory.mkdir()
    (directory / "memory.limit_in_bytes").write_text("100")
    (directory / "memory.memsw.limit_in_bytes").write_text("100")
    plan = res.plan({"memory": {"limit": 500, "swap": 800}}, FakeLayout({"memory": str(directory)}))
    calls = []
    real_write_one = res._write_one

    def checking_write(w, paths):
        name, value = w.choices[0]
        limit = int((directory / "memory.limit_in_bytes").read_text())
        memsw = int((directory / "memory.memsw.limit_in_bytes").read_text())
        if name == "memory.limit_in_bytes" and int(value) > memsw:
            raise res.KernelError("EINVAL", 22)
        if name == "memory.memsw.limit_in_bytes" and int(value) < limit:
            raise res.KernelError("EINVAL", 22)
        calls.append(name)
        (directory / name).write_text(value)  # a plain file: replace, not append

    res._write_one = checking_write
    try:
        res.apply_writes(plan.writes, {"memory": str(directory)})
    finally:
        res._write_one = real_write_one
    assert calls == ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]
    assert (directory / "memory.limit_in_bytes").read_text() == "500"


# ------------------------------------------------------------------ cgroup2 controllers
def _fake_cgroup2(tmp_path, layout: dict[str, tuple[str, str]]):
    """Directories with cgroup.controllers / cgroup.subtree_control files (no kernel)."""
    for rel, (controllers, subtree) in layout.items():
        d = tmp_path / rel if rel else tmp_path
        d.mkdir(parents=True, exist_ok=True)
        (d / "cgroup.controllers").write_text(controllers + "\n")
        (d / "cgroup.subtree_control").write_text(subtree + "\n")
        if rel:
            (d / "cgroup.type").write_text("domain\n")  # every cgroup2 dir but the root has it


def test_enable_controllers_passes_them_down_from_the_nearest_offering_ancestor(tmp_path):
    from nsbox.runtime.cgroups import v2

    _fake_cgroup2(tmp_path, {"": ("cpu memory pids io", "cpu"), "a": ("cpu", ""),
                             "a/b": ("", ""), "a/b/leaf": ("", "")})
    v2.enable_controllers(str(tmp_path / "a/b/leaf"), {"memory", "pids"}, top=str(tmp_path))
    for rel in ("", "a", "a/b"):
        assert (tmp_path / rel / "cgroup.subtree_control").read_text() == "+memory +pids", rel
    assert (tmp_path / "a/b/leaf/cgroup.subtree_control").read_text() == "\n"  # never the leaf


def test_enable_controllers_stops_at_the_first_ancestor_that_offers_them(tmp_path):
    from nsbox.runtime.cgroups import v2

    _fake_cgroup2(tmp_path, {"": ("cpu memory", "cpu memory"), "own": ("cpu memory", ""),
                             "own/leaf": ("", "")})
    v2.enable_controllers(str(tmp_path / "own/leaf"), {"memory"}, top=str(tmp_path))
    assert (tmp_path / "own/cgroup.subtree_control").read_text() == "+memory"
    assert (tmp_path / "cgroup.subtree_control").read_text() == "cpu memory\n"  # untouched


def test_enable_controllers_refuses_what_nobody_offers(tmp_path):
    from nsbox.runtime.cgroups import v2

    _fake_cgroup2(tmp_path, {"": ("cpu", ""), "leaf": ("", "")})
    with pytest.raises(UnsupportedError, match="hugetlb"):
        v2.enable_controllers(str(tmp_path / "leaf"), {"hugetlb"}, top=str(tmp_path))
    assert v2.enable_controllers(str(tmp_path / "leaf"), {"hugetlb", "cpu"}, strict=False,
                                 top=str(tmp_path)) == set()
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu"


def test_enable_controllers_never_climbs_above_top(tmp_path):
    from nsbox.runtime.cgroups import v2

    _fake_cgroup2(tmp_path, {"": ("cpu memory", ""), "own": ("", ""), "own/leaf": ("", "")})
    with pytest.raises(UnsupportedError, match="memory"):
        v2.enable_controllers(str(tmp_path / "own/leaf"), {"memory"}, top=str(tmp_path / "own"))
    assert (tmp_path / "cgroup.subtree_control").read_text() == "\n"


def test_climb_limit_is_our_own_cgroup2_cgroup():
    from nsbox.runtime.cgroups import v2

    unified = next((h for h in cgroups.hierarchies() if h.key == UNIFIED), None)
    if unified is None:
        pytest.skip("no cgroup2 mount")
    own = os.path.normpath(unified.mountpoint + cgroups.own_cgroups()[UNIFIED])
    assert v2.climb_limit(os.path.join(own, "a/b/c")) == own
    assert v2.available_controllers(os.path.join(own, "x")) == set(
        open(os.path.join(own, "cgroup.controllers")).read().split())


def test_destroy_removes_empty_cgroups_and_empties_busy_ones():
    """cgroups.destroy on the kernel: empty directories (an exited container) go at
    once; one that still holds a process has it killed first; the parents create made
    go too, and nothing is left in any hierarchy."""
    import signal
    import subprocess

    from helpers import own_cgroup_path

    for leave_a_process in (False, True):
        cid = os.urandom(6).hex()
        paths = cgroups.resolve(f"{own_cgroup_path().rstrip('/')}/nsbox-destroy-{cid}/c", cid)
        created = cgroups.create(paths)
        proc = None
        try:
            assert all(os.path.isdir(p) for p in paths.values())
            if leave_a_process:
                proc = subprocess.Popen(["sleep", "60"])
                cgroups.add_process(paths, proc.pid)
            cgroups.destroy(paths, created)
            if proc is not None:
                assert proc.wait(timeout=10) == -signal.SIGKILL
            assert [d for d in created if os.path.exists(d)] == []
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            for d in sorted(created, key=len, reverse=True):
                if os.path.isdir(d):
                    os.rmdir(d)


def test_hierarchies_from_a_mount_table(monkeypatch):
    """host.hierarchies: the cgroup mounts visible at their mount points, one per
    controller set (the first listed), with a hidden one (a later mount over it),
    an escaped space and look-alike filesystem types left out."""
    from nsbox.runtime.cgroups import host

    table = "\n".join([
        "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw",
        "30 22 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - tmpfs tmpfs ro,mode=755",
        "31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:5 - cgroup2 cgroup2 rw",
        "32 30 0:28 / /sys/fs/cgroup/cpu,cpuacct rw shared:6 - cgroup cgroup rw,cpu,cpuacct",
        "33 30 0:29 / /sys/fs/cgroup/memory rw shared:7 - cgroup cgroup rw,memory",
        "34 30 0:30 / /sys/fs/cgroup/pids rw shared:8 - cgroup cgroup rw,pids",
        "35 34 0:31 / /sys/fs/cgroup/pids rw - tmpfs none rw",  # hides the pids hierarchy
        "36 22 0:29 /sub /mnt/second\\040memory rw - cgroup cgroup rw,memory",
        "37 22 0:32 / /mnt/lookalike rw - cgroupfs-fuse x rw",
        "38 30 0:33 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd",
    ]) + "\n"
    files = {"/proc/self/mountinfo": table,
             "/proc/cgroups": "#subsys_name\thierarchy\tnum_cgroups\tenabled\n"
                              "cpu\t1\t1\t1\ncpuacct\t1\t1\t1\nmemory\t2\t1\t1\npids\t3\t1\t1\n"}
    monkeypatch.setattr(host, "read_file", files.__getitem__)
    host.hierarchies.cache_clear()
    host._v1_controllers.cache_clear()
    try:
        found = {h.key: (h.mountpoint, h.root) for h in host.hierarchies()}
    finally:
        host.hierarchies.cache_clear()
        host._v1_controllers.cache_clear()
    assert found == {
        UNIFIED: ("/sys/fs/cgroup/unified", "/"),
        "cpu,cpuacct": ("/sys/fs/cgroup/cpu,cpuacct", "/"),
        "memory": ("/sys/fs/cgroup/memory", "/"),  # the first listed of the two
        "name=systemd": ("/sys/fs/cgroup/systemd", "/"),
    }
