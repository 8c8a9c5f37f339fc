"""The OCI runtime spec (config.json) as small typed records.

`load_bundle_config` reads and validates a bundle's config.json; every
problem is reported as a ConfigError naming the offending field.  Sections
owned by other modules (linux.resources, linux.seccomp) are kept as plain
dicts and validated by those modules.
"""

from __future__ import annotations

import os

from nsbox import _json
from nsbox._record import record
from nsbox.errors import BundleError, ConfigError

SPEC_VERSION = "1.2.0"

# Linux's resource limits: an unknown one must fail at create, not when the
# process is about to start.
RLIMIT_TYPES = frozenset(f"RLIMIT_{name}" for name in (
    "AS", "CORE", "CPU", "DATA", "FSIZE", "LOCKS", "MEMLOCK", "MSGQUEUE", "NICE", "NOFILE",
    "NPROC", "RSS", "RTPRIO", "RTTIME", "SIGPENDING", "STACK"))

NAMESPACE_TYPES = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time")


# ---------------------------------------------------------------- validation helpers
def _get(obj: dict, key: str, kind: type | tuple[type, ...], where: str, default: object = None,
         required: bool = False) -> object:
    if key not in obj or obj[key] is None:
        if required:
            raise ConfigError(f"config.json: {where}{key} is required")
        return default
    value = obj[key]
    # bool is an int subclass; never accept it where a number is wanted.
    if isinstance(value, bool) and kind is not bool and (kind is int or (isinstance(kind, tuple) and bool not in kind)):
        raise ConfigError(f"config.json: {where}{key} must be {_kind_name(kind)}")
    if not isinstance(value, kind):
        raise ConfigError(f"config.json: {where}{key} must be {_kind_name(kind)}, not {type(value).__name__}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {dict: "an object", list: "an array", str: "a string", int: "an integer",
             bool: "a boolean", float: "a number"}
    if isinstance(kind, tuple):
        return " or ".join(names.get(k, k.__name__) for k in kind)
    return names.get(kind, kind.__name__)


def _str_list(obj: dict, key: str, where: str, required: bool = False) -> list[str]:
    values = _get(obj, key, list, where, default=[], required=required)
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise ConfigError(f"config.json: {where}{key}[{i}] must be a string")
    return list(values)


def _uint(obj: dict, key: str, where: str, default: int | None = None, required: bool = False,
          bits: int = 32) -> int | None:
    value = _get(obj, key, int, where, default=default, required=required)
    if value is not None and not (0 <= value < 2**bits):
        raise ConfigError(f"config.json: {where}{key} is out of range: {value}")
    return value


def _objects(obj: dict, key: str, where: str) -> list[tuple[dict, str]]:
    items = _get(obj, key, list, where, default=[])
    out = []
    for i, item in enumerate(items):
        w = f"{where}{key}[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"config.json: {w} must be an object")
        out.append((item, w + "."))
    return out


# ---------------------------------------------------------------- records
@record
class Root:
    path: str
    readonly: bool = False


@record
class User:
    uid: int = 0
    gid: int = 0
    umask: int | None = None
    additional_gids: list[int] = list


@record
class Capabilities:
    bounding: list[str] = list
    effective: list[str] = list
    inheritable: list[str] = list
    permitted: list[str] = list
    ambient: list[str] = list


@record
class Rlimit:
    type: str
    hard: int
    soft: int


@record
class Process:
    args: list[str]
    cwd: str = "/"
    env: list[str] = list
    terminal: bool = False
    console_size: tuple[int, int] | None = None  # (height, width)
    user: User = User
    capabilities: Capabilities | None = None
    rlimits: list[Rlimit] = list
    no_new_privileges: bool = False
    oom_score_adj: int | None = None
    apparmor_profile: str = ""
    selinux_label: str = ""


@record
class Mount:
    destination: str
    type: str = ""
    source: str = ""
    options: list[str] = list
    # An idmapped mount (runtime-spec 1.1): source ids (containerID) appear as hostID.
    uid_mappings: list[IdMapping] = list
    gid_mappings: list[IdMapping] = list


@record
class Hook:
    path: str
    args: list[str] = list
    # None: no "env" in config.json, the hook gets the runtime's environment (as
    # with runc and crun); a list, even an empty one, is exactly its environment.
    env: list[str] | None = None
    timeout: int | None = None


HOOK_KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")


@record
class Namespace:
    type: str
    path: str = ""


@record
class IdMapping:
    container_id: int
    host_id: int
    size: int


@record
class Device:
    path: str
    type: str
    major: int = 0
    minor: int = 0
    file_mode: int | None = None
    uid: int | None = None
    gid: int | None = None


@record
class Linux:
    namespaces: list[Namespace] = list
    uid_mappings: list[IdMapping] = list
    gid_mappings: list[IdMapping] = list
    time_offsets: dict[str, tuple[int, int]] = dict
    devices: list[Device] = list
    cgroups_path: str = ""
    resources: dict = dict
    rootfs_propagation: str = ""
    masked_paths: list[str] = list
    readonly_paths: list[str] = list
    mount_label: str = ""
    sysctl: dict[str, str] = dict
    seccomp: dict | None = None
    personality: dict | None = None

    def namespace(self, ns_type: str) -> Namespace | None:
        for ns in self.namespaces:
            if ns.type == ns_type:
                return ns
        return None


@record
class Spec:
    oci_version: str
    root: Root
    process: Process | None = None
    hostname: str = ""
    domainname: str = ""
    mounts: list[Mount] = list
    hooks: dict[str, list[Hook]] = dict
    annotations: dict[str, str] = dict
    linux: Linux = Linux
    raw: dict = dict

    def has_new_namespace(self, ns_type: str) -> bool:
        ns = self.linux.namespace(ns_type)
        return ns is not None and not ns.path


# ---------------------------------------------------------------- parsing
def parse_process(obj: dict, where: str = "process.") -> Process:
    if not isinstance(obj, dict):
        raise ConfigError(f"config.json: {where.rstrip('.')} must be an object")
    args = _str_list(obj, "args", where)
    if not args and "commandLine" not in obj:
        raise ConfigError(f"config.json: {where}args must not be empty")
    cwd = _get(obj, "cwd", str, where, default="/")
    if not cwd.startswith("/"):
        raise ConfigError(f"config.json: {where}cwd must be an absolute path: {cwd!r}")
    user_obj = _get(obj, "user", dict, where, default={})
    uw = where + "user."
    gids = _get(user_obj, "additionalGids", list, uw, default=[])
    for i, g in enumerate(gids):
        if not isinstance(g, int) or isinstance(g, bool) or g < 0:
            raise ConfigError(f"config.json: {uw}additionalGids[{i}] must be a non-negative integer")
    user = User(uid=_uint(user_obj, "uid", uw, default=0), gid=_uint(user_obj, "gid", uw, default=0),
                umask=_uint(user_obj, "umask", uw), additional_gids=list(gids))
    caps = None
    caps_obj = _get(obj, "capabilities", dict, where)
    if caps_obj is not None:
        cw = where + "capabilities."
        caps = Capabilities(*(_str_list(caps_obj, k, cw) for k in
                              ("bounding", "effective", "inheritable", "permitted", "ambient")))
    rlimits = []
    for item, w in _objects(obj, "rlimits", where):
        rtype = _get(item, "type", str, w, required=True)
        if rtype not in RLIMIT_TYPES:
            raise ConfigError(f"config.json: {w}type is not an rlimit: {rtype!r}")
        rlimits.append(Rlimit(rtype, _uint(item, "hard", w, required=True, bits=64),
                              _uint(item, "soft", w, required=True, bits=64)))
    console_size = None
    cs = _get(obj, "consoleSize", dict, where)
    if cs is not None:
        console_size = (_uint(cs, "height", where + "consoleSize.", default=0),
                        _uint(cs, "width", where + "consoleSize.", default=0))
    oom = _get(obj, "oomScoreAdj", int, where)
    if oom is not None and not -1000 <= oom <= 1000:
        raise ConfigError(f"config.json: {where}oomScoreAdj must be between -1000 and 1000")
    env = _str_list(obj, "env", where)
    for e in env:
        if "=" not in e:
            raise ConfigError(f"config.json: {where}env entry has no '=': {e!r}")
    return Process(
        args=args, cwd=cwd, env=env,
        terminal=_get(obj, "terminal", bool, where, default=False),
        console_size=console_size, user=user, capabilities=caps, rlimits=rlimits,
        no_new_privileges=_get(obj, "noNewPrivileges", bool, where, default=False),
        oom_score_adj=oom,
        apparmor_profile=_get(obj, "apparmorProfile", str, where, default=""),
        selinux_label=_get(obj, "selinuxLabel", str, where, default=""),
    )


def _parse_mappings(obj: dict, key: str, where: str) -> list[IdMapping]:
    out = []
    for item, w in _objects(obj, key, where):
        m = IdMapping(_uint(item, "containerID", w, required=True),
                      _uint(item, "hostID", w, required=True),
                      _uint(item, "size", w, required=True))
        if m.size == 0:
            raise ConfigError(f"config.json: {w}size must be positive")
        out.append(m)
    return out


PERSONALITY_DOMAINS = {"LINUX": 0x0000, "LINUX32": 0x0008}


def _parse_personality(obj: dict, where: str) -> dict | None:
    pers = _get(obj, "personality", dict, where)
    if pers is None:
        return None
    domain = _get(pers, "domain", str, where + "personality.", required=True)
    if domain not in PERSONALITY_DOMAINS:
        raise ConfigError(f"config.json: {where}personality.domain must be LINUX or LINUX32: {domain!r}")
    _str_list(pers, "flags", where + "personality.")
    return pers


def parse_linux(obj: dict) -> Linux:
    where = "linux."
    namespaces = []
    seen = set()
    for item, w in _objects(obj, "namespaces", where):
        ns_type = _get(item, "type", str, w, required=True)
        if ns_type not in NAMESPACE_TYPES:
            raise ConfigError(f"config.json: {w}type is not a namespace type: {ns_type!r}")
        if ns_type in seen:
            raise ConfigError(f"config.json: namespace {ns_type!r} is listed twice")
        seen.add(ns_type)
        path = _get(item, "path", str, w, default="")
        if path and not path.startswith("/"):
            raise ConfigError(f"config.json: {w}path must be absolute: {path!r}")
        namespaces.append(Namespace(ns_type, path))
    time_offsets = {}
    for clock, off in _get(obj, "timeOffsets", dict, where, default={}).items():
        w = f"{where}timeOffsets.{clock}."
        if clock not in ("monotonic", "boottime"):
            raise ConfigError(f"config.json: {where}timeOffsets has an unknown clock: {clock!r}")
        if not isinstance(off, dict):
            raise ConfigError(f"config.json: {w.rstrip('.')} must be an object")
        time_offsets[clock] = (_get(off, "secs", int, w, default=0), _uint(off, "nanosecs", w, default=0))
    devices = []
    for item, w in _objects(obj, "devices", where):
        path = _get(item, "path", str, w, required=True)
        if not path.startswith("/"):
            raise ConfigError(f"config.json: {w}path must be absolute: {path!r}")
        dtype = _get(item, "type", str, w, required=True)
        if dtype not in ("c", "b", "u", "p"):
            raise ConfigError(f"config.json: {w}type must be one of c, b, u, p: {dtype!r}")
        devices.append(Device(path, dtype, _uint(item, "major", w, default=0, bits=64),
                              _uint(item, "minor", w, default=0, bits=64),
                              _uint(item, "fileMode", w), _uint(item, "uid", w), _uint(item, "gid", w)))
    propagation = _get(obj, "rootfsPropagation", str, where, default="")
    if propagation and propagation not in ("private", "rprivate", "slave", "rslave", "shared",
                                           "rshared", "unbindable", "runbindable"):
        raise ConfigError(f"config.json: {where}rootfsPropagation is invalid: {propagation!r}")
    sysctl = _get(obj, "sysctl", dict, where, default={})
    for k, v in sysctl.items():
        if not isinstance(v, str):
            raise ConfigError(f"config.json: {where}sysctl.{k} must be a string")
    return Linux(
        namespaces=namespaces,
        uid_mappings=_parse_mappings(obj, "uidMappings", where),
        gid_mappings=_parse_mappings(obj, "gidMappings", where),
        time_offsets=time_offsets,
        devices=devices,
        cgroups_path=_get(obj, "cgroupsPath", str, where, default=""),
        resources=_get(obj, "resources", dict, where, default={}),
        rootfs_propagation=propagation,
        masked_paths=_str_list(obj, "maskedPaths", where),
        readonly_paths=_str_list(obj, "readonlyPaths", where),
        mount_label=_get(obj, "mountLabel", str, where, default=""),
        sysctl=dict(sysctl),
        seccomp=_get(obj, "seccomp", dict, where),
        personality=_parse_personality(obj, where),
    )


def parse_spec(data: object) -> Spec:
    if not isinstance(data, dict):
        raise ConfigError("config.json: the top level must be an object")
    version = _get(data, "ociVersion", str, "", required=True)
    if not version.startswith("1."):
        raise ConfigError(f"config.json: unsupported ociVersion {version!r}")
    root_obj = _get(data, "root", dict, "", required=True)
    root = Root(_get(root_obj, "path", str, "root.", required=True),
                _get(root_obj, "readonly", bool, "root.", default=False))
    process_obj = _get(data, "process", dict, "")
    process = parse_process(process_obj) if process_obj is not None else None
    mounts = []
    for item, w in _objects(data, "mounts", ""):
        dest = _get(item, "destination", str, w, required=True)
        if not dest.startswith("/"):
            raise ConfigError(f"config.json: {w}destination must be an absolute path: {dest!r}")
        mounts.append(Mount(dest, _get(item, "type", str, w, default=""),
                            _get(item, "source", str, w, default=""), _str_list(item, "options", w),
                            _parse_mappings(item, "uidMappings", w),
                            _parse_mappings(item, "gidMappings", w)))
    hooks: dict[str, list[Hook]] = {}
    hooks_obj = _get(data, "hooks", dict, "", default={})
    for kind, _ in hooks_obj.items():
        if kind not in HOOK_KINDS:
            raise ConfigError(f"config.json: hooks has an unknown kind: {kind!r}")
        hooks[kind] = []
        for item, w in _objects(hooks_obj, kind, "hooks."):
            path = _get(item, "path", str, w, required=True)
            if not path.startswith("/"):
                raise ConfigError(f"config.json: {w}path must be absolute: {path!r}")
            timeout = _get(item, "timeout", int, w)
            if timeout is not None and timeout <= 0:
                raise ConfigError(f"config.json: {w}timeout must be positive")
            env = _str_list(item, "env", w) if item.get("env") is not None else None
            hooks[kind].append(Hook(path, _str_list(item, "args", w), env, timeout))
    annotations = _get(data, "annotations", dict, "", default={})
    linux_obj = _get(data, "linux", dict, "", default={})
    return Spec(
        oci_version=version, root=root, process=process,
        hostname=_get(data, "hostname", str, "", default=""),
        domainname=_get(data, "domainname", str, "", default=""),
        mounts=mounts, hooks=hooks, annotations=dict(annotations),
        linux=parse_linux(linux_obj), raw=data,
    )


def load_bundle_config(bundle: str) -> tuple[Spec, str]:
    """Read BUNDLE/config.json; returns the spec and the absolute rootfs path."""
    bundle = os.path.abspath(bundle)
    if not os.path.isdir(bundle):
        raise BundleError(f"bundle {bundle} does not exist or is not a directory")
    path = os.path.join(bundle, "config.json")
    try:
        with open(path, "rb") as f:
            data = _json.loads(f.read())
    except FileNotFoundError:
        raise BundleError(f"bundle {bundle} has no config.json") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config.json: not valid JSON: {exc}") from None
    spec = parse_spec(data)
    rootfs = spec.root.path
    if not os.path.isabs(rootfs):
        rootfs = os.path.join(bundle, rootfs)
    rootfs = os.path.realpath(rootfs)
    if not os.path.isdir(rootfs):
        raise BundleError(f"rootfs {rootfs} does not exist or is not a directory")
    return spec, rootfs


# ---------------------------------------------------------------- runc spec
DEFAULT_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
DEFAULT_MASKED = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                  "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                  "/proc/scsi"]
DEFAULT_READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def default_spec(rootless: bool = False, args: list[str] | None = None) -> dict:
    """The config.json that `spec` writes, shaped like `runc spec`."""
    spec: dict = {
        "ociVersion": SPEC_VERSION,
        "process": {
            "terminal": True,
            "user": {"uid": 0, "gid": 0},
            "args": args or ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {k: list(DEFAULT_CAPS) for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "nsbox",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "cgroup")],
            "maskedPaths": list(DEFAULT_MASKED),
            "readonlyPaths": list(DEFAULT_READONLY),
        },
    }
    if rootless:
        linux = spec["linux"]
        linux["uidMappings"] = [{"containerID": 0, "hostID": os.geteuid(), "size": 1}]
        linux["gidMappings"] = [{"containerID": 0, "hostID": os.getegid(), "size": 1}]
        linux["namespaces"] = [ns for ns in linux["namespaces"] if ns["type"] != "network"]
        linux["namespaces"].append({"type": "user"})
        del linux["resources"]
        mounts = [m for m in spec["mounts"] if m["destination"] not in ("/sys", "/sys/fs/cgroup")]
        for m in mounts:
            if m["destination"] == "/dev/pts":
                m["options"] = [o for o in m["options"] if o != "gid=5"]
        mounts.append({"destination": "/sys", "type": "none", "source": "/sys",
                       "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]})
        spec["mounts"] = mounts
    return spec
