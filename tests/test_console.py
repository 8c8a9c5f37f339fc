"""Console support on the real kernel: ptys in a private devpts, SCM_RIGHTS, recvtty."""

from __future__ import annotations

import errno
import os
import select
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable

import pytest

from nsbox.errors import ConfigError, KernelError
from nsbox.runtime import console, syscalls

PYTHON = sys.executable


def read_master_until_eof(master: int, timeout: float = 5.0) -> bytes:
    """Everything the container side writes, up to its hang-up (EIO on the master)."""
    data = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], deadline - time.monotonic())
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError as err:
            if err.errno == errno.EIO:
                return bytes(data)
            raise
        if not chunk:
            return bytes(data)
        data += chunk
    raise AssertionError(f"no hang-up from the pty; got {bytes(data)!r}")


def fork_child(body: Callable[[], None]) -> tuple[int, int]:
    """Fork a child running body() (which should exec); returns (pid, error pipe read end)."""
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(err_r)
            body()
        except BaseException:
            os.write(err_w, traceback.format_exc().encode())
        finally:
            os._exit(120)
    os.close(err_w)
    return pid, err_r


def child_failure(pid: int, err_r: int, timeout: float = 10.0) -> str:
    """Reap the child (killing it past `timeout`); its wait status and any traceback."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.01)
    with os.fdopen(err_r, "rb") as f:
        text = f.read().decode()
    return f"status {status:#x}: {text}"


def setup_private_devpts() -> None:
    """In a new mount namespace: a fresh devpts instance at /dev/pts, its ptmx at /dev/ptmx."""
    syscalls.unshare(syscalls.CLONE_NEWNS)
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    syscalls.mount("devpts", "/dev/pts", "devpts", syscalls.MS_NOSUID | syscalls.MS_NOEXEC,
                   "newinstance,ptmxmode=0666,mode=0620")
    syscalls.mount("/dev/pts/ptmx", "/dev/ptmx", None, syscalls.MS_BIND)


def test_pty_in_private_devpts_is_sent_and_becomes_controlling_tty():
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    script = "tty; stty size; echo ctty-ok > /dev/tty; echo hello"

    def body() -> None:
        parent_sock.close()
        setup_private_devpts()
        master, slave, name = console.open_pty()
        console.set_window_size(master, 37, 101)
        console.send_console_fd(child_sock, master, name)
        os.close(master)
        child_sock.close()
        console.make_controlling_tty(slave)
        os.execv("/bin/sh", ["sh", "-c", script])

    pid, err_r = fork_child(body)
    child_sock.close()
    try:
        master, name = console.recv_console_fd(parent_sock)
    except KernelError:
        pytest.fail(child_failure(pid, err_r))
    finally:
        parent_sock.close()
    try:
        # The master belongs to the child's devpts instance, not to the host's.
        assert os.fstat(master).st_dev != os.stat("/dev/pts").st_dev
        output = read_master_until_eof(master).decode()
    finally:
        os.close(master)
        failure = child_failure(pid, err_r)
    assert failure.startswith("status 0x0:"), failure
    # A new devpts instance numbers its ptys from 0: proof it is not the host's.
    assert name == "/dev/pts/0"
    lines = output.replace("\r\n", "\n").split("\n")
    assert lines[:4] == ["/dev/pts/0", "37 101", "ctty-ok", "hello"]


def test_open_pty_host(tmp_path):
    master, slave, name = console.open_pty()
    try:
        assert os.isatty(master) and os.isatty(slave)
        assert os.ttyname(slave) == name
        assert not os.get_inheritable(master) and not os.get_inheritable(slave)
        console.set_window_size(slave, 12, 34)
        assert console.get_window_size(master) == (12, 34)
        os.write(slave, b"ping\n")
        assert os.read(master, 100) == b"ping\r\n"
    finally:
        os.close(master)
        os.close(slave)


def test_open_pty_missing_ptmx(tmp_path):
    with pytest.raises(KernelError, match="open .*/nope"):
        console.open_pty(str(tmp_path / "nope"))


def test_console_socket_roundtrip_over_a_path(tmp_path):
    path = str(tmp_path / "console.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    master, slave, name = console.open_pty()
    try:
        with console.connect_console_socket(path) as conn:
            console.send_console_fd(conn, master, name)
        received, received_name = console.recv_console_fd(listener)
        try:
            assert received_name == name
            assert not os.get_inheritable(received)
            # The received fd is the same pty master: what the slave writes comes out of it.
            assert os.fstat(received).st_rdev == os.fstat(master).st_rdev
            os.write(slave, b"x\n")
            assert os.read(received, 10) == b"x\r\n"
        finally:
            os.close(received)
    finally:
        listener.close()
        os.close(master)
        os.close(slave)


def test_connect_long_socket_path(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = str(deep / "console.sock")
    assert len(path) > 108
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.getcwd()
    os.chdir(deep)
    try:
        listener.bind("console.sock")
    finally:
        os.chdir(old)
    listener.listen(1)
    try:
        console.connect_console_socket(path).close()
    finally:
        listener.close()


def test_connect_missing_socket(tmp_path):
    with pytest.raises(ConfigError, match="console socket"):
        console.connect_console_socket(str(tmp_path / "missing.sock"))


def test_recv_without_fd_is_an_error():
    a, b = socket.socketpair()
    with a, b:
        a.send(b"/dev/pts/9")
        with pytest.raises(KernelError, match="expected one fd"):
            console.recv_console_fd(b)


def start_recvtty(tmp_path, mode: str) -> tuple[subprocess.Popen, str]:
    path = str(tmp_path / "tty.sock")
    pidfile = tmp_path / "recvtty.pid"
    proc = subprocess.Popen([PYTHON, "-m", "nsbox.runtime.recvtty", path, "--mode", mode,
                             "--pid-file", str(pidfile)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while not pidfile.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"recvtty did not start: {proc.communicate()}")
        time.sleep(0.01)
    return proc, path


def spawn_console_process(path: str, script: str) -> tuple[int, int]:
    """Like a container init: connect, open a pty, hand over the master, exec on the slave."""
    def body() -> None:
        sock = console.connect_console_socket(path)
        master, slave, name = console.open_pty()
        console.send_console_fd(sock, master, name)
        os.close(master)
        sock.close()
        console.make_controlling_tty(slave)
        os.execv("/bin/sh", ["sh", "-c", script])

    return fork_child(body)


def read_until(fd: int, marker: bytes, timeout: float = 10.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 4096) if ready else b""
        if not chunk:
            raise AssertionError(f"{marker!r} not seen; got {data!r}")
        data += chunk
    return data


def test_recvtty_single_mode_copies_both_ways(tmp_path):
    proc, path = start_recvtty(tmp_path, "single")
    pid, err_r = spawn_console_process(path, 'stty -echo; echo ready; read x; echo "got $x"')
    try:
        # Type only once echo is off, or the tty would echo our input back.
        out = read_until(proc.stdout.fileno(), b"ready")
        rest, err = proc.communicate(b"abc\n", timeout=10)
        out += rest
    finally:
        failure = child_failure(pid, err_r)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert failure.startswith("status 0x0:"), failure
    assert proc.returncode == 0, err
    assert out.replace(b"\r\n", b"\n") == b"ready\ngot abc\n"
    assert not os.path.exists(path)


def test_recvtty_null_mode_drains_several_consoles(tmp_path):
    proc, path = start_recvtty(tmp_path, "null")
    children = [spawn_console_process(path, "head -c 300000 /dev/zero; echo done")
                for _ in range(3)]
    try:
        for pid, err_r in children:
            # Exits only if its 300 kB were read: a pty buffer holds far less.
            failure = child_failure(pid, err_r)
            assert failure.startswith("status 0x0:"), failure
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert out == b""
    assert not os.path.exists(path)
