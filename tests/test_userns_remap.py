"""--userns=remap and --userns=auto: container root is an unprivileged host uid range.

Each test adds a subordinate id range for a remap user of its own to
/etc/subuid and /etc/subgid (restored afterwards) and points the engine at
it with NSBOX_REMAP_USER.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import security_battery as battery
from helpers import wait_for

NSBOX = str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "nsbox")
BASE = 400000


@pytest.fixture
def subids():
    user = f"nsboxtest{os.getpid()}"
    saved = {path: Path(path).read_text() if os.path.exists(path) else None
             for path in ("/etc/subuid", "/etc/subgid")}
    for path in saved:
        with open(path, "a") as f:
            f.write(f"{user}:{BASE}:{4 * 65536}\n")
    yield user
    for path, text in saved.items():
        if text is None:
            os.unlink(path)
        else:
            Path(path).write_text(text)


class Box:
    def __init__(self, root: Path, user: str) -> None:
        self.root = root
        self.prefix = [NSBOX, "--root", str(root / "lib"), "--runroot", str(root / "run")]
        self.env = dict(os.environ, NSBOX_REMAP_USER=user)

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self.prefix, *args], capture_output=True, text=True, timeout=120,
                              env=self.env)
        if check and proc.returncode != 0:
            raise AssertionError(f"nsbox {' '.join(args)} -> {proc.returncode}\n{proc.stderr}")
        return proc


@pytest.fixture
def box(subids):
    # The mapped root must be able to reach the storage: no 0700 directory above it.
    root = Path(tempfile.mkdtemp(prefix="nsbox-userns-", dir="/tmp"))
    root.chmod(0o711)
    b = Box(root, subids)
    yield b
    ids = b("ps", "-a", "-q", "--no-trunc", check=False).stdout.split()
    if ids:
        b("rm", "-f", *ids, check=False)
    leftover = [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if str(root) in line]
    shutil.rmtree(root, ignore_errors=True)
    assert not leftover, leftover


def test_remap_root_is_an_unprivileged_host_uid(box):
    out = box("run", "--rm", "--userns=remap", "busybox", "sh", "-c",
              "id -u; cat /proc/self/uid_map; stat -c %u /bin/busybox /etc/passwd").stdout.split()
    assert out[0] == "0"
    assert out[1:4] == ["0", str(BASE), "65536"]
    assert out[4:6] == ["0", "0"]  # image files are root's, as seen inside


def test_remap_files_written_are_owned_by_the_mapped_uid(box):
    cid = box("run", "-d", "--userns=remap", "busybox", "sh", "-c",
              "echo hi > /made-inside; sleep 60").stdout.strip()
    upper = box.root / "lib" / "containers" / cid / "upper" / "made-inside"
    wait_for(upper.exists)
    st = upper.stat()
    assert (st.st_uid, st.st_gid) == (BASE, BASE)
    # The shared image layer is untouched: still owned by host root.
    busybox_layers = list((box.root / "lib" / "layers").glob("*/bin/busybox"))
    assert busybox_layers and all(p.stat().st_uid == 0 for p in busybox_layers)
    box("rm", "-f", cid)


def test_remapped_root_cannot_use_host_root_powers(box, tmp_path):
    victim = box.root / "hostfile"
    victim.write_text("host\n")
    victim.chmod(0o600)
    (box.root / "hostdir").mkdir()
    (box.root / "hostdir").chmod(0o711)
    shutil.copy(victim, box.root / "hostdir" / "secret")
    os.chmod(box.root / "hostdir" / "secret", 0o600)
    proc = box("run", "--rm", "--userns=remap", "--cap-add", "DAC_OVERRIDE", "-v",
               f"{box.root / 'hostdir'}:/host", "busybox", "sh", "-c",
               "cat /host/secret; echo x > /host/secret", check=False)
    # Host root's file is nobody's inside: DAC_OVERRIDE of the user namespace does not reach it.
    assert "host" not in proc.stdout
    assert (box.root / "hostdir" / "secret").read_text() == "host\n"


def test_auto_gives_each_container_its_own_range(box):
    a = box("run", "-d", "--userns=auto", "busybox", "sleep", "60").stdout.strip()
    b = box("run", "-d", "--userns=auto", "busybox", "sleep", "60").stdout.strip()
    maps = [box("exec", c, "cat", "/proc/self/uid_map").stdout.split() for c in (a, b)]
    bases = {m[1] for m in maps}
    assert len(bases) == 2 and bases <= {str(BASE + n * 65536) for n in range(4)}
    report = box("inspect", "--security", a).stdout
    assert "container root = host uid" in report


def test_remap_passes_the_escape_battery(box):
    probe_dir = box.root / "probe"
    probe_dir.mkdir()
    probe_dir.chmod(0o711)
    probe = battery.build_probe(probe_dir)
    probe.chmod(0o755)
    engine = battery.Engine(box.root, env=box.env)
    results = battery.run_battery(engine, probe, ["--userns=remap"])
    unsafe = {k: v for k, v in results.items() if v[0] not in battery.SAFE}
    assert not unsafe, unsafe


def test_without_subordinate_ids_a_clear_error(tmp_path):
    b = Box(tmp_path, "nsbox-user-without-subids")
    proc = b("run", "--rm", "--userns=remap", "busybox", "true", check=False)
    assert proc.returncode == 125
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "subordinate ids" in errors[0], proc.stderr
    assert b("ps", "-a", "-q").stdout.strip() == ""


def test_keep_id_is_refused_as_root(tmp_path):
    b = Box(tmp_path, "nobody")
    proc = b("run", "--rm", "--userns=keep-id", "busybox", "true", check=False)
    assert proc.returncode == 125 and "keep-id is for rootless mode" in proc.stderr
