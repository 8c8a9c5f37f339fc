"""Local volumes: directories under <root>/volumes/<name>/_data, recorded in SQLite.

A named volume outlives its containers; an anonymous one (from an image's
VOLUME or `-v /path`) gets a random 64-hex name and the label
`nsbox.anonymous-for=<container id>`, so `rm -v` can find it.
"""

from __future__ import annotations

import os
import time

from nsbox.errors import ConfigError, NsboxError

TYPE_CHECKING = False  # typing's own constant costs an import of typing
if TYPE_CHECKING:
    from nsbox.engine.db import Database

VOLUMES_DIR = "volumes"
ANON_LABEL = "nsbox.anonymous-for"
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}"  # re is imported when a volume is made


class VolumeNotFound(NsboxError):
    """No volume with that name."""


class VolumeInUse(NsboxError):
    """A volume a container still uses."""


class Volumes:
    """create/list/inspect/remove of local volumes (what `nsbox volume ...` drives)."""

    def __init__(self, root: str, db: Database, users=None) -> None:  # noqa: ANN001
        self.dir = os.path.join(root, VOLUMES_DIR)
        self.db = db
        # Callable name -> list of container ids using it (given by the Engine).
        self._users = users or (lambda name: [])
        os.makedirs(self.dir, mode=0o700, exist_ok=True)

    def create(self, name: str | None = None, labels: dict[str, str] | None = None,
               anonymous: bool = False) -> dict:
        """Create volume NAME (random if None); an existing named volume is returned as is."""
        import re

        from nsbox.engine.db import sqlite
        sqlite3 = sqlite()
        if name is None:
            name = os.urandom(32).hex()
        if not re.fullmatch(_NAME, name):
            raise ConfigError(f"invalid volume name {name!r}: use [A-Za-z0-9][A-Za-z0-9_.-]*")
        existing = self.db.volume(name)
        if existing:
            return self._describe(existing)
        path = os.path.join(self.dir, name)
        data = os.path.join(path, "_data")
        row = {"name": name, "created": time.time(), "mountpoint": data,
               "labels": labels or {}, "anonymous": anonymous}
        try:
            self.db.insert_volume(row)
        except sqlite3.IntegrityError:
            return self.inspect(name)  # created concurrently by someone else: same result
        try:
            os.makedirs(data, mode=0o755, exist_ok=True)
        except OSError:
            self.db.delete_volume(name)
            raise
        self._event("create", name)
        return self.inspect(name)

    def _event(self, action: str, name: str) -> None:
        from nsbox.engine import events
        events.emit(os.path.dirname(self.dir), "volume", action, name, {"driver": "local"})

    def inspect(self, name: str) -> dict:
        """Docker-shaped description of volume NAME; VolumeNotFound if missing."""
        row = self.db.volume(name)
        if row is None:
            raise VolumeNotFound(f"no such volume: {name}")
        return self._describe(row)

    def _describe(self, row: dict) -> dict:
        from nsbox.engine.images.config import format_time
        return {"Name": row["name"], "Driver": row["driver"], "Mountpoint": row["mountpoint"],
                "CreatedAt": format_time(row["created"]), "Labels": row["labels"], "Scope": "local",
                "Options": {}, "Anonymous": row["anonymous"]}

    def list(self) -> list[dict]:
        return [self._describe(row) for row in self.db.volumes()]

    def remove(self, name: str, force: bool = False) -> None:
        """Delete volume NAME and its data; VolumeInUse if a container uses it (even with force)."""
        row = self.db.volume(name)
        if row is None:
            if force:
                return
            raise VolumeNotFound(f"no such volume: {name}")
        users = self._users(name)
        if users:
            raise VolumeInUse(f"volume {name} is in use by container {users[0][:12]}")
        import shutil

        from nsbox.engine.db import DatabaseFull
        try:
            self.db.delete_volume(name)
        except DatabaseFull:
            # A full disk: the data goes first, which frees the room the record needs.
            shutil.rmtree(os.path.join(self.dir, name), ignore_errors=True)
            self.db.delete_volume(name)
            self._event("destroy", name)
            return
        shutil.rmtree(os.path.join(self.dir, name), ignore_errors=True)
        self._event("destroy", name)

    def prune(self) -> list[str]:
        """Remove every volume no container uses; their names."""
        removed = []
        for row in self.db.volumes():
            if not self._users(row["name"]):
                self.remove(row["name"])
                removed.append(row["name"])
        return removed


def fill_from_image(rootfs: str, target: str, data_dir: str) -> bool:
    """Docker's copy-up: put what the image has at TARGET into the empty volume DATA_DIR.

    ROOTFS is the container's mounted root filesystem.  TARGET is resolved
    inside it (RESOLVE_IN_ROOT), so an image symlink cannot point the copy
    at a host directory; below it, symlinks are copied as links and never
    followed.  Owners, modes and times are kept, and the volume's own
    directory takes those of the image's directory.  Returns whether there
    was a directory to copy from.
    """
    from nsbox.runtime import syscalls as sc

    root_fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        src_fd = sc.openat2(root_fd, target.lstrip("/") or ".",
                            os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, resolve=sc.RESOLVE_IN_ROOT)
    except OSError:
        return False  # nothing there, or not a directory: the volume stays empty
    finally:
        os.close(root_fd)
    try:
        from nsbox.engine.fscopy import copy_tree

        copy_tree(src_fd, data_dir)
        st = os.fstat(src_fd)
        os.chown(data_dir, st.st_uid, st.st_gid)
        os.chmod(data_dir, st.st_mode & 0o7777)
    except OSError as exc:
        raise NsboxError(f"copying the image's {target} into its volume: {exc}") from None
    finally:
        os.close(src_fd)
    return True
