"""podman (with conmon) driving the OCI runtime under test, given by path.

The runtime comes from NSBOX_TEST_RUNTIME (default: the venv's nsbox-runtime).
podman runs in a private tree under /tmp (see tests/clients.py); nothing is
pulled, the image is imported from a busybox rootfs tar.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator

import pytest
from clients import (
    IMAGE_REF,
    Podman,
    missing_binaries,
    podman_world,
    run_in_pty,
    runtime_under_test,
)
from hostclean import host_net_state, undo_host_net_changes

_missing = missing_binaries("podman", "conmon")
pytestmark = [
    pytest.mark.clients,
    pytest.mark.slow,
    pytest.mark.skipif(bool(_missing), reason=f"not installed: {', '.join(_missing)}"),
    pytest.mark.skipif(os.geteuid() != 0, reason="rootful podman needs root"),
]

# Keeps running, and answers SIGTERM by saying so and exiting 0 (a plain sh as
# PID 1 would ignore SIGTERM).
SERVE = "trap 'echo got-term; exit 0' TERM; echo started; while :; do sleep 0.1; done"
# PID 1 without a handler ignores SIGTERM, so stop must escalate to SIGKILL.
IGNORE_TERM = "echo started; while :; do sleep 0.1; done"


@pytest.fixture(scope="module")
def podman() -> Iterator[Podman]:
    runtime = runtime_under_test()
    if not os.access(runtime, os.X_OK):
        pytest.fail(f"runtime under test {runtime} is not executable (set NSBOX_TEST_RUNTIME)")
    with podman_world(runtime) as world:
        yield world


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_for_log(podman: Podman, name: str, text: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while True:
        logs = podman.run("logs", name).stdout
        if text in logs or time.monotonic() > deadline:
            return logs
        time.sleep(0.1)


def test_run_rm_prints_output(podman: Podman) -> None:
    name = unique("echo")
    proc = podman.run("run", "--rm", "--name", name, *podman.container_args(), IMAGE_REF,
                      "echo", "hi")
    assert proc.stdout == "hi\n"
    assert name not in podman.states(), "--rm left the container behind"


def test_exit_code_propagates(podman: Podman) -> None:
    proc = podman.run("run", "--rm", *podman.container_args(), IMAGE_REF, "sh", "-c", "exit 3",
                      check=False)
    assert proc.returncode == 3, proc.stderr


def test_stdin_is_forwarded(podman: Podman) -> None:
    proc = podman.run("run", "--rm", "-i", *podman.container_args(), IMAGE_REF,
                      "sh", "-c", "read line; echo got:$line", input_text="ping\n")
    assert proc.stdout == "got:ping\n"


def test_run_interactive_tty(podman: Podman) -> None:
    name = unique("tty")
    argv = podman.argv("run", "-it", "--rm", "--name", name, *podman.container_args(),
                       IMAGE_REF, "sh")
    result = run_in_pty(argv, podman.env, [
        ("# ", b"[ -t 0 ] && echo stdin-is-a-tty\n"),
        ("stdin-is-a-tty", b"echo $((6*7))\n"),
        ("42", b"exit\n"),
    ])
    assert re.search(r"^stdin-is-a-tty\r*$", result.output, re.M), result.output
    assert re.search(r"^42\r*$", result.output, re.M), result.output
    assert result.status == 0, result.output


def test_create_start_stop_rm_statuses(podman: Podman) -> None:
    name = unique("life")
    podman.run("create", "--name", name, *podman.container_args(), IMAGE_REF, "sh", "-c", SERVE)
    assert podman.states()[name] == "created"
    podman.run("start", name)
    assert podman.states()[name] == "running"
    wait_for_log(podman, name, "started")
    podman.run("stop", "-t", "5", name)
    assert podman.states()[name] == "exited"
    assert podman.run("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "0"
    podman.run("rm", name)
    assert name not in podman.states()


def test_detached_exec_logs_stop(podman: Podman) -> None:
    name = unique("det")
    container_id = podman.run("run", "-d", "--name", name, *podman.container_args(), IMAGE_REF,
                              "sh", "-c", SERVE).stdout.strip()
    try:
        assert podman.states()[name] == "running"
        short_id = container_id[:12]
        assert podman.run("exec", name, "hostname").stdout.strip() == short_id
        assert podman.run("exec", name, "cat", "/etc/hostname").stdout.strip() == short_id
        assert podman.run("exec", name, "echo", "from-exec").stdout == "from-exec\n"
        failed = podman.run("exec", name, "sh", "-c", "exit 4", check=False)
        assert failed.returncode == 4, failed.stderr
        # exec joins the container's PID namespace: PID 1 there is our sh.
        comm = podman.run("exec", name, "cat", "/proc/1/cmdline").stdout
        assert comm.split("\0")[:2] == ["sh", "-c"]

        assert "started" in wait_for_log(podman, name, "started")
        began = time.monotonic()
        podman.run("stop", "-t", "2", name)
        assert time.monotonic() - began < 2, "SIGTERM did not reach the container's PID 1"
        assert podman.states()[name] == "exited"
        assert "got-term" in podman.run("logs", name).stdout
    finally:
        podman.run("rm", "--force", name, check=False)
    assert name not in podman.states()


def test_stop_escalates_to_kill(podman: Podman) -> None:
    name = unique("kill")
    podman.run("run", "-d", "--name", name, *podman.container_args(), IMAGE_REF,
               "sh", "-c", IGNORE_TERM)
    try:
        wait_for_log(podman, name, "started")
        began = time.monotonic()
        podman.run("stop", "-t", "1", name)
        assert time.monotonic() - began >= 1
        assert podman.states()[name] == "exited"
        assert podman.run("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "137"
    finally:
        podman.run("rm", "--force", name, check=False)


def test_exec_interactive_tty(podman: Podman) -> None:
    name = unique("exectty")
    podman.run("run", "-d", "--name", name, *podman.container_args(), IMAGE_REF, "sh", "-c", SERVE)
    try:
        argv = podman.argv("exec", "-it", name, "sh")
        result = run_in_pty(argv, podman.env, [
            ("# ", b"echo $((6*7))\n"),
            ("42", b"exit 5\n"),
        ])
        assert re.search(r"^42\r*$", result.output, re.M), result.output
        assert result.status == 5, result.output
        assert podman.states()[name] == "running"
    finally:
        podman.run("rm", "--force", "--time", "0", name, check=False)


def test_wait_reports_exit_code(podman: Podman) -> None:
    name = unique("wait")
    podman.run("run", "-d", "--name", name, *podman.container_args(), IMAGE_REF,
               "sh", "-c", "echo bye; exit 7")
    try:
        assert podman.run("wait", name).stdout.strip() == "7"
        assert podman.states()[name] == "exited"
        assert podman.run("logs", name).stdout == "bye\n"
    finally:
        podman.run("rm", "--force", name, check=False)


def test_default_network_is_none_and_the_host_network_is_untouched(podman: Podman) -> None:
    """Without --network the container still gets only a loopback (containers.conf
    says netns "none"), and podman leaves no bridge, /var/lib/cni or /run/netns."""
    before = host_net_state()
    proc = podman.run("run", "--rm", IMAGE_REF, "ls", "/sys/class/net")
    assert proc.stdout.split() == ["lo"], proc.stdout
    assert undo_host_net_changes(before, "podman") == []
