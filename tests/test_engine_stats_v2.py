"""`nsbox stats` and `nsbox cgroup` on a pure cgroup v2 host (run by `make test-v2`).

The hybrid development host reads memory, blkio and pids from v1 hierarchies;
here every number comes from the cgroup2 files (cpu.stat usage_usec,
memory.current/max/stat, io.stat, pids.current/max, memory.events).  One
container, few commands: each costs seconds under emulation.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
from cgroupv2 import CGROUPV2

pytestmark = [*CGROUPV2, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

NSBOX = os.path.join(os.path.dirname(sys.executable), "nsbox")


def test_stats_and_cgroup_read_cgroup2_files():
    base = tempfile.mkdtemp(prefix="nsbox-stats-v2-")
    prefix = [NSBOX, "--root", f"{base}/root", "--runroot", f"{base}/run"]

    def nsbox(*args: str) -> str:
        proc = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=240,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, (args, proc.stderr)
        return proc.stdout

    try:
        cid = nsbox("run", "-d", "--network", "none", "--memory", "64m", "--pids-limit", "20",
                    "--cpus", "0.5", "busybox", "sh", "-c",
                    "dd if=/dev/zero of=/dev/shm/blob bs=1M count=16 2>/dev/null; "
                    "sleep 1000").strip()
        from nsbox.engine.observe import stats

        reader = stats.Reader(f"{base}/root", f"{base}/run")
        row = stats.snapshot(reader, [cid])[0]
        assert row.running and row.sample.cgroup == "v2"
        assert row.mem_limit == 64 << 20 and row.pids >= 1
        assert row.sample.cpu_total_ns > 0  # cpu.stat usage_usec, always there on cgroup2
        fields = json.loads(nsbox("stats", "--no-stream", "--format", "json", cid))
        assert fields["MemUsage"].endswith(" / 64MiB") and fields["Name"]
        view = json.loads(nsbox("cgroup", "--format", "json", cid))
        assert view["Mode"] == "v2" and set(view["Paths"]) == {"unified"}
        files = {lim["Flag"]: os.path.basename(lim["Files"][0]) for lim in view["Limits"]
                 if lim["Files"]}
        assert files["--memory"] == "memory.max" and files["--cpus"] == "cpu.max"
        assert files["--pids-limit"] == "pids.max"
        limits = {lim["Flag"]: lim for lim in view["Limits"]}
        assert limits["--cpus"]["Setting"] == "50000 100000"
        assert limits["--memory"]["Setting"] == str(64 << 20)
        counters = {(os.path.basename(ev["File"]), ev["Counter"]) for ev in view["Events"]}
        assert {("memory.events", "oom_kill"), ("cpu.stat", "nr_throttled"),
                ("pids.events", "max")} <= counters
        nsbox("rm", "-f", cid)
    finally:
        left = subprocess.run([*prefix, "ps", "-aq"], capture_output=True, text=True,
                              check=False).stdout.split()
        if left:
            subprocess.run([*prefix, "rm", "-f", *left], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)
