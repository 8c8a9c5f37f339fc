"""containerd (io.containerd.runc.v2 shim) driving the OCI runtime under test.

A private containerd is started per module (own root, state, socket under
/tmp, CRI disabled); ctr points the runc shim at the runtime given by
NSBOX_TEST_RUNTIME with --runc-binary.  The image is an OCI archive written
from a busybox rootfs and imported with `ctr image import`.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator

import pytest
from clients import IMAGE_REF, missing_binaries, run_in_pty, runtime_under_test
from containerd_world import Containerd, containerd_world

_missing = missing_binaries("containerd", "ctr", "containerd-shim-runc-v2")
pytestmark = [
    pytest.mark.clients,
    pytest.mark.slow,
    pytest.mark.skipif(bool(_missing), reason=f"not installed: {', '.join(_missing)}"),
    pytest.mark.skipif(os.geteuid() != 0, reason="containerd needs root"),
]

SERVE = "trap 'echo got-term; exit 0' TERM; echo started; while :; do sleep 0.1; done"


@pytest.fixture(scope="module")
def containerd() -> Iterator[Containerd]:
    runtime = runtime_under_test()
    if not os.access(runtime, os.X_OK):
        pytest.fail(f"runtime under test {runtime} is not executable (set NSBOX_TEST_RUNTIME)")
    with containerd_world(runtime) as world:
        yield world


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_for(predicate, timeout: float = 10, what: str = "condition") -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_image_imported(containerd: Containerd) -> None:
    assert IMAGE_REF in containerd.ctr("image", "ls", "--quiet").stdout.split()


def test_run_rm_prints_output(containerd: Containerd) -> None:
    cid = unique("echo")
    proc = containerd.ctr("run", "--rm", *containerd.run_options(cid), IMAGE_REF, cid,
                          "echo", "hi")
    assert proc.stdout == "hi\n"
    assert cid not in containerd.containers(), "--rm left the container behind"
    assert cid not in containerd.tasks()


def test_exit_code_propagates(containerd: Containerd) -> None:
    cid = unique("exit")
    proc = containerd.ctr("run", "--rm", *containerd.run_options(cid), IMAGE_REF, cid,
                          "sh", "-c", "exit 3", check=False)
    assert proc.returncode == 3, proc.stderr
    assert cid not in containerd.containers()


def test_run_tty(containerd: Containerd) -> None:
    cid = unique("tty")
    argv = containerd.ctr_argv("run", "--rm", "--tty", *containerd.run_options(cid), IMAGE_REF,
                               cid, "sh")
    result = run_in_pty(argv, containerd.env, [
        ("# ", b"[ -t 0 ] && echo stdin-is-a-tty\n"),
        ("stdin-is-a-tty", b"echo $((6*7))\n"),
        ("42", b"exit\n"),
    ])
    assert re.search(r"^stdin-is-a-tty\r*$", result.output, re.M), result.output
    assert re.search(r"^42\r*$", result.output, re.M), result.output
    assert result.status == 0, result.output


def test_detached_task_exec_kill_delete(containerd: Containerd) -> None:
    cid = unique("det")
    log_path = containerd.tree / f"{cid}.log"
    containerd.ctr("run", "--detach", "--log-uri", f"file://{log_path}",
                   *containerd.run_options(cid), IMAGE_REF, cid, "sh", "-c", SERVE)
    try:
        assert containerd.tasks()[cid] == "RUNNING"
        wait_for(lambda: log_path.exists() and "started" in log_path.read_text(),
                 what="the task's first output in its log")

        proc = containerd.task_exec(cid, "e1", "echo", "from-exec")
        assert proc.stdout == "from-exec\n"
        proc = containerd.task_exec(cid, "e2", "sh", "-c", "exit 4", check=False)
        assert proc.returncode == 4, proc.stderr
        # The exec joined the task's PID namespace: PID 1 there is our sh.
        proc = containerd.task_exec(cid, "e3", "cat", "/proc/1/cmdline")
        assert proc.stdout.split("\0")[:2] == ["sh", "-c"]
        assert containerd.tasks()[cid] == "RUNNING"

        containerd.ctr("task", "kill", cid)  # SIGTERM
        wait_for(lambda: containerd.tasks()[cid] == "STOPPED", what="the task to stop")
        assert "got-term" in log_path.read_text()
        containerd.ctr("task", "delete", cid)
        assert cid not in containerd.tasks()
    finally:
        containerd.ctr("task", "delete", "--force", cid, check=False)
        containerd.ctr("container", "delete", cid, check=False)
    assert cid not in containerd.containers()


def test_kill_sigkill_and_exit_status(containerd: Containerd) -> None:
    cid = unique("kill")
    # PID 1 without a handler ignores SIGTERM; only SIGKILL ends it.
    containerd.ctr("run", "--detach", "--null-io", *containerd.run_options(cid), IMAGE_REF, cid,
                   "sh", "-c", "while :; do sleep 0.1; done")
    try:
        containerd.ctr("task", "kill", "--signal", "SIGKILL", cid)
        wait_for(lambda: containerd.tasks()[cid] == "STOPPED", what="the task to die")
        proc = containerd.ctr("task", "delete", cid)
        # ctr prints "WARN[...] task <id> exit with non-zero exit code 137" on stderr.
        assert "137" in proc.stderr + proc.stdout
    finally:
        containerd.ctr("task", "delete", "--force", cid, check=False)
        containerd.ctr("container", "delete", cid, check=False)
