"""`nsbox cp` sees the container's mounts (volumes, binds, /etc files, tmpfs) as Docker does,
for running and stopped containers, and reads/writes tar streams with `-`.

Real containers under a private --root/--runroot; each test runs against a
running container and a stopped (exited) one.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest
from test_engine_cli import Nsbox

SETUP = ("echo vol > /data/f; ln -s /data/f /lnk; echo inside > /etc/shadow; "
         "ln -s /../../etc/shadow /data/esc; ln -s ../../../../../../../etc/passwd /data/rel; "
         "chown 1234:1234 /data/f")


def mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(path))]


@pytest.fixture
def nsbox(tmp_path: Path):
    box = Nsbox(tmp_path)
    yield box
    if (tmp_path / "lib").exists():
        ids = box.ids()
        if ids:
            box("rm", "-f", "-v", *ids, check=False)
        box("volume", "prune", "-f", check=False)
    assert mounts_under(tmp_path) == []  # nothing left behind


@pytest.fixture(params=["running", "stopped"])
def ctr(request, nsbox, tmp_path):
    """make(*run_options, setup=SCRIPT): container "c", running or exited after SETUP."""
    running = request.param == "running"

    def make(*options: str, setup: str = "true") -> str:
        if running:
            nsbox("run", "-d", "--name", "c", *options, "busybox", "sleep", "300")
            nsbox("exec", "c", "sh", "-c", setup)
        else:
            nsbox("run", "--name", "c", *options, "busybox", "sh", "-c", setup)
        return request.param

    yield make
    if not running and (tmp_path / "lib").exists():
        # a stopped container's overlay is not left mounted by cp
        assert [m for m in mounts_under(tmp_path) if "/containers/" in m] == []


def cp(nsbox: Nsbox, *args: str, data: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*nsbox.prefix, "cp", *args], input=data, capture_output=True,
                          timeout=60, check=False)


def error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    return lines[0]


def test_cp_out_of_volume_and_bind(ctr, nsbox, tmp_path):
    bind = tmp_path / "b"
    bind.mkdir()
    (bind / "g").write_text("bound\n")
    ctr("-v", "vol:/data", "-v", f"{bind}:/mnt", setup=SETUP)
    assert cp(nsbox, "c:/data/f", str(tmp_path / "f")).returncode == 0
    assert (tmp_path / "f").read_text() == "vol\n"
    assert cp(nsbox, "c:/mnt/g", str(tmp_path / "g")).returncode == 0
    assert (tmp_path / "g").read_text() == "bound\n"
    # a directory with a volume below it carries the volume's content
    assert cp(nsbox, "c:/", str(tmp_path / "all")).returncode == 0
    assert (tmp_path / "all" / "data" / "f").read_text() == "vol\n"
    assert (tmp_path / "all" / "mnt" / "g").read_text() == "bound\n"


def test_cp_into_volume_and_bind(ctr, nsbox, tmp_path):
    bind = tmp_path / "b"
    bind.mkdir()
    (tmp_path / "x").write_text("in\n")
    ctr("-v", "vol:/data", "-v", f"{bind}:/mnt")
    assert cp(nsbox, str(tmp_path / "x"), "c:/data/in").returncode == 0
    assert cp(nsbox, str(tmp_path / "x"), "c:/mnt").returncode == 0
    assert (bind / "x").read_text() == "in\n"
    out = nsbox("run", "--rm", "-v", "vol:/data", "busybox", "cat", "/data/in").stdout
    assert out == "in\n"


def test_cp_etc_hostname_and_tar_to_stdout(ctr, nsbox, tmp_path):
    ctr("--hostname", "myhost")
    assert cp(nsbox, "c:/etc/hostname", str(tmp_path / "h")).returncode == 0
    assert (tmp_path / "h").read_text() == "myhost\n"
    proc = cp(nsbox, "c:/etc", "-")
    assert proc.returncode == 0, proc.stderr
    listing = subprocess.run(["tar", "t"], input=proc.stdout, capture_output=True, check=True)
    assert "etc/hostname" in listing.stdout.decode().splitlines()
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        assert tar.extractfile("etc/hostname").read() == b"myhost\n"
    proc = cp(nsbox, "c:/etc/hostname", "-")
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        assert tar.getnames() == ["hostname"]


def _tar(*entries: tuple[str, bytes | None, str | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, link in entries:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            elif data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_cp_tar_from_stdin(ctr, nsbox, tmp_path):
    ctr("-v", "vol:/data")
    data = _tar(("sub", None, None), ("sub/a", b"A\n", None), ("b", b"B\n", None))
    assert cp(nsbox, "-", "c:/tmp", data=data).returncode == 0
    assert cp(nsbox, "-", "c:/data", data=data).returncode == 0
    assert cp(nsbox, "c:/tmp/sub/a", str(tmp_path / "a")).returncode == 0
    assert (tmp_path / "a").read_text() == "A\n"
    assert cp(nsbox, "c:/data/b", str(tmp_path / "b")).returncode == 0
    assert (tmp_path / "b").read_text() == "B\n"
    assert "must be a directory" in error(cp(nsbox, "-", "c:/tmp/sub/a", data=data))


@pytest.mark.parametrize("entries", [
    [("../evil", b"x", None)],
    [("/evil", b"x", None)],
    [("ok", None, None), ("ok/../../evil", b"x", None)],
    [("evil", None, "../../../../../../tmp")],
    [("evil", None, "/tmp")],
], ids=["dotdot", "absolute", "nested-dotdot", "link-out", "absolute-link"])
def test_cp_tar_escaping_is_refused(ctr, nsbox, tmp_path, entries):
    ctr()
    assert "invalid tar entry" in error(cp(nsbox, "-", "c:/tmp", data=_tar(*entries)))
    assert cp(nsbox, "c:/evil", str(tmp_path / "e")).returncode == 1
    assert cp(nsbox, "c:/tmp", str(tmp_path / "after")).returncode == 0
    assert "evil" not in os.listdir(tmp_path / "after")  # entries before the bad one may land
    assert list(tmp_path.rglob("evil")) == []


def test_cp_into_read_only_refused(ctr, nsbox, tmp_path):
    bind = tmp_path / "b"
    bind.mkdir()
    (tmp_path / "x").write_text("in\n")
    ctr("-v", f"{bind}:/data:ro", "-v", "rw:/rw", "--read-only")
    assert "read-only" in error(cp(nsbox, str(tmp_path / "x"), "c:/data/"))
    assert "read-only" in error(cp(nsbox, "-", "c:/data", data=_tar(("y", b"y", None))))
    assert "read-only" in error(cp(nsbox, str(tmp_path / "x"), "c:/"))
    assert list(bind.iterdir()) == []
    assert cp(nsbox, str(tmp_path / "x"), "c:/rw/").returncode == 0  # a rw volume is fine


def test_cp_symlink_into_volume(ctr, nsbox, tmp_path):
    (tmp_path / "x").write_text("new\n")
    ctr("-v", "vol:/data", setup=SETUP)
    assert cp(nsbox, "-L", "c:/lnk", str(tmp_path / "f")).returncode == 0
    assert (tmp_path / "f").read_text() == "vol\n"
    assert cp(nsbox, "c:/lnk", str(tmp_path / "l")).returncode == 0  # without -L: the link
    assert os.readlink(tmp_path / "l") == "/data/f"
    assert cp(nsbox, str(tmp_path / "x"), "c:/lnk").returncode == 0  # a DEST link is followed
    out = nsbox("run", "--rm", "-v", "vol:/data", "busybox", "cat", "/data/f").stdout
    assert out == "new\n"


def test_cp_symlink_stays_inside(ctr, nsbox, tmp_path):
    marker = f"/tmp/nsbox-cp-escape-{uuid.uuid4().hex}"
    (tmp_path / "x").write_text("new\n")
    ctr("-v", "vol:/data", setup=f"{SETUP}; ln -s /../../..{marker} /data/w")
    assert cp(nsbox, "-L", "c:/data/esc", str(tmp_path / "s")).returncode == 0
    assert (tmp_path / "s").read_text() == "inside\n"
    assert cp(nsbox, "-L", "c:/data/rel", str(tmp_path / "p")).returncode == 0
    assert cp(nsbox, "c:/etc/passwd", str(tmp_path / "p2")).returncode == 0
    assert (tmp_path / "p").read_bytes() == (tmp_path / "p2").read_bytes()
    assert cp(nsbox, str(tmp_path / "x"), "c:/data/w").returncode == 0
    assert not os.path.lexists(marker)
    assert cp(nsbox, f"c:{marker}", str(tmp_path / "m")).returncode == 0
    assert (tmp_path / "m").read_text() == "new\n"


def test_cp_tmpfs(ctr, nsbox, tmp_path):
    state = ctr("--tmpfs", "/scr", setup="echo t > /scr/t")
    proc = cp(nsbox, "c:/scr/t", str(tmp_path / "t"))
    if state == "running":
        assert proc.returncode == 0 and (tmp_path / "t").read_text() == "t\n"
    else:
        assert "no content while the container is stopped" in error(proc)


def test_cp_ownership(ctr, nsbox, tmp_path):
    (tmp_path / "x").write_text("in\n")
    os.chown(tmp_path / "x", 4321, 4321)
    ctr("-v", "vol:/data", setup=SETUP)
    assert cp(nsbox, "c:/data/f", str(tmp_path / "f")).returncode == 0
    assert cp(nsbox, "-a", "c:/data/f", str(tmp_path / "fa")).returncode == 0
    assert os.stat(tmp_path / "f").st_uid == os.geteuid()
    assert os.stat(tmp_path / "fa").st_uid == 1234
    assert cp(nsbox, str(tmp_path / "x"), "c:/data/x").returncode == 0
    assert cp(nsbox, "-a", str(tmp_path / "x"), "c:/data/xa").returncode == 0
    out = nsbox("run", "--rm", "-v", "vol:/data", "busybox", "stat", "-c", "%n %u:%g",
                "/data/x", "/data/xa").stdout
    assert out == "/data/x 0:0\n/data/xa 4321:4321\n"


def test_cp_errors(ctr, nsbox, tmp_path):
    ctr()
    assert error(cp(nsbox, "c:/nope", str(tmp_path / "n"))) == \
        "Error: Could not find the file /nope in container c"
    assert "no such file" in error(cp(nsbox, str(tmp_path / "nope"), "c:/tmp"))
    assert error(cp(nsbox, str(tmp_path), "c:/no/such/dir")).startswith("Error: Could not find")


def test_cp_id_mapping():
    """--userns=remap: container root is a host id; the view maps both ways."""
    from nsbox.engine.lifecycle.copy import View
    ranges = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    view = View("/", uid_map=ranges, gid_map=ranges)
    assert view.to_host(0, 0) == (100000, 100000)
    assert view.to_host(1234, 5) == (101234, 100005)
    assert view.to_container(101234, 100005) == (1234, 5)
    assert view.to_container(5, 5) == (65534, 65534)  # unmapped: the overflow id
