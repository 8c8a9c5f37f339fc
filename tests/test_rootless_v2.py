"""Rootless limits through a delegated cgroup2 subtree (runs in the cgroup v2 lane's guest).

The test delegates a subtree as systemd's user@.service would: a cgroup the
user owns (the directory and its cgroup.procs, cgroup.subtree_control and
cgroup.threads), free of processes, with controllers enabled for its
children, and a leaf below it where the user's commands start.  nsbox then
puts each rootless container's cgroup next to that leaf and limits work.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from cgroupv2 import CGROUPV2
from helpers import MEMORY_HOG
from rootless_user import SYSTEM_PYTHON, made_user

pytestmark = [
    *CGROUPV2,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create the test user"),
    pytest.mark.skipif(not (shutil.which("newuidmap") and os.path.exists(SYSTEM_PYTHON)),
                       reason="needs uidmap and /usr/bin/python3"),
]

ROOT = Path("/sys/fs/cgroup")


def _delegate(directory: Path, uid: int, gid: int) -> None:
    directory.mkdir()
    for path in (directory, directory / "cgroup.procs", directory / "cgroup.subtree_control",
                 directory / "cgroup.threads"):
        os.chown(path, uid, gid)


@pytest.fixture(scope="module")
def user():
    delegated = ROOT / f"nsbox-rootless-{os.getpid()}"
    with made_user("nsbox-rootless-v2") as box:
        _delegate(delegated, box.uid, box.gid)
        wanted = {"memory", "pids", "cpu"} & set((delegated / "cgroup.controllers").read_text().split())
        (delegated / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in sorted(wanted)))
        _delegate(delegated / "session", box.uid, box.gid)
        box.cgroup = str(delegated / "session")
        try:
            yield box, delegated
        finally:
            box.kill_all()
            for directory in sorted((p for p in delegated.rglob("*") if p.is_dir()), reverse=True):
                for _ in range(50):
                    try:
                        directory.rmdir()
                        break
                    except OSError:
                        time.sleep(0.1)
            delegated.rmdir()


def test_limits_under_a_delegated_cgroup(user):
    box, delegated = user
    assert f"cgroups under {delegated}" in box.run("info").stdout
    cid = box.run("run", "-d", "--network", "none", "--memory", "64m", "--pids-limit", "50",
                  "busybox", "sleep", "300").stdout.strip()
    cgroup = delegated / f"nsbox-{cid}"
    assert cgroup.is_dir()
    assert int((cgroup / "memory.max").read_text()) == 64 << 20
    assert (cgroup / "pids.max").read_text().strip() == "50"
    pid = int(box.run("inspect", "-f", "{{.State.Pid}}", cid).stdout)
    assert f"0::/{cgroup.relative_to(ROOT)}" in Path(f"/proc/{pid}/cgroup").read_text()
    box.run("rm", "-f", cid)
    assert not cgroup.exists()
    # A memory hog is OOM-killed at its limit.
    proc = box.run("run", "--rm", "--network", "none", "--memory", "32m", "busybox", "sh", "-c",
                   MEMORY_HOG, check=False, timeout=120)
    assert proc.returncode == 137, proc.stdout + proc.stderr
    assert "survived" not in proc.stdout
    # No cgroup of a container is left.
    assert sorted(p.name for p in delegated.iterdir() if p.is_dir()) == ["session"]
