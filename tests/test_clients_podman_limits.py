"""podman's resource flags, through the runtime under test, really limit the container.

`podman run --memory=64m --cpus=0.5 --pids-limit=50` becomes linux.resources in
the config podman hands the runtime; the limits are checked from inside the
container, in the host's cgroup files, and by hitting them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import IMAGE_REF, Podman, missing_binaries, podman_world, runtime_under_test

_missing = missing_binaries("podman", "conmon")
pytestmark = [
    pytest.mark.clients,
    pytest.mark.slow,
    pytest.mark.skipif(bool(_missing), reason=f"not installed: {', '.join(_missing)}"),
    pytest.mark.skipif(os.geteuid() != 0, reason="rootful podman needs root"),
]

LIMITS = ["--memory=64m", "--memory-swap=64m", "--cpus=0.5", "--pids-limit=50"]


@pytest.fixture(scope="module")
def podman() -> Iterator[Podman]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NSBOX_TEST_CLIENT_CGROUPS", "1")  # cgroups on, under our own cgroup
        with podman_world(runtime_under_test()) as world:
            yield world


def host_cgroup_dir(podman: Podman, name: str, controller: str) -> Path:
    cid = podman.run("inspect", "--format", "{{.Id}}", name).stdout.strip()
    matches = list(Path(f"/sys/fs/cgroup/{controller}").rglob(f"*{cid}*"))
    assert matches, f"no {controller} cgroup for container {cid}"
    return matches[0]


def test_limits_are_visible_inside(podman):
    script = ("cat /sys/fs/cgroup/memory/memory.limit_in_bytes;"
              " cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us;"
              " cat /sys/fs/cgroup/pids/pids.max")
    out = podman.run("run", "--rm", *podman.container_args(), *LIMITS, IMAGE_REF,
                     "sh", "-c", script).stdout.split()
    assert out == [str(64 * 2**20), "50000", "100000", "50"]


def test_limits_are_in_the_host_cgroup_files(podman):
    name = "limits-host"
    podman.run("run", "-d", "--name", name, *podman.container_args(), *LIMITS, IMAGE_REF,
               "sleep", "60")
    try:
        mem = host_cgroup_dir(podman, name, "memory")
        assert (mem / "memory.limit_in_bytes").read_text().strip() == str(64 * 2**20)
        cpu = host_cgroup_dir(podman, name, "cpu")
        assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "50000"
        pids = host_cgroup_dir(podman, name, "pids")
        assert (pids / "pids.max").read_text().strip() == "50"
        # The container's processes are the ones in that cgroup.
        inside = {int(p) for p in (pids / "cgroup.procs").read_text().split()}
        assert inside
    finally:
        podman.run("rm", "-f", "-t", "0", name)


def test_memory_limit_kills_a_memory_hog(podman):
    # 100 MiB of distinct pages in a shell variable: past 64 MiB the kernel OOM-kills.
    hog = "x=$(head -c 104857600 /dev/zero | tr '\\0' a); echo survived"
    res = podman.run("run", "--rm", *podman.container_args(), *LIMITS, IMAGE_REF,
                     "sh", "-c", hog, check=False, timeout=60)
    assert "survived" not in res.stdout
    assert res.returncode == 137, (res.returncode, res.stderr)


def test_pids_limit_stops_a_fork_bomb(podman):
    # The forking runs in a subshell, which dies when fork fails; then builtins
    # only, since at the limit not even `cat` could be forked.
    bomb = ("(i=0; while [ $i -lt 200 ]; do sleep 5 & i=$((i+1)); done) 2>/dev/null;"
            " read n < /sys/fs/cgroup/pids/pids.current; echo $n")
    res = podman.run("run", "--rm", *podman.container_args(), *LIMITS, IMAGE_REF,
                     "sh", "-c", bomb, check=False, timeout=60)
    assert res.stdout.split(), (res.returncode, res.stdout, res.stderr)
    # The bomb reached the limit (sleeps still alive) but never went past it.
    assert 40 <= int(res.stdout.split()[-1]) <= 50, res.stdout
