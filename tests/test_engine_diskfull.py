"""A full disk under the engine's --root: what frees space must work, reads must answer.

Each test mounts a small tmpfs as the --root (below tmp_path, unmounted in
the teardown whatever happened), fills it from a container, and drives the
`nsbox` CLI there (docs/engine.md, "A full disk").
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import helpers
import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts a tmpfs)")

NSBOX = str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "nsbox")
MiB = 1 << 20


class Box:
    def __init__(self, root: Path, run: Path, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.prefix = [NSBOX, "--root", str(root), "--runroot", str(run)]
        self.env = {**os.environ, **(env or {})}

    def __call__(self, *args: str, check: bool = True, timeout: float = 30
                 ) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self.prefix, *args], capture_output=True, text=True,
                              timeout=timeout, env=self.env)
        if check and proc.returncode != 0:
            raise AssertionError(f"nsbox {' '.join(args)} -> {proc.returncode}\n{proc.stderr}")
        return proc

    def inspect(self, ref: str) -> dict:
        return json.loads(self("inspect", ref).stdout)[0]

    def free(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def wait_for(self, what, timeout: float = 15.0, step: float = 0.05):  # noqa: ANN001, ANN201
        deadline = time.monotonic() + timeout
        while True:
            value = what()
            if value or time.monotonic() > deadline:
                return value
            time.sleep(step)


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                   check=True)


def _unmount(path: Path) -> None:
    for _ in range(50):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
            return
        if not os.path.ismount(path):
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def small_root(tmp_path: Path, request: pytest.FixtureRequest, register_runtime):  # noqa: ANN001
    """A Box on a 16 MiB tmpfs --root; everything removed and unmounted afterwards."""
    root, run = tmp_path / "root", tmp_path / "run"
    _mount_tmpfs(root, "16m")
    env = getattr(request, "param", None) or {}
    box = Box(root, run, env)
    # What `rm -f` leaves (it failed: the bug under test) the cleanup deletes by the runtime.
    runtime = register_runtime(helpers.runtime_argv(run / "nsbox-runtime",
                                                    helpers.nsbox_runtime_path()))
    try:
        yield box
    finally:
        try:
            ids = box("ps", "-a", "-q", "--no-trunc", check=False).stdout.split()
            if ids:
                box("rm", "-f", "-v", *ids, check=False, timeout=60)
        finally:
            if helpers.list_container_ids(helpers.root_of(runtime)):
                helpers.force_delete_all(runtime)
                time.sleep(0.5)  # their monitors go
                helpers.unmount_all_under(root / "containers")
            _unmount(root)
    assert not os.path.ismount(root)


def _writer(box: Box, ctl: Path, name: str = "writer") -> None:
    """A container that fills the --root's filesystem (dd into its rootfs) once CTL/fill exists."""
    ctl.mkdir(exist_ok=True)
    box("run", "-d", "--name", name, "-v", f"{ctl}:/ctl", "busybox", "sh", "-c",
        "while [ ! -e /ctl/fill ]; do sleep 0.02; done; dd if=/dev/zero of=/fill bs=64k; "
        "sleep 300")


def _fill(box: Box, ctl: Path) -> None:
    (ctl / "fill").touch()
    assert box.wait_for(lambda: box.free() < 64 << 10), box.free()


def test_full_disk_rm_stop_kill_prune_and_exit_records(small_root: Box, tmp_path: Path) -> None:
    box = small_root
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    # Exits once told to (the disk full by then): its monitor must record 7.
    box("run", "-d", "--name", "late", "-v", f"{ctl}:/ctl", "busybox", "sh", "-c",
        "while [ ! -e /ctl/go ]; do sleep 0.05; done; exit 7")
    box("run", "-d", "--name", "stopme", "busybox", "sleep", "300")
    box("run", "-d", "--name", "killme", "busybox", "sleep", "300")
    _writer(box, ctl)
    _fill(box, ctl)

    # Reads answer; nothing new is made on a full disk (the reserve is for removals).
    assert "writer" in box("ps", "-a").stdout
    writer = box.inspect("writer")
    assert writer["State"]["Running"] is True
    assert writer["HostConfig"]["LogConfig"]["Config"] == {"max-size": "10m", "max-file": "2"}
    refused = box("run", "-d", "busybox", "true", check=False)
    assert refused.returncode == 125 and "no space left" in refused.stderr, refused.stderr

    (ctl / "go").touch()
    assert box.wait_for(lambda: box.inspect("late")["State"]["Status"] == "exited")
    assert box.inspect("late")["State"]["ExitCode"] == 7

    box("stop", "-t", "0", "stopme")
    assert box.inspect("stopme")["State"]["Status"] == "exited"
    box("kill", "killme")
    assert box.wait_for(lambda: box.inspect("killme")["State"]["Status"] == "exited")
    assert box.inspect("killme")["State"]["ExitCode"] == 137
    assert box.free() < 2 * MiB  # still full: the reserve gave only what the records took

    pruned = box("container", "prune", "-f").stdout
    assert all(box("inspect", n, check=False).returncode != 0 for n in ("late", "stopme",
                                                                       "killme")), pruned
    before = box.free()
    box("rm", "-f", "writer")  # the first try
    assert box.free() > before + 8 * MiB
    assert box("ps", "-a", "-q").stdout.strip() == ""
    # The reserve is made whole again once there is room.
    reserve = box.root / "nsbox.db-reserve"
    assert reserve.stat().st_size == MiB


def test_full_disk_past_the_reserve(small_root: Box, tmp_path: Path) -> None:
    """With the reserve used up, rm -f still frees the space and ps still answers."""
    box = small_root
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    box("run", "-d", "--name", "victim", "busybox", "sleep", "300")
    box("run", "-d", "--name", "late", "-v", f"{ctl}:/ctl", "busybox", "sh", "-c",
        "while [ ! -e /ctl/go ]; do sleep 0.05; done; exit 5")
    _writer(box, ctl)
    _fill(box, ctl)
    reserve = box.root / "nsbox.db-reserve"
    if reserve.exists():
        os.truncate(reserve, 0)
    _take_the_rest(box)  # whatever the reserve held is taken too
    assert "victim" in box("ps", "-a").stdout
    box("kill", "victim")  # the signal goes even if the record cannot be written
    assert box.wait_for(lambda: box.inspect("victim")["State"]["Status"] == "exited")
    # An exit its monitor cannot record: its code is read back from <runroot>/exits.
    (ctl / "go").touch()
    assert box.wait_for(lambda: box.inspect("late")["State"]["Status"] == "exited")
    assert box.inspect("late")["State"]["ExitCode"] == 5
    box("rm", "-f", "writer")
    assert box.free() > 8 * MiB
    assert box.inspect("late")["State"]["ExitCode"] == 5  # and now recorded
    box("rm", "victim", "late")
    assert box("ps", "-a", "-q").stdout.strip() == ""


def test_full_disk_volume_rm_and_rmi(small_root: Box) -> None:
    box = small_root
    # A --rm container fills a volume and exits: its exit and removal still happen.
    proc = box("run", "--rm", "-v", "vol:/data", "busybox", "sh", "-c",
               "dd if=/dev/zero of=/data/fill bs=64k 2>/dev/null; exit 3", check=False)
    assert proc.returncode == 3, proc.stderr
    assert box.free() < 1 * MiB
    assert box("ps", "-a", "-q").stdout.strip() == ""
    _take_the_rest(box)
    box("rmi", "busybox")  # rewrites the image index first: a chunk of the reserve
    box("volume", "rm", "vol")
    assert box.free() > 12 * MiB
    assert box("volume", "ls", "-q").stdout.strip() == ""


def _take_the_rest(box: Box) -> None:
    fd = os.open(box.root / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 16, 4096):
            try:
                while os.write(fd, bytes(size)):
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)
    assert box.free() == 0


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _monitor_pid(box: Box, ref: str) -> int:
    import sqlite3

    conn = sqlite3.connect(f"file:{box.root / 'nsbox.db'}?mode=ro", uri=True)
    try:
        cid = box.inspect(ref)["Id"]
        return conn.execute("SELECT monitor_pid FROM container_containers WHERE id=?",
                            (cid,)).fetchone()[0]
    finally:
        conn.close()


@pytest.mark.parametrize("small_root", [{}, {"NSBOX_MONITOR_PYTHON": "1"}],
                         ids=["c-loop", "python-loop"], indirect=True)
def test_log_flood_drops_and_backs_off(small_root: Box, tmp_path: Path) -> None:
    box = small_root
    _writer(box, tmp_path / "ctl")
    line = "a" * 200
    box("run", "-d", "--name", "flood", "--log-opt", "max-size=1g", "busybox", "sh", "-c",
        f"while true; do echo {line}; done")
    assert box.inspect("flood")["HostConfig"]["LogConfig"]["Config"] == {"max-size": "1g",
                                                                          "max-file": "1"}
    dropped = box.wait_for(lambda: box.inspect("flood")["State"]["LogDropped"], timeout=20)
    assert dropped > 0
    # The log stops short of the last of the filesystem; the writer takes the rest.
    _fill(box, tmp_path / "ctl")
    monitor = _monitor_pid(box, "flood")
    assert monitor > 0
    t0, c0 = time.monotonic(), _cpu_ticks(monitor)
    time.sleep(1.0)
    c1, t1 = _cpu_ticks(monitor), time.monotonic()
    share = (c1 - c0) / os.sysconf("SC_CLK_TCK") / (t1 - t0)
    assert share < 0.2, f"the monitor used {share:.0%} of a CPU"
    state = box.inspect("flood")["State"]
    assert state["Running"] and state["LogDropped"] > dropped and state["LogDroppedBytes"] > 0
    logs = box("logs", "--tail", "2", "flood")
    assert line in logs.stdout
    assert "were dropped" in logs.stderr
    assert "flood" in box("ps").stdout
    box("rm", "-f", "flood")
    box("rm", "-f", "writer")
    assert box("ps", "-a", "-q").stdout.strip() == ""
    assert box.free() > 8 * MiB


def test_log_limits_defaults() -> None:
    from nsbox.engine.logs import log_limits

    assert log_limits({}, {}) == {"max-size": "10m", "max-file": "2"}
    assert log_limits({"max-file": "5"}, {}) == {"max-size": "10m", "max-file": "5"}
    assert log_limits({"max-size": "1m"}, {}) == {"max-size": "1m", "max-file": "1"}  # as Docker
    env = {"NSBOX_LOG_MAX_SIZE": "5m", "NSBOX_LOG_MAX_FILE": "4"}
    assert log_limits({}, env) == {"max-size": "5m", "max-file": "4"}
    assert log_limits({}, {"NSBOX_LOG_MAX_SIZE": "0"}) == {}
    assert log_limits({}, {"NSBOX_LOG_MAX_SIZE": "-1"}) == {}
    with pytest.raises(ValueError):
        log_limits({}, {"NSBOX_LOG_MAX_SIZE": "lots"})


def test_reserve_is_given_back_in_chunks_and_made_again(tmp_path: Path) -> None:
    from nsbox.engine import db

    path = str(tmp_path / "nsbox.db-reserve")
    db.keep_reserve(path)
    assert os.path.getsize(path) == db.RESERVE_SIZE
    sizes = []
    while db.release_reserve(path, full=True):
        sizes.append(os.path.getsize(path))
    assert sizes == [db.RESERVE_SIZE - n * db.RESERVE_CHUNK
                     for n in range(1, db.RESERVE_SIZE // db.RESERVE_CHUNK + 1)]
    db.keep_reserve(path)
    assert os.path.getsize(path) == db.RESERVE_SIZE
    assert not db.release_reserve(path, full=False)  # an I/O error with room: not ours to fix
    assert os.path.getsize(path) == db.RESERVE_SIZE
