"""Bad input to `nsbox-runtime`: every mistake gives one line on stderr naming the
problem, a non-zero exit status, and leaves nothing behind (no state dir, no
process, no mount, no cgroup)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import pytest
from runtime_leaks import assert_nothing_left, leftover_cgroups


def one_line_error(result) -> str:
    assert result.returncode != 0, f"expected a failure, got rc=0\n{result.stdout}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return lines[0]


def assert_mentions(line: str, *words: str) -> None:
    for word in words:
        assert word.lower() in line.lower(), f"{word!r} not in error: {line}"


# ---------------------------------------------------------------- config.json problems
def _set(path: str, value: Any) -> Callable[[dict], None]:
    def mutate(spec: dict) -> None:
        *parents, last = path.split(".")
        node = spec
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[last] = value
    return mutate


def _append(path: str, item: Any) -> Callable[[dict], None]:
    def mutate(spec: dict) -> None:
        node = spec
        for key in path.split("."):
            node = node.setdefault(key, {} if key != path.split(".")[-1] else [])
        node.append(item)
    return mutate


def _hooks(kind: str, hook: dict) -> Callable[[dict], None]:
    return lambda spec: spec.update(hooks={kind: [hook]})


BAD_CONFIGS = {
    # id: (mutation, words the error must contain)
    "args-not-a-list": (_set("process.args", "sh -c true"), ["process.args", "array"]),
    "args-empty": (_set("process.args", []), ["process.args"]),
    "uid-a-string": (lambda s: s["process"]["user"].update(uid="0"), ["uid", "integer"]),
    "uid-negative": (lambda s: s["process"]["user"].update(uid=-1), ["uid"]),
    "unknown-namespace": (_append("linux.namespaces", {"type": "foo"}), ["namespace", "foo"]),
    "relative-mount-destination": (
        _append("mounts", {"destination": "relative", "type": "tmpfs", "source": "tmpfs"}),
        ["destination", "relative"]),
    "unknown-seccomp-action": (
        _set("linux.seccomp", {"defaultAction": "SCMP_ACT_FOO"}), ["seccomp", "SCMP_ACT_FOO"]),
    "seccomp-rule-action": (
        _set("linux.seccomp", {"defaultAction": "SCMP_ACT_ALLOW",
                               "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOPE"}]}),
        ["seccomp", "SCMP_ACT_NOPE"]),
    "bad-rlimit-type": (
        _set("process.rlimits", [{"type": "RLIMIT_FOO", "soft": 1, "hard": 1}]),
        ["rlimit", "RLIMIT_FOO"]),
    "rlimit-not-a-number": (
        _set("process.rlimits", [{"type": "RLIMIT_NOFILE", "soft": "many", "hard": 1}]),
        ["rlimits", "soft"]),
    "relative-hook-path": (_hooks("prestart", {"path": "relative/hook"}), ["hook", "path"]),
    "hostname-without-uts": (
        lambda s: s["linux"].update(namespaces=[n for n in s["linux"]["namespaces"]
                                                if n["type"] != "uts"]),
        ["hostname", "uts"]),
    "cgroups-path-dotdot": (_set("linux.cgroupsPath", "/../../escape"), ["cgroupsPath"]),
    "terminal-without-console-socket": (_set("process.terminal", True), ["console-socket"]),
    "missing-process": (lambda s: s.pop("process") and None, ["process"]),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS), ids=list(BAD_CONFIGS))
def test_invalid_config_is_refused(bundle_factory, run_runtime, runtime_root, container_id, case):
    mutate, words = BAD_CONFIGS[case]
    b = bundle_factory(mutate=mutate)
    line = one_line_error(run_runtime("create", "--bundle", str(b), container_id, check=False))
    assert_mentions(line, *words)
    assert_nothing_left(runtime_root, b, container_id)


def test_unknown_capability_only_warns(bundle_factory, run_runtime, container_id):
    """Like runc: an unknown capability name is ignored with a warning, not an error,
    so that configs written for newer kernels keep working."""
    b = bundle_factory(args=["true"], mutate=lambda s: s["process"]["capabilities"][
        "bounding"].append("CAP_NOT_A_CAP"))
    result = run_runtime("run", "--bundle", str(b), container_id)
    assert "CAP_NOT_A_CAP" in result.stderr


def test_config_not_json(bundle_factory, run_runtime, runtime_root, container_id):
    b = bundle_factory()
    (b / "config.json").write_text('{"ociVersion": "1.2.0", "process": {')
    line = one_line_error(run_runtime("create", "--bundle", str(b), container_id, check=False))
    assert_mentions(line, "config.json")
    assert_nothing_left(runtime_root, b, container_id)


def test_config_not_an_object(bundle_factory, run_runtime, runtime_root, container_id):
    b = bundle_factory()
    (b / "config.json").write_text("[1, 2, 3]\n")
    line = one_line_error(run_runtime("create", "--bundle", str(b), container_id, check=False))
    assert_mentions(line, "config.json")
    assert_nothing_left(runtime_root, b, container_id)


def test_missing_config_json(bundle_factory, run_runtime, runtime_root, container_id):
    b = bundle_factory()
    (b / "config.json").unlink()
    line = one_line_error(run_runtime("create", "--bundle", str(b), container_id, check=False))
    assert_mentions(line, "config.json")
    assert_nothing_left(runtime_root, b, container_id)


def test_missing_bundle_dir(tmp_path, run_runtime, runtime_root, container_id):
    missing = tmp_path / "no-such-bundle"
    line = one_line_error(run_runtime("run", "--bundle", str(missing), container_id,
                                      check=False))
    assert_mentions(line, str(missing))
    assert_nothing_left(runtime_root, missing, container_id)


@pytest.mark.parametrize("how", ["absent", "a-file", "dangling-symlink"])
def test_missing_rootfs(bundle_factory, run_runtime, runtime_root, container_id, how):
    b = bundle_factory()
    rootfs = b / "rootfs"
    os.rename(rootfs, b / "elsewhere")
    if how == "a-file":
        rootfs.write_text("not a directory\n")
    elif how == "dangling-symlink":
        rootfs.symlink_to("nowhere")
    line = one_line_error(run_runtime("create", "--bundle", str(b), container_id, check=False))
    assert_mentions(line, "rootfs")
    assert_nothing_left(runtime_root, b, container_id)


# ---------------------------------------------------------------- ids
def test_duplicate_id(bundle_factory, run_runtime, runtime_root, container_id):
    first = bundle_factory(args=["sleep", "60"])
    second = bundle_factory(args=["sleep", "60"])
    run_runtime("create", "--bundle", str(first), container_id)
    state_before = json.loads(run_runtime("state", container_id).stdout)
    line = one_line_error(run_runtime("create", "--bundle", str(second), container_id,
                                      check=False))
    assert_mentions(line, container_id, "exists")
    # The first container is untouched: same init, still created, startable.
    state_after = json.loads(run_runtime("state", container_id).stdout)
    assert state_after == state_before
    assert state_after["bundle"] == str(first)
    run_runtime("start", container_id)
    assert json.loads(run_runtime("state", container_id).stdout)["status"] == "running"
    run_runtime("delete", "--force", container_id)
    assert_nothing_left(runtime_root, first, container_id)
    assert_nothing_left(runtime_root, second, container_id)


@pytest.mark.parametrize("command", [["start"], ["state"], ["kill"], ["kill", "--all"],
                                     ["delete"], ["ps"],
                                     ["exec", "@ID", "true"]],
                         ids=lambda c: "-".join(c).strip("-@ID"))
def test_unknown_id(run_runtime, runtime_root, container_id, command):
    args = [container_id if a == "@ID" else a for a in command]
    if "@ID" not in command:
        args.append(container_id)
    line = one_line_error(run_runtime(*args, check=False))
    assert_mentions(line, container_id)
    assert "not exist" in line or "not found" in line, line
    assert not (runtime_root / container_id).exists()


def test_force_delete_of_unknown_id_is_quiet(run_runtime, runtime_root, container_id):
    """runc compatibility: `delete --force` of an unknown id succeeds silently, so
    that cleanup paths of callers are idempotent; it still creates nothing."""
    result = run_runtime("delete", "--force", container_id)
    assert result.stderr == ""
    assert not (runtime_root / container_id).exists()


@pytest.mark.parametrize("bad_id", ["../escape", "a/b", "", ".hidden", "x" * 2000])
def test_invalid_id(bundle_factory, run_runtime, runtime_root, tmp_path, bad_id):
    b = bundle_factory()
    line = one_line_error(run_runtime("create", "--bundle", str(b), bad_id, check=False))
    assert "id" in line, line
    assert not (tmp_path / "escape").exists()
    assert list(runtime_root.iterdir()) == [] if runtime_root.exists() else True
    assert leftover_cgroups(bad_id) == [] if bad_id else True


# ---------------------------------------------------------------- failures during create
def test_failing_create_runtime_hook(bundle_factory, run_runtime, runtime_root, container_id):
    """The init already exists when createRuntime hooks run: it must be killed."""
    hook = {"path": "/bin/sh", "args": ["sh", "-c", "echo hook-said-no >&2; exit 1"]}
    b = bundle_factory(args=["sleep", "60"], mutate=_hooks("createRuntime", hook))
    line = one_line_error(run_runtime("create", "--bundle", str(b), container_id, check=False))
    assert_mentions(line, "createRuntime", "hook-said-no")
    assert_nothing_left(runtime_root, b, container_id)


def test_failing_create_container_hook(bundle_factory, run_runtime, runtime_root, container_id):
    hook = {"path": "/bin/sh", "args": ["sh", "-c", "exit 3"]}
    b = bundle_factory(args=["sleep", "60"], mutate=_hooks("createContainer", hook))
    line = one_line_error(run_runtime("create", "--bundle", str(b), container_id, check=False))
    assert_mentions(line, "createContainer", "3")
    assert_nothing_left(runtime_root, b, container_id)


def test_missing_hook_binary(bundle_factory, run_runtime, runtime_root, container_id):
    b = bundle_factory(mutate=_hooks("prestart", {"path": "/nonexistent/hook"}))
    line = one_line_error(run_runtime("run", "--bundle", str(b), container_id, check=False))
    assert_mentions(line, "/nonexistent/hook")
    assert_nothing_left(runtime_root, b, container_id)


MOUNT_FAILURES = {
    "bind-missing-source": (
        {"destination": "/data", "type": "bind", "source": "/nonexistent/src",
         "options": ["rbind"]}, ["/nonexistent/src"]),
    "parent-is-a-file": (
        {"destination": "/etc/passwd/sub", "type": "tmpfs", "source": "tmpfs"},
        ["/etc/passwd/sub"]),
    "bad-tmpfs-option": (
        {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
         "options": ["size=lots"]}, ["/scratch"]),
    "unknown-fs-type": (
        {"destination": "/x", "type": "nosuchfs", "source": "none"}, ["/x"]),
}


@pytest.mark.parametrize("case", list(MOUNT_FAILURES))
@pytest.mark.parametrize("command", ["create", "run"])
def test_mount_failure(bundle_factory, run_runtime, runtime_root, container_id, case, command):
    mount, words = MOUNT_FAILURES[case]
    b = bundle_factory(args=["sleep", "60"], mutate=_append("mounts", mount))
    line = one_line_error(run_runtime(command, "--bundle", str(b), container_id, check=False))
    assert_mentions(line, *words)
    assert_nothing_left(runtime_root, b, container_id)


@pytest.mark.parametrize("args", [["/nonexistent"], ["no-such-command"], ["/etc"],
                                  ["/etc/passwd"]])
def test_missing_or_bad_command(bundle_factory, run_runtime, runtime_root, container_id, args):
    b = bundle_factory(args=args)
    line = one_line_error(run_runtime("run", "--bundle", str(b), container_id, check=False))
    assert_mentions(line, args[0])
    assert_nothing_left(runtime_root, b, container_id)


def test_exec_missing_command(bundle_factory, run_runtime, container_id):
    b = bundle_factory(args=["sleep", "60"])
    run_runtime("run", "--detach", "--bundle", str(b), container_id)
    before = run_runtime("ps", "--format", "json", container_id).stdout
    for missing in ("/nonexistent", "no-such-command"):
        line = one_line_error(run_runtime("exec", container_id, missing, check=False))
        assert_mentions(line, missing)
    assert run_runtime("ps", "--format", "json", container_id).stdout == before
    assert json.loads(run_runtime("state", container_id).stdout)["status"] == "running"


def test_exec_bad_cwd(bundle_factory, run_runtime, container_id):
    b = bundle_factory(args=["sleep", "60"])
    run_runtime("run", "--detach", "--bundle", str(b), container_id)
    line = one_line_error(run_runtime("exec", "--cwd", "/nonexistent", container_id, "true",
                                      check=False))
    assert_mentions(line, "/nonexistent")


def test_bad_cwd_leaves_nothing(bundle_factory, run_runtime, runtime_root, container_id):
    """A cwd that cannot be entered (a file): one line, and `run` cleans up."""
    b = bundle_factory(args=["true"], process__cwd="/etc/passwd")
    result = run_runtime("run", "--bundle", str(b), container_id, check=False)
    assert_mentions(one_line_error(result), "/etc/passwd")
    assert_nothing_left(runtime_root, b, container_id)


def test_nothing_left_detects_leftovers(bundle_factory, run_runtime, runtime_root, container_id):
    """The checker itself: a live container is reported (state dir, process, cgroup)."""
    b = bundle_factory(args=["sleep", "60"])
    run_runtime("run", "--detach", "--bundle", str(b), container_id)
    with pytest.raises(AssertionError) as excinfo:
        assert_nothing_left(runtime_root, b, container_id, grace=0)
    text = str(excinfo.value)
    assert "state dir" in text and "process:" in text and "cgroup:" in text, text
    run_runtime("delete", "--force", container_id)
    assert_nothing_left(runtime_root, b, container_id)


@pytest.mark.parametrize("fmt", ["xml", "JSON", "yaml"])
def test_unknown_log_format(bundle_factory, run_runtime, runtime_root, container_id, tmp_path,
                            fmt):
    """As runc: --log-format is text or json; anything else fails before the command runs."""
    b = bundle_factory()
    log = tmp_path / "log"
    line = one_line_error(run_runtime("--log", str(log), "--log-format", fmt, "run",
                                      "--bundle", str(b), container_id, check=False))
    assert_mentions(line, "log-format", fmt)
    assert_nothing_left(runtime_root, b, container_id)


def test_a_log_file_that_cannot_be_opened(bundle_factory, run_runtime, runtime_root,
                                          container_id, tmp_path):
    """As runc: one line naming the file, exit status 1, before the command runs
    (a traceback from the logging package before)."""
    b = bundle_factory()
    log = tmp_path / "missing-dir" / "log.json"
    for flags in ([], ["--debug"]):
        line = one_line_error(run_runtime("--log", str(log), "--log-format", "json", *flags,
                                          "run", "--bundle", str(b), container_id, check=False))
        assert_mentions(line, str(log), "No such file or directory")
        assert_nothing_left(runtime_root, b, container_id)
