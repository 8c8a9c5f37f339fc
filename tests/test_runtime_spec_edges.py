"""The corners of the OCI runtime spec, through the `nsbox-runtime` CLI on the real kernel:
namespaces joined by path or inherited (the process still runs in root.path, the shared
mount table is left alone), a bind mount on /, a tmpfs taking its mount point's mode, bind
sources only the host's root can reach in a user-namespaced container, idmapped mounts, a
user namespace without mappings, and linux.devices in a user namespace."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helpers
import pytest
from helpers import wait_for
from runtime_leaks import assert_nothing_left

SIMPLE_MAP = [{"containerID": 0, "hostID": 100000, "size": 65536}]


def host_mounts(*below: Path) -> list[str]:
    """The mounts of this process's table that a container could change: "/" itself (its
    propagation too) and anything at or below the paths BELOW.  Other test sessions on the
    host mount and unmount elsewhere meanwhile."""
    with open("/proc/self/mountinfo") as f:
        lines = f.read().splitlines()
    bases = [str(p) for p in below]
    return sorted(line for line in lines
                  if line.split()[4] == "/"
                  or any(line.split()[4] == b or line.split()[4].startswith(b + "/")
                         for b in bases))


def no_mount_namespace(spec: dict, joins: dict[str, str] | None = None) -> None:
    """No new mount namespace (joined when JOINS has "mount"), and nothing that needs one."""
    spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"]
                                   if n["type"] != "mount"]
    for ns_type, path in (joins or {}).items():
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"]
                                       if n["type"] != ns_type]
        spec["linux"]["namespaces"].append({"type": ns_type, "path": path})
    spec["mounts"] = []
    spec["linux"]["maskedPaths"] = []
    spec["linux"]["readonlyPaths"] = []
    spec["root"]["readonly"] = False


@pytest.fixture
def holder() -> Iterator[Callable[..., subprocess.Popen]]:
    """holder("--mount", ...) -> a `sleep` in new namespaces made by unshare(1), killed after."""
    procs: list[subprocess.Popen] = []

    def start(*flags: str) -> subprocess.Popen:
        proc = subprocess.Popen(["unshare", *flags, "sleep", "120"])
        procs.append(proc)
        wait_for(lambda: os.readlink(f"/proc/{proc.pid}/exe").endswith("sleep"))
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.fixture
def open_bundle_factory(busybox_rootfs: Path) -> Iterator[Callable[..., Path]]:
    """Bundles in a directory any user may traverse (pytest's tmp_path is 0700), for
    containers whose root is an unprivileged host id."""
    base = Path(tempfile.mkdtemp(prefix="nsbox-edges-"))
    base.chmod(0o755)
    made: list[Path] = []

    def factory(args: list[str], name: str | None = None, **overrides: Any) -> Path:
        path = base / (name or f"bundle{len(made) + 1}")
        made.append(path)
        return helpers.make_bundle(path, args, rootfs_template=busybox_rootfs, **overrides)

    yield factory
    leaked = helpers.unmount_all_under(base)
    shutil.rmtree(base, ignore_errors=True)
    assert not leaked, f"mounts leaked below {base}: {leaked}"


def userns(spec: dict, mappings: list[dict] | None = SIMPLE_MAP) -> None:
    """A new user namespace (MAPPINGS for both ids, or none) with mounts it can make."""
    spec["linux"]["namespaces"].append({"type": "user"})
    if mappings is not None:
        spec["linux"]["uidMappings"] = mappings
        spec["linux"]["gidMappings"] = mappings
    spec["linux"].pop("resources", None)
    spec["mounts"] = [m for m in spec["mounts"]
                      if m["destination"] not in ("/sys", "/sys/fs/cgroup")]
    for m in spec["mounts"]:
        if m["destination"] == "/dev/pts":
            m["options"] = [o for o in m["options"] if o != "gid=5"]


# ---------------------------------------------------------------- 1. namespaces
def test_joined_mount_namespace_runs_in_root_path(bundle_factory, run_runtime, container_id,
                                                  holder):
    """A mount namespace joined by path (here unshare's copy of ours): the process is in it,
    in root.path, and neither that mount table nor ours changes."""
    mnt = holder("--mount", "--propagation", "private")
    b = bundle_factory(["sh", "-c", "cat /marker; hostname"], hostname="joined-uts",
                       mutate=lambda s: no_mount_namespace(s, {"mount": f"/proc/{mnt.pid}/ns/mnt"}))
    (b / "rootfs" / "marker").write_text("in root.path\n")
    before_host, before_joined = host_mounts(b), Path(f"/proc/{mnt.pid}/mountinfo").read_text()
    result = run_runtime("run", "--bundle", str(b), container_id)
    assert result.stdout == "in root.path\njoined-uts\n"
    assert host_mounts(b) == before_host
    assert Path(f"/proc/{mnt.pid}/mountinfo").read_text() == before_joined


def test_hostname_in_a_uts_namespace_joined_by_path(bundle_factory, run_runtime, container_id,
                                                    holder):
    """runc sets the hostname in a uts namespace joined by path; so does nsbox."""
    uts = holder("--uts")

    def mutate(spec: dict) -> None:
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"]
                                       if n["type"] != "uts"]
        spec["linux"]["namespaces"].append({"type": "uts", "path": f"/proc/{uts.pid}/ns/uts"})

    b = bundle_factory(["hostname"], hostname="given-by-spec", mutate=mutate)
    assert run_runtime("run", "--bundle", str(b), container_id).stdout == "given-by-spec\n"
    out = subprocess.run(["nsenter", "-t", str(uts.pid), "-u", "hostname"], check=True,
                         capture_output=True, text=True).stdout
    assert out == "given-by-spec\n"
    assert os.uname().nodename != "given-by-spec"


def test_inherited_mount_namespace_runs_in_root_path(bundle_factory, run_runtime,
                                                     runtime_root, container_id):
    """No mount namespace listed: the runtime's own is inherited, the process is chrooted
    into root.path, and the host's mount table does not change (runc and crun leave the
    config's mounts behind on it; nsbox refuses them, below)."""
    b = bundle_factory(["sh", "-c", "cat /marker; ls /proc | wc -l"],
                       mutate=no_mount_namespace)
    (b / "rootfs" / "marker").write_text("chrooted\n")
    before = host_mounts(b)
    result = run_runtime("run", "--bundle", str(b), container_id)
    assert result.stdout.splitlines() == ["chrooted", "0"]  # the rootfs's empty /proc
    assert host_mounts(b) == before
    assert_nothing_left(runtime_root, b, container_id)


def test_exec_without_a_mount_namespace_shares_the_inits_root(bundle_factory, run_runtime,
                                                              container_id, holder):
    mnt = holder("--mount", "--propagation", "private")
    for joins in ({}, {"mount": f"/proc/{mnt.pid}/ns/mnt"}):
        b = bundle_factory(["sleep", "30"], mutate=lambda s, j=joins: no_mount_namespace(s, j))
        (b / "rootfs" / "marker").write_text(f"exec {sorted(joins)}\n")
        run_runtime("run", "--detach", "--bundle", str(b), container_id)
        out = run_runtime("exec", container_id, "cat", "/marker").stdout
        run_runtime("delete", "--force", container_id)
        assert out == f"exec {sorted(joins)}\n"


@pytest.mark.parametrize("field", ["mounts", "linux.maskedPaths", "root.readonly",
                                   "linux.devices"])
def test_without_a_mount_namespace_mount_changes_are_refused(bundle_factory, run_runtime,
                                                             runtime_root, container_id, field):
    def mutate(spec: dict) -> None:
        no_mount_namespace(spec)
        if field == "mounts":
            spec["mounts"] = [{"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}]
        elif field == "linux.maskedPaths":
            spec["linux"]["maskedPaths"] = ["/proc/kcore"]
        elif field == "root.readonly":
            spec["root"]["readonly"] = True
        else:
            spec["linux"]["devices"] = [{"path": "/dev/mynull", "type": "c", "major": 1,
                                         "minor": 3}]

    b = bundle_factory(["true"], mutate=mutate)
    before = host_mounts(b)
    result = run_runtime("run", "--bundle", str(b), container_id, check=False)
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"{field} needs a new mount namespace" in result.stderr
    assert host_mounts(b) == before
    assert_nothing_left(runtime_root, b, container_id)


# ---------------------------------------------------------------- 2. mounts
def test_bind_mount_on_root(bundle_factory, run_runtime, container_id, busybox_rootfs,
                            tmp_path):
    """A bind mount whose destination is /: it covers the rootfs, later mounts go on it."""
    other = helpers.copy_rootfs(busybox_rootfs, tmp_path / "other-root")
    (other / "marker").write_text("the bound root\n")

    def mutate(spec: dict) -> None:
        spec["mounts"].insert(0, {"destination": "/", "type": "bind", "source": str(other),
                                  "options": ["rbind", "rw"]})

    b = bundle_factory(["sh", "-c", "cat /marker; stat -f -c %T /proc; touch /new"],
                       root__readonly=False, mutate=mutate)
    result = run_runtime("run", "--bundle", str(b), container_id)
    assert result.stdout == "the bound root\nproc\n"
    assert (other / "new").exists() and not (b / "rootfs" / "new").exists()


def test_tmpfs_without_mode_takes_the_mount_points_mode(bundle_factory, run_runtime,
                                                        container_id):
    def mutate(spec: dict) -> None:
        spec["mounts"] += [{"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
                            "options": ["size=1m"]},
                           {"destination": "/explicit", "type": "tmpfs", "source": "tmpfs",
                            "options": ["mode=1777"]},
                           {"destination": "/fresh", "type": "tmpfs", "source": "tmpfs"}]

    b = bundle_factory(["sh", "-c", "stat -c '%n %a' /scratch /explicit /fresh"], mutate=mutate)
    for name in ("scratch", "explicit"):
        (b / "rootfs" / name).mkdir()
        (b / "rootfs" / name).chmod(0o712)
    result = run_runtime("run", "--bundle", str(b), container_id)
    # A mount point the mount creates has nothing to keep: the tmpfs default.
    assert result.stdout.splitlines() == ["/scratch 712", "/explicit 1777", "/fresh 1777"]


def test_bind_source_only_root_can_reach_in_a_user_namespace(open_bundle_factory, run_runtime,
                                                            container_id, tmp_path):
    """The source lies below a mode-000 directory: the container's root (host uid 100000)
    could not reach it, the runtime takes it before entering the user namespace."""
    locked = tmp_path / "locked"
    (locked / "src").mkdir(parents=True)
    (locked / "src" / "file").write_text("reached\n")
    (locked / "src" / "file").chmod(0o644)
    file_source = locked / "single"
    file_source.write_text("a file\n")
    file_source.chmod(0o644)
    locked.chmod(0o000)

    def mutate(spec: dict) -> None:
        userns(spec)
        spec["mounts"] += [{"destination": "/data", "type": "bind", "source": str(locked / "src"),
                            "options": ["rbind", "ro"]},
                           {"destination": "/one", "type": "bind", "source": str(file_source),
                            "options": ["bind"]}]

    b = open_bundle_factory(["sh", "-c", "cat /data/file /one; touch /data/x"], mutate=mutate)
    (b / "rootfs" / "data").mkdir()  # the container's root may not create it: host root owns /
    (b / "rootfs" / "one").write_text("")
    before = host_mounts(b, tmp_path)
    result = run_runtime("run", "--bundle", str(b), container_id, check=False)
    locked.chmod(0o755)
    assert result.stdout == "reached\na file\n", result.stderr
    assert "Read-only file system" in result.stderr
    assert host_mounts(b, tmp_path) == before


def test_reachable_bind_source_keeps_its_locked_flags_in_a_user_namespace(
        open_bundle_factory, run_runtime, container_id):
    """A source the container's root can reach is bound by path, so the kernel locks the
    read-only flag of the host mount it copies: even with CAP_SYS_ADMIN the container
    cannot remount it read-write."""
    base = Path(tempfile.mkdtemp(prefix="nsbox-locked-"))
    base.chmod(0o755)
    (base / "fs").mkdir()
    (base / "ro").mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=777", "tmpfs", str(base / "fs")],
                       check=True)
        subprocess.run(["mount", "--bind", "-o", "ro", str(base / "fs"), str(base / "ro")],
                       check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(base / "ro")], check=True)

        def mutate(spec: dict) -> None:
            userns(spec)
            for kind in ("bounding", "effective", "permitted"):
                spec["process"]["capabilities"][kind].append("CAP_SYS_ADMIN")
            spec["mounts"].append({"destination": "/ro", "type": "bind",
                                   "source": str(base / "ro"), "options": ["bind"]})

        b = open_bundle_factory(["sh", "-c", "mount -o remount,bind,rw /ro && echo remounted;"
                                             " touch /ro/x && echo wrote; true"], mutate=mutate)
        (b / "rootfs" / "ro").mkdir()
        result = run_runtime("run", "--bundle", str(b), container_id)
        assert "remounted" not in result.stdout and "wrote" not in result.stdout, result
        assert not (base / "fs" / "x").exists()
    finally:
        subprocess.run(["umount", str(base / "ro")], check=False)
        subprocess.run(["umount", str(base / "fs")], check=False)
        shutil.rmtree(base, ignore_errors=True)


def test_idmapped_mount_with_its_own_mappings(bundle_factory, run_runtime, container_id,
                                              tmp_path):
    """No user namespace: uidMappings/gidMappings on the mount show the source's ids
    0 and 1000 as 5000 and 6000 in the container."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "root-owned").write_text("")
    (src / "user-owned").write_text("")
    os.chown(src / "user-owned", 1000, 1000)
    mount = {"destination": "/mapped", "type": "bind", "source": str(src),
             "options": ["bind", "idmap"],
             "uidMappings": [{"containerID": 0, "hostID": 5000, "size": 1},
                             {"containerID": 1000, "hostID": 6000, "size": 1}],
             "gidMappings": [{"containerID": 0, "hostID": 5000, "size": 1},
                             {"containerID": 1000, "hostID": 6000, "size": 1}]}
    b = bundle_factory(["sh", "-c", "stat -c '%n %u:%g' /mapped/root-owned /mapped/user-owned"],
                       mutate=lambda s: s["mounts"].append(mount))
    result = run_runtime("run", "--bundle", str(b), container_id)
    assert result.stdout.splitlines() == ["/mapped/root-owned 5000:5000",
                                          "/mapped/user-owned 6000:6000"]
    assert os.stat(src / "user-owned").st_uid == 1000  # the source itself is untouched


@pytest.mark.parametrize("option", ["idmap", "ridmap"])
def test_idmapped_mount_with_the_containers_user_namespace(open_bundle_factory, run_runtime,
                                                           container_id, tmp_path, option):
    """idmap without mappings on the mount: the container's own.  Files owned by host root
    show as the container's root, and what it writes lands as host root, not 100000."""
    src = tmp_path / "vol"
    (src / "sub").mkdir(parents=True)
    (src / "owned").write_text("")
    os.chown(src / "sub", 1000, 1000)
    tmp_path.chmod(0o755)

    def mutate(spec: dict) -> None:
        userns(spec)
        spec["mounts"].append({"destination": "/vol", "type": "bind", "source": str(src),
                               "options": ["rbind", option]})

    b = open_bundle_factory(["sh", "-c", "stat -c '%n %u:%g' /vol/owned /vol/sub;"
                                         " touch /vol/written"], mutate=mutate)
    (b / "rootfs" / "vol").mkdir()
    result = run_runtime("run", "--bundle", str(b), container_id)
    assert result.stdout.splitlines() == ["/vol/owned 0:0", "/vol/sub 1000:1000"]
    st = os.stat(src / "written")
    assert (st.st_uid, st.st_gid) == (0, 0)


def test_idmap_without_mappings_or_user_namespace_is_refused(bundle_factory, run_runtime,
                                                             runtime_root, container_id,
                                                             tmp_path):
    b = bundle_factory(["true"], mutate=lambda s: s["mounts"].append(
        {"destination": "/vol", "type": "bind", "source": str(tmp_path), "options": ["idmap"]}))
    result = run_runtime("run", "--bundle", str(b), container_id, check=False)
    assert result.returncode != 0
    assert "idmap needs uidMappings/gidMappings" in result.stderr
    assert_nothing_left(runtime_root, b, container_id)


# ---------------------------------------------------------------- 3. user namespace, unmapped
def test_user_namespace_without_mappings_runs_unmapped(open_bundle_factory, run_runtime,
                                                       container_id):
    """Every id is the overflow id; the usual mount options still work.  Nothing can create
    files on a filesystem mounted inside (no mapped fsuid), so /dev is the rootfs's own."""
    def mutate(spec: dict) -> None:
        userns(spec, mappings=None)
        spec["mounts"] = [
            {"destination": "/proc", "type": "bind", "source": "/proc", "options": ["rbind"]},
            {"destination": "/t1", "type": "tmpfs", "source": "tmpfs",
             "options": ["ro", "nodev", "relatime", "size=1m"]},
            {"destination": "/t2", "type": "tmpfs", "source": "tmpfs",
             "options": ["rw", "sync", "dirsync", "nosuid", "size=2m"]}]
        spec["linux"]["maskedPaths"] = []
        spec["linux"]["readonlyPaths"] = []
        spec["root"]["readonly"] = False

    script = ("id -u; id -g; cat /proc/self/uid_map | wc -l;"
              " grep -E ' /t[12] ' /proc/self/mountinfo | cut -d' ' -f5,6,10")
    b = open_bundle_factory(["sh", "-c", script], mutate=mutate)
    lines = run_runtime("run", "--bundle", str(b), container_id).stdout.splitlines()
    assert lines[:3] == ["65534", "65534", "0"]
    t1, t2 = (line.split() for line in lines[3:])
    assert t1[0] == "/t1" and {"ro", "nodev", "relatime"} <= set(t1[1].split(","))
    assert "size=1024k" in t1[2].split(",")
    assert t2[0] == "/t2" and {"rw", "nosuid"} <= set(t2[1].split(","))
    assert {"sync", "dirsync", "size=2048k"} <= set(t2[2].split(","))  # superblock options


def test_user_namespace_without_mappings_refuses_another_user(open_bundle_factory,
                                                              run_runtime, container_id):
    def mutate(spec: dict) -> None:
        userns(spec, mappings=None)
        spec["mounts"] = []
        spec["linux"]["maskedPaths"] = spec["linux"]["readonlyPaths"] = []
        spec["root"]["readonly"] = False
        spec["process"]["user"] = {"uid": 1000, "gid": 1000}

    b = open_bundle_factory(["true"], mutate=mutate)
    result = run_runtime("run", "--bundle", str(b), container_id, check=False)
    assert result.returncode != 0
    assert "switch to uid 1000" in result.stderr


# ---------------------------------------------------------------- 4. devices
def test_devices_get_mode_and_owner(bundle_factory, run_runtime, container_id):
    devices = [{"path": "/dev/owned", "type": "c", "major": 1, "minor": 5,
                "fileMode": 0o604, "uid": 1234, "gid": 4321},
               {"path": "/dev/blk", "type": "b", "major": 7, "minor": 0, "fileMode": 0o600,
                "uid": 0, "gid": 6}]
    b = bundle_factory(["sh", "-c", "stat -c '%n %F %a %u:%g %t:%T' /dev/owned /dev/blk"],
                       mutate=lambda s: s["linux"].update(devices=devices))
    assert run_runtime("run", "--bundle", str(b), container_id).stdout.splitlines() == [
        "/dev/owned character special file 604 1234:4321 1:5",
        "/dev/blk block special file 600 0:6 7:0"]


def test_devices_in_a_user_namespace_are_bound_nosuid_noexec(open_bundle_factory,
                                                             run_runtime, container_id):
    devices = [{"path": "/dev/full", "type": "c", "major": 1, "minor": 7}]
    b = open_bundle_factory(["sh", "-c", "grep -E ' /dev/(null|full) ' /proc/self/mountinfo"
                                         " | cut -d' ' -f5,6"],
                            mutate=lambda s: userns(s) or s["linux"].update(devices=devices))
    lines = run_runtime("run", "--bundle", str(b), container_id).stdout.splitlines()
    assert len(lines) == 2, lines
    for line in lines:
        assert {"nosuid", "noexec"} <= set(line.split()[1].split(",")), line


def test_device_missing_on_the_host_in_a_user_namespace(open_bundle_factory, run_runtime,
                                                        runtime_root, container_id):
    devices = [{"path": "/dev/nsbox-no-such-node", "type": "c", "major": 1, "minor": 3}]
    b = open_bundle_factory(["true"],
                            mutate=lambda s: userns(s) or s["linux"].update(devices=devices))
    result = run_runtime("run", "--bundle", str(b), container_id, check=False)
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1, result.stderr
    assert "/dev/nsbox-no-such-node" in result.stderr and "user namespace" in result.stderr
    assert_nothing_left(runtime_root, b, container_id)
