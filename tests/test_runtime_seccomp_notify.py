"""SCMP_ACT_NOTIFY through the runtime: the notify fd reaches a seccomp agent.

The agent here is a thread of the test: it accepts on linux.seccomp.listenerPath,
receives the OCI agent message with the fd, and answers every `mkdir` itself
(success, without creating anything), which only it can do.
"""

from __future__ import annotations

import array
import fcntl
import json
import os
import select
import socket
import struct
import threading

import host_features
import pytest

pytestmark = pytest.mark.skipif("user_notif" not in host_features.seccomp_actions(),
                                reason="the kernel offers no SECCOMP_RET_USER_NOTIF "
                                       "(/proc/sys/kernel/seccomp/actions_avail; Linux >= 5.0)")

NOTIF_RECV = 0xC0502100  # SECCOMP_IOCTL_NOTIF_RECV
NOTIF_SEND = 0xC0182101  # SECCOMP_IOCTL_NOTIF_SEND


class Agent(threading.Thread):
    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(4)
        self.messages: list[dict] = []
        self.handled = 0
        self.stop = threading.Event()

    def run(self) -> None:
        fds: list[int] = []
        while not self.stop.is_set():
            ready, _, _ = select.select([self.listener, *fds], [], [], 0.1)
            for item in ready:
                if item is self.listener:
                    conn, _ = self.listener.accept()
                    with conn:
                        data, ancdata, _, _ = conn.recvmsg(65536, socket.CMSG_SPACE(4))
                        while True:
                            more = conn.recv(65536)
                            if not more:
                                break
                            data += more
                    self.messages.append(json.loads(data))
                    fd_array = array.array("i")
                    for level, kind, payload in ancdata:
                        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                            fd_array.frombytes(payload[: len(payload) - len(payload) % 4])
                    fds.extend(fd_array)
                else:
                    self._answer(item)
        for fd in fds:
            os.close(fd)

    def _answer(self, fd: int) -> None:
        buf = bytearray(80)
        try:
            fcntl.ioctl(fd, NOTIF_RECV, buf)
        except OSError:
            return  # the process went away
        notif_id = struct.unpack_from("<Q", buf)[0]
        fcntl.ioctl(fd, NOTIF_SEND, bytearray(struct.pack("<QqiI", notif_id, 0, 0, 0)))
        self.handled += 1


@pytest.fixture
def agent(tmp_path):
    path = str(tmp_path / "agent.sock")
    thread = Agent(path)
    thread.start()
    yield path, thread
    thread.stop.set()
    thread.join(5)
    thread.listener.close()


def notify_profile(listener_path: str) -> dict:
    return {"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": listener_path,
            "listenerMetadata": "nsbox-test",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]}


SCRIPT = "mkdir /tmp/made && echo mkdir-ok; test -d /tmp/made && echo exists || echo absent"


def test_notify_fd_reaches_the_agent_from_init(bundle_factory, run_runtime, container_id, agent):
    path, thread = agent
    b = bundle_factory(args=["sh", "-c", SCRIPT], linux__seccomp=notify_profile(path))
    out = run_runtime("run", "--bundle", str(b), container_id).stdout
    # mkdir "succeeded" without creating anything: the agent answered it.
    assert out.split() == ["mkdir-ok", "absent"]
    assert thread.handled >= 1
    msg = thread.messages[0]
    assert msg["fds"] == ["seccompFd"]
    assert msg["metadata"] == "nsbox-test"
    assert msg["state"]["id"] == container_id
    assert msg["pid"] == msg["state"]["pid"] > 0


def test_notify_fd_reaches_the_agent_from_exec(bundle_factory, run_runtime, container_id, agent):
    path, thread = agent
    b = bundle_factory(args=["sleep", "100"], linux__seccomp=notify_profile(path))
    run_runtime("run", "--detach", "--bundle", str(b), container_id)
    try:
        init_pid = run_runtime("state", container_id).stdout
        out = run_runtime("exec", container_id, "sh", "-c", SCRIPT).stdout
        assert out.split() == ["mkdir-ok", "absent"]
        assert len(thread.messages) == 2
        exec_msg = thread.messages[1]
        assert exec_msg["pid"] != json.loads(init_pid)["pid"]
        assert exec_msg["state"]["status"] == "running"
    finally:
        run_runtime("delete", "--force", container_id)


def test_notify_without_an_agent_fails_cleanly(bundle_factory, run_runtime, container_id, tmp_path,
                                               runtime_root):
    b = bundle_factory(args=["true"], linux__seccomp=notify_profile(str(tmp_path / "nobody.sock")))
    res = run_runtime("run", "--bundle", str(b), container_id, check=False)
    assert res.returncode != 0
    assert "seccomp" in res.stderr and "agent" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (runtime_root / container_id).exists()
