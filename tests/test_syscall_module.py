"""syscalls.py's two entry points, `syscall` and `clone3`, both ways: the module the
launchers have built in (bin/syscall_module.c, compiled here as an extension module
from the same source) and the ctypes fallback a plain interpreter uses (_cdata.py).
Both must give the same answers on the real kernel."""

from __future__ import annotations

import errno
import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from nsbox.runtime import _cdata
from nsbox.runtime import syscalls as sc

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "bin" / "syscall_module.c"
SYS_getpid, SYS_openat, SYS_statfs, SYS_socketpair, SYS_umount2 = 39, 257, 137, 53, 166
AT_FDCWD = -100


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory):
    """bin/syscall_module.c as an importable extension module."""
    include = sysconfig.get_path("include")
    if shutil.which("cc") is None or not os.path.exists(os.path.join(include, "Python.h")):
        pytest.skip("no C compiler or no Python headers: the launchers fall back to ctypes too")
    out = tmp_path_factory.mktemp("syscall_module") / (
        "_nsbox_syscall" + importlib.machinery.EXTENSION_SUFFIXES[0])
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-Wall", "-Werror", f"-I{include}",
                    "-o", str(out), str(SOURCE)], check=True, capture_output=True, timeout=120)
    spec = importlib.util.spec_from_file_location("_nsbox_syscall", out)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(params=["built-in", "ctypes"])
def entry(request: pytest.FixtureRequest, compiled):
    """(syscall, clone3) of one implementation."""
    if request.param == "built-in":
        return compiled.syscall, compiled.clone3
    return _cdata.raw_syscall, _cdata.clone3


def test_results_and_negative_errno(entry):
    syscall, _ = entry
    assert syscall(SYS_getpid) == os.getpid()
    # bytes are NUL-terminated path names; a failure is -errno, not an exception
    assert syscall(SYS_umount2, b"/nonexistent/nsbox-syscall-test", 0) == -errno.ENOENT


def test_negative_ints_bytes_and_writable_buffers(entry):
    syscall, _ = entry
    fd = syscall(SYS_openat, AT_FDCWD, b"/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, 0)
    assert fd >= 0
    try:
        assert os.path.samestat(os.fstat(fd), os.stat("/"))
    finally:
        os.close(fd)
    buf = bytearray(sc.StatFs.SIZE)
    assert syscall(SYS_statfs, b"/proc", buf) == 0
    assert sc.StatFs(buf).f_type == 0x9FA0  # PROC_SUPER_MAGIC
    pair = bytearray(8)
    assert syscall(SYS_socketpair, 1, 5 | os.O_CLOEXEC, 0, pair) == 0
    fds = int.from_bytes(pair[:4], "little"), int.from_bytes(pair[4:], "little")
    try:
        os.write(fds[0], b"ping")
        assert os.read(fds[1], 10) == b"ping"
    finally:
        for fd in fds:
            os.close(fd)


def test_a_ctypes_structure_is_a_writable_buffer(entry):
    syscall, _ = entry
    import ctypes

    class StatFs(ctypes.Structure):
        _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_char * 112)]

    buf = StatFs()
    assert syscall(SYS_statfs, b"/proc", buf) == 0
    assert buf.f_type == 0x9FA0


def test_a_read_only_buffer_other_than_bytes_is_refused(entry):
    syscall, _ = entry
    with pytest.raises((TypeError, BufferError)):
        syscall(SYS_statfs, b"/", memoryview(bytes(120)))


def test_too_many_arguments_are_refused(compiled):
    with pytest.raises(TypeError):
        compiled.syscall(SYS_getpid, 1, 2, 3, 4, 5, 6, 7)
    with pytest.raises(TypeError):
        compiled.syscall()


def test_clone3_forks_with_the_interpreter_s_hooks(entry):
    _, clone3 = entry
    before = os.getpid()
    pid = clone3(0, -1)
    if pid == 0:
        # The child runs Python normally (PyOS_AfterFork_Child): a new pid, working I/O.
        os._exit(7 if os.getpid() != before else 1)
    assert pid > 0
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 7


def test_clone3_failure_is_negative_errno(entry):
    _, clone3 = entry
    # CLONE_INTO_CGROUP with a descriptor that is not a cgroup directory
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        result = clone3(sc.CLONE_INTO_CGROUP, fd)
        if result == 0:
            os._exit(0)
        if result > 0:
            os.waitpid(result, 0)
            pytest.fail("clone3 into / (not a cgroup) succeeded")
        assert result in (-errno.EBADF, -errno.EINVAL, -errno.EOPNOTSUPP, -errno.ENOSYS)
    finally:
        os.close(fd)


def test_syscalls_wrappers_raise_os_errors_with_the_path():
    with pytest.raises(OSError) as info:
        sc.umount2("/nonexistent/nsbox-syscall-test")
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == "/nonexistent/nsbox-syscall-test"
    effective, permitted, _ = sc.capget()
    assert effective & permitted == effective
    fd = os.open("/proc", os.O_RDONLY | os.O_CLOEXEC)
    try:
        assert sc.statfs("/proc").f_type == sc.fstatfs(fd).f_type == 0x9FA0
    finally:
        os.close(fd)


def test_address_is_where_the_bytes_are(compiled):
    data = b"nsbox-address-test"
    for address in (compiled.address, _cdata.address):
        where = address(data)
        assert _cdata.c_char.from_address(where).value == b"n"
        assert (_cdata.c_char * len(data)).from_address(where).raw == data
        buffer = bytearray(data)
        where = address(buffer)
        assert (_cdata.c_char * len(buffer)).from_address(where).raw == data
        buffer[0] = ord("N")  # the kernel's writes land in the bytearray itself
        assert (_cdata.c_char * 1).from_address(where).raw == b"N"
        with pytest.raises(TypeError):
            address(memoryview(data))


def test_syscall_numbers_match_the_kernel_headers():
    """Every SYS_* in syscalls.py is the number the installed kernel headers give
    (those newer than the headers excepted)."""
    import re

    header = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
    if not header.exists():
        pytest.skip("no kernel headers (linux-libc-dev) to compare with")
    numbers = {name: int(number) for name, number in
               re.findall(r"#define __NR_(\w+) (\d+)", header.read_text())}
    ours = {name[4:]: getattr(sc, name) for name in dir(sc) if name.startswith("SYS_")}
    assert {name: value for name, value in ours.items()
            if name in numbers and numbers[name] != value} == {}
    assert set(ours) - set(numbers) <= {"lsm_list_modules"}  # Linux 6.8, after Debian 12's headers


def test_a_plain_interpreter_runs_containers_through_ctypes(bundle, runtime_root,
                                                             register_runtime, container_id):
    """The runtime under `python` (the script launcher a build without a compiler
    installs) takes the ctypes entry points, in the init after pivot_root too:
    mounts, /dev, capabilities, rlimits, a tmpfs and a seccomp filter."""
    import sys

    import helpers

    def edit(spec: dict) -> None:
        spec["process"]["args"] = ["sh", "-c", "mkdir /tmp/x 2>/dev/null && exit 3; "
                                   "test -c /dev/null && grep -q ' /tmp tmpfs' /proc/mounts "
                                   "&& exit 7"]
        spec["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                               "options": ["nosuid", "nodev"]})
        spec["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW",
                                    "architectures": ["SCMP_ARCH_X86_64"],
                                    "syscalls": [{"names": ["mkdir", "mkdirat"],
                                                  "action": "SCMP_ACT_ERRNO"}]}

    helpers.write_config(bundle, edit)
    script = [sys.executable, str(REPO / "bin" / "nsbox-runtime"), "--root", str(runtime_root)]
    register_runtime(script)
    probe = "import sys, nsbox.runtime.syscalls as sc; print(sc._syscall.__module__)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "nsbox.runtime._cdata"
    proc = helpers.run_cli(script, "run", "--bundle", str(bundle), container_id, check=False)
    assert proc.returncode == 7, proc  # mkdir refused by seccomp, /dev and the tmpfs there


CLONE_INIT_SCRIPT = """
import os, sys, threading, time
sys.path.insert(0, sys.argv[1])
import _nsbox_syscall as module

ran_in = []
def setup():
    ran_in.append(os.getpid())  # the child's pid, appended to the list we see
    return None
pid = module.clone_init(0, -1, setup, b"/nonexistent", [])
_, status = os.waitpid(pid, 0)
print("failed-setup", ran_in == [pid], os.waitstatus_to_exitcode(status))

fifo_path = os.path.join(sys.argv[2], "exec.fifo")
os.mkfifo(fifo_path)
fifo = os.open(fifo_path, os.O_RDWR)  # as the runtime holds the exec fifo
def setup_exec():
    return (fifo, b"/bin/sh", [b"sh", b"-c", b"echo $GREETING"], [b"GREETING=hi"])
pid = module.clone_init(0, -1, setup_exec, b"/nonexistent", [])
sys.stdout.flush()
os.write(fifo, b"0")  # `start`
_, status = os.waitpid(pid, 0)
print("exec", os.waitstatus_to_exitcode(status))

def setup_missing():
    return (fifo, b"/no/such/program", [b"x"], [])
pid = module.clone_init(0, -1, setup_missing, b"/nonexistent", [])
os.write(fifo, b"0")
_, status = os.waitpid(pid, 0)
print("missing", os.waitstatus_to_exitcode(status), os.read(fifo, 200).decode())

thread = threading.Thread(target=time.sleep, args=(0.5,))
thread.start()
print("threaded", module.clone_init(0, -1, setup, b"/nonexistent", []))
thread.join()
"""


def test_clone_init_runs_the_setup_in_our_memory_then_execs(compiled, tmp_path):
    """clone_init's child runs SETUP with our interpreter (what it appends, we
    see), hands it back, waits for the "fifo" and execs what SETUP returned,
    or writes execve's error back; a process with a second thread is refused."""
    import platform

    if not hasattr(compiled, "clone_init"):
        assert platform.machine() != "x86_64"
        pytest.skip("clone_init is x86-64 only")
    result = subprocess.run([sys.executable, "-c", CLONE_INIT_SCRIPT,
                             os.path.dirname(compiled.__file__), str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "failed-setup True 1", "hi", "exec 0",
        "missing 1 exec /no/such/program: No such file or directory",
        f"threaded {-errno.EDEADLK}"], result.stdout
