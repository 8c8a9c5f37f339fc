"""Sessions and terminals of container processes, as runc makes them.

Each process the runtime starts (the init, every `exec`) leads its own session
and process group; with a terminal, the pty is its controlling tty and belongs
to the process's user (`exec -t --user 1000` can reopen its own tty).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import subprocess
import time

import pytest

from nsbox.runtime import console

# Prints: $$, then pid pgrp session tty_nr of a child in the same group, then
# the owner of the shell's terminal (or "-").
PROBE = ("echo shell=$$; cut -d' ' -f1,5,6,7 /proc/self/stat;"
         " if [ -t 0 ]; then stat -L -c owner=%u /proc/$$/fd/0; else echo owner=-; fi")


def _read_until_eof(master: int, timeout: float = 10.0) -> str:
    data = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if not ready:
            continue
        try:
            chunk = os.read(master, 4096)
        except OSError as err:
            if err.errno == errno.EIO:
                break
            raise
        if not chunk:
            break
        data += chunk
    return data.decode().replace("\r\n", "\n")


def _parse(out: str) -> dict:
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    shell = int(lines[0].split("=")[1])
    pid, pgrp, sid, tty_nr = (int(x) for x in lines[1].split())
    owner = lines[2].split("=")[1]
    return {"shell": shell, "pid": pid, "pgrp": pgrp, "sid": sid, "tty_nr": tty_nr,
            "owner": owner}


def _listen(tmp_path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "console.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    listener.settimeout(20)
    return listener, path


def _collect(listener: socket.socket, argv: list[str]) -> str:
    """Run ARGV, receive its console on LISTENER, return what the pty printed."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        master, _name = console.recv_console_fd(listener)
        try:
            out = _read_until_eof(master)
        finally:
            os.close(master)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        listener.close()
    assert proc.returncode == 0, err.decode()
    return out


@pytest.mark.parametrize("user", [None, "1000"])
def test_exec_tty_is_a_session_leader_owning_its_pty(bundle_factory, run_runtime, runtime,
                                                    container_id, tmp_path, user):
    b = bundle_factory(args=["sleep", "30"])
    run_runtime("run", "--detach", "--bundle", str(b), container_id)
    listener, path = _listen(tmp_path)
    flags = ["--user", user] if user else []
    out = _collect(listener, [*runtime, "exec", "-t", "--console-socket", path, *flags,
                              container_id, "sh", "-c", PROBE])
    got = _parse(out)
    # The shell leads its own session and group (not 0: outside the pid namespace).
    assert got["pgrp"] == got["shell"] == got["sid"], out
    assert got["tty_nr"] != 0, out  # the pty is its controlling terminal
    assert got["owner"] == (user or "0"), out
    run_runtime("delete", "--force", container_id)


def test_exec_without_tty_leads_its_own_session(bundle_factory, run_runtime, container_id):
    """As with runc: `exec` without -t is a session leader too, just without a terminal."""
    b = bundle_factory(args=["sleep", "30"])
    run_runtime("run", "--detach", "--bundle", str(b), container_id)
    got = _parse(run_runtime("exec", container_id, "sh", "-c", PROBE).stdout)
    assert got["pgrp"] == got["shell"] == got["sid"] and got["tty_nr"] == 0
    init = _parse(run_runtime("exec", container_id, "sh", "-c",
                              "echo shell=1; cut -d' ' -f1,5,6,7 /proc/1/stat; echo owner=-"
                              ).stdout)
    assert init["pgrp"] == init["sid"] == 1  # the init leads its session as well
    run_runtime("delete", "--force", container_id)


@pytest.mark.parametrize("command", ["run", "create"])
def test_terminal_init_with_a_user_owns_its_pty(bundle_factory, run_runtime, runtime,
                                               container_id, tmp_path, command):
    b = bundle_factory(args=["sh", "-c", PROBE], process__terminal=True,
                       process__user={"uid": 1000, "gid": 1000})
    listener, path = _listen(tmp_path)
    if command == "run":
        out = _collect(listener, [*runtime, "run", "--bundle", str(b), "--console-socket", path,
                                  container_id])
    else:
        proc = subprocess.Popen([*runtime, "create", "--bundle", str(b), "--console-socket",
                                 path, container_id], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        master, _name = console.recv_console_fd(listener)
        listener.close()
        try:
            assert proc.wait(timeout=20) == 0, proc.stderr.read().decode()
            proc.stderr.close()
            run_runtime("start", container_id)
            out = _read_until_eof(master)
        finally:
            os.close(master)
    got = _parse(out)
    assert got["pgrp"] == got["shell"] == got["sid"] == 1, out
    assert got["tty_nr"] != 0, out
    assert got["owner"] == "1000", out
