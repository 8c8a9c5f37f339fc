"""Mounts and devices through the `nsbox-runtime` CLI, checked from inside the container
and from the host: bind/rbind and their flags, tmpfs options, propagation, rootfs
propagation, linux.devices, the default /dev, and `--no-pivot`."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from runtime_leaks import assert_nothing_left

SLEEP = ["sleep", "60"]


def mount_entry(destination: str, source: str, mount_type: str = "bind",
                options: list[str] | None = None) -> dict:
    return {"destination": destination, "type": mount_type, "source": source,
            "options": options or []}


def with_mounts(*mounts: dict):
    return lambda spec: spec["mounts"].extend(mounts)


def host_mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


@contextlib.contextmanager
def host_mounts() -> Iterator[list[str]]:
    """Collects host mount points to unmount (deepest first) when the test ends."""
    made: list[str] = []
    try:
        yield made
    finally:
        for point in reversed(made):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def mountinfo_line(text: str, mount_point: str) -> str:
    """The last line of a mountinfo dump whose mount point is MOUNT_POINT."""
    lines = [line for line in text.splitlines() if line.split()[4] == mount_point]
    assert lines, f"{mount_point} is not a mount point:\n{text}"
    return lines[-1]


def options_of(line: str) -> set[str]:
    return set(line.split()[5].split(","))


def optional_fields(line: str) -> list[str]:
    fields = line.split()
    return fields[6:fields.index("-")]


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# ---------------------------------------------------------------- bind mounts
def test_bind_read_only(bundle_factory, run_runtime, runtime_root, container_id, tmp_path):
    src = tmp_path / "data"
    src.mkdir()
    (src / "file").write_text("from-host\n")
    b = bundle_factory(
        args=["sh", "-c", "cat /data/file; touch /data/new; echo x >> /data/file;"
              " grep ' /data ' /proc/self/mountinfo"],
        mutate=with_mounts(mount_entry("/data", str(src), options=["bind", "ro"])))
    result = run_runtime("run", "--bundle", str(b), container_id, check=False)
    out = result.stdout.splitlines()
    assert out[0] == "from-host"
    assert "ro" in options_of(out[-1])
    assert result.stderr.count("Read-only file system") == 2, result.stderr
    assert sorted(p.name for p in src.iterdir()) == ["file"]
    assert (src / "file").read_text() == "from-host\n"
    assert_nothing_left(runtime_root, b, container_id)


def test_bind_read_write(bundle_factory, run_runtime, container_id, tmp_path):
    src = tmp_path / "data"
    src.mkdir()
    b = bundle_factory(args=["sh", "-c", "echo from-container > /data/new"],
                       mutate=with_mounts(mount_entry("/data", str(src), options=["rbind"])))
    run_runtime("run", "--bundle", str(b), container_id)
    assert (src / "new").read_text() == "from-container\n"


def test_bind_of_a_file(bundle_factory, run_runtime, container_id, tmp_path):
    src = tmp_path / "single.conf"
    src.write_text("conf\n")
    b = bundle_factory(args=["sh", "-c", "cat /etc/single.conf; stat -c %F /etc/single.conf"],
                       mutate=with_mounts(mount_entry("/etc/single.conf", str(src),
                                                      options=["bind", "ro"])))
    assert run_runtime("run", "--bundle", str(b), container_id).stdout == \
        "conf\nregular file\n"


@pytest.mark.parametrize(("option", "sees_submount"), [("bind", False), ("rbind", True)])
def test_rbind_includes_submounts(bundle_factory, run_runtime, container_id, tmp_path,
                                  option, sees_submount):
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "sub/underneath").write_text("hidden by the submount\n")
    with host_mounts() as made:
        host_mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(src / "sub"))
        made.append(str(src / "sub"))
        (src / "sub/on-submount").write_text("x\n")
        b = bundle_factory(args=["ls", "/tree/sub"],
                           mutate=with_mounts(mount_entry("/tree", str(src), options=[option])))
        listing = run_runtime("run", "--bundle", str(b), container_id).stdout.split()
    assert listing == (["on-submount"] if sees_submount else ["underneath"])


def test_bind_flags_nosuid_nodev_noexec(bundle_factory, run_runtime, container_id, tmp_path):
    src = tmp_path / "bin"
    src.mkdir()
    b = bundle_factory(
        args=["sh", "-c", "cp /bin/busybox /x/true && /x/true && echo exec-ok;"
              " grep ' /x ' /proc/self/mountinfo"],
        root__readonly=False,
        mutate=with_mounts(mount_entry("/x", str(src), options=["rbind", "nosuid", "nodev",
                                                                 "noexec"])))
    result = run_runtime("run", "--bundle", str(b), container_id, check=False)
    assert "exec-ok" not in result.stdout
    assert "Permission denied" in result.stderr
    assert {"nosuid", "nodev", "noexec"} <= options_of(result.stdout.splitlines()[-1])


# ---------------------------------------------------------------- tmpfs
def test_tmpfs_size_mode_and_flags(bundle_factory, run_runtime, container_id):
    script = ("stat -c %a /scratch; df -k /scratch | tail -1;"
              " grep ' /scratch ' /proc/self/mountinfo;"
              " dd if=/dev/zero of=/scratch/big bs=1024 count=2048 2>&1 | tail -1;"
              " cp /bin/busybox /scratch/true && /scratch/true && echo exec-ok")
    b = bundle_factory(args=["sh", "-c", script], mutate=with_mounts(mount_entry(
        "/scratch", "tmpfs", "tmpfs", ["size=1m", "mode=1770", "nosuid", "nodev", "noexec"])))
    result = run_runtime("run", "--bundle", str(b), container_id, check=False)
    lines = result.stdout.splitlines()
    assert lines[0] == "1770"
    assert lines[1].split()[1] == "1024", lines[1]  # total 1 MiB in 1k blocks
    assert {"nosuid", "nodev", "noexec"} <= options_of(lines[2])
    assert "tmpfs" in lines[2].split(" - ")[1]
    assert "No space left on device" in result.stdout + result.stderr
    assert "exec-ok" not in result.stdout


def test_tmpfs_without_noexec_can_exec(bundle_factory, run_runtime, container_id):
    """Control for the noexec checks above."""
    b = bundle_factory(args=["sh", "-c", "cp /bin/busybox /scratch/true && /scratch/true"
                             " && echo exec-ok"],
                       mutate=with_mounts(mount_entry("/scratch", "tmpfs", "tmpfs", ["size=4m"])))
    assert run_runtime("run", "--bundle", str(b), container_id).stdout == "exec-ok\n"


def test_tmpfs_is_not_visible_on_host(bundle_factory, run_runtime, container_id, tmp_path):
    b = bundle_factory(args=SLEEP, mutate=with_mounts(mount_entry("/scratch", "tmpfs", "tmpfs")))
    run_runtime("run", "--detach", "--bundle", str(b), container_id)
    run_runtime("exec", container_id, "touch", "/scratch/inside")
    assert not (b / "rootfs/scratch/inside").exists()
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()


# ---------------------------------------------------------------- propagation
@pytest.fixture
def shared_source(tmp_path) -> Iterator[Path]:
    """A host directory that is its own shared mount, so propagation can be observed."""
    src = tmp_path / "shared-src"
    src.mkdir()
    with host_mounts() as made:
        host_mount("--bind", str(src), str(src))
        made.append(str(src))
        host_mount("--make-shared", str(src))
        yield src
        # Anything the test mounted below it goes first.
        for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
            point = line.split()[4]
            if point.startswith(str(src) + "/"):
                subprocess.run(["umount", "-l", point], check=False, capture_output=True)


@pytest.mark.parametrize(("propagation", "receives", "field"),
                         [("rslave", True, "master:"), ("rshared", True, "shared:"),
                          ("rprivate", False, None)])
def test_bind_propagation_option(bundle_factory, run_runtime, container_id, shared_source,
                                 propagation, receives, field):
    """A host mount made below the source after the container started shows up in
    the container only for a slave or shared bind."""
    b = bundle_factory(args=SLEEP, mutate=with_mounts(
        mount_entry("/data", str(shared_source), options=["rbind", propagation])))
    run_runtime("run", "--detach", "--bundle", str(b), container_id)
    mountinfo = run_runtime("exec", container_id, "cat", "/proc/self/mountinfo").stdout
    fields = optional_fields(mountinfo_line(mountinfo, "/data"))
    if field is None:
        assert fields == [], fields
    else:
        assert any(f.startswith(field) for f in fields), fields
    late = shared_source / "late"
    late.mkdir()
    host_mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(late))
    (late / "marker").write_text("late\n")
    seen = run_runtime("exec", container_id, "sh", "-c", "cat /data/late/marker 2>/dev/null;"
                       " true").stdout
    assert (seen == "late\n") == receives, seen


def test_container_mounts_do_not_reach_host_by_default(bundle_factory, run_runtime,
                                                       container_id, shared_source):
    """Default propagation (rslave root): even with CAP_SYS_ADMIN, a mount the
    container makes below a bind of a shared host directory stays in the container."""
    def privileged(spec):
        for key in ("bounding", "effective", "permitted"):
            spec["process"]["capabilities"][key].append("CAP_SYS_ADMIN")
        spec["mounts"].append(mount_entry("/data", str(shared_source), options=["rbind"]))

    (shared_source / "inner").mkdir()
    b = bundle_factory(args=SLEEP, mutate=privileged)
    run_runtime("run", "--detach", "--bundle", str(b), container_id)
    run_runtime("exec", container_id, "mount", "-t", "tmpfs", "tmpfs", "/data/inner")
    assert str(shared_source / "inner") not in Path("/proc/self/mountinfo").read_text()


def test_bidirectional_bind(bundle_factory, run_runtime, container_id, shared_source):
    """Kubernetes' Bidirectional propagation: rootfsPropagation rshared plus an rshared
    bind.  A mount the container makes below the bind appears on the host."""
    def bidirectional(spec):
        for key in ("bounding", "effective", "permitted"):
            spec["process"]["capabilities"][key].append("CAP_SYS_ADMIN")
        spec["linux"]["rootfsPropagation"] = "rshared"
        spec["mounts"].append(mount_entry("/data", str(shared_source),
                                          options=["rbind", "rshared"]))

    (shared_source / "inner").mkdir()
    b = bundle_factory(args=SLEEP, mutate=bidirectional)
    run_runtime("run", "--detach", "--bundle", str(b), container_id)
    run_runtime("exec", container_id, "sh", "-c",
                "mount -t tmpfs tmpfs /data/inner && echo from-container > /data/inner/f")
    assert wait_for(lambda: (shared_source / "inner/f").exists())
    assert (shared_source / "inner/f").read_text() == "from-container\n"


@pytest.mark.parametrize(("rootfs_propagation", "receives", "field"),
                         [("rslave", True, "master:"), ("slave", True, "master:"),
                          ("private", False, None), ("rprivate", False, None),
                          ("shared", False, "shared:")])
def test_rootfs_propagation(bundle_factory, run_runtime, container_id, tmp_path,
                            rootfs_propagation, receives, field):
    """With the bundle on a shared host mount, linux.rootfsPropagation decides whether
    the container's / receives host mounts made later under the rootfs.  ("shared"
    makes / a peer group of the container's own, not a peer of the host's.)"""
    b = bundle_factory(args=SLEEP, linux__rootfsPropagation=rootfs_propagation)
    rootfs = b / "rootfs"
    (rootfs / "mnt").mkdir(exist_ok=True)
    with host_mounts() as made:
        host_mount("--bind", str(b), str(b))
        made.append(str(b))
        host_mount("--make-shared", str(b))
        run_runtime("run", "--detach", "--bundle", str(b), container_id)
        mountinfo = run_runtime("exec", container_id, "cat", "/proc/self/mountinfo").stdout
        fields = optional_fields(mountinfo_line(mountinfo, "/"))
        if field is None:
            assert fields == [], fields
        else:
            assert any(f.startswith(field) for f in fields), fields
        host_mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(rootfs / "mnt"))
        made.append(str(rootfs / "mnt"))
        (rootfs / "mnt/marker").write_text("late\n")
        seen = run_runtime("exec", container_id, "sh", "-c",
                           "cat /mnt/marker 2>/dev/null; true").stdout
        assert (seen == "late\n") == receives, seen
        run_runtime("delete", "--force", container_id)


# ---------------------------------------------------------------- devices
def test_linux_devices(bundle_factory, run_runtime, container_id):
    """linux.devices: nodes with their type, numbers, mode and owner, in nested dirs
    too; run as uid 1000 the owner and mode decide who may use them."""
    device = {"path": "/dev/mynull", "type": "c", "major": 1, "minor": 3,
              "fileMode": 0o640, "uid": 1000, "gid": 1000}
    nested = {"path": "/dev/sub/dir/myzero", "type": "c", "major": 1, "minor": 5,
              "fileMode": 0o600}
    fifo = {"path": "/dev/myfifo", "type": "p"}
    script = ("stat -c '%n %F %t:%T %a %u:%g' /dev/mynull /dev/sub/dir/myzero /dev/myfifo;"
              " echo data > /dev/mynull && echo wrote; head -c 3 /dev/sub/dir/myzero; true")
    b = bundle_factory(args=["sh", "-c", script],
                       process__user={"uid": 1000, "gid": 1000},
                       mutate=lambda s: s["linux"].update(devices=[device, nested, fifo]))
    result = run_runtime("run", "--bundle", str(b), container_id)
    lines = result.stdout.splitlines()
    assert lines[0] == "/dev/mynull character special file 1:3 640 1000:1000"
    assert lines[1] == "/dev/sub/dir/myzero character special file 1:5 600 0:0"
    assert lines[2].startswith("/dev/myfifo fifo ")
    assert lines[3:] == ["wrote"]  # uid 1000 owns mynull; myzero is root's, mode 600
    assert "/dev/sub/dir/myzero: Permission denied" in result.stderr, result.stderr


def test_default_devices_and_links(bundle_factory, run_runtime, container_id):
    script = ("for d in null zero full random urandom tty; do stat -c '%n %F %t:%T %a' /dev/$d;"
              " done; for l in fd stdin stdout stderr ptmx; do echo \"/dev/$l -> $(readlink /dev/$l)\";"
              " done; ls /dev; stat -f -c '%T' /dev /dev/pts /dev/shm")
    b = bundle_factory(args=["sh", "-c", script])
    out = run_runtime("run", "--bundle", str(b), container_id).stdout.splitlines()
    expected_nodes = {"null": "1:3", "zero": "1:5", "full": "1:7", "random": "1:8",
                      "urandom": "1:9", "tty": "5:0"}
    for line, (name, numbers) in zip(out[:6], expected_nodes.items(), strict=True):
        assert line == f"/dev/{name} character special file {numbers} 666", line
    links = dict(line.split(" -> ") for line in out[6:11])
    assert links == {"/dev/fd": "/proc/self/fd", "/dev/stdin": "/proc/self/fd/0",
                     "/dev/stdout": "/proc/self/fd/1", "/dev/stderr": "/proc/self/fd/2",
                     "/dev/ptmx": "pts/ptmx"}
    listing = set(out[11].split()) if len(out) == 15 else set(" ".join(out[11:-3]).split())
    # Nothing of the host's /dev beyond what the spec asks for.
    allowed = set(expected_nodes) | {"fd", "stdin", "stdout", "stderr", "ptmx", "pts", "shm",
                                     "mqueue", "core"}
    assert listing <= allowed, listing - allowed
    assert out[-3:] == ["tmpfs", "devpts", "tmpfs"]


def test_dev_nodes_not_usable_beyond_spec(bundle_factory, run_runtime, container_id):
    """The container cannot create a device node of its own (no CAP_MKNOD by default)."""
    b = bundle_factory(args=["sh", "-c", "mknod /dev/mem2 c 1 1 && echo made"])
    result = run_runtime("run", "--bundle", str(b), container_id, check=False)
    assert "made" not in result.stdout
    assert "Operation not permitted" in result.stderr


# ---------------------------------------------------------------- --no-pivot
def test_no_pivot_run(bundle_factory, run_runtime, runtime_root, container_id):
    script = ("cat /etc/hostname; ls /; grep -c . /proc/self/mountinfo;"
              " cut -d' ' -f5 /proc/self/mountinfo")
    b = bundle_factory(args=["sh", "-c", script])
    result = run_runtime("run", "--no-pivot", "--bundle", str(b), container_id)
    lines = result.stdout.splitlines()
    assert lines[0] == "nsbox"
    assert "bin" in lines[1:] or "bin" in " ".join(lines[1:3]).split()
    mount_points = lines[lines.index(next(x for x in lines if x.isdigit())) + 1:]
    # Only the container's own mounts are left: nothing of the host tree.
    assert mount_points[0] == "/", mount_points
    for point in mount_points:
        assert str(b) not in point and not point.startswith(("/work", "/tmp/pytest")), point
    assert_nothing_left(runtime_root, b, container_id)


def test_no_pivot_exec(bundle_factory, run_runtime, container_id):
    b = bundle_factory(args=SLEEP)
    run_runtime("run", "--detach", "--no-pivot", "--bundle", str(b), container_id)
    assert run_runtime("exec", container_id, "cat", "/etc/hostname").stdout == "nsbox\n"
    mountinfo = run_runtime("exec", container_id, "cat", "/proc/self/mountinfo").stdout
    points = [line.split()[4] for line in mountinfo.splitlines()]
    assert points[0] == "/" and not any(str(b) in p or p.startswith("/work") for p in points)


def test_mounts_gone_after_delete(bundle_factory, run_runtime, runtime_root, container_id,
                                  tmp_path):
    """Many mounts, then delete: the host's mount table shows none of them."""
    src = tmp_path / "src"
    src.mkdir()
    b = bundle_factory(args=SLEEP, mutate=with_mounts(
        mount_entry("/a", str(src), options=["rbind"]),
        mount_entry("/b", "tmpfs", "tmpfs"),
        mount_entry("/c/d/e", str(src), options=["bind", "ro"])))
    run_runtime("run", "--detach", "--bundle", str(b), container_id)
    mountinfo = run_runtime("exec", container_id, "cat", "/proc/self/mountinfo").stdout
    assert {"/a", "/b", "/c/d/e"} <= {line.split()[4] for line in mountinfo.splitlines()}
    run_runtime("delete", "--force", container_id)
    # (the host table is compared by path: other tests may mount concurrently)
    assert not any(str(tmp_path) in line
                   for line in Path("/proc/self/mountinfo").read_text().splitlines())
    assert_nothing_left(runtime_root, b, container_id)
    assert os.listdir(src) == []
