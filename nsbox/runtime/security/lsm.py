"""Linux security modules: which are active, and the AppArmor/SELinux exec labels.

A config that asks for an AppArmor profile or an SELinux label on a host
where that module is not active is refused (UnsupportedError) rather than
silently run unconfined: the user asked for confinement and would not get it.
validate_labels() makes that check at create time, apply_process_labels()
repeats it in init right before the label is written.
"""

from __future__ import annotations

import errno
import os

from nsbox._lazylog import get_logger
from nsbox._lite import once
from nsbox.errors import KernelError, UnsupportedError

log = get_logger(__name__)

# LSM_ID_* values from linux/lsm.h, for the lsm_list_modules(2) fallback.
_LSM_NAMES_BY_ID: dict[int, str] = {
    100: "capability",
    101: "selinux",
    102: "smack",
    103: "tomoyo",
    104: "apparmor",
    105: "yama",
    106: "loadpin",
    107: "safesetid",
    108: "lockdown",
    109: "bpf",
    110: "landlock",
    111: "ima",
    112: "evm",
    113: "ipe",
}

_SECURITYFS_LSM = "/sys/kernel/security/lsm"
_APPARMOR_ENABLED = "/sys/module/apparmor/parameters/enabled"
_SELINUX_ENFORCE = "/sys/fs/selinux/enforce"


def enabled_lsms() -> list[str]:
    """Names of the active LSMs, in the order the kernel calls them; [] if unknown."""
    return list(_enabled_lsms())


@once
def _enabled_lsms() -> tuple[str, ...]:
    try:
        with open(_SECURITYFS_LSM) as f:
            return tuple(name for name in f.read().strip().split(",") if name)
    except OSError:
        pass  # securityfs is often not mounted
    from nsbox.runtime import syscalls  # ctypes: only where securityfs is not mounted

    try:
        ids = syscalls.lsm_list_modules()
    except OSError as e:
        log.debug("cannot list LSMs (no securityfs, lsm_list_modules: %s)", e.strerror)
        return ()
    return tuple(_LSM_NAMES_BY_ID.get(lsm_id, f"lsm{lsm_id}") for lsm_id in ids)


def apparmor_enabled() -> bool:
    """True if AppArmor is active, so an exec profile can be set."""
    try:
        with open(_APPARMOR_ENABLED) as f:
            return f.read().strip().startswith("Y")
    except OSError:
        return "apparmor" in enabled_lsms()


def _selinuxfs_mounted() -> bool:
    try:
        with open("/proc/self/mounts") as f:
            return any(line.split()[2] == "selinuxfs" for line in f if line.count(" ") >= 2)
    except OSError:
        return False


def selinux_enabled() -> bool:
    """True if SELinux is active (selinuxfs present, or listed as an active LSM)."""
    return (os.path.exists(_SELINUX_ENFORCE) or _selinuxfs_mounted()
            or "selinux" in enabled_lsms())


def validate_labels(apparmor_profile: str = "", selinux_label: str = "",
                    mount_label: str = "") -> None:
    """Refuse labels for an LSM the host does not run; called at create time."""
    if apparmor_profile and not apparmor_enabled():
        raise UnsupportedError(f"apparmor profile {apparmor_profile!r} requested "
                               "but AppArmor is not enabled on this host")
    for what, label in (("selinux label", selinux_label), ("selinux mount label", mount_label)):
        if label and not selinux_enabled():
            raise UnsupportedError(f"{what} {label!r} requested "
                                   "but SELinux is not enabled on this host")


def _write_attr(paths: list[str], value: str) -> None:
    # The kernel takes the whole attribute in one write(); thread-self
    # because these attributes belong to a thread, not the process.
    last_errno = errno.ENOENT
    for path in paths:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError as e:
            last_errno = e.errno
            continue
        except OSError as e:
            raise KernelError(f"opening {path}: {e.strerror}", e.errno) from e
        try:
            os.write(fd, value.encode())
            return
        except OSError as e:
            raise KernelError(f"writing {value!r} to {path}: {e.strerror}", e.errno) from e
        finally:
            os.close(fd)
    raise KernelError(f"no LSM attribute file among {', '.join(paths)} (is /proc mounted?)",
                      last_errno)


def apply_process_labels(apparmor_profile: str = "", selinux_label: str = "") -> None:
    """Make the next execve() enter the AppArmor profile and/or SELinux label."""
    validate_labels(apparmor_profile, selinux_label)
    if apparmor_profile:
        _write_attr(["/proc/thread-self/attr/apparmor/exec", "/proc/thread-self/attr/exec"],
                    f"exec {apparmor_profile}")
    if selinux_label:
        _write_attr(["/proc/thread-self/attr/exec"], selinux_label)


def features() -> dict[str, dict[str, bool]]:
    """The linux.apparmor / linux.selinux parts of the OCI features document."""
    return {"apparmor": {"enabled": apparmor_enabled()},
            "selinux": {"enabled": selinux_enabled()}}
