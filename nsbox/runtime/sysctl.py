"""Which sysctls a container may set: only those of a namespace it owns.

/proc/sys is only partly namespaced.  A container that shares a namespace with
the host (or with the runtime) and writes one of that namespace's sysctls
changes the host's value, so each key is checked against the namespaces the
container really owns before anything is created.  The rules are runc's
(libcontainer/configs/validate), used by the runtime at `create` and by the
engine for `--sysctl`:

  * kernel.msgmax, kernel.msgmnb, kernel.msgmni, kernel.sem, kernel.shmall,
    kernel.shmmax, kernel.shmmni, kernel.shm_rmid_forced and fs.mqueue.*
    need the container's own ipc namespace;
  * net.* its own network namespace;
  * kernel.hostname and kernel.domainname its own uts namespace, and not the
    `hostname` / `domainname` field as well (two sources for one value);
  * anything else is not namespaced and is refused.

"Its own" means a new namespace, or one joined by path that is not the
runtime's own (runc checks the network namespace that way; nsbox checks ipc
and uts the same way, so a path to the host's namespace is no way round).

Keys are read the way the init writes them: each `.` or `/` separates a
directory of /proc/sys, so `net/ipv4/ip_forward` is `net.ipv4.ip_forward`.
This module imports nothing beyond `os`: `create` pays for it.
"""

from __future__ import annotations

import os

IPC_SYSCTLS = frozenset({
    "kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
    "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced",
})
UTS_SYSCTLS = {"kernel.hostname": "hostname", "kernel.domainname": "domainname"}
_PROC_NAMES = {"ipc": "ipc", "network": "net", "uts": "uts"}


def normalize(key: str) -> str | None:
    """The dotted name of the /proc/sys file KEY names, or None if it names none."""
    parts = key.replace("/", ".").split(".")
    if not key or any(p in ("", "..") for p in parts):
        return None
    return ".".join(parts)


def namespace_of(name: str) -> str | None:
    """The OCI namespace type a (normalized) sysctl belongs to, or None if it is not namespaced."""
    if name in IPC_SYSCTLS or name.startswith("fs.mqueue."):
        return "ipc"
    if name.startswith("net."):
        return "network"
    if name in UTS_SYSCTLS:
        return "uts"
    return None


def refusal(key: str, owns, fields: dict[str, str] | None = None) -> str | None:
    """Why the container may not set sysctl KEY, or None if it may.

    `owns(ns_type)` says whether the container has that namespace of its own.
    `fields` holds the config's `hostname` and `domainname` (set ones only).
    """
    name = normalize(key)
    if name is None:
        return f"sysctl {key!r} is not a valid sysctl name"
    ns_type = namespace_of(name)
    if ns_type is None:
        return f"sysctl {key!r} is not in a separate kernel namespace"
    if not owns(ns_type):
        return (f"sysctl {key!r} is not allowed in the host's {ns_type} namespace: "
                f"it needs the container's own {ns_type} namespace")
    field = UTS_SYSCTLS.get(name)
    if field and (fields or {}).get(field):
        return f"sysctl {key!r} conflicts with the {field!r} field: set only one of them"
    return None


def _is_runtime_namespace(ns_type: str, path: str) -> bool:
    """Whether PATH is the namespace of that type the runtime itself is in."""
    own = os.stat(f"/proc/self/ns/{_PROC_NAMES[ns_type]}")
    other = os.stat(path)
    return (own.st_dev, own.st_ino) == (other.st_dev, other.st_ino)


def validate(spec) -> None:
    """Refuse (ConfigError) a `linux.sysctl` entry the container's namespaces do not cover."""
    sysctls = spec.linux.sysctl
    if not sysctls:
        return
    from nsbox.errors import ConfigError

    owned: dict[str, bool] = {}

    def owns(ns_type: str) -> bool:
        if ns_type not in owned:
            ns = spec.linux.namespace(ns_type)
            if ns is None:
                owned[ns_type] = False
            elif not ns.path:
                owned[ns_type] = True
            else:
                try:
                    owned[ns_type] = not _is_runtime_namespace(ns_type, ns.path)
                except OSError as exc:
                    raise ConfigError(f"config.json: {ns_type} namespace path {ns.path!r}: "
                                      f"{exc.strerror}") from None
        return owned[ns_type]

    fields = {"hostname": spec.hostname, "domainname": spec.domainname}
    for key in sysctls:
        why = refusal(key, owns, fields)
        if why:
            raise ConfigError(f"config.json: linux.sysctl: {why}")
