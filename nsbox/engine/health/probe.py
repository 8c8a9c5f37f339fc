"""One healthcheck: the command run in the container by the runtime's `exec`, as `nsbox exec` does.

The runtime's exec process joins the container's cgroup and namespaces and
waits for the check (its child, a session leader inside the container's
pid namespace).  Output (stdout and stderr together) is kept up to
state.MAX_OUTPUT bytes.  A check still running at its timeout is killed with
everything it started: the tree below the exec process, found in /proc and
listed before anything is signalled (so no orphan slips out to the
container's init), and each process group led in that tree.
"""

from __future__ import annotations

import os
import select
import signal
import time

from nsbox._lite import suppress
from nsbox.engine.health.state import MAX_OUTPUT, Result, truncate_output


def timeout_message(timeout_ns: int) -> str:
    from nsbox.engine.health.config import format_go_duration
    return f"Health check exceeded timeout ({format_go_duration(timeout_ns)})"


def run(argv: list[str], timeout: float, stop_fd: int = -1, die_with_us: bool = False,
        timeout_text: str = "") -> Result | None:
    """Run ARGV (the runtime's exec command line); the Result, or None if STOP_FD became readable.

    STOP_FD: a pidfd of the container's init; its exit ends the check at
    once (killed, not recorded).  DIE_WITH_US: the exec process gets
    SIGKILL if this process dies (a runner killed mid-check), for a
    single-threaded caller only (it uses preexec_fn).
    """
    import subprocess

    read_end, write_end = os.pipe()
    start = time.time()
    preexec = None
    if die_with_us:
        from nsbox.runtime.syscalls import set_pdeathsig

        def preexec() -> None:
            set_pdeathsig(signal.SIGKILL)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=write_end,
                                stderr=write_end, start_new_session=True, cwd="/",
                                preexec_fn=preexec)
    except OSError as exc:
        os.close(read_end)
        os.close(write_end)
        return Result(start, time.time(), -1, f"cannot run the check: {exc}")
    os.close(write_end)
    try:
        return _wait(proc, read_end, start, timeout, stop_fd, timeout_text)
    finally:
        os.close(read_end)
        if proc.returncode is None:  # an error here: leave nothing running
            kill_tree(proc.pid)
            with suppress(Exception):
                proc.wait(5)


def _wait(proc, read_end: int, start: float, timeout: float, stop_fd: int,  # noqa: ANN001
          timeout_text: str) -> Result | None:
    data = bytearray()
    cut = False
    pidfd = os.pidfd_open(proc.pid)
    try:
        deadline = time.monotonic() + timeout
        fds = [read_end, pidfd] + ([stop_fd] if stop_fd >= 0 else [])
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                kill_tree(proc.pid)
                proc.wait()
                return Result(start, time.time(), -1, timeout_text or "Health check exceeded "
                              f"timeout ({timeout:g}s)")
            ready = select.select(fds, [], [], left)[0]
            if stop_fd in ready:
                kill_tree(proc.pid)
                proc.wait()
                return None
            if read_end in ready:
                chunk = os.read(read_end, 65536)
                if not chunk:
                    fds.remove(read_end)
                elif len(data) <= MAX_OUTPUT:
                    data += chunk
                else:
                    cut = True  # read on and drop: a full pipe would block the check
            if pidfd in ready:
                break
        # The exec process is done; what the check wrote is in the pipe, unless
        # something it left in the background holds the pipe: take what is there.
        os.set_blocking(read_end, False)
        with suppress(BlockingIOError, OSError):
            while chunk := os.read(read_end, 65536):
                if len(data) <= MAX_OUTPUT:
                    data += chunk
                else:
                    cut = True
        code = proc.wait()
    finally:
        os.close(pidfd)
    code = 128 - code if code < 0 else code
    return Result(start, time.time(), code, truncate_output(bytes(data), cut))


def _children_map() -> dict[int, list[int]]:
    """ppid -> pids, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    """PID's descendants, children before grandchildren."""
    children = _children_map()
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(0), []):
            if child not in out:
                out.append(child)
                todo.append(child)
    return out


def _exited(pid: int) -> bool:
    """PID is gone or a zombie (left for its parent to reap)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2:][:1] in (b"Z", b"X")


def kill_tree(pid: int, grace: float = 2.0) -> None:
    """SIGKILL everything below PID (listed first, then signalled), then PID itself.

    PID (the runtime's exec process) is left to see its check die and exit
    on its own for up to GRACE seconds; it is killed after that.  Process
    groups led by a process of the tree go too (a check's own children that
    were reparented while we listed).
    """
    for _ in range(5):
        tree = descendants(pid)
        if not tree:
            break
        leaders = set()
        for p in tree:
            with suppress(OSError):
                if os.getpgid(p) == p:
                    leaders.add(p)
        for p in tree:
            with suppress(OSError):
                os.kill(p, signal.SIGKILL)
        for g in leaders:
            with suppress(OSError):
                os.killpg(g, signal.SIGKILL)
        time.sleep(0.02)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if _exited(pid):
            return
        time.sleep(0.02)
    with suppress(OSError):
        os.killpg(pid, signal.SIGKILL)  # its own session: the exec process and its group
