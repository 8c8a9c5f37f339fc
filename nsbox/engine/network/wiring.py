"""A container's network namespace and veths, made by a child process while the engine
goes on with the create and the start.

The engine leases the addresses itself (ipam.py, in its database) and then
forks one child that makes everything on the kernel's side:

1. the namespace: unshare(CLONE_NEWNET) and a bind mount of it at
   <run_root>/netns/<id>, announced on a pipe (the runtime joins it by path,
   so create() waits for that byte before it returns: mounted());
2. lo up inside; back in the engine's namespace each network's bridge (and
   its firewall rules when the bridge is new: networks.bring_up), and a veth
   per network whose peer is made inside as ethN, then its address and the
   default route (netlink.plug).

The child holds an exclusive flock on <run_root>/wiring/<id> from
before the fork (the lock is inherited) until it exits, and writes `ok` or
`err MESSAGE` there.  wait() is the join: it takes the lock, so it returns
once the child has exited, and raises unless the file says `ok`.  `run`
joins in the monitor's helper between the runtime's `create` and `start`
(the container's process cannot run before its interfaces are up, and the
child's work overlaps the runtime's create); `create` alone joins before it
returns.  The child dies with the engine process that forked it
(PR_SET_PDEATHSIG), so a killed engine leaves at most a prefix of these
steps, which attach.teardown_container undoes as before: it first takes the
lock too, so it never races a child still at work.
"""

from __future__ import annotations

import fcntl
import os

from nsbox.engine.network.model import NetworkError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nsbox.engine.network.model import Attachment, Network

_pending: dict[str, tuple[int, int]] = {}  # container id -> (child pid, ready pipe)


def status_path(run_root: str, cid: str) -> str:
    return os.path.join(run_root, "wiring", cid)


def start(run_root: str, cid: str, plan: list[tuple[Network, Attachment, str]]) -> None:
    """Fork the child that makes CID's namespace and plugs in PLAN's (network, lease,
    host veth name), the first with the default route."""
    from nsbox.engine.network import netns
    path = netns.netns_path(run_root, cid)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    os.makedirs(os.path.join(run_root, "wiring"), mode=0o700, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    status = os.open(status_path(run_root, cid),
                     os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    fcntl.flock(status, fcntl.LOCK_EX)
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        import gc
        # Short-lived: a collection here would walk (and copy, page by page) the
        # whole heap inherited from the engine; the imports below trigger several.
        gc.disable()
        try:
            # Only what it needs: an inherited lock file (the storage's, say) would stay
            # locked as long as this child holds a copy of its descriptor.
            keep = sorted({0, 1, 2, status, ready_w})
            for low, high in zip(keep, [*keep[1:], 1 << 20], strict=True):
                if high > low + 1:
                    os.closerange(low + 1, high)
            _child(parent, path, plan, ready_w)
            os.pwrite(status, b"ok\n", 0)
            code = 0
        except BaseException as err:  # noqa: BLE001 - every failure is reported
            text = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            try:
                os.pwrite(status, f"err {text}\n".encode(), 0)
            except OSError:
                pass
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(status)
    _pending[cid] = (pid, ready_r)


def _child(parent: int, path: str, plan: list, ready_w: int) -> None:  # pragma: no cover
    from nsbox.runtime import syscalls as sc
    sc.prctl(sc.PR_SET_PDEATHSIG, 9)  # SIGKILL
    if os.getppid() != parent:
        raise NetworkError("the engine process is gone")
    host = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    sc.unshare(sc.CLONE_NEWNET)
    sc.mount("/proc/thread-self/ns/net", path, None, sc.MS_BIND)
    os.write(ready_w, b"n")  # first: the engine waits for this, not for the imports below
    os.close(ready_w)
    from nsbox.engine.network import netlink, networks
    netlink.lo_up_here()
    sc.setns(host, sc.CLONE_NEWNET)
    os.close(host)
    for index, (net, lease, veth) in enumerate(plan):
        networks.bring_up(net)
        netlink.plug(net, lease, veth, path, default_route=index == 0)


def mounted(run_root: str, cid: str) -> None:
    """Once CID's namespace is mounted at its path; the child's error (NetworkError) if
    it ended before that."""
    pending = _pending.get(cid)
    if pending is None or pending[1] < 0:
        return
    pid, ready = pending
    try:
        got = os.read(ready, 1)
    finally:
        os.close(ready)
        _pending[cid] = (pid, -1)
    if got != b"n":
        wait(run_root, cid)  # raises with the child's message
        raise NetworkError("the container's network namespace was not made")


def wait(run_root: str, cid: str) -> None:
    """The join: once CID's wiring child has exited; NetworkError unless it succeeded.
    Nothing to wait for (no status file: torn down, or never bridged) is success."""
    try:
        fd = os.open(status_path(run_root, cid), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
    finally:
        os.close(fd)
    reap(cid)
    if text == "ok":
        return
    if text.startswith("err "):
        raise NetworkError(text[4:])
    raise NetworkError("the network set-up of the container was interrupted")


def failed(run_root: str, cid: str) -> bool:
    """Did CID's wiring child end without success (an error, or killed)?  False while it
    is at work, after it succeeded, and without a status file."""
    try:
        fd = os.open(status_path(run_root, cid), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # still at work: wait() joins it
        return os.pread(fd, 16, 0).decode(errors="replace").strip() != "ok"
    finally:
        os.close(fd)


def settle(run_root: str, cid: str) -> None:
    """For teardown: wait for a child still at work on CID (its result does not matter),
    then drop the status file."""
    path = status_path(run_root, cid)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    finally:
        os.close(fd)
    reap(cid)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def reap(cid: str | None = None) -> None:
    """Collect the exit of our wiring children that are done (CID's, or all)."""
    for key in [cid] if cid is not None else list(_pending):
        pending = _pending.pop(key, None)
        if pending is None:
            continue
        pid, ready = pending
        if ready >= 0:
            os.close(ready)
        try:
            os.waitpid(pid, 0 if cid is not None else os.WNOHANG)
        except ChildProcessError:
            pass
