"""Lifecycle hooks run for real: fork/exec, state on stdin, timeouts, cleanup."""

from __future__ import annotations

import json
import logging
import os
import signal
import time

import pytest

from nsbox.errors import HookError
from nsbox.runtime.hooks import run_hooks, run_poststop_hooks
from nsbox.runtime.spec import Hook

SH = "/bin/sh"
STATE = {"ociVersion": "1.2.0", "id": "c1", "status": "created", "pid": 4242,
         "bundle": "/tmp/bundle", "annotations": {"a": "b"}}


def sh_hook(script: str, *args: str, env: list[str] | None = None,
            timeout: int | None = None) -> Hook:
    return Hook(SH, ["sh", "-c", script, "hook", *args], env or [], timeout)


def own_children() -> list[int]:
    """Live (non-zombie) processes whose parent is this test process."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            found.append(int(entry))
    return found


def process_gone(pid: int, within: float = 2.0) -> bool:
    """True once pid no longer runs (absent, or a zombie waiting for its reaper)."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


@pytest.fixture(autouse=True)
def no_leftover_children():
    yield
    assert own_children() == []


def test_state_arrives_on_stdin(tmp_path):
    out = tmp_path / "state.json"
    run_hooks("prestart", [sh_hook('cat > "$1"', str(out))], STATE)
    raw = out.read_bytes()
    assert json.loads(raw) == STATE
    assert b" " not in raw  # compact serialization


def test_env_is_exactly_hook_env(tmp_path, monkeypatch):
    monkeypatch.setenv("NSBOX_RUNTIME_SECRET", "leak")
    out = tmp_path / "environ"
    # /proc/$$/environ is what execve handed the shell, before it adds anything.
    hook = sh_hook('cat /proc/$$/environ > "$1"', str(out), env=["A=1", "B=two words", "C="])
    run_hooks("createRuntime", [hook], STATE)
    assert out.read_bytes().split(b"\0")[:-1] == [b"A=1", b"B=two words", b"C="]


def test_empty_env_means_empty_environment(tmp_path):
    out = tmp_path / "environ"
    run_hooks("prestart", [sh_hook('cat /proc/$$/environ > "$1"', str(out))], STATE)
    assert out.read_bytes() == b""


def test_args_are_argv_including_argv0(tmp_path):
    out = tmp_path / "cmdline"
    script = 'cat /proc/$$/cmdline > "$1"'
    hook = Hook(SH, ["my-hook-name", "-c", script, "x", str(out)])
    run_hooks("createContainer", [hook], STATE)
    assert out.read_bytes().split(b"\0")[:-1] == [
        b"my-hook-name", b"-c", script.encode(), b"x", str(out).encode()]


def test_no_args_means_argv_is_path(tmp_path):
    script = tmp_path / "hook.sh"
    out = tmp_path / "argv0"
    script.write_text(f'#!/bin/sh\necho "$0" > {out}\n')
    script.chmod(0o755)
    run_hooks("startContainer", [Hook(str(script))], STATE)
    assert out.read_text().strip() == str(script)


def test_cwd(tmp_path):
    out = tmp_path / "cwd"
    run_hooks("prestart", [sh_hook('pwd > "$1"', str(out))], STATE, cwd=str(tmp_path))
    assert out.read_text().strip() == str(tmp_path)


def test_hooks_run_in_order_and_stop_at_first_failure(tmp_path):
    log_file = tmp_path / "order"
    hooks = [sh_hook('echo one >> "$1"', str(log_file)),
             sh_hook('echo two >> "$1"; exit 1', str(log_file)),
             sh_hook('echo three >> "$1"', str(log_file))]
    with pytest.raises(HookError):
        run_hooks("createRuntime", hooks, STATE)
    assert log_file.read_text().split() == ["one", "two"]


def test_failure_reports_exit_status_and_stderr():
    with pytest.raises(HookError) as exc:
        run_hooks("prestart", [sh_hook("echo noise; echo 'it broke' >&2; exit 3")], STATE)
    message = str(exc.value)
    assert message.startswith(f"prestart hook {SH} failed: exit status 3")
    assert "it broke" in message


def test_killed_by_signal_is_a_failure():
    with pytest.raises(HookError, match="killed by signal SIGTERM"):
        run_hooks("createRuntime", [sh_hook("kill -TERM $$")], STATE)


def test_signal_dispositions_and_mask_are_reset(tmp_path):
    # Python ignores SIGPIPE; the hook must get default dispositions and no blocked signals.
    out = tmp_path / "status"
    blocked = {15, 10}
    signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        # exec: the hook process itself is read.  Reading the shell's own status
        # from a child would race with dash blocking every signal while it waits.
        run_hooks("prestart", [sh_hook('exec grep -E "^Sig(Ign|Blk)" /proc/self/status > "$1"',
                                       str(out))], STATE)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)
    masks = dict(line.split(":") for line in out.read_text().splitlines())
    assert int(masks["SigIgn"], 16) & (1 << (signal.SIGPIPE - 1)) == 0
    assert int(masks["SigBlk"], 16) == 0


def test_timeout_kills_hook_and_raises():
    start = time.monotonic()
    with pytest.raises(HookError, match=r"^createRuntime hook /bin/sleep timed out after 1s$"):
        run_hooks("createRuntime", [Hook("/bin/sleep", ["sleep", "10"], [], 1)], STATE)
    elapsed = time.monotonic() - start
    assert 0.9 < elapsed < 1.5


def test_timeout_also_kills_what_the_hook_spawned(tmp_path):
    pidfile = tmp_path / "bg.pid"
    hook = sh_hook('sleep 30 & echo $! > "$1"; sleep 30', str(pidfile), timeout=1)
    with pytest.raises(HookError, match="timed out"):
        run_hooks("prestart", [hook], STATE)
    assert process_gone(int(pidfile.read_text()))


def test_background_child_holding_stdout_does_not_block(tmp_path):
    pidfile = tmp_path / "bg.pid"
    start = time.monotonic()
    run_hooks("prestart", [sh_hook('sleep 30 & echo $! > "$1"', str(pidfile))], STATE)
    elapsed = time.monotonic() - start
    bg = int(pidfile.read_text())
    try:
        assert elapsed < 2
        # A legitimately daemonized helper survives a successful hook.
        assert not process_gone(bg, within=0.1)
    finally:
        os.kill(bg, 9)
        assert process_gone(bg)


def test_large_state_to_a_hook_that_does_not_read_it():
    big = dict(STATE, annotations={"blob": "x" * (1 << 20)})
    start = time.monotonic()
    run_hooks("prestart", [Hook("/bin/true")], big)
    assert time.monotonic() - start < 2


def test_large_state_is_delivered_whole(tmp_path):
    big = dict(STATE, annotations={"blob": "x" * (1 << 20)})
    out = tmp_path / "state.json"
    run_hooks("prestart", [sh_hook('cat > "$1"', str(out))], big)
    assert json.loads(out.read_bytes()) == big


def test_lots_of_output_does_not_deadlock():
    run_hooks("prestart", [sh_hook("head -c 1000000 /dev/zero; head -c 1000000 /dev/zero >&2")],
              STATE)


def test_missing_executable_names_the_path(tmp_path):
    missing = str(tmp_path / "no-such-hook")
    with pytest.raises(HookError, match=f"prestart hook {missing}: cannot execute: No such file"):
        run_hooks("prestart", [Hook(missing)], STATE)


def test_not_executable(tmp_path):
    script = tmp_path / "hook"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    with pytest.raises(HookError, match="Permission denied"):
        run_hooks("createRuntime", [Hook(str(script))], STATE)


@pytest.mark.parametrize("kind", ["poststart", "poststop"])
def test_poststart_and_poststop_failures_only_warn(tmp_path, caplog, kind):
    marker = tmp_path / "ran"
    hooks = [sh_hook("echo bad >&2; exit 2"),
             Hook(str(tmp_path / "missing")),
             Hook("/bin/sleep", ["sleep", "5"], [], 1),
             sh_hook('touch "$1"', str(marker))]
    with caplog.at_level(logging.WARNING, logger="nsbox.runtime.hooks"):
        run_hooks(kind, hooks, STATE)
    assert marker.exists()
    text = caplog.text
    assert "exit status 2: bad" in text and "missing" in text and "timed out" in text


def test_run_poststop_hooks_helper(caplog):
    with caplog.at_level(logging.WARNING, logger="nsbox.runtime.hooks"):
        run_poststop_hooks([sh_hook("exit 5")], STATE)
    assert "exit status 5" in caplog.text


def test_fatal_override():
    with pytest.raises(HookError):
        run_hooks("poststop", [sh_hook("exit 1")], STATE, fatal=True)
    run_hooks("prestart", [sh_hook("exit 1")], STATE, fatal=False)


def test_unknown_kind_is_a_programming_error():
    with pytest.raises(ValueError):
        run_hooks("prestop", [], STATE)


def test_fds_without_cloexec_are_not_leaked_to_hooks(tmp_path):
    out = tmp_path / "fds"
    r, w = os.pipe()
    os.set_inheritable(r, True)
    try:
        script = 'for f in /proc/$$/fd/*; do readlink "$f" || true; done > "$1"'
        run_hooks("prestart", [sh_hook(script, str(out))], STATE)
        leaked = f"pipe:[{os.fstat(r).st_ino}]"
    finally:
        os.close(r)
        os.close(w)
    targets = out.read_text().split()
    assert targets and leaked not in targets
