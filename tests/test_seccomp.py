"""Tests for nsbox.runtime.security.seccomp against the real kernel.

Every filter is loaded in a forked child (a seccomp filter can never be
removed); the child reports back as JSON over a pipe and leaves by os._exit.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import host_features
import pytest

from nsbox.errors import ConfigError, KernelError
from nsbox.runtime import syscalls
from nsbox.runtime.security import seccomp, seccomp_compile

NR_GETPPID = 110  # x86_64


def run_in_child(body: Callable[[], Any], *, no_new_privs: bool = True,
                 before: Callable[[], None] | None = None) -> tuple[Any, int]:
    """Fork, run body() in the child, return (its JSON result, wait status)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_end)
            # A SIGSYS kill would otherwise drop a core file into the cwd.
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            if before is not None:
                before()
            if no_new_privs:
                syscalls.set_no_new_privs()
            result: dict = {"value": body()}
        except BaseException as exc:  # noqa: B036 - report anything to the parent
            result = {"error": f"{type(exc).__name__}: {exc}"}
        try:
            os.write(write_end, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    chunks = []
    with os.fdopen(read_end, "rb") as reader:
        chunks.append(reader.read())
    _, status = os.waitpid(pid, 0)
    data = b"".join(chunks)
    return (json.loads(data) if data else None), status


def child_value(body: Callable[[], Any], **kwargs: Any) -> Any:
    result, status = run_in_child(body, **kwargs)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child status {status:#x}"
    assert result is not None and "error" not in result, result
    return result["value"]


def errno_of(call: Callable[[], Any]) -> int:
    """0 when call() succeeds, its errno when it raises OSError."""
    try:
        call()
    except OSError as exc:
        return exc.errno
    return 0


def deny(names: list[str], **extra: Any) -> dict:
    return {"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": names, "action": "SCMP_ACT_ERRNO", **extra}]}


# ---------------------------------------------------------------- real kernel
def test_errno_rule_blocks_mkdir_and_status_shows_filter(tmp_path):
    program = seccomp_compile.compile_filter(deny(["mkdir", "mkdirat"]))
    target = tmp_path / "blocked"

    def body() -> dict:
        seccomp.load_filter(program, [])
        with open("/proc/self/status") as f:
            status = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
        return {"mkdir": errno_of(lambda: os.mkdir(target)), "rmdir": errno_of(lambda: os.rmdir(tmp_path / "x")),
                "seccomp": status["Seccomp"].strip(), "filters": status["Seccomp_filters"].strip()}

    value = child_value(body)
    assert value == {"mkdir": errno.EPERM, "rmdir": errno.ENOENT, "seccomp": "2", "filters": "1"}
    assert not target.exists()
    # The parent is untouched.
    os.mkdir(target)


def test_errno_ret_overrides_eperm():
    program = seccomp_compile.compile_filter(deny(["getcwd"], errnoRet=errno.ENOSYS))
    assert child_value(lambda: (seccomp.load_filter(program), errno_of(os.getcwd))[1]) == errno.ENOSYS


def test_args_on_one_index_are_or_ed():
    program = seccomp_compile.compile_filter(deny(["socket"], args=[
        {"index": 0, "value": socket.AF_INET, "op": "SCMP_CMP_EQ"},
        {"index": 0, "value": socket.AF_INET6, "op": "SCMP_CMP_EQ"},
    ]))

    def body() -> list[int]:
        seccomp.load_filter(program)
        return [errno_of(lambda f=family: socket.socket(f).close())
                for family in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)]

    assert child_value(body) == [errno.EPERM, errno.EPERM, 0]


def test_args_on_different_indexes_are_and_ed():
    # AF_INET and (type & 0xf) == SOCK_DGRAM: UDP is denied, TCP is not.
    program = seccomp_compile.compile_filter(deny(["socket"], args=[
        {"index": 0, "value": socket.AF_INET, "op": "SCMP_CMP_EQ"},
        {"index": 1, "value": 0xF, "valueTwo": socket.SOCK_DGRAM, "op": "SCMP_CMP_MASKED_EQ"},
    ]))

    def body() -> list[int]:
        seccomp.load_filter(program)
        return [errno_of(lambda k=kind: socket.socket(socket.AF_INET, k).close()) for kind in
                (socket.SOCK_DGRAM, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, socket.SOCK_STREAM)]

    assert child_value(body) == [errno.EPERM, errno.EPERM, 0]


def test_default_errno_with_allowlist():
    allowed = ["write", "exit", "exit_group", "getpid", "brk", "mmap", "munmap", "mremap",
               "mprotect", "madvise", "rt_sigreturn", "rt_sigprocmask", "futex", "close"]
    program = seccomp_compile.compile_filter({
        "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": errno.EACCES,
        "syscalls": [{"names": allowed, "action": "SCMP_ACT_ALLOW"},
                     # Same action as the default: skipped, not an error.
                     {"names": ["chdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES},
                     {"names": ["uname"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS}],
    })

    def body() -> list[int]:
        seccomp.load_filter(program)
        return [errno_of(os.getpid), errno_of(os.getcwd), errno_of(lambda: os.chdir("/")),
                errno_of(os.uname)]

    assert child_value(body) == [0, errno.EACCES, errno.EACCES, errno.ENOSYS]


@pytest.mark.parametrize("action", ["SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL", "SCMP_ACT_TRAP"])
def test_kill_and_trap_end_the_child_with_sigsys(action):
    program = seccomp_compile.compile_filter({"defaultAction": "SCMP_ACT_ALLOW",
                                      "syscalls": [{"names": ["getppid"], "action": action}]})

    def body() -> str:
        seccomp.load_filter(program)
        os.getppid()
        return "survived"

    result, status = run_in_child(body)
    assert result is None
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS


def test_unknown_syscall_name_is_skipped(caplog):
    with caplog.at_level(logging.DEBUG, logger="nsbox.runtime.security.seccomp_compile"):
        program = seccomp_compile.compile_filter(deny(["no_such_syscall_xyz", "getcwd"]))
    assert "no_such_syscall_xyz" in caplog.text
    assert child_value(lambda: (seccomp.load_filter(program), errno_of(os.getcwd))[1]) == errno.EPERM


def test_foreign_arch_only_name_and_extra_architectures():
    # socketcall exists on x86 only; with x86 in the filter it compiles to a rule there.
    section = deny(["socketcall", "getcwd"])
    section["architectures"] = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    program = seccomp_compile.compile_filter(section)
    native_only = seccomp_compile.compile_filter(deny(["getcwd"]))
    assert len(program) > len(native_only)
    assert child_value(lambda: (seccomp.load_filter(program), errno_of(os.getcwd))[1]) == errno.EPERM


def test_flags_are_passed_to_the_kernel():
    program = seccomp_compile.compile_filter(deny(["getcwd"]))
    flags = ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"]
    assert child_value(lambda: (seccomp.load_filter(program, flags), errno_of(os.getcwd))[1]) == errno.EPERM
    with pytest.raises(ConfigError, match="flags\\[0\\]"):
        seccomp.load_filter(program, ["SECCOMP_FILTER_FLAG_BOGUS"])


def test_load_without_no_new_privs_or_cap_sys_admin_is_a_kernel_error():
    program = seccomp_compile.compile_filter(deny(["getcwd"]))

    def body() -> list:
        try:
            seccomp.load_filter(program)
        except KernelError as exc:
            return [exc.errno, str(exc)]
        return ["loaded"]

    # setuid to nobody drops every capability, CAP_SYS_ADMIN included.
    err, message = child_value(body, no_new_privs=False, before=lambda: os.setuid(65534))
    assert err == errno.EACCES
    assert "no_new_privs" in message


def test_garbage_program_is_rejected_by_the_kernel():
    bogus = b"\xff\xff\x00\x00\x00\x00\x00\x00"  # not a BPF opcode

    def body() -> int:
        try:
            seccomp.load_filter(bogus)
        except KernelError as exc:
            return exc.errno
        return 0

    assert child_value(body) == errno.EINVAL
    with pytest.raises(KernelError, match="malformed"):
        seccomp.load_filter(b"\x06\x00\x00\x00")


# ---------------------------------------------------------------- notify
def _recv_notification(fd: int) -> tuple[int, int, int]:
    """SECCOMP_IOCTL_NOTIF_RECV: (id, pid, syscall nr)."""
    import fcntl

    ready, _, _ = select.select([fd], [], [], 10)
    assert ready, "no seccomp notification within 10s"
    buf = bytearray(80)  # struct seccomp_notif, must be zeroed
    fcntl.ioctl(fd, 0xC0502100, buf)
    notif_id, pid, _flags, nr = struct.unpack_from("<QIIi", buf)
    return notif_id, pid, nr


def _send_response(fd: int, notif_id: int, value: int) -> None:
    """SECCOMP_IOCTL_NOTIF_SEND: make the syscall return value."""
    import fcntl

    fcntl.ioctl(fd, 0xC0182101, bytearray(struct.pack("<QqiI", notif_id, value, 0, 0)))


@pytest.mark.skipif("user_notif" not in host_features.seccomp_actions(),
                    reason="the kernel offers no SECCOMP_RET_USER_NOTIF (Linux >= 5.0)")
def test_notify_hands_the_listener_to_an_agent(tmp_path):
    listener_path = str(tmp_path / "agent.sock")
    section = {"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": listener_path,
               "listenerMetadata": "hello-agent",
               "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_NOTIFY"}]}
    seccomp.validate(section)
    assert seccomp.uses_notify(section)
    program = seccomp_compile.compile_filter(section)
    assert seccomp.program_uses_notify(program)
    assert not seccomp.program_uses_notify(seccomp_compile.compile_filter(deny(["getppid"])))

    agent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    agent.bind(listener_path)
    agent.listen(1)
    agent.settimeout(10)
    runtime_end, init_end = socket.socketpair()
    runtime_end.settimeout(10)

    def body() -> int:
        listener = seccomp.load_filter(program)
        socket.send_fds(init_end, [b"fd"], [listener])
        os.close(listener)
        return os.getppid()  # blocks until the agent answers

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        result: dict = {}
        try:
            syscalls.set_no_new_privs()
            result = {"value": body()}
        except BaseException as exc:  # noqa: B036
            result = {"error": repr(exc)}
        finally:
            os.write(write_end, json.dumps(result).encode())
            os._exit(0)
    os.close(write_end)
    received_fds: list[int] = []
    try:
        _, received_fds, _, _ = socket.recv_fds(runtime_end, 16, 1)
        assert len(received_fds) == 1
        state = {"ociVersion": "1.2.0", "id": "c1", "status": "creating", "pid": pid,
                 "bundle": "/tmp/b"}
        seccomp.send_seccomp_state(listener_path, received_fds[0], pid=pid, state=state,
                                   metadata="hello-agent")
        conn, _ = agent.accept()
        with conn:
            payload, agent_fds, _, _ = socket.recv_fds(conn, 65536, 1)
            while chunk := conn.recv(65536):  # the runtime closes after one document
                payload += chunk
        received_fds += agent_fds
        document = json.loads(payload)
        assert document["fds"] == ["seccompFd"] and len(agent_fds) == 1
        assert document["pid"] == pid and document["metadata"] == "hello-agent"
        assert document["state"]["id"] == "c1" and document["ociVersion"] == "1.2.0"

        notif_id, notif_pid, nr = _recv_notification(agent_fds[0])
        assert (notif_pid, nr) == (pid, NR_GETPPID)
        _send_response(agent_fds[0], notif_id, 4242)
        with os.fdopen(read_end, "rb") as reader:
            result = json.loads(reader.read())
        _, status = os.waitpid(pid, 0)
        pid = 0
        assert result == {"value": 4242}
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        for fd in received_fds:
            os.close(fd)
        agent.close()
        runtime_end.close()
        init_end.close()


def test_send_seccomp_state_without_agent_is_an_error(tmp_path):
    with pytest.raises(KernelError, match="listener"):
        seccomp.send_seccomp_state(str(tmp_path / "nobody.sock"), 0, pid=1, state={})


# ---------------------------------------------------------------- validation
GOOD_ARG = {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}


@pytest.mark.parametrize("section, message", [
    ("nope", "linux.seccomp must be an object"),
    ({}, "linux.seccomp.defaultAction is required"),
    ({"defaultAction": "SCMP_ACT_FOO"},
     "linux.seccomp.defaultAction is not a seccomp action: 'SCMP_ACT_FOO'"),
    ({"defaultAction": "SCMP_ACT_NOTIFY"}, "defaultAction cannot be SCMP_ACT_NOTIFY"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 1},
     "defaultErrnoRet is set but SCMP_ACT_ALLOW does not return an errno"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": -1}, "defaultErrnoRet must be an integer"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": True}, "defaultErrnoRet must be an integer"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86", "SCMP_ARCH_Z80"]},
     "linux.seccomp.architectures[1] is not a seccomp architecture: 'SCMP_ARCH_Z80'"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": "SCMP_ARCH_X86"}, "architectures must be an array"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_NEW_LISTENER"]},
     "linux.seccomp.flags[0] is not a seccomp filter flag"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "listenerMetadata": "x"}, "listenerPath is not"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["a"], "action": "SCMP_ACT_NOTIFY"}]},
     "listenerPath is required"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/a",
      "syscalls": [{"names": ["write"], "action": "SCMP_ACT_NOTIFY"}]}, "cannot be used for 'write'"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["a"], "action": "SCMP_ACT_ERRNO"}, {"names": ["b"], "action": "SCMP_ACT_LOG"},
        {"names": ["c"], "action": "SCMP_ACT_FOO"}]},
     "config.json: linux.seccomp.syscalls[2].action is not a seccomp action: 'SCMP_ACT_FOO'"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": [], "action": "SCMP_ACT_ERRNO"}]},
     "syscalls[0].names must be a non-empty array"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["a", 3], "action": "SCMP_ACT_ERRNO"}]},
     "syscalls[0].names[1] must be a non-empty string"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["a"]}]}, "syscalls[0].action is required"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["a"], "action": "SCMP_ACT_KILL", "errnoRet": 1}]},
     "syscalls[0].errnoRet is set but SCMP_ACT_KILL does not return an errno"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": ["mkdir"]}, "syscalls[0] must be an object"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["a"], "action": "SCMP_ACT_ERRNO", "args": [GOOD_ARG, {**GOOD_ARG, "op": "SCMP_CMP_XX"}]}]},
     "syscalls[0].args[1].op is not a seccomp operator: 'SCMP_CMP_XX'"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["a"], "action": "SCMP_ACT_ERRNO", "args": [{**GOOD_ARG, "index": 6}]}]},
     "syscalls[0].args[0].index must be an integer between 0 and 5"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["a"], "action": "SCMP_ACT_ERRNO", "args": [{**GOOD_ARG, "value": 2**64}]}]},
     "syscalls[0].args[0].value must be an unsigned 64-bit integer"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["a"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "op": "SCMP_CMP_EQ"}]}]},
     "syscalls[0].args[0].value is required"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["a"], "action": "SCMP_ACT_ERRNO", "args": "x"}]},
     "syscalls[0].args must be an array"),
])
def test_validation_errors(section, message):
    with pytest.raises(ConfigError) as info:
        seccomp.validate(section)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_valid_sections_pass():
    seccomp.validate({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
                      "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
                      "flags": list(seccomp.FLAG_VALUES), "listenerPath": "/run/agent.sock",
                      "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": None},
                                   {"names": ["ioctl"], "action": "SCMP_ACT_NOTIFY"},
                                   {"names": ["ptrace"], "action": "SCMP_ACT_TRACE", "errnoRet": 1},
                                   {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                                    "args": [{"index": 0, "value": 2**64 - 1, "valueTwo": 0,
                                              "op": "SCMP_CMP_MASKED_EQ"}]}]})


def test_arch_unknown_to_libseccomp_is_unsupported():
    from nsbox.errors import UnsupportedError

    section = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_M68K"]}
    seccomp.validate(section)  # the spec knows it...
    with pytest.raises(UnsupportedError, match="SCMP_ARCH_M68K"):  # ...libseccomp 2.5 does not
        seccomp_compile.compile_filter(section)


def test_action_values():
    assert seccomp.action_value("SCMP_ACT_ERRNO", None) == 0x00050000 | errno.EPERM
    assert seccomp.action_value("SCMP_ACT_ERRNO", 0) == 0x00050000
    assert seccomp.action_value("SCMP_ACT_TRACE", 7) == 0x7FF00007
    assert seccomp.action_value("SCMP_ACT_KILL_PROCESS", None) == 0x80000000


# ---------------------------------------------------------------- cache
def test_cache_hit_returns_identical_bytes_and_corrupt_files_are_rewritten(tmp_path):
    cache_dir = str(tmp_path / "seccomp-cache")
    section = deny(["mkdir", "getcwd"])
    first = seccomp_compile.compiled_filter(section, cache_dir)
    assert first == seccomp_compile.compile_filter(section)
    files = os.listdir(cache_dir)
    assert len(files) == 1 and files[0].endswith(".bpf")
    path = os.path.join(cache_dir, files[0])
    before = os.stat(path)
    assert seccomp_compile.compiled_filter(section, cache_dir) == first
    assert os.stat(path).st_ino == before.st_ino  # a hit does not rewrite

    # Load/flag/listener settings do not change the program, so they share an entry.
    assert seccomp_compile.compiled_filter({**section, "flags": ["SECCOMP_FILTER_FLAG_LOG"]}, cache_dir) == first
    assert len(os.listdir(cache_dir)) == 1
    # A different section gets its own entry.
    assert seccomp_compile.compiled_filter(deny(["mkdir"]), cache_dir) != first
    assert len(os.listdir(cache_dir)) == 2

    with open(path, "r+b") as f:  # truncate to a short file
        f.truncate(20)
    assert seccomp_compile.compiled_filter(section, cache_dir) == first
    with open(path, "r+b") as f:  # flip a byte of the program
        f.seek(-3, os.SEEK_END)
        byte = f.read(1)
        f.seek(-3, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert seccomp_compile.compiled_filter(section, cache_dir) == first
    with open(path, "rb") as f:
        assert f.read().endswith(first)  # rewritten whole
    assert not [name for name in os.listdir(cache_dir) if name.startswith(".tmp-")]


def test_cached_program_is_enforced(tmp_path):
    seccomp_compile.compiled_filter(deny(["getcwd"]), str(tmp_path))
    program = seccomp_compile.compiled_filter(deny(["getcwd"]), str(tmp_path))
    assert child_value(lambda: (seccomp.load_filter(program), errno_of(os.getcwd))[1]) == errno.EPERM


def test_cache_hit_does_not_load_libseccomp(tmp_path):
    section = deny(["getcwd"])
    seccomp_compile.compiled_filter(section, str(tmp_path))
    script = textwrap.dedent(f"""
        import json
        from nsbox.runtime.security import seccomp_compile
        seccomp_compile.compiled_filter(json.loads({json.dumps(json.dumps(section))}), {str(tmp_path)!r})
        print("libseccomp" in open("/proc/self/maps").read())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    # And a miss does load it (so the check above can fail).
    out = subprocess.run([sys.executable, "-c", script.replace(str(tmp_path), str(tmp_path / "new"))],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_unwritable_cache_dir_still_compiles(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert seccomp_compile.compiled_filter(deny(["getcwd"]), str(blocker / "cache")) == \
        seccomp_compile.compile_filter(deny(["getcwd"]))


# ---------------------------------------------------------------- features
def test_features():
    feats = seccomp_compile.features()
    assert feats["enabled"] is True
    assert "SCMP_ACT_NOTIFY" in feats["actions"] and "SCMP_CMP_MASKED_EQ" in feats["operators"]
    assert {"SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"} <= set(feats["archs"])
    assert "SCMP_ARCH_M68K" not in feats["archs"]  # unknown to libseccomp 2.5
    assert feats["knownFlags"] == ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
                                   "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                                   "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]
    # Kernel 6.x knows all of them (WAIT_KILLABLE_RECV since 5.19).
    assert feats["supportedFlags"] == feats["knownFlags"]
    assert seccomp_compile.libseccomp_version() == "2.5.4"
    # The probe really tells flags apart: an unknown flag bit is rejected.
    assert not seccomp._kernel_supports_flag(1 << 30)
