"""Default placement on a pure cgroup v2 host, called from a cgroup that holds processes.

On a systemd host a root login shell sits in a session scope that holds
processes and delegates nothing, and cgroup v2 lets no such cgroup pass
controllers to children.  So nsbox, like runc, crun, Docker and Podman, takes
an absolute cgroupsPath from the hierarchy's root and enables controllers
top-down from the root (exempt from the no-internal-process rule); the engine
puts containers under /nsbox (Docker's /docker).

Runs in the qemu lane only (`make test-v2`): the default placement is outside
the caller's own cgroup, which this development host does not allow.  Each
command runs from a "login scope" the test makes: a child of the root cgroup
holding a process of ours, into which a shell moves itself before it execs
the command (so nothing nsbox did not start is moved).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import helpers
import pytest
from cgroupv2 import CGROUPV2

pytestmark = CGROUPV2

MiB = 1 << 20
ROOT = Path("/sys/fs/cgroup")
BOMB = "i=0; while [ $i -lt 200 ]; do sleep 1000 & i=$((i+1)); done; echo all $i"


def read(path: Path) -> str:
    return path.read_text().strip()


def keyed(path: Path) -> dict[str, str]:
    return dict(line.split(maxsplit=1) for line in path.read_text().splitlines() if " " in line)


@pytest.fixture
def login_scope():
    """A non-root cgroup with a process in it and nothing in its subtree_control.

    Yields the argv prefix that runs a command from inside it.
    """
    scope = ROOT / f"v2lane-login-{os.getpid()}.scope"
    scope.mkdir()
    keeper = subprocess.Popen(["sh", "-c", f'echo $$ > "{scope}/cgroup.procs" && exec sleep 1000'])
    try:
        helpers.wait_for(lambda: str(keeper.pid) in (scope / "cgroup.procs").read_text(),
                         timeout=10.0)
        assert read(scope / "cgroup.subtree_control") == ""
        yield scope, ["sh", "-c", f'echo $$ > "{scope}/cgroup.procs" && exec "$@"', "sh"]
    finally:
        keeper.kill()
        keeper.wait()
        for _ in range(100):
            try:
                scope.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)


@pytest.fixture
def nsbox_parent_absent():
    """/sys/fs/cgroup/nsbox is made by the first container and removed with the last."""
    existed = (ROOT / "nsbox").exists()
    yield
    if not existed:
        helpers.wait_for(lambda: not (ROOT / "nsbox").exists(), timeout=10.0)


def test_runtime_absolute_path_from_a_busy_login_scope(login_scope, nsbox_parent_absent,
                                                       bundle_factory, runtime, container_id):
    scope, inside = login_scope
    path = f"/nsbox/nsbox-{container_id}"
    cg = ROOT / path.lstrip("/")
    resources = {"memory": {"limit": 32 * MiB}, "pids": {"limit": 12},
                 "cpu": {"quota": 50000, "period": 100000}}

    def edit(spec: dict) -> None:
        spec["linux"].update(cgroupsPath=path, resources=resources)

    bundle = bundle_factory(args=["sleep", "1000"], mutate=edit)
    run = [*inside, *runtime]
    try:
        helpers.run_cli(run, "run", "--detach", "--bundle", str(bundle), container_id, timeout=120)
        pid = json.loads(helpers.run_cli(run, "state", container_id, timeout=60).stdout)["pid"]
        assert Path(f"/proc/{pid}/cgroup").read_text().strip() == f"0::{path}"
        assert read(cg / "memory.max") == str(32 * MiB)
        assert read(cg / "pids.max") == "12"
        assert read(cg / "cpu.max") == "50000 100000"
        # The caller's busy cgroup passed nothing down and was not touched.
        assert read(scope / "cgroup.subtree_control") == ""
        # The OOM kill first: the fork bomb's sleepers stay behind as zombies of an init
        # (sleep) that reaps nothing, and keep counting against pids.max.
        hog = helpers.run_cli(run, "exec", container_id, "sh", "-c", helpers.MEMORY_HOG, check=False,
                              timeout=120)
        assert hog.returncode == 137, (hog.returncode, hog.stdout, hog.stderr)
        assert int(keyed(cg / "memory.events")["oom_kill"]) >= 1
        bomb = helpers.run_cli(run, "exec", container_id, "sh", "-c", BOMB, check=False,
                               timeout=120)
        assert bomb.returncode != 0 and "all 200" not in bomb.stdout
        assert "can't fork" in bomb.stderr, bomb.stderr
        assert int(keyed(cg / "pids.events")["max"]) >= 1
    finally:
        helpers.force_delete_all(runtime, timeout=60)
    assert not cg.exists()


def test_relative_path_from_a_busy_login_scope_says_why(login_scope, bundle_factory, runtime,
                                                        container_id):
    scope, inside = login_scope

    def edit(spec: dict) -> None:
        spec["linux"].update(cgroupsPath=f"nsbox-{container_id}",
                             resources={"memory": {"limit": 32 * MiB}})

    bundle = bundle_factory(args=["true"], mutate=edit)
    try:
        result = helpers.run_cli([*inside, *runtime], "run", "--bundle", str(bundle),
                                 container_id, check=False, timeout=120)
    finally:
        helpers.force_delete_all(runtime, timeout=60)
    assert result.returncode != 0
    assert f"cannot enable memory in {scope}: it holds" in result.stderr, result.stderr
    assert "no-internal-process rule" in result.stderr
    assert "absolute cgroupsPath" in result.stderr
    assert not (scope / f"nsbox-{container_id}").exists()


def _nsbox() -> str:
    found = os.path.join(os.path.dirname(sys.executable), "nsbox")
    if not os.path.exists(found):
        helpers.skip_or_fail(f"no {found}")
    return found


def test_engine_default_parent_from_a_busy_login_scope(login_scope, nsbox_parent_absent):
    scope, inside = login_scope
    base = tempfile.mkdtemp(prefix="nsbox-v2-placement-")
    engine = [*inside, _nsbox(), "--root", f"{base}/root", "--runroot", f"{base}/run"]

    def nsbox(*args: str, check: bool = True, timeout: float = 180):
        return helpers.run_cli(engine, *args, check=check, timeout=timeout)

    try:
        cid = nsbox("run", "-d", "--network", "none", "--memory", "32m", "--pids-limit", "12",
                    "--cpus", "0.5", "busybox", "sleep", "1000").stdout.strip()
        cg = ROOT / "nsbox" / f"nsbox-{cid}"
        assert read(cg / "memory.max") == str(32 * MiB)
        assert read(cg / "pids.max") == "12"
        assert read(cg / "cpu.max") == "50000 100000"
        pid = int(nsbox("inspect", "-f", "{{.State.Pid}}", cid).stdout)
        assert Path(f"/proc/{pid}/cgroup").read_text().strip() == f"0::/nsbox/nsbox-{cid}"
        assert read(scope / "cgroup.subtree_control") == ""
        bomb = nsbox("exec", cid, "sh", "-c", BOMB, check=False)
        assert bomb.returncode != 0 and "all 200" not in bomb.stdout
        assert "can't fork" in bomb.stderr, bomb.stderr
        nsbox("rm", "-f", cid)
        assert not cg.exists()
        hog = nsbox("run", "--rm", "--network", "none", "--memory", "32m", "busybox", "sh", "-c",
                    helpers.MEMORY_HOG, check=False)
        assert hog.returncode == 137, (hog.returncode, hog.stdout, hog.stderr)
        assert "survived" not in hog.stdout
    finally:
        left = nsbox("ps", "-aq", check=False).stdout.split()
        if left:
            nsbox("rm", "-f", *left, check=False)
        nsbox("system", "reset", "--force", check=False)
        shutil.rmtree(base, ignore_errors=True)
