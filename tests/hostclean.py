"""Finding and undoing what a container client left on the host: mounts below a
test tree, processes using it, cgroups named after its containers, and network
links or directories (cni-*/podman* bridges, /var/lib/cni, /run/netns) it made.

Used by the podman, containerd and dockerd worlds (tests/clients.py,
tests/containerd_world.py, tests/dockerd.py) and the engine benches.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from nsbox.runtime import syscalls

# --------------------------------------------------------------------------
# Mounts, processes, cgroups
# --------------------------------------------------------------------------

def _unescape_mountinfo(field_text: str) -> str:
    # mountinfo octal-escapes space, tab, newline and backslash.
    return (field_text.replace("\\040", " ").replace("\\011", "\t")
            .replace("\\012", "\n").replace("\\134", "\\"))


def mountpoints_under(root: Path, pid: int | str = "self") -> list[str]:
    """Mount points at or below root in pid's mount namespace, deepest first."""
    prefix = str(root).rstrip("/")
    found = []
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            point = _unescape_mountinfo(line.split()[4])
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def unmount_all_under(root: Path) -> list[str]:
    """Lazily unmount everything below root; returns what was still mounted."""
    leftovers = mountpoints_under(root)
    for _ in range(5):
        points = mountpoints_under(root)
        if not points:
            break
        for point in points:
            with contextlib.suppress(OSError):
                syscalls.umount2(point, syscalls.MNT_DETACH)
    return leftovers


def pids_using_tree(tree: Path) -> list[int]:
    """Live processes that belong to a test tree.

    That is: its path is in their command line (conmon, containerd, shims), or
    their root directory is inside it (container processes after pivot_root).
    """
    needle = str(tree).encode()
    root_prefix = str(tree).rstrip("/") + "/"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            if state == "Z":
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            root = os.readlink(f"/proc/{entry}/root")
        except OSError:
            continue
        if needle in cmdline or root.startswith(root_prefix):
            found.append(int(entry))
    return found


def kill_pids(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def own_cgroup_base() -> str:
    """A cgroup path that is at or below this process's cgroup in every hierarchy.

    Clients that are given an absolute cgroup path create it in every mounted
    hierarchy, so on a hybrid host the path must extend the deepest of our own
    paths, and all the others must be its prefixes.
    """
    paths = []
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controllers.startswith("name=") and controllers != "name=systemd":
                continue
            paths.append(path)
    deepest = max(paths, key=len)
    for path in paths:
        if not (deepest + "/").startswith(path.rstrip("/") + "/"):
            raise RuntimeError(f"own cgroups are not nested: {paths}")
    return deepest.rstrip("/")


def _own_cgroup_dirs() -> list[Path]:
    """This process's cgroup directory in every mounted hierarchy."""
    base = Path("/sys/fs/cgroup")
    pure_v2 = (base / "cgroup.controllers").exists()
    dirs = []
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if not controllers:
                root = base if pure_v2 else base / "unified"
            else:
                root = base / controllers.removeprefix("name=")
            if root.is_dir():
                dirs.append(root / path.lstrip("/"))
    return dirs


def _rmdir_bottom_up(top: Path) -> None:
    for dirpath, _, _ in sorted(os.walk(top), key=lambda t: t[0].count("/"), reverse=True):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)


def remove_leaked_cgroups(container_ids: set[str], max_depth: int = 4) -> list[str]:
    """Find (and rmdir) cgroups below our own whose name contains a container id.

    A runtime given no cgroupsPath may still create cgroups named after the
    container (runc does); they must be gone once the container is deleted.
    """
    if not container_ids:
        return []
    leaked = []
    for own in _own_cgroup_dirs():
        base_depth = str(own).count("/")
        for dirpath, dirnames, _ in os.walk(own):
            if str(dirpath).count("/") - base_depth >= max_depth:
                dirnames.clear()
            for name in list(dirnames):
                if any(cid in name for cid in container_ids):
                    leaked.append(os.path.join(dirpath, name))
                    dirnames.remove(name)
    for path in leaked:
        _rmdir_bottom_up(Path(path))
    return leaked


def describe_leaked_cgroups(leaked: list[str]) -> str:
    names = sorted({os.path.basename(path) for path in leaked})
    return (f"{len(leaked)} cgroup dirs left behind for {len(names)} containers "
            f"({', '.join(name[:16] for name in names)}), e.g. {leaked[0]}")


def hierarchy_roots() -> list[Path]:
    """The root directory of every mounted cgroup hierarchy (just one on pure v2)."""
    base = Path("/sys/fs/cgroup")
    if (base / "cgroup.controllers").exists():
        return [base]
    return [p for p in base.iterdir() if p.is_dir() and not p.is_symlink()]


def remove_cgroup_dirs(relative: str) -> None:
    """rmdir a cgroup path (relative to each hierarchy root) bottom-up in every hierarchy."""
    own_dirs = set(_own_cgroup_dirs())
    for root in hierarchy_roots():
        top = root / relative.lstrip("/")
        if top.is_dir():
            _rmdir_bottom_up(top)
        # The parents a client made on the way (podman/conmon create the whole
        # --cgroup-parent path in hierarchies where our own cgroup is the root)
        # go too, while empty; never our own cgroup or anything above it.
        parent = top.parent
        while parent != root and parent not in own_dirs and root in parent.parents:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent


def remove_test_tree(tree: Path, container_ids: set[str], cgroup_dir: str | None,
                     stray_wait: float = 0) -> list[str]:
    """What every client world's teardown does once its client is done: kill the
    processes still using TREE (after waiting up to STRAY_WAIT seconds for them
    to exit), unmount below it, remove the cgroups its containers leaked and
    CGROUP_DIR, then TREE itself.  Returns a problem line for each leftover."""
    problems = []
    deadline = time.monotonic() + stray_wait
    while (strays := pids_using_tree(tree)) and time.monotonic() < deadline:
        time.sleep(0.1)
    if strays:
        problems.append(f"processes left running: {strays}")
        kill_pids(strays)
    leftover_mounts = unmount_all_under(tree)
    if leftover_mounts:
        problems.append(f"mounts left: {leftover_mounts}")
    leaked_cgroups = remove_leaked_cgroups(container_ids)
    if leaked_cgroups:
        problems.append(describe_leaked_cgroups(leaked_cgroups))
    if cgroup_dir:
        remove_cgroup_dirs(cgroup_dir)
    shutil.rmtree(tree, ignore_errors=True)
    return problems


# --------------------------------------------------------------------------
# The host's network state
# --------------------------------------------------------------------------

# Runs the command in a new network namespace (util-linux).
PRIVATE_NET = ("unshare", "--net", "--")
# Bridges a container client makes on the host for its default network (podman's
# CNI bridge is cni-podman0, netavark's podman0); deleted when they appear.
CLIENT_BRIDGE_PREFIXES = ("cni-", "podman")
# Directories CNI and podman's netns package create on the host.
CNI_DIR = "/var/lib/cni"
NETNS_DIR = "/run/netns"


@dataclass(frozen=True)
class HostNet:
    links: frozenset[str]
    dirs: frozenset[str]


def _link_names() -> frozenset[str]:
    return frozenset(os.listdir("/sys/class/net"))


def host_net_state() -> HostNet:
    """What of the host's network a client could leave behind, as it is now."""
    return HostNet(links=_link_names(),
                   dirs=frozenset(d for d in (CNI_DIR, NETNS_DIR) if os.path.lexists(d)))


def _remove_new_netns_dir(who: str) -> str:
    """Undo a /run/netns podman made: its cni-* namespaces, then the self bind mount
    (podman, like `ip netns add`, bind-mounts the directory on itself)."""
    netns = Path(NETNS_DIR)
    for entry in netns.glob("cni-*"):
        with contextlib.suppress(OSError):
            syscalls.umount2(str(entry), syscalls.MNT_DETACH)
        with contextlib.suppress(OSError):
            entry.unlink()
    left = sorted(p.name for p in netns.iterdir())
    if left:  # someone else's namespaces: not ours to remove
        return f"{who} made {NETNS_DIR} on the host; left as it now holds {left}"
    for _ in range(5):
        if NETNS_DIR not in mountpoints_under(netns):
            break
        with contextlib.suppress(OSError):
            syscalls.umount2(NETNS_DIR, syscalls.MNT_DETACH)
    with contextlib.suppress(OSError):
        netns.rmdir()
    return f"{who} made {NETNS_DIR} on the host (removed)"


def undo_host_net_changes(before: HostNet, who: str) -> list[str]:
    """Remove client-made bridges and network directories that are new since BEFORE;
    returns a problem line for each (their appearance is the bug, not the cleanup)."""
    problems = []
    for link in sorted(_link_names() - before.links):
        if link.startswith(CLIENT_BRIDGE_PREFIXES):
            subprocess.run(["ip", "link", "delete", link], check=False, capture_output=True)
            problems.append(f"{who} made host network link {link} (deleted)")
    if CNI_DIR not in before.dirs and os.path.lexists(CNI_DIR):
        shutil.rmtree(CNI_DIR, ignore_errors=True)  # only CNI plugins write there
        problems.append(f"{who} made {CNI_DIR} on the host (removed)")
    if NETNS_DIR not in before.dirs and os.path.isdir(NETNS_DIR):
        problems.append(_remove_new_netns_dir(who))
    return problems
