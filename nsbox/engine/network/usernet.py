"""Bridge networks for a rootless engine: a network namespace of the user's own.

A rootless engine (rootless.py) runs in a user namespace of its own but in
the host's network namespace, which belongs to the host's user namespace:
it may not make bridges, veths or firewall rules there.  So, as rootless
Podman does with its "rootless-netns", the bridges of a rootless user's
networks live in one more network namespace, made by the user's engine and
owned by its user namespace, where it is root:

    host  <-- slirp4netns (tap0, 10.0.2.100/24, NAT) -->  the user's namespace
                                                           bridges nsbox0, nsbox1...
                                                           veths to the containers
                                                           nftables table inet nsbox

It is kept as a bind mount of its nsfs file at <run_root>/netns/rootless-netns
(in the engine's own mount namespace, which the pause process keeps), with
one slirp4netns in front of it for the way out (slirp.py's files under that
same name).  A command that works on bridge networks calls enter() first:
it makes the namespace and its slirp4netns when they are missing, then moves
the command's process into it, for good (setns(2) back into the host's
namespace would need a capability there).  Everything after that - the
wiring child, nft, aardvark-dns, the monitor and its helpers - runs in it
as it would in the host's namespace for root.  When no container holds an
address on a bridge network any more, release() stops the slirp4netns and
drops the namespace (bridges are made again by the next container).

Published ports: the DNAT rules go into this namespace's table as root's go
into the host's (ports.py), and the slirp4netns forwards each host port to
the same port of 10.0.2.100, its address here (forward(), unforward()).
"""

from __future__ import annotations

import os

from nsbox._lite import flocked
from nsbox.engine.network.model import NetworkError

NAME = "rootless-netns"  # netns.py's and slirp.py's name for it, as a container id
_entered = False
_rootless: bool | None = None  # rootless.active(), once asked
# A shared flock of <run_root>/rootless-netns.users, held from enter() to the
# command's end: release() leaves the namespace alone while any command works in it
# (one that entered but has not recorded its container's lease yet, say).
_users_fd = -1


NS_GET_USERNS = 0xB701  # ioctl_ns(2): _IO(0xb7, 0x1), an fd of the owning user namespace


def _owns_its_netns() -> bool:
    """Is this process root in the user namespace that owns its network namespace?

    A rootless engine runs in a user namespace of its own (rootless.py) while
    its network namespace is the host's, owned by the host's user namespace,
    in which it holds no capability: it cannot make bridges or veths there.
    One that is root where its network namespace belongs (a container's root
    with a network namespace of its own, or inside the user's namespace of
    bridges) can."""
    import fcntl
    net = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        owner = fcntl.ioctl(net, NS_GET_USERNS)
    except PermissionError:
        return False  # the owner is outside our scope: an ancestor of our user namespace
    except OSError:
        return True  # no ioctl_ns (kernels before 4.9): let the kernel answer
    finally:
        os.close(net)
    try:
        owned = os.fstat(owner).st_ino == os.stat("/proc/self/ns/user").st_ino
    finally:
        os.close(owner)
    return owned and os.geteuid() == 0


def needed(run_root: str) -> bool:
    """Is this a rootless engine whose bridges live in the user's namespace of bridges?

    Also true in there, where the engine owns its network namespace: after
    enter(), and in a process that inherited it (a monitor forked after its
    command entered)."""
    global _entered, _rootless
    if _entered:
        return True
    if _rootless is None:
        from nsbox.engine import rootless
        _rootless = rootless.active()  # a file read: once per process
    if not _rootless:
        return False
    if not _owns_its_netns():
        return True
    if _inside(run_root):
        _entered = True  # enter() has nothing to do
        return True
    return False


def _inside(run_root: str) -> bool:
    """Is this process in the namespace kept at <run_root>/netns/rootless-netns?"""
    from nsbox.engine.network import netns
    try:
        here = os.stat("/proc/thread-self/ns/net")
        there = os.stat(netns.netns_path(run_root, NAME))
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def entered() -> bool:
    return _entered


def join(run_root: str) -> None:
    """Before making or plugging anything: into the user's namespace of bridges (made if
    missing) when this is a rootless engine; nothing for root."""
    if needed(run_root):
        enter(run_root)


def join_existing(run_root: str) -> bool:
    """Before undoing something: True once this process is where the bridges are (root:
    where it is; rootless: the user's namespace, entered); False when a rootless
    engine's namespace is gone, and with it what was to be undone."""
    if not needed(run_root):
        return True
    if not alive(run_root):
        return False
    enter(run_root)
    return True


def enter(run_root: str) -> None:
    """Move this process into the user's bridge namespace, making it first if needed.

    Irreversible; the process must be single-threaded (setns changes the
    calling thread only).  NetworkError when slirp4netns cannot run."""
    global _entered
    if _entered:
        return
    import sys
    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > 1:
        # setns(2) would move this thread alone, and the others would go on in the
        # host's namespace believing the bridges are theirs.
        raise NetworkError("a rootless program with threads cannot use bridge networks: "
                           "run the bridge commands before starting threads, or use the CLI")
    import fcntl

    from nsbox.engine.network import netns, slirp
    from nsbox.runtime import syscalls as sc

    os.makedirs(run_root, mode=0o700, exist_ok=True)
    with _locked(run_root):
        path = netns.netns_path(run_root, NAME)
        if not alive(run_root):
            why = slirp.unavailable()
            if why:
                raise NetworkError("bridge networks of a rootless user need slirp4netns "
                                   f"in front of their namespace: {why}")
            slirp.stop(run_root, NAME)  # what a crash left: a namespace or a pid file
            netns.make_netns(run_root, NAME)
            from nsbox.engine.procs import crashpoint
            crashpoint("usernet.before_slirp")
            try:
                slirp.start(run_root, NAME, "slirp4netns", with_api=True)
            except BaseException:
                netns.unmount_netns(path)
                raise
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            sc.setns(fd, sc.CLONE_NEWNET)
        finally:
            os.close(fd)
        _entered = True
        _set_up_inside()
        global _users_fd
        _users_fd = _open(run_root, ".users")
        fcntl.flock(_users_fd, fcntl.LOCK_SH)


def _open(run_root: str, suffix: str) -> int:
    return os.open(os.path.join(run_root, NAME + suffix),
                   os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _locked(run_root: str) -> flocked:
    """<run_root>/rootless-netns.lock, exclusively: one maker or releaser at a time."""
    return flocked(_open(run_root, ".lock"))


def _set_up_inside() -> None:
    """lo up and forwarding on, in the namespace this process is now in (its own)."""
    from nsbox.runtime import syscalls as sc
    sc.interface_up("lo")
    with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
        f.write("1\n")


def alive(run_root: str) -> bool:
    """Is the namespace mounted and its slirp4netns running?"""
    from nsbox.engine.network import netns, slirp
    path = netns.netns_path(run_root, NAME)
    try:
        if os.stat(path).st_dev == os.stat(os.path.dirname(path)).st_dev:
            return False  # the file, but nothing mounted on it
    except FileNotFoundError:
        return False
    pid = slirp.pid_of(run_root, NAME)
    return pid is not None


def release(engine: object) -> None:
    """Stop the slirp4netns and drop the namespace once no container holds an address on
    a bridge network (their namespaces keep veths into it)."""
    from nsbox.engine.network import netns
    run_root = engine.run_root  # type: ignore[attr-defined]
    if not os.path.lexists(netns.netns_path(run_root, NAME)):
        return  # (root's case: before slirp's imports, signal and enum, ~2 ms)
    import fcntl

    from nsbox.engine.network import model, slirp
    global _users_fd
    with _locked(run_root):
        if _users_fd >= 0:  # our own use ends here
            fcntl.flock(_users_fd, fcntl.LOCK_UN)
            os.close(_users_fd)
            _users_fd = -1
        users = _open(run_root, ".users")
        try:
            fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # another command works in it: the last one out releases it
        finally:
            os.close(users)  # (the test was all we wanted of the lock)
        if model.attachments(engine.db):  # type: ignore[attr-defined]
            return
        slirp.stop(run_root, NAME)


GUEST_ADDR = "10.0.2.100"  # slirp4netns' address for its tap0 here (its default cidr)


def forward(run_root: str, mappings: list[dict]) -> None:
    """Have the slirp4netns listen on MAPPINGS' host ports and bring them to the same
    ports here, where the DNAT rules take them on; NsboxError if one cannot be had."""
    from nsbox.engine.network import slirp
    path = slirp.api_socket_path(run_root, NAME)
    try:
        slirp.add_forwards(path, mappings, guest_addr=GUEST_ADDR, to_host_port=True)
    except BaseException:
        slirp.remove_forwards(path, mappings)
        raise


def unforward(run_root: str, mappings: list[dict]) -> None:
    from nsbox.engine.network import slirp
    if mappings:
        slirp.remove_forwards(slirp.api_socket_path(run_root, NAME), mappings)
