"""Run the cgroup v2 lane (tests/v2lane/) as part of the normal test run.

This host is a hybrid cgroup host, so the tests marked `cgroupv2` skip here;
this test boots them in a qemu guest with a pure cgroup v2 kernel and fails
when any of them fails there. `make test` (and so CI) covers cgroup v2 this
way; `make test-v2` runs the same lane on its own, with live output.
"""

from __future__ import annotations

import importlib.util
import lzma
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import helpers
import pytest

LANE_DIR = Path(__file__).resolve().parent / "v2lane"
LANE = LANE_DIR / "lane.py"
LANE_TIMEOUT = 480  # the lane kills qemu itself after this many seconds (a run takes ~2-3 min)
EXIT_MISSING = 77   # lane.py: qemu, root or a fetchable kernel is missing
SHOWN_LINES = 200
ATTEMPTS = 2  # a lane that timed out (a stalled emulated guest) is booted once more


def run_lane() -> tuple[subprocess.CompletedProcess, list[str]]:
    result = subprocess.run(
        [sys.executable, str(LANE), "--timeout", str(LANE_TIMEOUT), "--python", sys.executable],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=LANE_TIMEOUT + 90,
    )
    return result, (result.stdout + result.stderr).splitlines()


@pytest.mark.slow
@pytest.mark.timeout(ATTEMPTS * (LANE_TIMEOUT + 120))  # above the lane's own limits
def test_cgroupv2_tests_pass_in_the_qemu_lane() -> None:
    if os.environ.get("NSBOX_V2LANE"):
        pytest.skip("already inside the v2 lane's guest")
    # A TCG guest has been seen to stall between two tests with no message at
    # all (once in many runs); only a timeout is retried, never a failure.
    earlier: list[str] = []
    for attempt in range(ATTEMPTS):
        result, output = run_lane()
        timed_out = result.returncode != 0 and any("TIMEOUT after" in line for line in output)
        if not timed_out or attempt == ATTEMPTS - 1:
            break
        earlier = output[-20:]
    shown = "\n".join(output[-SHOWN_LINES:])
    if earlier:
        shown = "an earlier attempt timed out:\n" + "\n".join(earlier) + "\n---\n" + shown
    if result.returncode == EXIT_MISSING:
        helpers.skip_or_fail(f"the v2 lane cannot run here:\n{shown}")
    if result.returncode != 0:
        pytest.fail(f"v2 lane exit code {result.returncode}:\n{shown}", pytrace=False)
    # Exit 0 must come from a guest pytest that really ran tests.
    assert any(" passed" in line for line in output), shown


# ------------------------------------------------- lane.py's pure parts, on the host
@pytest.fixture(scope="module")
def lane() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("v2lane_lane", LANE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    # lane.py imports guest_image from beside it, as when it runs as a script.
    sys.path.insert(0, str(LANE_DIR))
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]
        sys.modules.pop("guest_image", None)
        sys.path.remove(str(LANE_DIR))


@pytest.fixture(scope="module")
def guest_image(lane: ModuleType) -> ModuleType:
    """tests/v2lane/guest_image.py, as lane.py imported it."""
    return sys.modules["guest_image"]


def test_cpio_archive_unpacks_with_busybox(guest_image: ModuleType, tmp_path: Path) -> None:
    archive = guest_image.Cpio()
    archive.directory("dev")
    archive.directory("bin", 0o700)
    archive.char_device("dev/console", 5, 1)
    archive.file("bin/hello", b"#!/bin/sh\necho hi\n", 0o755)
    archive.file("empty", b"")
    data = archive.finish()
    assert len(data) % 4 == 0  # so another archive can be appended
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run([helpers.BUSYBOX, "cpio", "-i", "-d", "-m"], input=data, cwd=out,
                   check=True, capture_output=True)
    assert (out / "bin" / "hello").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert stat.S_IMODE((out / "bin" / "hello").stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "bin").stat().st_mode) == 0o700
    assert (out / "empty").read_bytes() == b""
    console = (out / "dev" / "console").lstat()
    assert stat.S_ISCHR(console.st_mode)
    assert (os.major(console.st_rdev), os.minor(console.st_rdev)) == (5, 1)


def fake_module(path: Path, depends: str, compress: bool = False) -> None:
    data = b"\x7fELF...\0license=GPL\0depends=" + depends.encode() + b"\0name=x\0"
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path = path.with_name(path.name + ".xz")
        data = lzma.compress(data)
    path.write_bytes(data)


def test_modules_come_after_their_dependencies(guest_image: ModuleType, tmp_path: Path) -> None:
    kernel = tmp_path / "kernel"
    fake_module(kernel / "fs" / "9p" / "9p.ko", "9pnet,netfs")
    fake_module(kernel / "net" / "9p" / "9pnet_virtio.ko", "virtio,9pnet", compress=True)
    fake_module(kernel / "net" / "9p" / "9pnet.ko", "")
    fake_module(kernel / "fs" / "netfs" / "netfs.ko", "fscache")
    fake_module(kernel / "drivers" / "virtio" / "virtio.ko", "")
    (tmp_path / "modules.builtin").write_text("kernel/fs/fscache/fscache.ko\n")

    order = [name for name, _ in guest_image.module_load_order(tmp_path, ["9pnet_virtio", "9p"])]
    assert order == ["virtio", "9pnet", "9pnet_virtio", "netfs", "9p"]  # fscache: built in
    path = dict(guest_image.module_load_order(tmp_path, ["9pnet_virtio"]))["9pnet_virtio"]
    assert guest_image.decompress_module(path).startswith(b"\x7fELF")
    with pytest.raises(guest_image.LaneError, match="overlay"):
        guest_image.module_load_order(tmp_path, ["overlay"])


def test_lane_selects_cgroupv2_files_unless_paths_are_given(lane: ModuleType) -> None:
    default = lane.pytest_argv([], lane.REPO)
    assert default[default.index("-m") + 1] == "cgroupv2"
    assert "tests/v2lane/smoke_test.py" in default
    assert "tests/test_v2lane.py" not in default
    assert "tests/v2lane/smoke_test.py" in lane.pytest_argv(["-k", "memory"], lane.REPO)
    chosen = lane.pytest_argv(["tests/v2lane/smoke_test.py::test_pids_max_is_enforced"],
                              lane.REPO)
    assert chosen[-1] == "tests/v2lane/smoke_test.py::test_pids_max_is_enforced"
    assert chosen.count("tests/v2lane/smoke_test.py") == 0


def test_job_script_round_trips_through_a_shell(lane: ModuleType) -> None:
    args = ["-k", "a and not b", "it's", "$HOME", ""]
    script = lane.job_script("tok", Path("/r e/po"), "/py", args, {"X_Y": "1 2 'q'"})
    out = subprocess.run([helpers.BUSYBOX, "sh", "-c",
                          script + 'printf "%s|" "$LANE_REPO" "$X_Y" "$@"'],
                         capture_output=True, text=True, check=True)
    assert out.stdout == "/r e/po|1 2 'q'|-k|a and not b|it's|$HOME||"
