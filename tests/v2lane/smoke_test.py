"""Smoke test of the cgroup v2 lane: the guest really is a cgroup v2 host.

Runs only where /sys/fs/cgroup is cgroup2 (the qemu guest of `make test-v2`);
skipped elsewhere. Proves the pieces cgroup v2 tests rely on: the controllers,
limits the kernel enforces in a child cgroup, the virtio disk for io.max, and
an nsbox container in its own cgroup namespace.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import helpers
import pytest
from cgroupv2 import CGROUPV2
from helpers import write_config

pytestmark = CGROUPV2

ROOT = Path("/sys/fs/cgroup")


def own_cgroup() -> Path:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return ROOT / line[3:].lstrip("/")
    raise AssertionError("no cgroup2 line in /proc/self/cgroup")


def kill_all(cgroup: Path) -> None:
    """Kill every process in CGROUP and wait until it is empty."""
    kill = cgroup / "cgroup.kill"
    if kill.exists():
        kill.write_text("1")
    for _ in range(500):
        if not (cgroup / "cgroup.procs").read_text().split():
            return
        subprocess.run(["sleep", "0.02"], check=False)
    raise AssertionError(f"{cgroup} still has processes")


@pytest.fixture
def child_cgroup() -> Iterator[Path]:
    """A fresh cgroup below our own, removed (processes killed) afterwards."""
    path = own_cgroup() / f"nsbox-smoke-{uuid.uuid4().hex[:12]}"
    path.mkdir()
    try:
        yield path
    finally:
        kill_all(path)
        path.rmdir()


def events(cgroup: Path, name: str) -> dict[str, int]:
    return {key: int(value) for key, value in
            (line.split() for line in (cgroup / name).read_text().splitlines())}


def run_in(cgroup: Path, script: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a busybox shell script inside CGROUP (moved there before it starts work)."""
    proc = subprocess.Popen([helpers.BUSYBOX, "sh", "-c", f"read _; {script}"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        (cgroup / "cgroup.procs").write_text(str(proc.pid))
        out, err = proc.communicate("go\n", timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_cgroup2_is_mounted_with_the_controllers() -> None:
    fstypes = [line.partition(" - ")[2].split()[0]
               for line in Path("/proc/self/mountinfo").read_text().splitlines()
               if line.split()[4] == str(ROOT)]
    assert fstypes[-1:] == ["cgroup2"]
    assert {"cpu", "io", "memory", "pids"} <= set((ROOT / "cgroup.controllers").read_text().split())
    # No v1 hierarchy anywhere: cgroup_no_v1=all left every controller to cgroup2.
    assert all(line.partition(" - ")[2].split()[0] != "cgroup"
               for line in Path("/proc/self/mountinfo").read_text().splitlines())


def test_child_cgroup_has_the_controllers(child_cgroup: Path) -> None:
    controllers = set((child_cgroup / "cgroup.controllers").read_text().split())
    assert {"cpu", "io", "memory", "pids"} <= controllers
    for name in ("pids.max", "memory.max", "cpu.max", "io.max"):
        assert (child_cgroup / name).exists(), name


def test_pids_max_is_enforced(child_cgroup: Path) -> None:
    (child_cgroup / "pids.max").write_text("4")
    assert (child_cgroup / "pids.max").read_text() == "4\n"
    # The shell is one task, so the fourth background sleep is refused; busybox
    # sh gives up at the first failed fork. The fixture kills the sleeps.
    result = run_in(child_cgroup, "i=0; while [ $i -lt 8 ]; do sleep 30 </dev/null &>/dev/null & i=$((i+1));"
                                  " echo $i; done")
    assert result.stdout.split() == ["1", "2", "3"], result.stderr
    assert "fork" in result.stderr
    assert events(child_cgroup, "pids.events")["max"] >= 1


def test_memory_max_is_enforced(child_cgroup: Path) -> None:
    (child_cgroup / "memory.max").write_text(str(32 << 20))
    assert (child_cgroup / "memory.max").read_text() == f"{32 << 20}\n"
    (child_cgroup / "memory.swap.max").write_text("0")
    # dd fills a 96 MiB buffer from /dev/zero: three times the limit, no swap.
    result = run_in(child_cgroup, f"{helpers.BUSYBOX} dd if=/dev/zero of=/dev/null bs=96M count=1")
    assert result.returncode != 0, "dd survived a 32 MiB memory.max"
    assert events(child_cgroup, "memory.events")["oom_kill"] >= 1


def test_virtio_disk_for_io_max(child_cgroup: Path) -> None:
    disk = os.environ.get("NSBOX_V2LANE_DISK", "")
    if not disk:
        pytest.skip("not in the v2 lane: no NSBOX_V2LANE_DISK")
    major_minor = Path(f"/sys/class/block/{Path(disk).name}/dev").read_text().strip()
    (child_cgroup / "io.max").write_text(f"{major_minor} rbps=1048576 wiops=100")
    assert (child_cgroup / "io.max").read_text().split() == [
        major_minor, "rbps=1048576", "wbps=max", "riops=max", "wiops=100"]


def test_container_has_its_own_cgroup_namespace(bundle, run_runtime, container_id) -> None:
    write_config(bundle, lambda s: s["process"].update(
        args=["sh", "-c", "cat /proc/self/cgroup; cat /sys/fs/cgroup/cgroup.procs"]))
    out = run_runtime("run", "--bundle", str(bundle), container_id, timeout=120).stdout
    lines = out.splitlines()
    # Pure v2: a single line, the namespace root; the container's own cgroup
    # (mounted at /sys/fs/cgroup) holds just its init, PID 1.
    assert lines[0] == "0::/", out
    assert "1" in lines[1:], out
    # Placement under our own cgroup, then removal on delete.
    assert not (own_cgroup() / f"nsbox-{container_id}").exists()
