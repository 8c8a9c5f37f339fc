"""End-to-end tests of the engine's container layer on the real kernel (busybox image)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import helpers
import pytest

from nsbox.engine import bundle as bundle_mod
from nsbox.engine.containers import (
    Engine,
    _pid_alive,
    spec_from_json,
    spec_to_json,
)
from nsbox.engine.model import EXITED, RUNNING, ContainerSpec, MountSpec, RestartPolicy
from nsbox.engine.storage import mount_points
from nsbox.engine.volumes import VolumeInUse
from nsbox.errors import BundleError, ContainerExists, ContainerNotFound, ImageNotFound

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture(scope="module")
def engine():
    base = tempfile.mkdtemp(prefix="nsbox-engine-test-")
    from nsbox.engine.images import ensure_busybox
    eng = Engine(os.path.join(base, "root"), os.path.join(base, "run"))
    ensure_busybox(eng.images)
    yield eng
    for c in eng.list(all=True):
        eng.remove(c.id, force=True, volumes=True)
    for v in eng.volumes.list():
        eng.volumes.remove(v["Name"], force=True)
    leftover = [p for p in mount_points() if p.startswith(base)]
    shutil.rmtree(base, ignore_errors=True)
    assert not leftover, leftover


@pytest.fixture
def eng(engine):
    """The shared engine; containers a test leaves are removed after it."""
    before = {c.id for c in engine.list(all=True)}
    yield engine
    for c in engine.list(all=True):
        if c.id not in before:
            engine.remove(c.id, force=True, volumes=True)


def sh(script: str, **kw) -> ContainerSpec:
    return ContainerSpec(image="busybox", command=["sh", "-c", script], **kw)


def exec_output(eng: Engine, ref: str, cmd: list[str], **kw) -> tuple[int, str]:
    r, w = os.pipe()
    code = eng.exec(ref, cmd, stdout=w, **kw)
    os.close(w)
    with os.fdopen(r) as f:
        return code, f.read()


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


# ----------------------------------------------------------------- pure logic
def test_spec_round_trip():
    spec = sh("true", name="x", mounts=[MountSpec("tmpfs", "/t", options=["size=1m"])],
              restart=RestartPolicy("on-failure", 3), ulimits={"nofile": (10, 20)})
    assert spec_from_json(spec_to_json(spec)) == spec


def test_container_paths_resolve_inside_the_root(tmp_path):
    from nsbox.engine.lifecycle.copy import View

    (tmp_path / "etc").mkdir()
    os.symlink("/../../etc", tmp_path / "up")
    view = View(str(tmp_path))
    assert view.host(view.resolve("/up/passwd", True)) == str(tmp_path / "etc" / "passwd")
    assert view.host(view.resolve("../../x", True)) == str(tmp_path / "x")


def test_command_of_follows_docker_rules():
    image = {"Entrypoint": ["/ep"], "Cmd": ["a"]}
    assert bundle_mod.command_of(ContainerSpec(image="i"), image) == ["/ep", "a"]
    assert bundle_mod.command_of(ContainerSpec(image="i", command=["b"]), image) == ["/ep", "b"]
    assert bundle_mod.command_of(ContainerSpec(image="i", entrypoint=["/x"]), image) == ["/x"]


# ------------------------------------------------------------------ lifecycle
def test_run_exit_code_and_json_logs(eng):
    c = eng.run(sh("echo out; echo err >&2; exit 3"))
    assert eng.wait(c.id) == 3
    got = list(eng.logs(c.id))
    assert [(s, line) for _, s, line in got] == [("stdout", b"out\n"), ("stderr", b"err\n")]
    with open(eng.get(c.id).log_path) as f:
        entries = [json.loads(line) for line in f]
    assert entries[0]["log"] == "out\n" and entries[0]["time"].endswith("Z")
    assert eng.get(c.id).state == EXITED


def test_detached_logs_follow_and_tail(eng):
    c = eng.run(sh("for i in 1 2 3 4; do echo $i; sleep 0.1; done"))
    lines = [line for _, _, line in eng.logs(c.id, follow=True)]
    assert lines == [b"1\n", b"2\n", b"3\n", b"4\n"]
    assert [line for _, _, line in eng.logs(c.id, tail=2)] == [b"3\n", b"4\n"]


def test_log_rotation(eng):
    c = eng.run(sh("i=0; while [ $i -lt 200 ]; do echo line-$i; i=$((i+1)); done",
                   log_opts={"max-size": "2k", "max-file": "3"}))
    eng.wait(c.id)
    path = eng.get(c.id).log_path
    assert wait_for(lambda: os.path.exists(path + ".1"))
    assert os.path.getsize(path) <= 2048
    lines = [line for _, _, line in eng.logs(c.id)]
    assert lines[-1] == b"line-199\n" and len(lines) < 200  # the oldest were rotated away


def test_stop_uses_stop_signal(eng):
    c = eng.run(sh("trap 'echo got; exit 7' USR1; echo ready; while :; do sleep 0.1; done",
                   stop_signal="SIGUSR1"))
    assert wait_for(lambda: any(b"ready" in line for _, _, line in eng.logs(c.id)))
    eng.stop(c.id, timeout=10)
    c = eng.get(c.id)
    assert (c.state, c.exit_code) == (EXITED, 7)


def test_stop_escalates_to_sigkill(eng):
    c = eng.run(sh("trap '' TERM; while :; do sleep 0.1; done"))
    start = time.monotonic()
    eng.stop(c.id, timeout=1)
    elapsed = time.monotonic() - start
    assert 0.9 <= elapsed < 8
    assert eng.get(c.id).exit_code == 137


def test_kill_and_wait(eng):
    c = eng.run(sh("sleep 100"))
    assert eng.get(c.id).state == RUNNING
    eng.kill(c.id, "KILL")
    assert eng.wait(c.id) == 137


def test_restart_on_failure_counts(eng):
    c = eng.run(sh("exit 1", restart=RestartPolicy("on-failure", 2)))
    assert wait_for(lambda: eng.get(c.id).state == EXITED and eng.get(c.id).restart_count == 2)
    time.sleep(0.5)
    c = eng.get(c.id)
    assert (c.state, c.restart_count, c.exit_code) == (EXITED, 2, 1)


def test_restart_always_until_stopped(eng):
    c = eng.run(sh("sleep 0.1", restart=RestartPolicy("always")))
    assert wait_for(lambda: eng.get(c.id).restart_count >= 2)
    eng.stop(c.id, timeout=1)
    count = eng.get(c.id).restart_count
    time.sleep(0.6)
    c = eng.get(c.id)
    assert c.state == EXITED and c.restart_count == count


def test_auto_remove(eng):
    c = eng.run(sh("exit 5", auto_remove=True))
    assert eng.wait(c.id) == 5
    assert wait_for(lambda: not os.path.exists(os.path.join(eng.storage.containers_dir, c.id)))

    def gone() -> bool:
        # The monitor drops the record last (after the files), so it may take a moment.
        try:
            eng.get(c.id)
        except ContainerNotFound:
            return True
        return False
    assert wait_for(gone)


def _merged_mounted(eng: Engine, cid: str) -> bool:
    return os.path.join(eng.storage.containers_dir, cid, "merged") in mount_points()


def test_attached_run_is_finished_by_its_caller(eng):
    c = eng.create(sh("echo one; echo two >&2; exit 4"))
    attached = eng.start_attached(c.id)
    assert [(s, line) for _, s, line in attached.logs()] == [("stdout", b"one\n"),
                                                              ("stderr", b"two\n")]
    # Told by the monitor, and recorded by us at once, before the rest of the output.
    assert attached.exit_code == 4
    c = eng.get(c.id)
    assert (c.state, c.exit_code, c.pid) == (EXITED, 4, 0)
    assert eng.oci(c.runtime).state(c.id) is None and not _merged_mounted(eng, c.id)
    assert wait_for(lambda: not _pid_alive(c.monitor_pid))
    assert attached.finish() == 4
    assert eng.get(c.id).state == EXITED


def test_attached_run_with_rm_is_removed_by_its_caller(eng):
    c = eng.create(sh("exit 6", auto_remove=True))
    attached = eng.start_attached(c.id)
    list(attached.logs())
    assert attached.finish(remove=True) == 6
    with pytest.raises(ContainerNotFound):
        eng.get(c.id)
    assert not os.path.exists(os.path.join(eng.storage.containers_dir, c.id))
    assert not os.path.exists(os.path.join(eng.run_root, "exits", c.id))  # the caller has the code


def test_attached_caller_gone_leaves_the_finish_to_the_monitor(eng):
    # The caller hears the exit code and dies before it records the exit.
    c = eng.create(sh("exit 9"))
    attached = eng.start_attached(c.id)
    assert os.read(attached._done_fd, 64) == b"exit 9\n"
    assert eng._lookup(c.id).state == RUNNING  # the monitor waits for the caller
    attached.close()
    assert wait_for(lambda: eng._lookup(c.id).state == EXITED)
    c = eng.get(c.id)
    assert c.exit_code == 9 and not _merged_mounted(eng, c.id)
    # Gone before the container even exited: the same.
    c = eng.create(sh("sleep 0.3; exit 8"))
    eng.start_attached(c.id).close()
    assert eng.wait(c.id) == 8 and not _merged_mounted(eng, eng.get(c.id).id)


def test_attached_run_with_restart_policy_stays_with_the_monitor(eng):
    c = eng.create(sh("echo try; exit 1", restart=RestartPolicy("on-failure", 1)))
    attached = eng.start_attached(c.id)
    assert [line for _, _, line in attached.logs()] == [b"try\n", b"try\n"]
    assert attached.finish() == 1
    c = eng.get(c.id)
    assert (c.state, c.restart_count) == (EXITED, 1)


def test_exec_code_env_user(eng):
    c = eng.run(sh("sleep 100", env={"BASE": "1"}))
    assert eng.exec(c.id, ["sh", "-c", "exit 4"]) == 4
    assert exec_output(eng, c.id, ["sh", "-c", "echo $FOO-$BASE"], env={"FOO": "bar"}) == \
        (0, "bar-1\n")
    assert exec_output(eng, c.id, ["id", "-u"], user="1000") == (0, "1000\n")
    assert exec_output(eng, c.id, ["id", "-u"], user="nobody")[1].strip() == "65534"
    assert exec_output(eng, c.id, ["pwd"], workdir="/tmp") == (0, "/tmp\n")
    top = eng.top(c.id)
    assert top[0] == ["UID", "PID", "PPID", "CMD"] and any("sleep 100" in r[3] for r in top[1:])


def test_inspect_shape_namespaces_cgroups(eng):
    c = eng.run(sh("sleep 100", name="inspected", labels={"a": "b"},
                   resources={"memory": {"limit": 64 * 1024 * 1024}}))
    data = eng.inspect("inspected")
    assert data["Id"] == c.id and data["Name"] == "/inspected"
    state = data["State"]
    assert state["Status"] == "running" and state["Running"] and state["Pid"] == c.pid
    assert data["Config"]["Cmd"] == ["sh", "-c", "sleep 100"]
    assert data["Config"]["Hostname"] == c.id[:12] and data["Config"]["Labels"] == {"a": "b"}
    assert data["HostConfig"]["Memory"] == 64 * 1024 * 1024
    assert data["GraphDriver"]["Name"] == "overlay"
    assert os.path.isdir(data["GraphDriver"]["Data"]["MergedDir"])
    ns = data["Namespaces"]
    assert set(ns) >= {"pid", "mnt", "net", "ipc", "uts", "cgroup", "user"}
    for name, entry in ns.items():
        assert entry["inode"] == os.stat(f"/proc/{c.pid}/ns/{name}").st_ino
    assert not ns["pid"]["shared_with_host"] and ns["user"]["shared_with_host"]
    assert data["Cgroups"] and all(os.path.isdir(p) for p in data["Cgroups"].values())
    # The memory limit is in the container's own cgroup.
    mem_dir = data["Cgroups"].get("memory") or data["Cgroups"].get("") or data["Cgroups"].get(
        "unified")
    limit_file = next(os.path.join(mem_dir, f) for f in ("memory.limit_in_bytes", "memory.max")
                      if os.path.exists(os.path.join(mem_dir, f)))
    with open(limit_file) as f:
        assert int(f.read()) == 64 * 1024 * 1024
    # ... and visible from inside.
    code, out = exec_output(eng, c.id, ["cat", "/etc/hostname"])
    assert out.strip() == c.id[:12]


def test_parallel_runs_and_unique_names(eng):
    ids, errors = [], []
    lock = threading.Lock()

    def one(i: int) -> None:
        name = "twin" if i < 2 else None
        try:
            c = Engine(eng.root, eng.run_root).run(sh("sleep 30", name=name))
            with lock:
                ids.append(c.id)
        except ContainerExists as err:
            with lock:
                errors.append(err)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(21)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 1 and len(ids) == 20 and len(set(ids)) == 20
    names = [c.name for c in eng.list()]
    assert len(names) == len(set(names)) and names.count("twin") == 1
    assert sum(c.state == RUNNING for c in eng.list()) >= 20


def test_ps_right_after_outside_kill(eng):
    c = eng.run(sh("sleep 100"))
    os.kill(c.pid, signal.SIGKILL)
    # Once the host sees it dead (a zombie of the monitor, or gone), ps must say so at once.
    assert wait_for(lambda: not _pid_alive(c.pid), 5)
    assert c.id not in [x.id for x in eng.list()]
    got = eng.get(c.id)
    assert (got.state, got.exit_code) == (EXITED, 137)


def test_volumes_and_persistence(eng):
    vols = eng.volumes
    info = vols.create("persist")
    assert info["Name"] == "persist" and os.path.isdir(info["Mountpoint"])
    assert "persist" in [v["Name"] for v in vols.list()]
    first = eng.run(sh("echo kept > /data/f", mounts=[MountSpec("volume", "/data", "persist")]))
    assert eng.wait(first.id) == 0
    second = eng.run(sh("cat /data/f", mounts=[MountSpec("volume", "/data", "persist")]))
    assert eng.wait(second.id) == 0
    assert [line for _, _, line in eng.logs(second.id)] == [b"kept\n"]
    with pytest.raises(VolumeInUse):
        vols.remove("persist")
    eng.remove(first.id)
    eng.remove(second.id)
    vols.remove("persist")
    assert vols.list() == [] or "persist" not in [v["Name"] for v in vols.list()]
    # An anonymous volume goes with `rm -v`.
    c = eng.run(sh("true", mounts=[MountSpec("volume", "/anon")]))
    eng.wait(c.id)
    anon = eng.inspect(c.id)["Mounts"][0]["Name"]
    assert anon in [v["Name"] for v in vols.list()]
    eng.remove(c.id, volumes=True)
    assert anon not in [v["Name"] for v in vols.list()]


def test_new_volume_gets_image_content(eng, tmp_path):
    """Docker's copy-up: an empty volume is filled from the image at its mount point,
    owners and modes kept, symlinks copied as links; not with nocopy, never over data."""
    tree = helpers.build_busybox_rootfs(tmp_path / "rootfs")
    seed = tree / "seed"
    (seed / "sub").mkdir(parents=True)
    (seed / "a.txt").write_text("from the image\n")
    (seed / "sub" / "b").write_text("deep\n")
    os.symlink("/etc/passwd", seed / "link")
    for path in (seed, seed / "sub", seed / "a.txt", seed / "sub" / "b"):
        os.chown(path, 1234, 5678)
    os.chmod(seed, 0o750)
    os.symlink("seed", tree / "alias")
    eng.images.import_rootfs(str(tree), "localhost/seeded:1", config={"Volumes": {"/seed": {}}})
    show = ("stat -c '%a %u:%g' /seed /seed/a.txt; cat /seed/a.txt /seed/sub/b; "
            "readlink /seed/link")
    expected = [b"750 1234:5678\n", b"644 1234:5678\n", b"from the image\n", b"deep\n",
                b"/etc/passwd\n"]
    # The image's own VOLUME (an anonymous volume) and a new named one.
    for mounts in ([], [MountSpec("volume", "/seed", "seedvol")]):
        c = eng.run(ContainerSpec(image="localhost/seeded:1", command=["sh", "-c", show],
                                  mounts=mounts))
        assert eng.wait(c.id) == 0
        assert [line for _, _, line in eng.logs(c.id)] == expected
        assert eng.inspect(c.id)["Mounts"][0]["Type"] == "volume"
    # A volume with data keeps it.
    c = eng.run(ContainerSpec(image="localhost/seeded:1", mounts=[MountSpec("volume", "/seed", "seedvol")],
                              command=["sh", "-c", "echo mine > /seed/a.txt; rm /seed/sub/b"]))
    assert eng.wait(c.id) == 0
    c = eng.run(ContainerSpec(image="localhost/seeded:1", mounts=[MountSpec("volume", "/seed", "seedvol")],
                              command=["sh", "-c", "cat /seed/a.txt; ls /seed/sub"]))
    assert eng.wait(c.id) == 0
    assert [line for _, _, line in eng.logs(c.id)] == [b"mine\n"]
    # Emptied by its container, a volume stays empty when that container starts again.
    c = eng.run(ContainerSpec(image="localhost/seeded:1", mounts=[MountSpec("volume", "/seed", "againvol")],
                              command=["sh", "-c", "ls /seed; rm -rf /seed/*"]))
    assert eng.wait(c.id) == 0
    eng.start(c.id)
    assert eng.wait(c.id) == 0
    assert [line for _, _, line in eng.logs(c.id)] == [b"a.txt\n", b"link\n", b"sub\n"]
    # nocopy, and a mount point reached through an image symlink.
    c = eng.run(ContainerSpec(image="localhost/seeded:1", command=["ls", "-A", "/seed"],
                              mounts=[MountSpec("volume", "/seed", "emptyvol", options=["nocopy"])]))
    assert eng.wait(c.id) == 0
    assert list(eng.logs(c.id)) == []
    c = eng.run(ContainerSpec(image="localhost/seeded:1", command=["cat", "/alias/a.txt"],
                              mounts=[MountSpec("volume", "/alias", "aliasvol")]))
    assert eng.wait(c.id) == 0
    assert [line for _, _, line in eng.logs(c.id)] == [b"from the image\n"]
    for c in eng.list(all=True):
        if c.image == "localhost/seeded:1":
            eng.remove(c.id, volumes=True)
    for name in ("seedvol", "emptyvol", "aliasvol", "againvol"):
        eng.volumes.remove(name)
    eng.images.remove("localhost/seeded:1")


def test_read_only_with_tmpfs(eng):
    c = eng.run(sh("touch /x 2>/dev/null && echo rootfs-writable; touch /tmp/y && echo tmp-ok; "
                   "touch /scratch/z && echo scratch-ok; grep ' /scratch ' /proc/mounts",
                   read_only=True, mounts=[MountSpec("tmpfs", "/scratch", options=["size=1m"])]))
    assert eng.wait(c.id) == 0
    out = b"".join(line for _, _, line in eng.logs(c.id)).decode()
    assert "rootfs-writable" not in out and "tmp-ok" in out and "scratch-ok" in out
    assert "size=1024k" in out


def test_bind_mount_and_cp(eng, tmp_path):
    (tmp_path / "in.txt").write_text("hello")
    c = eng.run(sh("cat /mnt/in.txt; echo made > /made.txt",
                   mounts=[MountSpec("bind", "/mnt", str(tmp_path), read_only=True)]))
    assert eng.wait(c.id) == 0
    assert [line for _, _, line in eng.logs(c.id)] == [b"hello"]
    eng.cp(f"{c.id[:12]}:/made.txt", str(tmp_path / "out.txt"))
    assert (tmp_path / "out.txt").read_text() == "made\n"
    eng.cp(str(tmp_path / "in.txt"), f"{c.name}:/tmp")
    assert os.path.isfile(os.path.join(eng.storage.rootfs(c.id).upper, "tmp", "in.txt"))


def _footprint(eng: Engine, ids: list[str]) -> tuple:
    containers = sorted(os.listdir(eng.storage.containers_dir))
    rows = [r["id"] for r in eng.db.containers()]
    runtime_dirs = []
    for d in os.listdir(eng.run_root):
        if d not in ("exits", "bin"):
            runtime_dirs += os.listdir(os.path.join(eng.run_root, d))
    mounts = sorted(p for p in mount_points() if p.startswith(eng.root))
    cgroups = subprocess.run(["find", "/sys/fs/cgroup", "-maxdepth", "8", "-name", "nsbox-*"],
                             capture_output=True, text=True).stdout
    ours = [line for line in cgroups.splitlines() if any(i in line for i in ids)]
    return containers, rows, sorted(runtime_dirs), mounts, ours, len(eng.volumes.list())


def test_bad_input_leaves_nothing(eng, tmp_path, monkeypatch):
    from nsbox.engine import containers
    ids: list[str] = []
    real = containers._new_id

    def recording() -> str:
        value = real()
        ids.append(value)
        return value
    monkeypatch.setattr("nsbox.engine.containers._new_id", recording)
    eng.run(sh("true", name="taken"))
    eng.wait("taken")
    before = _footprint(eng, ids)
    with pytest.raises(ImageNotFound):
        eng.create(ContainerSpec(image="no-such-image:1"))
    with pytest.raises(ContainerExists):
        eng.create(sh("true", name="taken"))
    with pytest.raises(BundleError) as err:
        eng.create(sh("true", mounts=[MountSpec("bind", "/x", str(tmp_path / "missing"))]))
    assert "\n" not in str(err.value)
    with pytest.raises(ContainerExists):
        eng.rename(eng.run(sh("true")).id, "taken")
    eng.remove(eng.list(all=True)[0].id, force=True)
    assert _footprint(eng, ids) == before


def test_detached_tty_logs(eng):
    c = eng.run(sh("echo hi; tty; exit 2", tty=True))
    assert eng.wait(c.id) == 2
    out = b"".join(line for _, _, line in eng.logs(c.id))
    assert b"hi\r\n" in out and b"/dev/pts/" in out


def test_init_runs_catatonit(eng):
    c = eng.run(sh("cat /proc/1/cmdline | tr '\\0' ' '; exit 6", init=True))
    assert eng.wait(c.id) == 6
    assert b"/dev/init -- sh" in b"".join(line for _, _, line in eng.logs(c.id))


def test_state_truth_without_monitor(eng):
    c = eng.run(sh("sleep 100"))
    monitor = eng.get(c.id).monitor_pid
    os.kill(monitor, signal.SIGKILL)
    assert wait_for(lambda: not _pid_alive(monitor), 5)
    assert eng.get(c.id).state == RUNNING  # the container outlives its monitor
    os.kill(c.pid, signal.SIGKILL)
    assert wait_for(lambda: not _pid_alive(c.pid), 5)
    got = eng.get(c.id)
    # Nobody saw the exit: its code is unknown, not made up (docs/engine.md, "Crash safety").
    assert (got.state, got.exit_code, got.exit_unknown) == (EXITED, 255, True)
    assert got.error.startswith("exit code unknown")
    assert not eng.storage.is_mounted(c.id)
