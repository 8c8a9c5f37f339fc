"""`nsbox run` end to end: loopback in the container's network namespace, and --device
permissions (the engine's rule in linux.resources.devices, enforced by the device cgroup).

Every test gets its own engine --root/--runroot; containers left there are
force-removed afterwards.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

NSBOX = str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "nsbox")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


class Nsbox:
    def __init__(self, root: Path) -> None:
        self.prefix = [NSBOX, "--root", str(root / "lib"), "--runroot", str(root / "run")]

    def __call__(self, *args: str, check: bool = True,
                 timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self.prefix, *args], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"nsbox {' '.join(args)} -> {proc.returncode}\n{proc.stderr}")
        return proc


@pytest.fixture
def nsbox(tmp_path: Path):
    box = Nsbox(tmp_path / "engine")
    yield box
    if (tmp_path / "engine" / "lib").exists():
        ids = box("ps", "-a", "-q", "--no-trunc", check=False).stdout.split()
        if ids:
            box("rm", "-f", *ids, check=False)


# ------------------------------------------------------------------ loopback
def test_run_has_loopback_up_and_127_0_0_1_reachable(nsbox):
    script = ("cat /sys/class/net/lo/flags; ip -o addr show lo;"
              " timeout 5 nc -l -p 7777 -e echo over-loopback & for i in 1 2 3 4 5 6 7 8 9 10;"
              " do nc 127.0.0.1 7777 </dev/null 2>/dev/null && break; sleep 0.1; done; wait")
    out = nsbox("run", "--rm", "busybox", "sh", "-c", script).stdout
    lines = out.splitlines()
    assert int(lines[0], 16) & 0x1, out  # IFF_UP
    assert "inet 127.0.0.1/8" in out, out
    assert lines[-1] == "over-loopback", out


# ------------------------------------------------------------------ --device
@pytest.fixture
def fuse_device(tmp_path: Path) -> tuple[str, bool]:
    """(a host char device node of fuse's numbers 10:229, whether the driver is there).

    The host's /dev/fuse when it has one; otherwise a node of our own: the
    cgroup decides on the numbers alone, before any driver is asked (an open
    it allows then fails with ENXIO instead of EPERM).
    """
    try:
        st = os.stat("/dev/fuse")
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(10, 229):
            return "/dev/fuse", True
    except OSError:
        pass
    node = tmp_path / "fuse-node"
    os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(10, 229))
    return str(node), False


@pytest.mark.parametrize("text,expected", [
    ("/dev/fuse", ("/dev/fuse", "/dev/fuse", "rwm")),
    ("/dev/fuse:/dev/myfuse", ("/dev/fuse", "/dev/myfuse", "rwm")),
    ("/dev/fuse:/dev/myfuse:r", ("/dev/fuse", "/dev/myfuse", "r")),
    ("/dev/fuse:/dev/myfuse:mw", ("/dev/fuse", "/dev/myfuse", "mw")),
    ("/dev/fuse:rw", ("/dev/fuse", "/dev/fuse", "rw")),
])
def test_device_value_becomes_one_rule_with_its_letters(fuse_device, text, expected):
    from nsbox.engine import bundle

    assert bundle.device_mapping(text) == expected
    host, _driver = fuse_device
    node, rule = bundle._device(text.replace("/dev/fuse", host, 1))
    assert (node["path"], node["type"], node["major"], node["minor"]) == (
        expected[1].replace("/dev/fuse", host, 1), "c", 10, 229)
    assert rule == {"allow": True, "type": "c", "major": 10, "minor": 229, "access": expected[2]}


# Each open in a subshell: "<op>-ok" when it worked, the shell's error otherwise.
PROBE = ("(: > /dev/myfuse) 2>&1 && echo write-ok;"
         " dd if=/dev/myfuse of=/dev/null count=0 2>&1 && echo read-ok;"
         " (: <> /dev/myfuse) 2>&1 && echo rdwr-ok;"
         " mknod /dev/again c 10 229 2>&1 && echo mknod-ok;"
         " grep '^c 10:229 ' /sys/fs/cgroup/devices/devices.list 2>/dev/null; true")


def run_probe(nsbox, device: str, *extra: str) -> str:
    return nsbox("run", "--rm", *extra, "--device", device, "busybox", "sh", "-c", PROBE).stdout


def v1_devices() -> bool:
    return any(line.split()[0] == "devices" and line.split()[1] != "0"  # a v1 hierarchy
               for line in Path("/proc/cgroups").read_text().splitlines()[1:])


@pytest.mark.parametrize("access,granted", [("r", {"read"}), ("w", {"write"}),
                                            ("rw", {"read", "write", "rdwr"}),
                                            ("", {"read", "write", "rdwr"})],
                         ids=["r", "w", "rw", "default-rwm"])
def test_device_permissions_are_enforced(nsbox, fuse_device, access, granted):
    host, driver = fuse_device
    out = run_probe(nsbox, f"{host}:/dev/myfuse" + (f":{access}" if access else ""))
    for op in ("read", "write", "rdwr"):
        if op not in granted:
            assert f"{op}-ok" not in out, (op, out)
        elif driver:
            assert f"{op}-ok" in out, (op, out)
    refused = {"read", "write", "rdwr"} - granted
    assert out.count("Operation not permitted") == len(refused) + 1, out  # + mknod
    # mknod: the engine's default capabilities (Podman's) have no CAP_MKNOD.
    assert "mknod-ok" not in out, out
    if v1_devices():
        listed = [line for line in out.splitlines() if line.startswith("c 10:229 ")]
        assert listed == [f"c 10:229 {access or 'rwm'}"], out


def test_device_read_only_refuses_writing_with_eperm(nsbox, fuse_device):
    host, driver = fuse_device
    proc = nsbox("run", "--rm", "--device", f"{host}:/dev/myfuse:r", "busybox", "sh", "-c",
                 "echo x > /dev/myfuse", check=False)
    assert proc.returncode != 0
    assert "can't create /dev/myfuse: Operation not permitted" in proc.stderr, proc.stderr


def test_device_mknod_follows_cap_mknod_like_docker(nsbox, fuse_device):
    """With CAP_MKNOD, mknod is the runtime's default "c *:* m" rule's (runc's too),
    whatever the --device letters; without m the node still cannot be opened."""
    host, _driver = fuse_device
    out = run_probe(nsbox, f"{host}:/dev/myfuse:m", "--cap-add", "MKNOD")
    assert "mknod-ok" in out, out
    assert not any(f"{op}-ok" in out for op in ("read", "write", "rdwr")), out
    assert out.count("Operation not permitted") == 3, out


def test_inspect_shows_the_device_permissions_asked_for(nsbox, fuse_device):
    host, _ = fuse_device
    nsbox("create", "--name", "dev-inspect", "--device", f"{host}:/dev/myfuse:r",
          "--device", host, "busybox", "true")
    out = nsbox("inspect", "--format", "{{json .HostConfig.Devices}}", "dev-inspect").stdout
    assert json.loads(out) == [
        {"PathOnHost": host, "PathInContainer": "/dev/myfuse", "CgroupPermissions": "r"},
        {"PathOnHost": host, "PathInContainer": host, "CgroupPermissions": "rwm"},
    ]
