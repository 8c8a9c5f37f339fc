"""Where container cgroups go: absolute paths from the root, controllers enabled
top-down, precise refusals, the systemd driver's parsing and D-Bus message, and
the engine's cgroupsPath (--cgroup-parent, --cgroup-manager, the v2 default).

No cgroup is created here: the cgroup2 trees are fake directories in tmp_path
(enable_controllers only reads and writes cgroup.controllers /
cgroup.subtree_control), and the kernel's EBUSY is simulated.  The real thing
runs in the qemu cgroup v2 lane (tests/test_cgroups_v2_placement.py).
"""

from __future__ import annotations

import errno
import os

import pytest
from helpers import skip_or_fail

from nsbox.errors import ConfigError, KernelError, UnsupportedError
from nsbox.runtime import cgroups
from nsbox.runtime.cgroups import UNIFIED, systemd, v2


def _tree(tmp_path, layout: dict[str, tuple[str, str, str]]):
    """Fake cgroup2 directories: rel -> (controllers, subtree_control, procs)."""
    for rel, (controllers, subtree, procs) in layout.items():
        d = tmp_path / rel if rel else tmp_path
        d.mkdir(parents=True, exist_ok=True)
        (d / "cgroup.controllers").write_text(controllers + "\n")
        (d / "cgroup.subtree_control").write_text(subtree + "\n")
        (d / "cgroup.procs").write_text(procs)
        if rel:
            (d / "cgroup.type").write_text("domain\n")


WRITES: list[tuple[str, str]] = []  # (directory relative to the fake root, value) per write


@pytest.fixture
def fake_v2(tmp_path, monkeypatch):
    """A login-shell-like tree: the caller sits in user.slice/session.scope, which holds
    processes and delegates nothing; the root offers everything."""
    _tree(tmp_path, {
        "": ("cpuset cpu io memory hugetlb pids", "cpu io memory pids", "1\n"),
        "user.slice": ("cpu io memory pids", "memory pids", ""),
        "user.slice/session.scope": ("memory pids", "", "100\n101\n"),
    })
    own = str(tmp_path / "user.slice/session.scope")
    monkeypatch.setattr(v2, "own_dir", lambda: own)
    monkeypatch.setattr(v2, "root_dir", lambda path: str(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    writes = WRITES
    writes.clear()

    def write(path, value):  # cgroupfs takes "+x" and lists "x": record, then write it as is
        writes.append((os.path.relpath(os.path.dirname(path), tmp_path), value))
        with open(path, "w") as f:
            f.write(value)

    monkeypatch.setattr(v2._files, "write", write)
    return tmp_path


def test_absolute_path_outside_our_cgroup_climbs_to_the_root(fake_v2):
    assert v2.climb_limit(str(fake_v2 / "nsbox/c1")) == str(fake_v2)
    assert v2.available_controllers(str(fake_v2 / "nsbox/c1")) == {
        "cpuset", "cpu", "io", "memory", "hugetlb", "pids"}
    # Below our own cgroup (a relative cgroupsPath): never above it.
    own = str(fake_v2 / "user.slice/session.scope")
    assert v2.climb_limit(own + "/c1") == own
    assert v2.available_controllers(own + "/c1") == {"memory", "pids"}


def test_controllers_are_enabled_top_down_from_the_root(fake_v2):
    (fake_v2 / "nsbox/c1").mkdir(parents=True)
    for d, controllers in (("nsbox", "cpu io memory pids"), ("nsbox/c1", "cpu io")):
        (fake_v2 / d / "cgroup.controllers").write_text(controllers + "\n")
        (fake_v2 / d / "cgroup.subtree_control").write_text("\n")
        (fake_v2 / d / "cgroup.type").write_text("domain\n")
        (fake_v2 / d / "cgroup.procs").write_text("")
    v2.enable_controllers(str(fake_v2 / "nsbox/c1"), {"memory", "pids", "hugetlb"}, strict=False)
    # The root first (only what it lacks), then each ancestor down to the parent.
    assert WRITES == [(".", "+hugetlb"), ("nsbox", "+hugetlb +memory +pids")]


def test_an_intermediate_cgroup_with_processes_is_named(fake_v2, monkeypatch):
    own = fake_v2 / "user.slice/session.scope"
    (own / "c1").mkdir()
    (own / "c1/cgroup.controllers").write_text("pids\n")
    (own / "c1/cgroup.type").write_text("domain\n")
    real_write = v2._files.write  # the fixture's recorder

    def write(path, value):
        if os.path.dirname(path) == str(own):
            raise OSError(errno.EBUSY, "Device or resource busy")
        return real_write(path, value)

    monkeypatch.setattr(v2._files, "write", write)
    with pytest.raises(KernelError) as info:
        v2.enable_controllers(str(own / "c1"), {"memory"})
    text = str(info.value)
    assert f"cannot enable memory in {own}: it holds 2 processes (pid 100 101)" in text
    assert "no-internal-process rule" in text
    assert "caller's own cgroup" in text and "absolute cgroupsPath" in text


def test_unavailable_reasons_tell_absent_from_not_delegated(fake_v2):
    own = str(fake_v2 / "user.slice/session.scope")
    absent = v2.unavailable_reason(own + "/c1", "rdma")
    assert "the kernel offers no rdma controller" in absent
    assert os.path.join(str(fake_v2), "cgroup.controllers") in absent
    hidden = v2.unavailable_reason(own + "/c1", "cpu")
    assert "available at the cgroup v2 root but not delegated to" in hidden
    assert own in hidden and "absolute cgroupsPath" in hidden
    with pytest.raises(UnsupportedError, match="not delegated"):
        v2.enable_controllers(_leaf(own), {"cpu"})


def _leaf(own: str) -> str:
    os.makedirs(os.path.join(own, "leaf"), exist_ok=True)
    for name, text in (("cgroup.controllers", "memory pids\n"), ("cgroup.type", "domain\n"),
                       ("cgroup.subtree_control", "\n")):
        with open(os.path.join(own, "leaf", name), "w") as f:
            f.write(text)
    return os.path.join(own, "leaf")


def test_planner_refusal_says_what_is_missing(fake_v2):
    from nsbox.runtime.cgroups import resources as res

    own = str(fake_v2 / "user.slice/session.scope")
    layout = res.Layout({UNIFIED: own + "/c1"})
    with pytest.raises(UnsupportedError) as info:
        res.plan({"cpu": {"shares": 512}}, layout)
    assert "linux.resources.cpu" in str(info.value)
    assert "not delegated" in str(info.value) and "has no cpu" not in str(info.value)
    with pytest.raises(UnsupportedError, match="the kernel offers no rdma"):
        res.plan({"rdma": {"mlx5_0": {"hcaHandles": 1}}}, layout)
    # From the root, everything the kernel has is there.
    assert res.plan({"cpu": {"shares": 512}, "pids": {"limit": 5}},
                    res.Layout({UNIFIED: str(fake_v2 / "nsbox/c1")})).writes


# ---------------------------------------------------------------- systemd driver
def test_slice_paths():
    assert systemd.expand_slice("machine.slice") == "/machine.slice"
    assert systemd.expand_slice("a-b-c.slice") == "/a.slice/a-b.slice/a-b-c.slice"
    assert systemd.expand_slice("-.slice") == "/"
    for bad in ("machine", "a--b.slice", "-a.slice", "a/b.slice"):
        with pytest.raises(ConfigError):
            systemd.expand_slice(bad)


def test_systemd_cgroups_path_parsing():
    assert systemd.parse("machine.slice:nsbox:abc", "abc") == ("machine.slice", "nsbox-abc.scope")
    assert systemd.parse("system.slice::abc", "x") == ("system.slice", "abc.scope")
    assert systemd.parse(":libpod:abc", "x") == ("system.slice", "libpod-abc.scope")
    assert systemd.parse("", "abc") == ("system.slice", "nsbox-abc.scope")
    with pytest.raises(ConfigError, match="slice:prefix:name"):
        systemd.parse("/not/systemd", "abc")
    with pytest.raises(UnsupportedError, match="scopes"):
        systemd.parse("machine.slice:x:y.slice", "abc")


def test_systemd_driver_refused_when_systemd_does_not_run():
    if systemd.running():
        pytest.skip("systemd runs here")
    for path, flag in (("machine.slice:nsbox:abc", False), ("", True), ("/abs", True)):
        with pytest.raises(UnsupportedError,
                           match=r"systemd is not running \(no /run/systemd/system\)"):
            cgroups.resolve(path, "abc", systemd=flag)


def test_systemd_start_message():
    try:
        from jeepney.low_level import Message
    except ImportError:
        skip_or_fail("jeepney (the D-Bus client of the systemd driver, in the dev extras) "
                     "is not installed")
    msg = systemd.start_message("nsbox-abc.scope", "machine.slice", 1234, "nsbox container abc")
    assert isinstance(msg, Message)
    assert msg.header.fields[3] == "StartTransientUnit"  # HeaderFields.member
    unit, mode, props, aux = msg.body
    assert (unit, mode, aux) == ("nsbox-abc.scope", "replace", [])
    props = dict(props)
    assert props["Slice"] == ("s", "machine.slice")
    assert props["Delegate"] == ("b", True)
    assert props["PIDs"] == ("au", [1234])
    msg.serialise(serial=1)  # the signature ssa(sv)a(sa(sv)) accepts the values


# ---------------------------------------------------------------- the engine
def test_engine_cgroups_path(monkeypatch):
    from nsbox.engine import bundle

    monkeypatch.delenv("NSBOX_CGROUP_PARENT", raising=False)
    monkeypatch.delenv("NSBOX_CGROUP_MANAGER", raising=False)
    # An explicit parent: absolute from the root, on any host (Docker's reading).
    assert bundle.cgroups_path("abc", "nsbox-runtime", "/p/q") == "/p/q/nsbox-abc"
    assert bundle.cgroups_path("abc", "runc", "p") == "/p/nsbox-abc"
    monkeypatch.setenv("NSBOX_CGROUP_PARENT", "/configured")
    assert bundle.cgroups_path("abc", "nsbox-runtime") == "/configured/nsbox-abc"
    monkeypatch.delenv("NSBOX_CGROUP_PARENT")
    # No parent: /nsbox on pure v2; below our own cgroup on v1/hybrid, as before.
    monkeypatch.setattr(cgroups, "mode", lambda: "v2")
    assert bundle.cgroups_path("abc", "nsbox-runtime") == "/nsbox/nsbox-abc"
    assert bundle.cgroups_path("abc", "/usr/bin/crun") == "/nsbox/nsbox-abc"
    monkeypatch.setattr(cgroups, "mode", lambda: "hybrid")
    assert bundle.cgroups_path("abc", "nsbox-runtime") == "nsbox-abc"
    assert bundle.cgroups_path("abc", "runc") == os.path.join(bundle._own_cgroup(), "nsbox-abc")
    # systemd: a scope in machine.slice, or in the given slice.
    monkeypatch.setenv("NSBOX_CGROUP_MANAGER", "systemd")
    assert bundle.cgroups_path("abc", "nsbox-runtime") == "machine.slice:nsbox:abc"
    assert bundle.cgroups_path("abc", "runc", "a-b.slice") == "a-b.slice:nsbox:abc"
    with pytest.raises(ConfigError, match="slice"):
        bundle.cgroups_path("abc", "runc", "/nsbox")
    monkeypatch.setenv("NSBOX_CGROUP_MANAGER", "bogus")
    with pytest.raises(ConfigError, match="cgroupfs or systemd"):
        bundle.cgroups_path("abc", "runc")


def test_engine_flags(monkeypatch):
    from nsbox.engine import flags, oci

    spec = flags.build_spec("busybox", None, {"cgroup-parent": "/x/y"})
    assert spec.cgroup_parent == "/x/y"
    assert flags.build_spec("busybox", None, {}).cgroup_parent is None
    with pytest.raises(ConfigError, match="cgroup-parent"):
        flags.build_spec("busybox", None, {"cgroup-parent": "/x/../y"})
    monkeypatch.setenv("NSBOX_CGROUP_MANAGER", "systemd")
    assert "--systemd-cgroup" in oci.OciRuntime("/tmp/x", "/usr/bin/runc").global_args
    monkeypatch.setenv("NSBOX_CGROUP_MANAGER", "cgroupfs")
    assert "--systemd-cgroup" not in oci.OciRuntime("/tmp/x", "/usr/bin/runc").global_args


def test_engine_global_cgroup_manager_flag(monkeypatch, capsys):
    from nsbox.engine import cli

    monkeypatch.delenv("NSBOX_CGROUP_MANAGER", raising=False)
    assert cli.main(["--cgroup-manager", "nope", "version"]) == 125
    assert "--cgroup-manager" in capsys.readouterr().err
    assert "cgroup-manager" in cli.GLOBAL_HELP


# ---------------------------------------------------------------- the engine, end to end
def test_engine_cgroup_parent_end_to_end(tmp_path):
    """--cgroup-parent puts the container there, limits included (below our own cgroup, as
    this host asks; the default /nsbox placement is tested in the v2 lane)."""
    import subprocess
    from pathlib import Path

    import helpers

    if os.geteuid() != 0:
        pytest.skip("needs root")
    nsbox = [str(Path(__file__).resolve().parent.parent / ".venv/bin/nsbox"),
             "--root", str(tmp_path / "lib"), "--runroot", str(tmp_path / "run")]

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([*nsbox, *args], capture_output=True, text=True, timeout=120)
        assert not check or proc.returncode == 0, proc.stderr
        return proc

    with helpers.cgroup_under_own(f"nsbox-cgparent-{os.getpid()}") as parent:
        cid = ""
        try:
            cid = run("run", "-d", "--network", "none", "--cgroup-parent", parent, "--memory", "32m",
                      "--pids-limit", "20", "busybox", "sleep", "300").stdout.strip()
            pid = int(run("inspect", "-f", "{{.State.Pid}}", cid).stdout)
            assert run("inspect", "-f", "{{.HostConfig.CgroupParent}}", cid).stdout.strip() == parent
            path = f"{parent}/nsbox-{cid}"
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
            assert all(line.endswith(path) for line in lines), lines
            if cgroups.mode() == "v2":
                cg = Path("/sys/fs/cgroup" + path)
                assert (cg / "memory.max").read_text().strip() == str(32 << 20)
                assert (cg / "pids.max").read_text().strip() == "20"
            else:
                memory = Path("/sys/fs/cgroup/memory" + path)
                assert (memory / "memory.limit_in_bytes").read_text().strip() == str(32 << 20)
                assert (Path("/sys/fs/cgroup/pids" + path) / "pids.max").read_text().strip() == "20"
            run("rm", "-f", cid)
            cid = ""
            assert not os.path.exists("/sys/fs/cgroup/memory" + path)
        finally:
            if cid:
                run("rm", "-f", cid, check=False)
            run("system", "reset", "--force", check=False)
