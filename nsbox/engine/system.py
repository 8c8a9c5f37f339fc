"""`nsbox system reset`: remove everything of one engine, as `podman system reset` does.

`reset(engine)` stops and removes every container (with its anonymous
volumes), then every volume and image, unmounts whatever is still mounted
below the engine's root and run root in this mount namespace, deletes the
storage, and in rootless mode ends the user's pause process.  It works
through Engine's public methods (list, remove, volumes, images) and knows
the storage only by the names the engine gives its entries.

The guard: only what the engine made goes.  In a root given with --root or
--runroot (which could be any directory) only the engine's own entries are
deleted, and the directory itself only if that leaves it empty; the
defaults (/var/lib/nsbox and /run/nsbox as root, ~/.local/share/nsbox and
the user's run root rootless) are the engine's alone and go whole.
"""

from __future__ import annotations

import os

# What the engine creates in its root (db.py, images/layout.py, storage.py, volumes.py).
ROOT_ENTRIES = ("nsbox.db", "nsbox.db-wal", "nsbox.db-shm", "nsbox.db-journal", "nsbox.db-reserve",
                "containers", "images", "layers", "volumes", "shifted", "tmp", "storage.lock",
                "build-cache", "events")
# ... and in its run root; plus one state directory per OCI runtime (its basename).
RUN_ROOT_ENTRIES = ("exits", "stdin", "tty", "bin", "netns", "wiring", "slirp4netns", "pasta", "ports",
                    "networks", "oci-versions.json", "pause.lock",
                    "pause.pid", "pause.pid.tmp")
KNOWN_RUNTIMES = ("nsbox-runtime", "runc", "crun", "youki", "runsc", "kata-runtime")


def default_roots(rootless: bool) -> tuple[str, str]:
    """The engine's own root and run root (what the CLI uses without --root/--runroot)."""
    if rootless:
        from nsbox.engine import rootless as rootless_mod

        return rootless_mod.default_root(), rootless_mod.default_run_root()
    return "/var/lib/nsbox", "/run/nsbox"


def reset(engine, rootless: bool | None = None) -> dict:  # noqa: ANN001 - containers.Engine
    """Remove ENGINE's containers, volumes, images and storage; what happened, as a dict.

    Keys: Containers, Volumes, Images (what was removed), Removed (paths
    deleted), Left (entries of a custom root that are not the engine's, kept),
    PausePid (the ended pause process, 0 if none), Errors (messages; the
    reset goes on past them).
    """
    from nsbox.errors import NsboxError

    if rootless is None:
        from nsbox.engine import rootless as rootless_mod

        rootless = rootless_mod.active()
    report: dict = {"Containers": [], "Volumes": [], "Images": [], "Removed": [], "Left": [],
                    "PausePid": 0, "Errors": []}
    runtimes = set(KNOWN_RUNTIMES)
    if engine.default_runtime:
        runtimes.add(os.path.basename(engine.default_runtime))
    for container in engine.list(all=True):
        runtimes.add(os.path.basename(container.runtime or ""))
        try:
            engine.remove(container.id, force=True, volumes=True)
            report["Containers"].append(container.id)
        except NsboxError as exc:
            report["Errors"].append(f"container {container.name}: {exc}")
    for volume in engine.volumes.list():
        name = volume.get("Name", "")
        try:
            engine.volumes.remove(name, force=True)
            report["Volumes"].append(name)
        except NsboxError as exc:
            report["Errors"].append(f"volume {name}: {exc}")
    try:
        report["Images"] = engine.images.prune(in_use=None, all=True)
    except NsboxError as exc:
        report["Errors"].append(f"images: {exc}")
    from nsbox.engine.db import close_all_connections

    close_all_connections()
    own_root, own_run_root = default_roots(rootless)
    run_entries = RUN_ROOT_ENTRIES + tuple(sorted(r for r in runtimes if r))
    if rootless:
        from nsbox.engine import rootless as rootless_mod

        # Read before the run root (and its pause.pid) goes.
        pause_pid = rootless_mod.pause_pid(engine.run_root)
    else:
        pause_pid = 0
    for path, entries, own in ((engine.root, ROOT_ENTRIES, own_root),
                               (engine.run_root, run_entries, own_run_root)):
        _unmount_below(path)
        _clear(path, entries, whole=_same_path(path, own), report=report)
    if pause_pid:
        from nsbox.engine import rootless as rootless_mod

        report["PausePid"] = rootless_mod.end_pause(pause_pid)
    return report


def _same_path(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _unmount_below(path: str) -> None:
    """Detach every mount at or below PATH in this mount namespace, deepest first."""
    from nsbox.engine.storage import mount_points
    from nsbox.runtime import syscalls

    base = os.path.realpath(path)
    try:
        points = [p for p in mount_points() if p == base or p.startswith(base + "/")]
    except OSError:
        return
    for point in sorted(points, key=len, reverse=True):
        try:
            syscalls.umount2(point, syscalls.MNT_DETACH | syscalls.UMOUNT_NOFOLLOW)
        except OSError:
            pass


def _clear(path: str, entries: tuple[str, ...], whole: bool, report: dict) -> None:
    """Delete PATH (WHOLE), or the ENTRIES in it and PATH itself if nothing else is left."""
    from nsbox.engine.storage import remove_tree

    if not os.path.lexists(path):
        return
    if whole:
        remove_tree(path)
    else:
        for name in entries:
            entry = os.path.join(path, name)
            if os.path.isdir(entry) and not os.path.islink(entry):
                remove_tree(entry)
            else:
                try:
                    os.unlink(entry)
                except OSError:
                    continue
            if not os.path.lexists(entry):
                report["Removed"].append(entry)
        try:
            left = sorted(os.listdir(path))
        except OSError:
            left = []
        report["Left"] += [os.path.join(path, name) for name in left]
        if not left:
            try:
                os.rmdir(path)
            except OSError:
                pass
    if os.path.lexists(path):
        if whole:
            report["Errors"].append(f"{path} could not be removed completely")
    else:
        report["Removed"].append(path)
