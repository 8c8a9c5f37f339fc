"""`--rm` containers racing the user's `rm -f`, `stop` and `kill`: whoever removes the
container first (the user or its monitor's --rm removal), the command succeeds once,
prints the name, and nothing is left (row, exit file of a user-removed container,
bundle, mounts, cgroups).  Real containers, each test with its own --root/--runroot.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from helpers import mounts_under
from runtime_leaks import leftover_cgroups
from test_engine_cli import Nsbox

TRIES = 5


@pytest.fixture
def nsbox(tmp_path: Path):
    box = Nsbox(tmp_path)
    box("run", "--rm", "busybox", "true")  # builds busybox once for the test
    yield box
    ids = box.ids()
    if ids:
        box("rm", "-f", *ids, check=False)


def exit_files(tmp_path: Path) -> list[str]:
    exits = tmp_path / "run" / "exits"
    return sorted(os.listdir(exits)) if exits.is_dir() else []


def assert_gone(nsbox: Nsbox, tmp_path: Path, cid: str, exit_file: bool) -> None:
    """CID has no row, no bundle, no mount, no cgroup; its exit file only if EXIT_FILE."""
    assert cid not in nsbox.ids()
    assert not (tmp_path / "lib" / "containers" / cid).exists()
    assert mounts_under(tmp_path) == []
    assert leftover_cgroups(cid) == []
    assert (cid in exit_files(tmp_path)) == exit_file, exit_files(tmp_path)


def run_rm(nsbox: Nsbox, name: str, *argv: str, options: tuple[str, ...] = ()) -> str:
    return nsbox("run", "-d", "--rm", "--name", name, *options, "busybox", *argv).stdout.strip()


def test_rm_f_right_after_run_d_rm(nsbox, tmp_path):
    for i in range(TRIES):
        cid = run_rm(nsbox, f"x{i}", "sleep", "100")
        proc = nsbox("rm", "-f", f"x{i}", check=False)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"x{i}\n", "")
        assert_gone(nsbox, tmp_path, cid, exit_file=False)
    assert exit_files(tmp_path) == []


def test_stop_right_after_run_d_rm(nsbox, tmp_path):
    for i in range(TRIES):
        cid = run_rm(nsbox, f"s{i}", "sh", "-c", "trap 'exit 143' TERM; sleep 100 & wait")
        proc = nsbox("stop", "-t", "1", f"s{i}", check=False)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"s{i}\n", "")
        # Removed by its monitor (--rm): the exit code stays for `wait ID` a while.
        assert_gone(nsbox, tmp_path, cid, exit_file=True)
        # 137: the TERM came before the trap was set, so the KILL a second later.
        assert nsbox("wait", cid).stdout in ("143\n", "137\n")


def test_kill_right_after_run_d_rm(nsbox, tmp_path):
    for i in range(TRIES):
        cid = run_rm(nsbox, f"k{i}", "sleep", "100")
        proc = nsbox("kill", f"k{i}", check=False)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"k{i}\n", "")
        assert nsbox("wait", cid).stdout == "137\n"  # kill does not wait for the removal
        deadline = time.monotonic() + 10
        while cid in nsbox.ids() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert_gone(nsbox, tmp_path, cid, exit_file=True)
    # Removed by someone else between finding it and signalling it: killed all the same.
    from nsbox.engine.containers import Engine
    engine = Engine(str(tmp_path / "lib"), str(tmp_path / "run"))
    real_oci = engine.oci

    def oci(runtime: str):  # noqa: ANN202
        driver = real_oci(runtime)
        real_kill = driver.kill

        def kill(target: str, signal: str) -> None:
            nsbox("rm", "-f", target, check=False)  # (checked by assert_gone)
            real_kill(target, signal)
        driver.kill = kill
        return driver
    engine.oci = oci
    cid = run_rm(nsbox, "k-late", "sleep", "100")
    engine.kill("k-late")
    assert_gone(nsbox, tmp_path, cid, exit_file=False)


def test_rm_f_while_the_container_exits_on_its_own(nsbox, tmp_path):
    """The container ends (a file appears in its volume) as `rm -f` starts: its monitor's
    --rm removal and the user's removal race; rm -f succeeds either way."""
    go = tmp_path / "go"
    go.mkdir()
    for i, delay in enumerate((0.0, 0.03, 0.06, 0.1, 0.15)):
        (go / "now").unlink(missing_ok=True)
        cid = run_rm(nsbox, f"e{i}", "sh", "-c",
                     "while [ ! -e /go/now ]; do sleep 0.01; done; exit 3",
                     options=("-v", f"{go}:/go"))
        rm = subprocess.Popen([*nsbox.prefix, "rm", "-f", f"e{i}"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        (go / "now").touch()
        out, err = rm.communicate(timeout=60)
        assert (rm.returncode, out, err) == (0, f"e{i}\n", "")
        assert_gone(nsbox, tmp_path, cid, exit_file=False)
    assert exit_files(tmp_path) == []


def test_rm_of_a_name_that_never_existed(nsbox):
    proc = nsbox("rm", "-f", "never-was", check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "no such container" in proc.stderr
    proc = nsbox("stop", "never-was", check=False)
    assert proc.returncode != 0 and "no such container" in proc.stderr


def test_restart_keeps_a_rm_container(nsbox, tmp_path):
    """As Docker: restart stops and starts it again; --rm removes it at a later exit only."""
    cid = run_rm(nsbox, "r", "sleep", "100")
    proc = nsbox("restart", "-t", "1", "r", check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "r\n", "")
    assert nsbox("ps", "-q", "--no-trunc").stdout.split() == [cid]
    proc = nsbox("rm", "-f", "r", check=False)
    assert (proc.returncode, proc.stdout) == (0, "r\n")
    assert_gone(nsbox, tmp_path, cid, exit_file=False)


def test_stale_exit_files_are_dropped(nsbox, tmp_path):
    """exits/ cannot grow forever: a removal or prune drops the exit files of removed
    containers older than EXIT_FILE_TTL, and keeps recent ones and those of containers
    that still exist."""
    from nsbox.engine.lifecycle.remove import EXIT_FILE_TTL
    nsbox("run", "--name", "kept", "busybox", "true")
    kept = nsbox("inspect", "-f", "{{.Id}}", "kept").stdout.strip()
    exits = tmp_path / "run" / "exits"
    old = time.time() - EXIT_FILE_TTL - 60
    for name in ("a" * 64, "b" * 64):
        (exits / name).write_text("0")
    for name in ("a" * 64, kept):
        os.utime(exits / name, (old, old))
    cid = run_rm(nsbox, "short", "true")
    nsbox("wait", cid)  # the monitor's --rm removal sweeps; its own exit file stays
    deadline = time.monotonic() + 10
    while "a" * 64 in exit_files(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert exit_files(tmp_path) == sorted(["b" * 64, kept, cid])
    nsbox("container", "prune", "-f")
    assert exit_files(tmp_path) == sorted(["b" * 64, cid])
