"""Security reports: what a container's config (and its live init) has that is weaker
than the default profile of nsbox.engine.security (`nsbox inspect --security`),
and what this host supports (`nsbox info`).

Kept apart from the profile itself so that `nsbox run`, which applies the profile,
does not load the report code.
"""

from __future__ import annotations

import os

from nsbox.engine.security import DEFAULT_CAPS, DEFAULT_PIDS_LIMIT, MASKED_PATHS, READONLY_PATHS

_NAMESPACE_TYPES = ("cgroup", "ipc", "mount", "network", "pid", "time", "user", "uts")


def _status_fields(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/status") as f:
            return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    except OSError:
        return {}


_IDENTITY_MAP = [(0, 0, 4294967295)]


def _read_id_map(path: str) -> list[tuple[int, int, int]] | None:
    try:
        with open(path) as f:
            return [(int(a), int(b), int(c)) for a, b, c in
                    (line.split() for line in f if line.strip())]
    except (OSError, ValueError):
        return None


def _through(maps: list, uid: int) -> int | None:
    """UID passed through MAPS ((inside, outside, size) lists, innermost first); None if unmapped."""
    for ranges in maps:
        for inside, outside, size in ranges:
            if inside <= uid < inside + size:
                uid = outside + uid - inside
                break
        else:
            return None
    return uid


def _uid_maps(linux: dict, namespaces: dict, pid: int) -> list:
    """The id maps that take a container uid to a host uid, innermost first.

    The engine itself may run in a user namespace (rootless mode): its own
    /proc/self/uid_map takes its ids to the host's.  A live process's
    /proc/PID/uid_map is read relative to the reader: in the reader's own
    user namespace it shows the parent's (the host's) ids, in any other the
    reader's.  Without a live process the config's uidMappings say it.
    """
    own = _read_id_map("/proc/self/uid_map") or _IDENTITY_MAP
    probe = pid
    path = namespaces.get("user") or ""
    if not probe and path.startswith("/proc/") and path.endswith("/ns/user"):
        probe = int(path.split("/")[2]) if path.split("/")[2].isdigit() else 0
    if probe:
        try:
            same = os.stat(f"/proc/{probe}/ns/user").st_ino == os.stat("/proc/self/ns/user").st_ino
            seen = _read_id_map(f"/proc/{probe}/uid_map")
        except OSError:
            seen = None
        if seen:
            return [seen] if same else [seen, own]
    mappings = linux.get("uidMappings") or []
    if "user" in namespaces and not path and mappings:
        return [[(m["containerID"], m["hostID"], m["size"]) for m in mappings], own]
    return [own]


def _live_nproc(pid: int) -> int | None:
    """The soft RLIMIT_NPROC of live PID (-1: unlimited); None when unreadable."""
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max processes"):
                    soft = line[len("Max processes"):].split()[0]
                    return -1 if soft == "unlimited" else int(soft)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _live_pids_max(pid: int) -> int | None:
    """pids.max of live PID's cgroup (-1: max); None when it has none we can read."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = [line.rstrip("\n").split(":", 2) for line in f]
    except OSError:
        return None
    candidates = []
    for fields in lines:
        if len(fields) != 3:
            continue
        _, controllers, rel = fields
        if not controllers:
            candidates += [f"/sys/fs/cgroup/unified{rel}", f"/sys/fs/cgroup{rel}"]
        elif "pids" in controllers.split(","):
            candidates.append(f"/sys/fs/cgroup/{controllers}{rel}")
    for directory in candidates:
        try:
            with open(os.path.join(directory, "pids.max")) as f:
                text = f.read().strip()
            return -1 if text == "max" else int(text)
        except (OSError, ValueError):
            continue
    return None


def posture(config: dict, pid: int = 0, peers: dict[str, str] | None = None) -> dict:
    """A container's security posture from its config.json (and its live init PID, if any).

    PEERS maps a namespace path's inode-bearing pid directory to a container
    name, to tell "shared with the host" from "shared with container X".
    Every item says whether it is weaker than nsbox's default ("weaker").
    """
    process, linux = config.get("process") or {}, config.get("linux") or {}
    items: list[dict] = []

    def item(name: str, value: object, weaker: bool, why: str = "") -> None:
        items.append({"item": name, "value": value, "weaker": weaker, "why": why})

    caps = (process.get("capabilities") or {}).get("bounding") or []
    extra = sorted(set(caps) - set(DEFAULT_CAPS))
    item("capabilities", caps, bool(extra), f"beyond the default: {', '.join(extra)}" if extra else "")
    status = _status_fields(pid) if pid else {}
    if "Seccomp" in status:
        mode = {"0": "disabled", "1": "strict", "2": "filter"}.get(status["Seccomp"].strip(), "?")
    else:
        mode = "filter" if linux.get("seccomp") else "disabled"
    profile = linux.get("seccomp") or {}
    item("seccomp", mode, mode != "filter", "no seccomp filter" if mode != "filter" else "")
    if profile:
        allow_all = profile.get("defaultAction") in ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG")
        item("seccomp default action", profile.get("defaultAction"), allow_all,
             "a denylist profile: unlisted calls are allowed" if allow_all else "")
    nnp = bool(process.get("noNewPrivileges"))
    devices_all = any(d.get("allow") and not d.get("type") and d.get("major") is None
                      for d in (linux.get("resources") or {}).get("devices") or [])
    privileged = devices_all and not linux.get("maskedPaths") and not linux.get("seccomp")
    item("no_new_privs", nnp, not nnp, "" if nnp else (
        "cleared by --privileged, as Docker and Podman do: " if privileged else "")
        + "setuid binaries can gain privileges")
    namespaces = {ns.get("type"): ns.get("path", "") for ns in linux.get("namespaces") or []}
    for ns_type in _NAMESPACE_TYPES:
        if ns_type == "user" and ns_type not in namespaces:
            continue  # no user namespace: the user mapping below says so
        if ns_type not in namespaces:
            if ns_type == "time":
                item("namespace time", "host", False, "the host's clocks (only offsets differ)")
            else:
                item(f"namespace {ns_type}", "host", True, f"shares the host's {ns_type} namespace")
        elif namespaces[ns_type]:
            path = namespaces[ns_type]
            owner = (peers or {}).get(path.rsplit("/ns/", 1)[0], path)
            item(f"namespace {ns_type}", f"shared with {owner}", True,
                 f"joins {owner}'s {ns_type} namespace")
        else:
            item(f"namespace {ns_type}", "private", False)
    # Rootless mode: the engine (and every container) is in the user's own
    # user namespace, where the container root is the unprivileged user.
    maps = _uid_maps(linux, namespaces, pid)
    rootless = (_read_id_map("/proc/self/uid_map") or _IDENTITY_MAP) != _IDENTITY_MAP
    root_host = _through(maps, 0)
    if all(m == _IDENTITY_MAP for m in maps) and "user" not in namespaces:
        item("user mapping", "none: container root is host root", False,
             "as Docker by default; see docs/security.md on user namespaces")
    elif root_host is None:
        item("user mapping", "root unmapped", False)
    elif root_host == 0:
        item("user mapping", "container root = host uid 0", True, "container root is host root")
    elif rootless:
        item("user mapping", f"container root = host uid {root_host} (rootless)", False,
             f"rootless: container root is the unprivileged host user {root_host}, "
             "its other ids the user's subordinate ids")
    else:
        item("user mapping", f"container root = host uid {root_host}", False)
    masked = linux.get("maskedPaths") or []
    missing = [p for p in MASKED_PATHS if p not in masked]
    item("masked paths", masked, bool(missing), f"unmasked: {', '.join(missing)}" if missing else "")
    readonly = linux.get("readonlyPaths") or []
    missing_ro = [p for p in READONLY_PATHS if p not in readonly]
    item("read-only paths", readonly, bool(missing_ro),
         f"writable: {', '.join(missing_ro)}" if missing_ro else "")
    # A pids cgroup (pids.max), and RLIMIT_NPROC where no cgroup is (rootless
    # without delegation): it counts the processes of the container user's
    # host uid, and does not hold for the host's root.
    pids = ((linux.get("resources") or {}).get("pids") or {}).get("limit")
    live = _live_pids_max(pid) if pid else None
    cgroup_limit = live if live is not None else pids
    cgroup_limit = cgroup_limit if cgroup_limit is not None and cgroup_limit > 0 else None
    nproc = _live_nproc(pid) if pid else None
    if nproc is None:
        nproc = next((r.get("soft") for r in process.get("rlimits") or []
                      if r.get("type") == "RLIMIT_NPROC"), None)
    user_host = _through(maps, int((process.get("user") or {}).get("uid", 0) or 0))
    if nproc is None or nproc < 0 or nproc >= 2**63 - 1 or not user_host:
        nproc = None
    if cgroup_limit and nproc:
        item("pids limit", f"{cgroup_limit}, RLIMIT_NPROC {nproc}", False,
             f"pids.max {cgroup_limit}; RLIMIT_NPROC counts every process of host uid {user_host}")
    elif cgroup_limit:
        item("pids limit", cgroup_limit, False)
    elif nproc:
        item("pids limit", f"RLIMIT_NPROC {nproc}", False,
             f"no pids cgroup: RLIMIT_NPROC counts every process of host uid {user_host}")
    else:
        item("pids limit", "unlimited", True, "no limit on the number of processes")
    devices = (linux.get("resources") or {}).get("devices") or []
    all_devices = any(d.get("allow") and not d.get("type") and d.get("major") is None
                      for d in devices)
    item("device cgroup", "all devices" if all_devices else "standard devices only", all_devices,
         "every host device is accessible" if all_devices else "")
    host_nodes = len(linux.get("devices") or [])
    if host_nodes:
        item("device nodes", f"{host_nodes} host devices in /dev", True, "host devices exposed")
    readonly_root = bool((config.get("root") or {}).get("readonly"))
    item("read-only root", readonly_root, False)
    for key, label in (("apparmorProfile", "apparmor"), ("selinuxLabel", "selinux label")):
        if process.get(key):
            item(label, process[key], False)
    return {"items": items, "weaker": [i["item"] for i in items if i["weaker"]]}


def host_report() -> dict:
    """What this host supports, for `nsbox info`."""
    from nsbox.runtime.security import lsm

    def read(path: str) -> str:
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            return ""

    seccomp_actions = read("/proc/sys/kernel/seccomp/actions_avail").split()
    try:
        from nsbox.runtime.security import seccomp_compile as seccomp_mod
        libseccomp = seccomp_mod.libseccomp_version() or ""
    except Exception:  # noqa: BLE001 - a report: absent is an answer too
        libseccomp = ""
    max_userns = read("/proc/sys/user/max_user_namespaces")
    subuid = _sub_ranges("/etc/subuid")
    subgid = _sub_ranges("/etc/subgid")
    return {
        "Namespaces": [ns for ns in ("cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts")
                       if os.path.exists(f"/proc/self/ns/{ns}")],
        "Seccomp": {"Enabled": bool(seccomp_actions), "Actions": seccomp_actions,
                    "Libseccomp": libseccomp},
        "LSMs": lsm.enabled_lsms(),
        "SELinux": lsm.selinux_enabled(),
        "AppArmor": lsm.apparmor_enabled(),
        "UserNamespaces": {"MaxUserNamespaces": int(max_userns) if max_userns.isdigit() else 0,
                           "SubUIDs": subuid, "SubGIDs": subgid},
        "DefaultProfile": {"Capabilities": DEFAULT_CAPS, "Seccomp": "nsbox default allowlist",
                           "NoNewPrivileges": True, "PidsLimit": DEFAULT_PIDS_LIMIT,
                           "ShmSize": "64m", "MaskedPaths": MASKED_PATHS,
                           "ReadonlyPaths": READONLY_PATHS},
    }


def _sub_ranges(path: str) -> list[str]:
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip() and not line.startswith("#")]
    except OSError:
        return []
