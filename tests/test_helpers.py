"""The test fixtures themselves, checked against the real kernel and runc/crun.

If these fail, every runtime test built on them is suspect, so they check the
properties the other tests rely on: the rootfs really runs, bundles are
independent copies, cleanup really kills and unmounts.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import helpers
import pytest

from nsbox.runtime.spec import load_bundle_config


def test_busybox_rootfs_runs_under_chroot(busybox_rootfs: Path) -> None:
    out = subprocess.run(
        ["chroot", str(busybox_rootfs), "/bin/sh", "-c", "id -un; id -u user; id -g nobody; echo ok | cat"],
        capture_output=True, text=True, check=True, timeout=10,
    )
    assert out.stdout.split() == ["root", "1000", "65534", "ok"]


def test_busybox_rootfs_layout(busybox_rootfs: Path) -> None:
    busybox = busybox_rootfs / "bin" / "busybox"
    assert busybox.is_file() and not busybox.is_symlink()
    assert os.readlink(busybox_rootfs / "bin" / "sh") == "busybox"
    assert stat.S_IMODE((busybox_rootfs / "tmp").stat().st_mode) == 0o1777
    for sub in ("proc", "sys", "dev"):
        assert (busybox_rootfs / sub).is_dir()
    users = {line.split(":")[0]: line.split(":")[2]
             for line in (busybox_rootfs / "etc/passwd").read_text().splitlines()}
    assert users == {"root": "0", "user": "1000", "nobody": "65534"}
    groups = (busybox_rootfs / "etc/group").read_text()
    assert "nobody:x:65534:" in groups and "user:x:1000:" in groups


def test_bundle_is_an_independent_copy(bundle: Path, bundle_factory, busybox_rootfs: Path
                                       ) -> None:
    other = bundle_factory(name="other")
    (bundle / "rootfs" / "tmp" / "marker").write_text("x")
    assert not (other / "rootfs" / "tmp" / "marker").exists()
    assert not (busybox_rootfs / "tmp" / "marker").exists()
    assert (bundle / "rootfs/bin/busybox").stat().st_ino != \
        (busybox_rootfs / "bin/busybox").stat().st_ino


def test_bundle_config_is_parsed_by_nsbox(bundle: Path) -> None:
    spec, rootfs = load_bundle_config(str(bundle))
    assert rootfs == str((bundle / "rootfs").resolve())
    assert spec.process is not None
    assert spec.process.args == ["/bin/true"]
    assert spec.process.terminal is False


def test_make_bundle_overrides_and_mutate(tmp_path: Path, busybox_rootfs: Path) -> None:
    def drop_network(spec: dict) -> None:
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"]
                                       if n["type"] != "network"]

    bundle = helpers.make_bundle(tmp_path / "b", ["id"], rootfs_template=busybox_rootfs,
                                 hostname="box", process__cwd="/tmp", root__readonly=False,
                                 mutate=drop_network)
    config = json.loads((bundle / "config.json").read_text())
    assert config["hostname"] == "box"
    assert config["process"]["cwd"] == "/tmp"
    assert config["process"]["args"] == ["id"]
    assert config["root"]["readonly"] is False
    assert "network" not in {n["type"] for n in config["linux"]["namespaces"]}


def test_write_config_in_place_and_replacement(bundle: Path) -> None:
    helpers.write_config(bundle, lambda s: s["process"].update(args=["sh", "-c", "exit 3"]))
    assert helpers.read_config(bundle)["process"]["args"] == ["sh", "-c", "exit 3"]
    written = helpers.write_config(bundle, lambda s: {**s, "hostname": "replaced"})
    assert helpers.read_config(bundle) == written
    assert written["hostname"] == "replaced"


def test_runtime_prefix_uses_venv_script_and_private_root(runtime: list[str],
                                                          runtime_root: Path,
                                                          monkeypatch) -> None:
    monkeypatch.delenv("NSBOX_TEST_RUNTIME", raising=False)
    prefix = helpers.runtime_argv(runtime_root)
    assert prefix[1:] == ["--root", str(runtime_root)]
    assert Path(prefix[0]).name == "nsbox-runtime"
    assert ".pyenv/shims" not in prefix[0]
    # The command must run the interpreter of the venv it lives in: a script's
    # `#!` line names it; the compiled launcher (bin/launcher.c) embeds it.
    head = Path(prefix[0]).read_bytes()[:4096]
    if not head.startswith(b"\x7fELF"):
        first_line = head.split(b"\n", 1)[0].decode()
        assert first_line.startswith("#!") and ".pyenv/shims" not in first_line
    assert Path(prefix[0]).parent == Path(sys.prefix) / "bin"


def test_run_cli_reports_output_of_failures() -> None:
    with pytest.raises(helpers.RuntimeCommandError) as info:
        helpers.run_cli(["sh", "-c"], "echo out; echo oops >&2; exit 3")
    assert info.value.result.returncode == 3
    assert "oops" in str(info.value) and "out" in str(info.value)
    echoed = helpers.run_cli(["cat"], input="hello")
    assert echoed.stdout == "hello"
    raw = helpers.run_cli(["cat"], input=b"\x00\xff")
    assert raw.stdout == b"\x00\xff"


def test_root_of_refuses_prefix_without_root() -> None:
    assert helpers.root_of(["runc", "--root", "/x"]) == Path("/x")
    assert helpers.root_of(["runc", "--root=/y"]) == Path("/y")
    with pytest.raises(ValueError):
        helpers.root_of(["runc"])


def test_container_ids_are_unique() -> None:
    ids = {helpers.new_container_id() for _ in range(1000)}
    assert len(ids) == 1000


def test_mounts_under_sees_and_unmounts_a_real_mount(tmp_path: Path) -> None:
    # A space in the path checks the octal unescaping of /proc/self/mountinfo.
    target = tmp_path / "with space" / "m"
    target.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "nsbox-test", str(target)], check=True)
    try:
        assert helpers.mounts_under(tmp_path) == [str(target)]
        assert helpers.unmount_all_under(tmp_path) == [str(target)]
        assert helpers.mounts_under(tmp_path) == []
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True)


def test_own_cgroup_path_is_below_every_hierarchy() -> None:
    own = helpers.own_cgroup_path()
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        path = line.split(":", 2)[2].rstrip("/")
        assert (own + "/").startswith(path + "/")
    assert helpers.cgroups_path_under_own("x") == own.rstrip("/") + "/x"


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_runc_runs_the_bundle(bundle: Path, runc: str, tmp_path: Path,
                              container_id: str) -> None:
    helpers.write_config(bundle, lambda s: s["process"].update(
        args=["sh", "-c", "hostname; id -u; readlink /proc/self/ns/uts"]))
    out = helpers.run_cli([runc, "--root", str(tmp_path / "runc")], "run", "--bundle",
                          str(bundle), container_id)
    hostname, uid, uts = out.stdout.split()
    assert (hostname, uid) == ("nsbox", "0")
    assert uts != os.readlink("/proc/self/ns/uts")


def test_force_delete_all_kills_a_running_container(bundle: Path, runc: str, tmp_path: Path,
                                                    container_id: str,
                                                    register_runtime) -> None:
    prefix = register_runtime([runc, "--root", str(tmp_path / "runc")])
    helpers.write_config(bundle, lambda s: s["process"].update(args=["sleep", "1000"]))
    helpers.run_cli(prefix, "create", "--bundle", str(bundle), container_id)
    helpers.run_cli(prefix, "start", container_id)
    pid = json.loads(helpers.run_cli(prefix, "state", container_id).stdout)["pid"]
    assert _pid_alive(pid)
    assert helpers.list_container_ids(tmp_path / "runc") == [container_id]
    assert helpers.force_delete_all(prefix) == []
    assert not _pid_alive(pid)


def test_crun_runs_in_own_cgroup_without_unified(bundle: Path, crun: str, tmp_path: Path,
                                                 container_id: str) -> None:
    root = tmp_path / "crun"
    hierarchies = helpers.cgroup_hierarchies()
    own = helpers.own_cgroup_path().strip("/").split("/")
    # Which of our own path's levels exist before the run: only what the run
    # creates must be gone afterwards (other users may share the parents).
    existed = {h: h.joinpath(*own[:1]).exists() for h in hierarchies}
    with helpers.cgroup_under_own(container_id) as cgroups_path:
        def crun_compatible(spec: dict) -> None:
            spec["ociVersion"] = "1.0.2"  # Debian 12's crun 1.8 rejects 1.2.0
            spec["linux"]["cgroupsPath"] = cgroups_path
            spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"]
                                           if n["type"] != "cgroup"]
            spec["process"]["args"] = ["cat", "/proc/self/cgroup"]

        helpers.write_config(bundle, crun_compatible)
        argv = helpers.without_cgroup2_unified([crun, "--root", str(root)])
        out = helpers.run_cli(argv, "run", "--bundle", str(bundle), container_id)
        v1_paths = {line.split(":", 2)[1]: line.split(":", 2)[2]
                    for line in out.stdout.splitlines() if not line.startswith("0::")}
        assert v1_paths, out.stdout
        assert set(v1_paths.values()) == {cgroups_path}
    assert helpers.list_container_ids(root) == []
    parts = cgroups_path.strip("/").split("/")
    for hierarchy in hierarchies:
        assert not hierarchy.joinpath(*parts).exists()
    # The parents the runtime had to create in shallower hierarchies are gone too.
    for hierarchy in hierarchies:
        assert (hierarchy.joinpath(*own).exists() or existed[hierarchy]
                or not hierarchy.joinpath(*own[:1]).exists())


def test_without_cgroup2_unified_leaves_nothing_under_the_hidden_mount_point():
    """What the wrapped command makes below /sys/fs/cgroup/unified is removed, and its
    exit status comes through; what was there before stays."""
    import host_state

    if host_state.hidden_cgroup_dirs() is None:
        pytest.skip("/sys/fs/cgroup/unified is not a mount point here (not a hybrid host)")
    before = host_state.hidden_cgroup_dirs()
    made = "/sys/fs/cgroup/unified/nsbox-wrap-test/sub"
    proc = subprocess.run(helpers.without_cgroup2_unified(
        ["sh", "-c", f"mkdir -p {made} && echo 1 > {made}/cgroup.procs && exit 3"]),
        capture_output=True, text=True, timeout=30)
    assert proc.returncode == 3, proc.stderr
    assert host_state.hidden_cgroup_dirs() == before
