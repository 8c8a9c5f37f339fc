"""Cgroups for containers on v1, v2 and hybrid hosts.

This module is the hot path every `create`, `exec` and `delete` imports:
detecting the host's hierarchies, resolving an OCI cgroupsPath to one
directory per hierarchy, creating them, moving processes in, listing pids
and removing the directories again.  The rest lives in submodules imported
only when needed:

- `manager`: `Manager`, one interface over v1, v2 and hybrid (limits,
  freezer, stats, OOM events, destroy);
- `resources`: OCI linux.resources -> validated list of cgroup file writes;
- `convert`: the v1 <-> v2 value conversions (pure functions);
- `v1`, `v2`: what is specific to each version (freezer, stats, OOM
  notification; on v2 enabling controllers and the BPF device filter);
- `systemd`: the systemd driver (a transient scope over D-Bus, cgroup v2 only);
- `devices_bpf`: the cgroup2 device filter as a BPF program;
- `host`: the mounted hierarchies, the host's mode and the one-write file I/O (below all the others).
"""

from __future__ import annotations

import errno
import os
import time

from nsbox._lite import suppress
from nsbox.errors import ConfigError, KernelError
from nsbox.runtime.cgroups.host import (  # noqa: F401 - the package's names
    UNIFIED,
    Hierarchy,
    _v1_controllers,
    hierarchies,
    mode,
    own_cgroups,
    read_file,
    write_file,
)


def resolve(cgroups_path: str, container_id: str, systemd: bool = False) -> dict[str, str]:
    """Map an OCI cgroupsPath to an absolute directory per hierarchy."""
    if systemd or (cgroups_path.count(":") == 2 and not cgroups_path.startswith("/")):
        return _resolve_systemd(cgroups_path, container_id)
    if ".." in cgroups_path.split("/"):
        raise ConfigError(f"config.json: linux.cgroupsPath must not contain '..': {cgroups_path!r}")
    mine = own_cgroups()
    out = {}
    for h in hierarchies():
        if cgroups_path.startswith("/"):
            rel = cgroups_path
        else:
            base = mine.get(h.key, "/")
            rel = os.path.join(base, cgroups_path or f"nsbox-{container_id}")
        if not rel.startswith(h.root):
            # The hierarchy is mounted at a sub-root (inside a cgroup namespace).
            rel = os.path.join(h.root, rel.lstrip("/"))
        # relpath from "/" (the usual root) is the normalized path without its
        # slash: ~8 µs less per hierarchy, nine of them on a v1 host.
        below = (os.path.normpath(rel).lstrip("/") if h.root == "/"
                 else os.path.relpath(rel, h.root))
        out[h.key] = os.path.normpath(os.path.join(h.mountpoint, below))
    return out


# cgroup2 directory -> (slice, unit, description) of a systemd scope that
# resolve() planned and create() is to start (the same process does both).
_SYSTEMD_SCOPES: dict[str, tuple[str, str, str]] = {}


def _resolve_systemd(cgroups_path: str, container_id: str) -> dict[str, str]:
    from nsbox.runtime.cgroups import systemd as sd

    sd.check_usable()  # systemd as init, cgroup v2, the D-Bus client: else a clear error
    slice_name, unit = sd.parse(cgroups_path, container_id)
    mount = next(h for h in hierarchies() if h.key == UNIFIED)
    rel = os.path.join(sd.expand_slice(slice_name), unit)
    path = os.path.normpath(os.path.join(mount.mountpoint, os.path.relpath(rel, mount.root)))
    _SYSTEMD_SCOPES[path] = (slice_name, unit, f"nsbox container {container_id}")
    return {UNIFIED: path}


def create(paths: dict[str, str]) -> list[str]:
    """Make every directory; returns those this call created (to remove on failure)."""
    created = []
    for key, path in paths.items():
        scope = _SYSTEMD_SCOPES.pop(path, None) if key == UNIFIED else None
        if scope is not None:
            from nsbox.runtime.cgroups import systemd as sd

            sd.start(path, *scope)  # systemd makes the cgroup, delegated to us
            created.append(path)
            continue
        offered = None
        if key == UNIFIED and mode() == "v2":
            from nsbox.runtime.cgroups import v2

            # What the nearest existing ancestor can pass down, known only before mkdir.
            offered = v2.available_controllers(path)
        for attempt in range(5):
            missing = []
            p = path
            while not os.path.isdir(p):
                missing.append(p)
                p = os.path.dirname(p)
            try:
                for d in reversed(missing):
                    try:
                        os.mkdir(d)
                        created.append(d)
                    except FileExistsError:
                        pass
                    if "cpuset" in key.split(","):
                        _inherit_cpuset(d)
                break
            except FileNotFoundError:
                # A shared parent (/nsbox) that another container's delete just
                # removed, being empty: make it again.
                if attempt < 4:
                    continue
                remove_dirs(created)
                raise KernelError(f"create cgroup {path}: a parent kept disappearing") from None
            except OSError as exc:
                remove_dirs(created)
                raise KernelError(f"create cgroup {d}: {exc.strerror}", exc.errno) from None
        if offered:
            # Pass every controller the nearest ancestor offers down to the
            # new directory, so limits, stats and OOM events have their files.
            # Failing here (a parent that holds processes) only costs limits.
            v2.enable_controllers(path, offered, strict=False)
    return created


def _inherit_cpuset(path: str) -> None:
    # A v1 cpuset cgroup starts empty and refuses tasks until cpus/mems are set.
    parent = os.path.dirname(path)
    for name in ("cpuset.cpus", "cpuset.mems"):
        if read_file(os.path.join(path, name)).strip():
            continue
        write_file(os.path.join(path, name), read_file(os.path.join(parent, name)).strip())


def add_process(paths: dict[str, str], pid: int, only_unified: bool = False) -> None:
    """Move process PID (all its threads) into PATHS; ONLY_UNIFIED skips the v1 hierarchies."""
    for key, path in paths.items():
        if only_unified and key != UNIFIED:
            continue
        try:
            write_file(os.path.join(path, "cgroup.procs"), str(pid))
        except OSError as exc:
            raise KernelError(f"move {pid} into cgroup {path}: {exc.strerror}", exc.errno) from None


def join_v1(paths: dict[str, str]) -> None:
    """Move the calling process, which must have a single thread, into its v1 cgroups.

    It writes 0 to each v1 `tasks` file, which moves just the writing thread:
    for that case the kernel skips the global threadgroup lock, whose
    acquisition waits for an RCU grace period (7-10 ms on this kind of host)
    when a pid is written to cgroup.procs.  The cgroup2 hierarchy offers no
    such shortcut (a thread cannot leave its domain), so it is left out.
    """
    for key, path in paths.items():
        if key == UNIFIED:
            continue
        try:
            write_file(os.path.join(path, "tasks"), "0")
        except OSError as exc:
            raise KernelError(f"join cgroup {path}: {exc.strerror}", exc.errno) from None


def join(paths: dict[str, str], born_in_unified: bool = False) -> None:
    """Move the calling single-threaded process into PATHS, cheaply where the kernel allows.

    BORN_IN_UNIFIED: fork_into() already placed us in the cgroup2 one.
    """
    join_v1(paths)
    if not born_in_unified:
        add_process(paths, os.getpid(), only_unified=True)


def fork_into(paths: dict[str, str], ns_flags: int = 0) -> tuple[int, bool]:
    """fork(); the child starts in PATHS' cgroup2 directory where the kernel can put it there.

    Returns (pid, born_in_unified): 0 in the child, as os.fork().  When
    born_in_unified is False the caller still has to move the child into
    the cgroup2 hierarchy (add_process or join).  See
    syscalls.fork_into_cgroup for why being born there matters.  NS_FLAGS
    (CLONE_NEW*): the child is born in those new namespaces too; OSError if
    the kernel refuses them.
    """
    unified = paths.get(UNIFIED)
    fd = -1
    if unified or ns_flags:
        from nsbox.runtime import syscalls as sc
    if unified:
        try:
            fd = os.open(unified, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            fd = -1
    try:
        if fd >= 0:
            try:
                return sc.clone_fork(ns_flags, fd), True
            except OSError:
                pass  # refused (an old kernel, a seccomp filter): fork and move instead
        if ns_flags:
            return sc.clone_fork(ns_flags), False
    finally:
        if fd >= 0:
            os.close(fd)
    return os.fork(), False


def clone_init_into(paths: dict[str, str], ns_flags: int, setup, state_dir: str,
                    created_dirs: list[str]) -> int:
    """syscalls.clone_init with the child born in PATHS' cgroup2 directory, if
    there is one (moving it there later would cost what fork_into avoids).

    OSError when that directory cannot be opened or the kernel refuses the
    clone: nothing ran, and the caller forks instead.
    """
    from nsbox.runtime import syscalls as sc

    unified = paths.get(UNIFIED)
    fd = os.open(unified, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if unified else -1
    try:
        return sc.clone_init(ns_flags, fd, setup, state_dir, created_dirs)
    finally:
        if fd >= 0:
            os.close(fd)


def pids(paths: dict[str, str]) -> list[int]:
    """Every process in the container's cgroup (recursively)."""
    for key in (UNIFIED, "pids", "freezer", "memory", "cpu,cpuacct", "cpu"):
        base = paths.get(key)
        if base and os.path.isdir(base):
            break
    else:
        base = next((p for p in paths.values() if os.path.isdir(p)), None)
        if base is None:
            return []
    found: list[int] = []
    for dirpath, _dirs, _files in os.walk(base):
        with suppress(OSError):
            found.extend(int(x) for x in read_file(os.path.join(dirpath, "cgroup.procs")).split())
    return sorted(set(found))


def remove_dirs(dirs: list[str]) -> None:
    for d in sorted(dirs, key=len, reverse=True):
        _rmdir_retry(d)


def _rmdir_retry(path: str) -> None:
    for _ in range(50):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise KernelError(f"remove cgroup {path}: {exc.strerror}", exc.errno) from None
            time.sleep(0.01)
    raise KernelError(f"remove cgroup {path}: still busy")


def is_frozen(paths: dict[str, str]) -> bool:
    """Whether the container's freezer (v1) or cgroup.freeze (v2) says frozen or freezing."""
    freezer = paths.get("freezer")
    if freezer:
        with suppress(OSError):
            return read_file(os.path.join(freezer, "freezer.state")).strip() in ("FROZEN", "FREEZING")
        return False
    unified = paths.get(UNIFIED)
    if unified:
        with suppress(OSError):
            return read_file(os.path.join(unified, "cgroup.freeze")).strip() == "1"
    return False


def thaw(paths: dict[str, str]) -> None:
    """Thaw a frozen container, quietly: a frozen v1 task does not die of SIGKILL until then."""
    if not is_frozen(paths):
        return
    freezer = paths.get("freezer")
    with suppress(OSError):
        if freezer:
            with open(os.path.join(freezer, "freezer.state"), "w") as f:
                f.write("THAWED")
        else:
            with open(os.path.join(paths[UNIFIED], "cgroup.freeze"), "w") as f:
                f.write("0")


def owned_dirs(paths: dict[str, str], created: list[str] | None
               ) -> tuple[dict[str, str], list[str]]:
    """What delete removes: the container's own directories (by hierarchy) that
    CREATED lists (None: unknown, the leaves count as ours), and the parents
    create made for a nested cgroupsPath, deepest first."""
    ours = set(created) if created is not None else set(paths.values())
    owned = {k: p for k, p in paths.items() if p in ours}
    return owned, sorted(ours - set(paths.values()), key=len, reverse=True)


def destroy(paths: dict[str, str], created: list[str] | None = None) -> None:
    """Kill what is left in the cgroup, then remove the directories (children first).

    CREATED lists the directories this runtime made (state.json keeps it).
    Only those are removed, with any sub-cgroups the container made inside
    them; a pre-existing directory (a shared cgroupsPath) is left in place
    and its processes alone.  None means unknown: the leaves count as ours.
    """
    owned, parents = owned_dirs(paths, created)
    left = pids(owned) if owned else []
    if left:
        for pid in left:
            with suppress(ProcessLookupError):
                os.kill(pid, 9)  # SIGKILL
        thaw(owned)
        deadline = time.monotonic() + 2
        while pids(owned) and time.monotonic() < deadline:
            time.sleep(0.005)
    for path in owned.values():
        try:
            os.rmdir(path)  # the usual case: no sub-cgroups, nothing left inside
            continue
        except FileNotFoundError:
            continue
        except OSError:
            pass  # sub-cgroups, or a task still on its way out: children first, with retries
        if not os.path.isdir(path):
            continue
        subdirs = [dp for dp, _, _ in os.walk(path)]
        for d in sorted(subdirs, key=len, reverse=True):
            _rmdir_retry(d)
    # Parents made for a nested cgroupsPath go too, unless something else
    # lives there now (another container's cgroup, for instance).
    for d in parents:
        try:
            os.rmdir(d)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                raise KernelError(f"remove cgroup {d}: {exc.strerror}", exc.errno) from None
