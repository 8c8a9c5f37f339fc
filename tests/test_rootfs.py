"""Tests for nsbox.runtime.rootfs: option parsing (pure) and real rootfs builds in a child.

Every build runs in a forked child that unshares a mount namespace, so the mounts die with
it.  To prove nothing propagates back, most builds run under a simulated host: an outer child
with its own mount namespace made rshared (like a systemd host), whose mount table is checked
after the inner "container" child exits.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from nsbox.errors import BundleError, ConfigError, SecurityError
from nsbox.runtime import syscalls as sc
from nsbox.runtime.rootfs import (
    PROC_SUPER_MAGIC,
    TMPFS_MAGIC,
    check_mount_sources,
    ensure_procfs,
    finalize_rootfs,
    parse_mount_options,
    prepare_rootfs,
)
from nsbox.runtime.spec import default_spec, parse_spec

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

BUSYBOX = "/bin/busybox"


# ---------------------------------------------------------------- pure logic
def test_parse_flags_and_data():
    opts = parse_mount_options(["nosuid", "noexec", "nodev", "mode=1777", "size=65536k", "ro"])
    assert opts.flags == sc.MS_NOSUID | sc.MS_NOEXEC | sc.MS_NODEV | sc.MS_RDONLY
    assert opts.data == "mode=1777,size=65536k"
    assert not opts.is_bind and opts.propagation == []


def test_parse_later_option_wins():
    opts = parse_mount_options(["ro", "rw", "nosuid", "suid", "noexec"])
    assert opts.flags == sc.MS_NOEXEC
    assert opts.clear_flags == sc.MS_RDONLY | sc.MS_NOSUID


def test_parse_bind_and_propagation():
    opts = parse_mount_options(["rbind", "ro", "rslave", "private"])
    assert opts.is_bind and opts.is_recursive_bind
    assert opts.flags == sc.MS_BIND | sc.MS_REC | sc.MS_RDONLY
    assert opts.propagation == [sc.MS_SLAVE | sc.MS_REC, sc.MS_PRIVATE]
    plain = parse_mount_options(["bind"])
    assert plain.is_bind and not plain.is_recursive_bind


def test_parse_every_flag_option():
    expected = {
        "dirsync": sc.MS_DIRSYNC, "remount": sc.MS_REMOUNT, "mand": sc.MS_MANDLOCK,
        "noatime": sc.MS_NOATIME, "nodiratime": sc.MS_NODIRATIME, "relatime": sc.MS_RELATIME,
        "strictatime": sc.MS_STRICTATIME, "nosymfollow": sc.MS_NOSYMFOLLOW,
        "sync": sc.MS_SYNCHRONOUS, "lazytime": sc.MS_LAZYTIME,
    }
    for option, flag in expected.items():
        assert parse_mount_options([option]).flags == flag, option
    assert parse_mount_options(["async"]).clear_flags == sc.MS_SYNCHRONOUS
    assert parse_mount_options(["norelatime"]).clear_flags == sc.MS_RELATIME
    assert parse_mount_options(["defaults", "x-systemd.automount"]).flags == 0
    assert parse_mount_options(["defaults", "x-systemd.automount"]).data == ""


def test_parse_recursive_and_special():
    opts = parse_mount_options(["rbind", "rro", "rnoexec", "rnoatime"])
    assert opts.recursive_set == (sc.MOUNT_ATTR_RDONLY | sc.MOUNT_ATTR_NOEXEC
                                  | sc.MOUNT_ATTR_NOATIME)
    assert opts.recursive_clear == sc.MOUNT_ATTR__ATIME
    assert parse_mount_options(["tmpcopyup"]).copy_up
    assert parse_mount_options(["idmap"]).idmap
    assert not parse_mount_options(["idmap"]).idmap_recursive
    assert parse_mount_options(["rbind", "ridmap"]).idmap_recursive
    devpts = parse_mount_options(["nosuid", "newinstance", "ptmxmode=0666", "gid=5"])
    assert devpts.data == "newinstance,ptmxmode=0666,gid=5"


def test_check_mount_sources(tmp_path):
    data = _spec_data(tmp_path)
    data["mounts"].append({"destination": "/data", "type": "bind", "source": "vol",
                           "options": ["rbind"]})
    spec = parse_spec(data)
    with pytest.raises(BundleError, match="mount source .*vol does not exist"):
        check_mount_sources(spec, bundle=str(tmp_path))
    (tmp_path / "vol").mkdir()
    check_mount_sources(spec, bundle=str(tmp_path))
    data["mounts"].append({"destination": "/", "type": "tmpfs", "source": "tmpfs"})
    with pytest.raises(ConfigError, match="a mount on / must be a bind mount"):
        check_mount_sources(parse_spec(data), bundle=str(tmp_path))
    data["mounts"][-1] = {"destination": "/", "type": "bind", "source": "vol"}
    check_mount_sources(parse_spec(data), bundle=str(tmp_path))
    # An idmapped mount needs mappings: its own or a container user namespace's.
    data["mounts"][-1] = {"destination": "/data", "type": "bind", "source": "vol",
                          "options": ["idmap"]}
    with pytest.raises(ConfigError, match="idmap needs uidMappings"):
        check_mount_sources(parse_spec(data), bundle=str(tmp_path))
    data["mounts"][-1]["uidMappings"] = [{"containerID": 0, "hostID": 1000, "size": 1}]
    with pytest.raises(ConfigError, match="both uidMappings and gidMappings"):
        check_mount_sources(parse_spec(data), bundle=str(tmp_path))
    data["mounts"][-1]["gidMappings"] = [{"containerID": 0, "hostID": 1000, "size": 1}]
    check_mount_sources(parse_spec(data), bundle=str(tmp_path))


# ---------------------------------------------------------------- child helpers
def _fork_json(fn: Callable[[], object]) -> dict:
    """Run FN in a forked child; returns {"ok": result} or {"error": class, "message": ...}."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            try:
                payload = {"ok": fn()}
            except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
                payload = {"error": type(exc).__name__, "message": str(exc),
                           "trace": traceback.format_exc()}
            os.write(write_fd, json.dumps(payload).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(b"".join(chunks) or b'{"error": "NoResult", "message": "child died"}')


def _mountpoints() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f]


def _under_shared_host(tmp_path: Path, inner: Callable[[], object]) -> dict:
    """Run INNER as a container child of a simulated host whose mounts are all rshared.

    Like /var/lib/<engine> on its own filesystem, tmp_path is a mount of its own, and so is
    tmp_path/vols when it exists (volumes on yet another filesystem).
    """
    def host() -> dict:
        sc.unshare(sc.CLONE_NEWNS)
        sc.mount(None, "/", None, sc.MS_SHARED | sc.MS_REC)
        for path in (tmp_path, tmp_path / "vols"):
            if path.is_dir():
                sc.mount(str(path), str(path), None, sc.MS_BIND)
                sc.mount(None, str(path), None, sc.MS_PRIVATE)  # a peer group of its own
                sc.mount(None, str(path), None, sc.MS_SHARED)
        before = _mountpoints()
        result = _fork_json(inner)
        after = _mountpoints()
        # Mounts that appeared (propagated from the container) or vanished (an unmount that
        # propagated, e.g. of the old root after pivot_root).
        result["leaked"] = sorted((Counter(after) - Counter(before)).elements())
        result["leaked"] += [f"lost {m}" for m in (Counter(before) - Counter(after)).elements()]
        return result

    outer = _fork_json(host)
    assert "ok" in outer, outer
    return outer["ok"]


def _container(unshare_flags: int, spec, rootfs: Path, checks: Callable[[], dict], **kwargs):
    def inner() -> dict:
        sc.unshare(unshare_flags)
        prepare_rootfs(spec, str(rootfs), **kwargs)
        finalize_rootfs(spec)
        return checks()
    return inner


def _spec_data(rootfs: Path, cgroup: bool = False) -> dict:
    data = default_spec()
    data["process"]["terminal"] = False
    data["root"]["path"] = str(rootfs)
    if not cgroup:
        data["mounts"] = [m for m in data["mounts"] if m["type"] != "cgroup"]
    return data


def _errno_of(fn: Callable[[], object]) -> int:
    try:
        fn()
    except OSError as exc:
        return exc.errno
    return 0


def _mkdir_probe(path: str) -> int:
    """errno of mkdir PATH (0 if it worked, and then the directory is removed again)."""
    try:
        os.mkdir(path)
    except OSError as exc:
        return exc.errno
    os.rmdir(path)
    return 0


def _write(path: str, data: bytes = b"x") -> None:
    with open(path, "wb") as f:
        f.write(data)


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in ("sh", "echo", "cat"):
        os.symlink("busybox", root / "bin" / applet)
    (root / "marker").write_text("this is the rootfs")
    return root


@pytest.fixture(autouse=True)
def _no_leaks_on_the_real_host(tmp_path: Path):
    yield
    assert not [m for m in _mountpoints() if m.startswith(str(tmp_path))]


# ---------------------------------------------------------------- the leak detector works
def test_simulated_host_sees_unslaved_mounts(tmp_path: Path):
    """Control: without prepare_rootfs, a child's mount does propagate to the shared host."""
    target = tmp_path / "target"
    target.mkdir()

    def inner() -> bool:
        sc.unshare(sc.CLONE_NEWNS)
        sc.mount("tmpfs", str(target), "tmpfs", 0)
        return True

    result = _under_shared_host(tmp_path, inner)
    assert result["leaked"] == [str(target)]


@pytest.mark.parametrize("no_pivot", [False, True], ids=["pivot", "no-pivot"])
def test_rshared_root_propagation(tmp_path: Path, rootfs: Path, no_pivot: bool):
    """rshared keeps the host peer groups, yet neither the switch of root nor the detach of
    host mounts may unmount anything on the host."""
    data = _spec_data(rootfs)
    data["linux"]["rootfsPropagation"] = "rshared"
    spec = parse_spec(data)

    def checks() -> dict:
        with open("/proc/self/mountinfo") as f:
            root = next(line.split() for line in f if line.split()[4] == "/")
        return {"marker": open("/marker").read(), "optional": root[6:root.index("-")]}

    result = _under_shared_host(tmp_path, _container(sc.CLONE_NEWNS, spec, rootfs, checks,
                                                     no_pivot=no_pivot))
    assert "ok" in result, result
    assert result["ok"]["marker"] == "this is the rootfs"
    assert any(o.startswith("shared:") for o in result["ok"]["optional"])
    assert result["leaked"] == []


# ---------------------------------------------------------------- full builds
def test_default_spec_rootfs(tmp_path: Path, rootfs: Path):
    hostvol = tmp_path / "hostvol"
    hostvol.mkdir()
    (tmp_path / "vols" / "rwvol" / "inner").mkdir(parents=True)
    (hostvol / "hello").write_text("from the host")
    os.symlink("/etc", rootfs / "etc_link")                      # absolute, host-looking
    # Climbs above the rootfs; if that escaped, it would land in tmp_path/outside.
    os.symlink("../" * 20 + str(tmp_path / "outside").lstrip("/"), rootfs / "up")
    (rootfs / "seeded").mkdir()
    (rootfs / "seeded" / "file").write_text("seed")
    data = _spec_data(rootfs)
    data["mounts"] += [
        {"destination": "/seeded", "type": "tmpfs", "source": "tmpfs", "options": ["tmpcopyup"]},
        # A tree with a submount, bound with recursive and with plain read-only.
        {"destination": "/tree/sub", "type": "tmpfs", "source": "tmpfs", "options": []},
        {"destination": "/rro", "type": "bind", "source": str(rootfs / "tree"),
         "options": ["rbind", "rro"]},
        {"destination": "/ro", "type": "bind", "source": str(rootfs / "tree"),
         "options": ["rbind", "ro"]},
        {"destination": "/vol", "type": "bind", "source": str(hostvol), "options": ["rbind", "ro"]},
        # The bind joins the host's peer group; the tmpfs under it must not reach the host.
        {"destination": "/rwvol", "type": "bind", "source": str(tmp_path / "vols" / "rwvol"),
         "options": ["rbind"]},
        {"destination": "/rwvol/inner", "type": "tmpfs", "source": "tmpfs", "options": []},
        {"destination": "/small", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]},
        {"destination": "/noexec", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "noexec", "size=4m"]},
        {"destination": "/etc_link", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]},
        {"destination": "/up/deeper", "type": "tmpfs", "source": "tmpfs", "options": []},
    ]
    # Masked paths that surely exist here (this kernel may lack /proc/kcore, /sys/firmware).
    data["linux"]["maskedPaths"] += ["/proc/version", "/sys/kernel"]
    data["linux"]["devices"] = [
        {"path": "/dev/mynull", "type": "c", "major": 1, "minor": 3, "fileMode": 0o600,
         "uid": 1234, "gid": 5678},
        {"path": "/dev/fifo0", "type": "p"},
    ]
    spec = parse_spec(data)
    host_view: dict = {}

    def before_pivot() -> None:
        # Still in the host's view of the tree: see where the symlinked mounts landed.
        host_view["rootfs_etc"] = sc.statfs(str(rootfs / "etc")).f_type
        host_view["host_etc"] = sc.statfs("/etc").f_type
        host_view["escape_inside"] = sc.statfs(f"{rootfs}/{tmp_path}/outside/deeper").f_type
        host_view["escape_outside"] = os.path.exists(tmp_path / "outside")
        host_view["hostvol_writable"] = _errno_of(lambda: _write(str(hostvol / "w")))

    def checks() -> dict:
        out: dict = dict(host_view)
        out["marker"] = open("/marker").read()
        out["proc"] = sc.statfs("/proc").f_type
        st = os.stat("/dev/null")
        out["null"] = [stat.S_ISCHR(st.st_mode), os.major(st.st_rdev), os.minor(st.st_rdev),
                       stat.S_IMODE(st.st_mode)]
        _write("/dev/null")
        out["devs"] = sorted(n for n in ("zero", "full", "random", "urandom", "tty")
                             if stat.S_ISCHR(os.stat(f"/dev/{n}").st_mode))
        st = os.stat("/dev/mynull")
        out["mynull"] = [stat.S_ISCHR(st.st_mode), os.minor(st.st_rdev),
                         stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid]
        out["fifo"] = stat.S_ISFIFO(os.stat("/dev/fifo0").st_mode)
        out["ptmx"] = os.readlink("/dev/ptmx")
        out["fd"] = os.readlink("/dev/fd")
        out["stderr"] = os.readlink("/dev/stderr")
        out["sys_mkdir"] = _mkdir_probe("/sys/nsbox-test")
        with open("/proc/version", "rb") as f:
            out["version"] = f.read(100).decode()
        out["version_is_null"] = os.stat("/proc/version").st_rdev == os.makedev(1, 3)
        if os.path.exists("/proc/kcore"):
            with open("/proc/kcore", "rb") as f:
                out["kcore"] = f.read(100).decode()
        out["core_link"] = os.path.islink("/dev/core") == os.path.exists("/proc/kcore")
        out["sys_kernel"] = os.listdir("/sys/kernel")
        out["sys_kernel_mkdir"] = _mkdir_probe("/sys/kernel/x")
        out["proc_sys"] = _errno_of(lambda: os.close(os.open("/proc/sys/kernel/hostname",
                                                             os.O_WRONLY)))
        out["root_write"] = _errno_of(lambda: _write("/x"))
        out["vol_read"] = open("/vol/hello").read()
        out["vol_write"] = _errno_of(lambda: _write("/vol/y"))
        out["small"] = _errno_of(lambda: _write("/small/big", b"\0" * (2 << 20)))
        shutil.copyfile("/bin/busybox", "/noexec/busybox")
        os.chmod("/noexec/busybox", 0o755)
        out["noexec"] = _errno_of(lambda: subprocess.run(["/noexec/busybox", "true"]))
        out["sh"] = subprocess.run(["/bin/sh", "-c", "echo ok"], capture_output=True).stdout.decode()
        out["etc"] = sc.statfs("/etc").f_type
        out["etc_link"] = os.readlink("/etc_link")
        out["seeded"] = [open("/seeded/file").read(), sc.statfs("/seeded").f_type]
        out["tree_writes"] = [_errno_of(lambda p=p: _write(p)) for p in
                              ("/rro/x", "/rro/sub/x", "/ro/x", "/ro/sub/x", "/tree/sub/y")]
        out["mountpoints"] = _mountpoints()
        return out

    result = _under_shared_host(tmp_path, _container(sc.CLONE_NEWNS, spec, rootfs, checks,
                                                     before_pivot=before_pivot))
    assert "ok" in result, result
    out = result["ok"]
    assert out["marker"] == "this is the rootfs"
    assert out["proc"] == PROC_SUPER_MAGIC
    assert out["null"] == [True, 1, 3, 0o666]
    assert out["devs"] == ["full", "random", "tty", "urandom", "zero"]
    assert out["mynull"] == [True, 3, 0o600, 1234, 5678]
    assert out["fifo"] is True
    assert out["ptmx"] == "pts/ptmx"
    assert out["fd"] == "/proc/self/fd" and out["stderr"] == "/proc/self/fd/2"
    assert out["sys_mkdir"] == errno.EROFS
    assert out["version"] == "" and out["version_is_null"]
    assert out.get("kcore", "") == ""
    assert out["core_link"]
    assert out["sys_kernel"] == [] and out["sys_kernel_mkdir"] == errno.EROFS
    assert out["proc_sys"] == errno.EROFS
    assert out["root_write"] == errno.EROFS
    assert out["vol_read"] == "from the host"
    assert out["vol_write"] == errno.EROFS
    assert out["hostvol_writable"] == 0
    assert out["small"] == errno.ENOSPC
    assert out["noexec"] == errno.EACCES
    assert out["sh"] == "ok\n"
    assert out["seeded"] == ["seed", TMPFS_MAGIC]
    # rro reaches the submount; plain ro (a remount) only the top of the bind.
    assert out["tree_writes"] == [errno.EROFS, errno.EROFS, errno.EROFS, 0, 0]
    # Symlinks in the image were followed inside the rootfs, never onto the host.
    assert out["etc"] == TMPFS_MAGIC and out["etc_link"] == "/etc"
    assert out["rootfs_etc"] == TMPFS_MAGIC and out["host_etc"] != TMPFS_MAGIC
    assert out["escape_inside"] == TMPFS_MAGIC and out["escape_outside"] is False
    assert {"/", "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/vol",
            "/small", "/etc", "/rwvol/inner"} <= set(out["mountpoints"])
    # The host still writes to the source of the read-only bind, and saw no mount.
    (hostvol / "after").write_text("still writable")
    assert result["leaked"] == []


def test_no_pivot(tmp_path: Path, rootfs: Path):
    spec = parse_spec(_spec_data(rootfs))

    def checks() -> dict:
        return {"marker": open("/marker").read(), "proc": sc.statfs("/proc").f_type,
                "null": stat.S_ISCHR(os.stat("/dev/null").st_mode),
                "parent": sorted(os.listdir("/..")), "root_write": _errno_of(lambda: _write("/x")),
                "sh": subprocess.run(["/bin/sh", "-c", "echo ok"],
                                     capture_output=True).stdout.decode()}

    result = _under_shared_host(tmp_path, _container(sc.CLONE_NEWNS, spec, rootfs, checks,
                                                     no_pivot=True))
    assert "ok" in result, result
    out = result["ok"]
    assert out["marker"] == "this is the rootfs"
    assert out["proc"] == PROC_SUPER_MAGIC and out["null"]
    assert "marker" in out["parent"]
    assert out["root_write"] == errno.EROFS
    assert out["sh"] == "ok\n"
    assert result["leaked"] == []


# ---------------------------------------------------------------- refusals
def _expect_error(tmp_path: Path, spec, rootfs: Path) -> dict:
    def inner() -> None:
        sc.unshare(sc.CLONE_NEWNS)
        prepare_rootfs(spec, str(rootfs))

    result = _fork_json(inner)
    assert "error" in result, result
    return result


def test_proc_symlink_is_refused(tmp_path: Path, rootfs: Path):
    (rootfs / "fakeproc").mkdir()
    os.symlink("/fakeproc", rootfs / "proc")
    result = _expect_error(tmp_path, parse_spec(_spec_data(rootfs)), rootfs)
    assert result["error"] == SecurityError.__name__
    assert "/proc" in result["message"]


def test_mount_into_procfs_is_refused(tmp_path: Path, rootfs: Path):
    os.symlink("/proc/sys/kernel", rootfs / "evil")
    data = _spec_data(rootfs)
    data["mounts"].append({"destination": "/evil", "type": "tmpfs", "source": "tmpfs"})
    result = _expect_error(tmp_path, parse_spec(data), rootfs)
    assert result["error"] == SecurityError.__name__
    assert "/evil" in result["message"]


def test_missing_bind_source(tmp_path: Path, rootfs: Path):
    data = _spec_data(rootfs)
    data["mounts"].append({"destination": "/data", "type": "bind",
                           "source": str(tmp_path / "missing"), "options": ["rbind"]})
    result = _expect_error(tmp_path, parse_spec(data), rootfs)
    assert result["error"] == BundleError.__name__
    assert result["message"] == f"mount source {tmp_path / 'missing'} does not exist"


def test_bad_tmpfs_option_names_destination(tmp_path: Path, rootfs: Path):
    data = _spec_data(rootfs)
    data["mounts"].append({"destination": "/bad", "type": "tmpfs", "source": "tmpfs",
                           "options": ["size=lots"]})
    result = _expect_error(tmp_path, parse_spec(data), rootfs)
    assert result["error"] == "KernelError"
    assert result["message"] == "mount tmpfs on /bad: Invalid argument"


def test_ensure_procfs(tmp_path: Path):
    ensure_procfs("/proc")
    with pytest.raises(SecurityError):
        ensure_procfs(str(tmp_path))
    os.symlink("/proc", tmp_path / "p")
    with pytest.raises(SecurityError):
        ensure_procfs(str(tmp_path / "p"))


# ---------------------------------------------------------------- cgroup mount
def _cgroup_checks() -> dict:
    pid = str(os.getpid())
    out = {}
    for name in sorted(os.listdir("/sys/fs/cgroup")):
        path = f"/sys/fs/cgroup/{name}"
        if os.path.islink(path):
            continue
        with open(f"{path}/cgroup.procs") as f:
            out[name] = {"member": pid in f.read().split(),
                         "mkdir": _mkdir_probe(f"{path}/nsbox-test")}
    out["top_mkdir"] = _mkdir_probe("/sys/fs/cgroup/nsbox-test")
    return out


def _expected_cgroup_dirs() -> set[str]:
    if sc.statfs("/sys/fs/cgroup").f_type == 0x63677270:
        return set()
    names = set()
    with open("/proc/self/cgroup") as f:
        for line in f:
            hid, controllers, _ = line.split(":", 2)
            names.add("unified" if hid == "0" else controllers.replace("name=", ""))
    return names


@pytest.mark.parametrize("cgroupns", [True, False], ids=["cgroupns", "host-cgroupns"])
def test_cgroup_mount(tmp_path: Path, rootfs: Path, cgroupns: bool):
    data = _spec_data(rootfs, cgroup=True)
    flags = sc.CLONE_NEWNS
    if cgroupns:
        flags |= sc.CLONE_NEWCGROUP
    else:
        data["linux"]["namespaces"] = [n for n in data["linux"]["namespaces"]
                                       if n["type"] != "cgroup"]
    spec = parse_spec(data)
    result = _under_shared_host(tmp_path, _container(flags, spec, rootfs, _cgroup_checks))
    assert "ok" in result, result
    out = result["ok"]
    expected = _expected_cgroup_dirs()
    if expected:  # v1 / hybrid host: one read-only directory per hierarchy
        assert set(out) - {"top_mkdir"} == expected
        assert out["top_mkdir"] == errno.EROFS
    for name, info in out.items():
        if name != "top_mkdir":
            assert info == {"member": True, "mkdir": errno.EROFS}, name
    assert result["leaked"] == []


# ---------------------------------------------------------------- user namespace
def test_devices_in_user_namespace_are_bind_mounted(tmp_path: Path, rootfs: Path):
    """Without CAP_MKNOD the default devices are the host's nodes bound onto empty files."""
    data = _spec_data(rootfs)
    data["mounts"] = [m for m in data["mounts"] if m["destination"] == "/dev"]
    data["linux"]["maskedPaths"] = []
    data["linux"]["readonlyPaths"] = []
    data["root"]["readonly"] = False
    spec = parse_spec(data)

    def inner() -> dict:
        sc.unshare(sc.CLONE_NEWUSER | sc.CLONE_NEWNS)
        _write("/proc/self/setgroups", b"deny")
        _write("/proc/self/uid_map", b"0 0 1")
        _write("/proc/self/gid_map", b"0 0 1")
        prepare_rootfs(spec, str(rootfs))
        finalize_rootfs(spec)
        st = os.stat("/dev/null")
        _write("/dev/null")
        with open("/dev/zero", "rb") as f:
            zeros = f.read(4)
        return {"null": [stat.S_ISCHR(st.st_mode), os.major(st.st_rdev), os.minor(st.st_rdev)],
                "zeros": zeros.hex(), "marker": open("/marker").read(),
                "mknod": _errno_of(lambda: os.mknod("/dev/n2", stat.S_IFCHR | 0o666,
                                                    os.makedev(1, 3)))}

    result = _under_shared_host(tmp_path, inner)
    assert "ok" in result, result
    out = result["ok"]
    assert out["mknod"] == errno.EPERM  # so the fallback was really exercised
    assert out["null"] == [True, 1, 3]
    assert out["zeros"] == "00000000"
    assert out["marker"] == "this is the rootfs"
    assert result["leaked"] == []
