"""Tests of the Python API (nsbox.run & co.) against the real engine, in a private root."""

from __future__ import annotations

import subprocess
import sys

import pytest

import nsbox
from nsbox.engine.containers import Engine
from nsbox.errors import ConfigError, ImageNotFound


@pytest.fixture
def engine(tmp_path):
    eng = Engine(root=str(tmp_path / "lib"), run_root=str(tmp_path / "run"))
    yield eng
    for c in eng.list(all=True):
        eng.remove(c.id, force=True)


def test_import_nsbox_is_cheap():
    code = "import sys, nsbox; print('nsbox.api' in sys.modules, 'nsbox.engine' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "False False\n"
    assert nsbox.run is nsbox.api.run and nsbox.Engine is Engine


def test_run_wait_logs_remove(engine):
    box = nsbox.run("busybox", ["sh", "-c", "echo hi; echo oops >&2; exit 3"], engine=engine)
    assert len(box.id) == 64 and box.name
    assert box.wait() == 3
    assert box.status == "exited"
    assert box.output() == b"hi\noops\n"
    assert box.output("stdout") == b"hi\n"
    assert box.inspect()["State"]["ExitCode"] == 3
    box.remove()
    assert engine.list(all=True) == []


def test_run_with_limits_and_exec(engine):
    box = nsbox.run("busybox", "sleep 60", engine=engine, memory="64m", cpus=0.5, name="api-box",
                    env={"GREETING": "hello"}, label=["k=v"])
    try:
        assert box.status == "running"
        host = box.inspect()["HostConfig"]
        assert host["Memory"] == 64 << 20
        assert host["NanoCpus"] == 500_000_000 or host.get("CpuQuota") == 50000
        assert box.exec(["sh", "-c", 'test "$GREETING" = hello']) == 0
        assert box.exec("sh -c 'exit 9'") == 9
        assert [c.name for c in nsbox.containers(engine=engine)] == ["api-box"]
        box.stop(timeout=1)
        assert box.status == "exited"
        assert nsbox.containers(engine=engine) == []
        assert len(nsbox.containers(all=True, engine=engine)) == 1
    finally:
        box.remove(force=True)


def test_attach_sends_stdin_and_follows_output(engine, tmp_path):
    box = nsbox.run("busybox", "sh", interactive=True, engine=engine)
    try:
        script = tmp_path / "input"
        script.write_bytes(b"echo attached:$((2 + 3))\nexit 5\n")
        with open(script, "rb") as stdin:
            records = list(box.attach(stdin=stdin))
        assert [(stream, data) for stream, _, data in records] == [("stdout", b"attached:5\n")]
        assert box.wait() == 5
    finally:
        box.remove(force=True)


def test_detach_false_waits(engine):
    box = nsbox.run("busybox", ["true"], detach=False, engine=engine)
    assert box.exit_code == 0 and box.status == "exited"


def test_bad_kwargs_raise_config_error_and_leave_nothing(engine):
    with pytest.raises(ConfigError, match="invalid size: '12q'"):
        nsbox.run("busybox", ["true"], engine=engine, memory="12q")
    with pytest.raises(ConfigError, match="--cpus"):
        nsbox.run("busybox", ["true"], engine=engine, cpus=-1)
    with pytest.raises(ImageNotFound, match="Unable to find image"):
        nsbox.run("no-such-image", ["true"], engine=engine)
    assert engine.list(all=True) == []


def test_images_lists_busybox(engine):
    nsbox.create("busybox", ["true"], engine=engine).remove()
    tags = [tag for image in nsbox.images(engine=engine) for tag in image.repo_tags]
    assert "localhost/busybox:latest" in tags
