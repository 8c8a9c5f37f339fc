"""Capabilities against the real kernel: every privileged step runs in a forked child."""

from __future__ import annotations

import errno
import json
import logging
import os
import traceback
from collections.abc import Callable
from typing import Any

import pytest

from nsbox.errors import ConfigError
from nsbox.runtime import syscalls
from nsbox.runtime.security import capabilities
from nsbox.runtime.spec import Capabilities

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

CHOWN = 1 << 0
KILL = 1 << 5
UNPRIVILEGED_UID = 1000


def run_in_child(body: Callable[[], Any]) -> Any:
    """Run body in a forked child and return its JSON-able result (or re-raise its error)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            reply = {"result": body()}
        except BaseException as e:  # everything must reach the parent
            reply = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
        try:
            os.write(write_fd, json.dumps(reply).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as reader:
        raw = reader.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    reply = json.loads(raw)
    if "error" in reply:
        pytest.fail(f"child failed: {reply['error']}\n{reply['trace']}")
    return reply["result"]


def run_exec_in_child(prepare: Callable[[], None], argv: list[str]) -> str:
    """Fork, run prepare(), then execv argv with stdout to a pipe; return that output."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            prepare()
            os.dup2(write_fd, 1)
            os.execv(argv[0], argv)
        except BaseException:
            os.write(write_fd, traceback.format_exc().encode())
        finally:
            os._exit(127)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as reader:
        output = reader.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output
    return output


def collect_warnings() -> list[str]:
    """In a child: capture the capabilities module's log records into a list."""
    messages: list[str] = []

    class ListHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger = logging.getLogger(capabilities.__name__)
    logger.addHandler(ListHandler(logging.WARNING))
    logger.setLevel(logging.WARNING)
    return messages


def become_unprivileged_with(caps: Capabilities | None) -> None:
    """The init sequence the lead's code runs, switching to UNPRIVILEGED_UID."""
    capabilities.drop_bounding(caps)
    capabilities.prepare_identity_change()
    os.setgroups([])
    os.setresgid(UNPRIVILEGED_UID, UNPRIVILEGED_UID, UNPRIVILEGED_UID)
    os.setresuid(UNPRIVILEGED_UID, UNPRIVILEGED_UID, UNPRIVILEGED_UID)
    capabilities.apply_sets(caps)


def parse_status_output(text: str) -> dict[str, int]:
    result = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        result[key.strip()] = int(value.strip(), 16)
    return result


CHOWN_AMBIENT = Capabilities(
    bounding=["CAP_KILL", "CAP_CHOWN"],
    effective=["CAP_CHOWN"],
    permitted=["CAP_CHOWN", "CAP_KILL"],
    inheritable=["CAP_CHOWN"],
    ambient=["CAP_CHOWN"],
)


# --- pure logic ---------------------------------------------------------------


def test_table_is_dense_and_matches_kernel_numbers() -> None:
    assert sorted(capabilities.CAPABILITIES.values()) == list(range(41))
    assert capabilities.CAPABILITIES["CAP_SYS_ADMIN"] == 21
    assert capabilities.CAPABILITIES["CAP_CHECKPOINT_RESTORE"] == 40
    assert capabilities.features()[0] == "CAP_CHOWN"
    assert len(capabilities.features()) == 41


def test_last_cap_matches_proc() -> None:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        assert capabilities.last_cap() == int(f.read())


def test_names_from_mask() -> None:
    assert capabilities.names_from_mask(0) == []
    assert capabilities.names_from_mask(CHOWN | KILL | 1 << 40) == [
        "CAP_CHOWN", "CAP_KILL", "CAP_CHECKPOINT_RESTORE"]
    assert capabilities.names_from_mask(1 << 45) == ["CAP_45"]


def test_parse_names() -> None:
    assert capabilities.parse_cap_names(["CAP_KILL", "CAP_CHOWN", "CAP_KILL"]) == [5, 0]


def test_unknown_name_is_config_error() -> None:
    with pytest.raises(ConfigError, match="CAP_FOO"):
        capabilities.parse_cap_names(["CAP_CHOWN", "CAP_FOO"])
    with pytest.raises(ConfigError, match="CAP_FOO"):
        capabilities.validate(Capabilities(ambient=["CAP_FOO"]))
    # lower case is not an OCI capability name either
    with pytest.raises(ConfigError):
        capabilities.parse_cap_names(["cap_chown"])


def test_unknown_name_not_strict_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert capabilities.parse_cap_names(["CAP_FOO", "CAP_KILL"], strict=False) == [5]
    assert "CAP_FOO" in caplog.text


def test_name_newer_than_kernel_is_skipped(monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(capabilities, "last_cap", lambda: 37)
    with caplog.at_level(logging.WARNING):
        assert capabilities.parse_cap_names(["CAP_AUDIT_READ", "CAP_BPF"]) == [37]
    assert "CAP_BPF" in caplog.text


def test_validate_reports_impossible_combinations(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        sets = capabilities.validate(Capabilities(
            bounding=["CAP_CHOWN"], effective=["CAP_KILL"], permitted=["CAP_CHOWN"],
            ambient=["CAP_CHOWN"]))
    assert sets == capabilities.CapSets(bounding=CHOWN, effective=KILL, permitted=CHOWN,
                                        ambient=CHOWN)
    assert "effective capabilities CAP_KILL" in caplog.text
    assert "ambient capabilities CAP_CHOWN" in caplog.text


def test_absent_object_means_empty_sets() -> None:
    assert capabilities.validate(None) == capabilities.CapSets()


def test_read_status_caps_matches_capget() -> None:
    status = capabilities.read_status_caps()
    effective, permitted, inheritable = syscalls.capget()
    assert (status["CapEff"], status["CapPrm"], status["CapInh"]) == (
        effective, permitted, inheritable)
    assert set(status) == {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"}
    assert capabilities.read_status_caps(os.getpid()) == status


# --- real kernel, in forked children --------------------------------------------


def test_full_sequence_sets_exact_masks() -> None:
    def body() -> dict[str, int]:
        become_unprivileged_with(CHOWN_AMBIENT)
        assert syscalls.prctl(syscalls.PR_GET_KEEPCAPS) == 0
        return capabilities.read_status_caps()

    status = run_in_child(body)
    assert status == {"CapBnd": CHOWN | KILL, "CapPrm": CHOWN | KILL, "CapEff": CHOWN,
                      "CapInh": CHOWN, "CapAmb": CHOWN}


def test_root_without_caps_cannot_chown_but_with_cap_chown_can(tmp_path) -> None:
    target = tmp_path / "file"
    target.write_text("x")

    def try_chown(caps: Capabilities | None) -> Callable[[], Any]:
        def body() -> Any:
            capabilities.drop_bounding(caps)
            capabilities.apply_sets(caps)
            assert os.getuid() == 0
            try:
                os.chown(target, 4321, 4321)
            except OSError as e:
                return e.errno
            return 0
        return body

    assert run_in_child(try_chown(None)) == errno.EPERM
    assert run_in_child(try_chown(Capabilities())) == errno.EPERM
    assert target.stat().st_uid == 0

    only_chown = Capabilities(bounding=["CAP_CHOWN"], effective=["CAP_CHOWN"],
                              permitted=["CAP_CHOWN"])
    assert run_in_child(try_chown(only_chown)) == 0
    assert target.stat().st_uid == 4321


@pytest.mark.parametrize("ambient", [["CAP_CHOWN"], []])
def test_ambient_caps_survive_exec_as_non_root(ambient: list[str]) -> None:
    caps = Capabilities(bounding=CHOWN_AMBIENT.bounding, effective=CHOWN_AMBIENT.effective,
                        permitted=CHOWN_AMBIENT.permitted,
                        inheritable=CHOWN_AMBIENT.inheritable, ambient=ambient)
    output = run_exec_in_child(lambda: become_unprivileged_with(caps),
                               ["/bin/sh", "-c", "grep Cap /proc/self/status"])
    status = parse_status_output(output)
    granted = CHOWN if ambient else 0
    # Without file capabilities a non-root exec keeps only the ambient set.
    assert status == {"CapInh": CHOWN, "CapPrm": granted, "CapEff": granted,
                      "CapBnd": CHOWN | KILL, "CapAmb": granted}


def test_root_with_absent_caps_has_nothing_after_exec() -> None:
    def prepare() -> None:
        capabilities.drop_bounding(None)
        capabilities.apply_sets(None)

    output = run_exec_in_child(prepare, ["/bin/sh", "-c", "grep Cap /proc/self/status"])
    assert parse_status_output(output) == {
        "CapInh": 0, "CapPrm": 0, "CapEff": 0, "CapBnd": 0, "CapAmb": 0}


def test_ambient_without_inheritable_is_skipped_with_warning() -> None:
    caps = Capabilities(bounding=["CAP_KILL"], effective=["CAP_KILL"], permitted=["CAP_KILL"],
                        ambient=["CAP_KILL"])

    def body() -> Any:
        warnings = collect_warnings()
        capabilities.validate(caps)
        become_unprivileged_with(caps)
        return {"status": capabilities.read_status_caps(), "warnings": warnings}

    reply = run_in_child(body)
    assert reply["status"]["CapAmb"] == 0
    assert reply["status"]["CapPrm"] == KILL
    assert any("CAP_KILL" in message for message in reply["warnings"])


def test_capability_the_runtime_lacks_is_not_granted_and_does_not_fail() -> None:
    def body() -> Any:
        warnings = collect_warnings()
        effective, permitted, inheritable = syscalls.capget()
        syscalls.capset(effective & ~KILL, permitted & ~KILL, inheritable)
        wanted = Capabilities(bounding=["CAP_CHOWN", "CAP_KILL"],
                              effective=["CAP_CHOWN", "CAP_KILL"],
                              permitted=["CAP_CHOWN", "CAP_KILL"])
        capabilities.drop_bounding(wanted)
        capabilities.apply_sets(wanted)
        return {"status": capabilities.read_status_caps(), "warnings": warnings}

    reply = run_in_child(body)
    assert reply["status"]["CapPrm"] == CHOWN
    assert reply["status"]["CapEff"] == CHOWN
    assert any("CAP_KILL" in message and "permitted" in message
               for message in reply["warnings"])


def test_keepcaps_is_what_keeps_permitted_across_setuid() -> None:
    def body(keep: bool) -> Callable[[], int]:
        def run() -> int:
            if keep:
                capabilities.prepare_identity_change()
            os.setresuid(UNPRIVILEGED_UID, UNPRIVILEGED_UID, UNPRIVILEGED_UID)
            return capabilities.read_status_caps()["CapPrm"]
        return run

    assert run_in_child(body(True)) & CHOWN
    assert run_in_child(body(False)) == 0
