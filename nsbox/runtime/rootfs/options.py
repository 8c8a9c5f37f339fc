"""The `options` of an OCI mount: mount(2) flags, propagation, recursive attributes
(mount_setattr), and the filesystem data string."""

from __future__ import annotations

import os

from nsbox._record import record
from nsbox.runtime import syscalls as sc

TYPE_CHECKING = False  # typing itself is slow to import
if TYPE_CHECKING:
    from nsbox.runtime.spec import Mount

# option -> (MS_* flags it sets, MS_* flags it clears)
_FLAG_OPTIONS: dict[str, tuple[int, int]] = {
    "defaults": (0, 0),
    "ro": (sc.MS_RDONLY, 0), "rw": (0, sc.MS_RDONLY),
    "nosuid": (sc.MS_NOSUID, 0), "suid": (0, sc.MS_NOSUID),
    "nodev": (sc.MS_NODEV, 0), "dev": (0, sc.MS_NODEV),
    "noexec": (sc.MS_NOEXEC, 0), "exec": (0, sc.MS_NOEXEC),
    "sync": (sc.MS_SYNCHRONOUS, 0), "async": (0, sc.MS_SYNCHRONOUS),
    "dirsync": (sc.MS_DIRSYNC, 0),
    "remount": (sc.MS_REMOUNT, 0),
    "mand": (sc.MS_MANDLOCK, 0), "nomand": (0, sc.MS_MANDLOCK),
    "noatime": (sc.MS_NOATIME, 0), "atime": (0, sc.MS_NOATIME),
    "nodiratime": (sc.MS_NODIRATIME, 0), "diratime": (0, sc.MS_NODIRATIME),
    "relatime": (sc.MS_RELATIME, 0), "norelatime": (0, sc.MS_RELATIME),
    "strictatime": (sc.MS_STRICTATIME, 0), "nostrictatime": (0, sc.MS_STRICTATIME),
    "lazytime": (sc.MS_LAZYTIME, 0), "nolazytime": (0, sc.MS_LAZYTIME),
    "iversion": (sc.MS_I_VERSION, 0), "noiversion": (0, sc.MS_I_VERSION),
    "silent": (sc.MS_SILENT, 0), "loud": (0, sc.MS_SILENT),
    "nosymfollow": (sc.MS_NOSYMFOLLOW, 0), "symfollow": (0, sc.MS_NOSYMFOLLOW),
    "bind": (sc.MS_BIND, 0), "rbind": (sc.MS_BIND | sc.MS_REC, 0),
}

PROPAGATION_OPTIONS: dict[str, int] = {
    "private": sc.MS_PRIVATE, "rprivate": sc.MS_PRIVATE | sc.MS_REC,
    "shared": sc.MS_SHARED, "rshared": sc.MS_SHARED | sc.MS_REC,
    "slave": sc.MS_SLAVE, "rslave": sc.MS_SLAVE | sc.MS_REC,
    "unbindable": sc.MS_UNBINDABLE, "runbindable": sc.MS_UNBINDABLE | sc.MS_REC,
}

# Recursive options (runtime-spec 1.1), applied with mount_setattr(AT_RECURSIVE):
# option -> (MOUNT_ATTR_* to set, MOUNT_ATTR_* to clear).
_RECURSIVE_OPTIONS: dict[str, tuple[int, int]] = {
    "rro": (sc.MOUNT_ATTR_RDONLY, 0), "rrw": (0, sc.MOUNT_ATTR_RDONLY),
    "rnosuid": (sc.MOUNT_ATTR_NOSUID, 0), "rsuid": (0, sc.MOUNT_ATTR_NOSUID),
    "rnodev": (sc.MOUNT_ATTR_NODEV, 0), "rdev": (0, sc.MOUNT_ATTR_NODEV),
    "rnoexec": (sc.MOUNT_ATTR_NOEXEC, 0), "rexec": (0, sc.MOUNT_ATTR_NOEXEC),
    "rnosymfollow": (sc.MOUNT_ATTR_NOSYMFOLLOW, 0), "rsymfollow": (0, sc.MOUNT_ATTR_NOSYMFOLLOW),
    "rnodiratime": (sc.MOUNT_ATTR_NODIRATIME, 0), "rdiratime": (0, sc.MOUNT_ATTR_NODIRATIME),
    # The atime mode is one field: changing it means clearing the whole field.
    "rrelatime": (sc.MOUNT_ATTR_RELATIME, sc.MOUNT_ATTR__ATIME),
    "rnoatime": (sc.MOUNT_ATTR_NOATIME, sc.MOUNT_ATTR__ATIME),
    "rstrictatime": (sc.MOUNT_ATTR_STRICTATIME, sc.MOUNT_ATTR__ATIME),
    "ratime": (sc.MOUNT_ATTR_RELATIME, sc.MOUNT_ATTR__ATIME),
    "rnostrictatime": (sc.MOUNT_ATTR_RELATIME, sc.MOUNT_ATTR__ATIME),
    "rnorelatime": (sc.MOUNT_ATTR_STRICTATIME, sc.MOUNT_ATTR__ATIME),
}

def known_mount_options() -> list[str]:
    """Every mount option prepare_rootfs understands (for the features document)."""
    return sorted({*_FLAG_OPTIONS, *PROPAGATION_OPTIONS, *_RECURSIVE_OPTIONS, "tmpcopyup", "idmap",
                   "ridmap"})


@record
class MountFlags:
    """The parsed `options` of one OCI mount."""

    flags: int = 0                 # MS_* to set (MS_BIND/MS_REC included for binds)
    clear_flags: int = 0           # MS_* the options explicitly turn off (rw, suid, dev, ...)
    propagation: list[int] = list  # applied one by one after mounting
    data: str = ""                 # filesystem-specific options, comma-joined
    is_bind: bool = False
    is_recursive_bind: bool = False
    recursive_set: int = 0         # MOUNT_ATTR_* for mount_setattr(AT_RECURSIVE)
    recursive_clear: int = 0
    copy_up: bool = False          # "tmpcopyup": seed a tmpfs with what it covers
    idmap: bool = False            # "idmap"/"ridmap" (or mappings on the mount): sources.py
    idmap_recursive: bool = False  # "ridmap": idmap the submounts of an rbind too


def parse_mount_options(options: list[str]) -> MountFlags:
    """Split OCI mount options into mount(2) flags, propagation changes and fs data."""
    result = MountFlags()
    data: list[str] = []
    for option in options:
        if option in _FLAG_OPTIONS:
            to_set, to_clear = _FLAG_OPTIONS[option]
            result.flags = (result.flags & ~to_clear) | to_set
            result.clear_flags = (result.clear_flags & ~to_set) | to_clear
        elif option in PROPAGATION_OPTIONS:
            result.propagation.append(PROPAGATION_OPTIONS[option])
        elif option in _RECURSIVE_OPTIONS:
            to_set, to_clear = _RECURSIVE_OPTIONS[option]
            result.recursive_clear = (result.recursive_clear & ~to_set) | to_clear
            result.recursive_set = (result.recursive_set & ~to_clear) | to_set
        elif option in ("idmap", "ridmap"):
            result.idmap = True
            result.idmap_recursive = option == "ridmap"
        elif option == "tmpcopyup":
            result.copy_up = True
        elif option.startswith("x-"):
            # Userspace-only hints (as mount(8) treats them); the kernel would reject them.
            continue
        else:
            data.append(option)
    result.is_bind = bool(result.flags & sc.MS_BIND)
    result.is_recursive_bind = result.is_bind and bool(result.flags & sc.MS_REC)
    result.data = ",".join(data)
    return result


def is_bind_mount(mount: Mount) -> bool:
    return mount.type == "bind" or parse_mount_options(mount.options).is_bind


def bind_source(mount: Mount, bundle: str | None = None) -> str:
    """The host path of a bind mount's source; relative sources are relative to the bundle."""
    if os.path.isabs(mount.source):
        return mount.source
    return os.path.join(bundle or os.getcwd(), mount.source)

