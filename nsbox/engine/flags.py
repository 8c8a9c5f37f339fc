"""Docker-style flag values -> ContainerSpec and OCI linux.resources.

Both front ends share this module: the `nsbox` CLI hands it the flags it
parsed (long names, string values), the Python API hands it keyword
arguments (`memory="512m"`, `cpus=1.5`, `env={"A": "b"}`), so values may be
strings or already-typed Python values.  Every bad value raises ConfigError
with a message naming the flag and the value, as Docker words it.

    opts = {"memory": "512m", "cpus": "1.5", "env": ["A=b"], "rm": True}
    spec = build_spec("busybox", ["echo", "hi"], opts)
"""

from __future__ import annotations

import os

from nsbox.errors import ConfigError

from .model import ContainerSpec, MountSpec, RestartPolicy
from .resource_flags import (  # noqa: F401 - parse_* and build_resources are imported from here too
    CPU_PERIOD,
    _as_list,
    _host,
    bad,
    build_resources,
    device_numbers,
    parse_bool,
    parse_cpus,
    parse_cpuset,
    parse_int,
    parse_size,
    warn,
)
from .run_flags import RUN_FLAGS

_NS_FLAGS = {"pid": "pid_mode", "ipc": "ipc_mode", "uts": "uts_mode",
             "userns": "userns_mode", "cgroupns": "cgroupns_mode"}
# --network values that are not bridge networks (nsbox/engine/network/attach.py has the same).
_NON_BRIDGE_NETWORKS = ("none", "host", "private")
DEFAULT_NETWORK_ENV = "NSBOX_DEFAULT_NETWORK"
_RESTART_POLICIES = ("no", "on-failure", "always", "unless-stopped")
_LOG_DRIVERS = ("json-file", "k8s-file")
_LOG_OPTS = ("max-size", "max-file")


def parse_key_values(entries: object, flag: str) -> dict[str, str]:
    """`k=v` entries (or a dict) -> dict; a bare `k` maps to ""."""
    if isinstance(entries, dict):
        return {str(k): str(v) for k, v in entries.items()}
    out: dict[str, str] = {}
    for entry in _as_list(entries):
        key, _, value = str(entry).partition("=")
        if not key:
            raise bad(flag, entry, "invalid format, expected KEY=VALUE")
        out[key] = value
    return out


def parse_env(entries: object, environ: dict[str, str] | None = None) -> dict[str, str]:
    """-e K=V, or -e K (taken from ENVIRON, dropped if unset there)."""
    environ = os.environ if environ is None else environ
    if isinstance(entries, dict):
        return {str(k): str(v) for k, v in entries.items()}
    out: dict[str, str] = {}
    for entry in _as_list(entries):
        key, eq, value = str(entry).partition("=")
        if not key or any(c.isspace() for c in key):
            raise bad("env", entry, f"invalid environment variable: {entry}")
        if eq:
            out[key] = value
        elif key in environ:
            out[key] = environ[key]
    return out


def read_env_file(path: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """--env-file: K=V lines, `#` comments and blank lines ignored, bare K from ENVIRON."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise ConfigError(f"open {path}: {exc.strerror.lower() if exc.strerror else exc}") from None
    entries = [line.lstrip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return parse_env(entries, environ)


def parse_ulimit(entry: str) -> tuple[str, tuple[int, int]]:
    """`nofile=1024:2048` -> ("nofile", (1024, 2048)); a single number sets both."""
    name, eq, values = str(entry).partition("=")
    if not eq or not name:
        raise bad("ulimit", entry, f"invalid ulimit argument: {entry}")
    known = ("core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile",
             "nproc", "rss", "rtprio", "rttime", "sigpending", "stack", "as")
    if name not in known:
        raise bad("ulimit", entry, f"invalid ulimit type: {name}")
    soft_text, colon, hard_text = values.partition(":")
    try:
        soft = int(soft_text)
        hard = int(hard_text) if colon else soft
    except ValueError:
        raise bad("ulimit", entry, f"invalid ulimit argument: {entry}") from None
    if soft > hard and hard != -1:
        raise bad("ulimit", entry, f"ulimit soft limit must be less than or equal to hard limit: "
                  f"{soft} > {hard}")
    return name, (soft, hard)


def parse_device(entry: str) -> str:
    """Validate --device HOST[:CONTAINER[:PERMISSIONS]]; returned unchanged."""
    parts = str(entry).split(":")
    if len(parts) > 3 or not parts[0]:
        raise bad("device", entry, "bad format for device")
    if len(parts) == 2 and parts[1] and not parts[1].startswith("/"):
        perms = parts[1]  # HOST:rwm
    else:
        perms = parts[2] if len(parts) == 3 else "rwm"
        if len(parts) >= 2 and not parts[1].startswith("/"):
            raise bad("device", entry, f"{parts[1]} is not an absolute path")
    if not perms or any(c not in "rwm" for c in perms):
        raise bad("device", entry, f"invalid device mode: {perms}")
    if not parts[0].startswith("/"):
        raise bad("device", entry, f"{parts[0]} is not an absolute path")
    return str(entry)


# ================================================================ mounts
def parse_tmpfs(entry: str) -> MountSpec:
    target, _, options = str(entry).partition(":")
    if not target.startswith("/"):
        raise bad("tmpfs", entry, "invalid mount path: must be absolute")
    return MountSpec(type="tmpfs", target=target,
                     options=[o for o in options.split(",") if o] if options else [])


def parse_volume(entry: str) -> MountSpec:
    """-v SRC:DST[:OPTS], -v DST (anonymous volume); a SRC starting with / or . is a bind."""
    parts = str(entry).split(":")
    if len(parts) == 1:
        source, target, options = "", parts[0], ""
    elif len(parts) == 2:
        if parts[1].startswith("/"):
            source, target, options = parts[0], parts[1], ""
        else:  # DST:opts (anonymous volume)
            source, target, options = "", parts[0], parts[1]
    elif len(parts) == 3:
        source, target, options = parts
    else:
        raise bad("volume", entry, "invalid volume specification")
    if not target.startswith("/"):
        raise bad("volume", entry, f"invalid mount path: '{target}' mount path must be absolute")
    read_only = False
    extra: list[str] = []
    for opt in [o for o in options.split(",") if o]:
        if opt == "ro":
            read_only = True
        elif opt == "rw":
            read_only = False
        elif opt in ("z", "Z", "private", "rprivate", "shared", "rshared", "slave", "rslave",
                     "nocopy", "copy", "exec", "noexec", "suid", "nosuid", "dev", "nodev"):
            extra.append(opt)
        else:
            raise bad("volume", entry, f"invalid mode: {opt}")
    if source.startswith(("/", ".", "~")):
        kind = "bind"
        source = os.path.abspath(os.path.expanduser(source))
    else:
        kind = "volume"
        if source and not all(c.isalnum() or c in "_.-" for c in source):
            raise bad("volume", entry, f"invalid volume name: {source}")
    return MountSpec(type=kind, target=target, source=source, read_only=read_only, options=extra)


def parse_mount(entry: str) -> MountSpec:
    """--mount type=bind|volume|tmpfs,source=,target=,readonly,tmpfs-size=,tmpfs-mode=."""
    fields: dict[str, str] = {}
    for item in str(entry).split(","):
        if not item:
            continue
        key, eq, value = item.partition("=")
        fields[key.strip().lower()] = value if eq else "true"
    kind = fields.pop("type", "volume")
    if kind not in ("bind", "volume", "tmpfs"):
        raise bad("mount", entry, f"invalid mount type: {kind}")
    source = fields.pop("source", fields.pop("src", ""))
    target = fields.pop("target", fields.pop("destination", fields.pop("dst", "")))
    if not target:
        raise bad("mount", entry, "target is required")
    if not target.startswith("/"):
        raise bad("mount", entry, f"invalid mount path: '{target}' mount path must be absolute")
    read_only = False
    for key in ("readonly", "ro"):
        if key in fields:
            read_only = parse_bool(fields.pop(key), "mount")
    if "rw" in fields:
        read_only = not parse_bool(fields.pop("rw"), "mount")
    options: list[str] = []
    if kind == "tmpfs":
        if source:
            raise bad("mount", entry, "source is not allowed for tmpfs mounts")
        if "tmpfs-size" in fields:
            options.append(f"size={parse_size(fields.pop('tmpfs-size'), 'mount')}")
        if "tmpfs-mode" in fields:
            mode = fields.pop("tmpfs-mode")
            try:
                int(mode, 8)
            except ValueError:
                raise bad("mount", entry, f"invalid tmpfs-mode: {mode}") from None
            options.append(f"mode={mode}")
    elif kind == "bind":
        if not source:
            raise bad("mount", entry, "source is required for bind mounts")
        source = os.path.abspath(source)
        if "bind-propagation" in fields:
            options.append(fields.pop("bind-propagation"))
    elif "volume-nocopy" in fields and parse_bool(fields.pop("volume-nocopy"), "mount"):
        options.append("nocopy")
    if fields:
        raise bad("mount", entry, f"unexpected key '{next(iter(fields))}'")
    return MountSpec(type=kind, target=target, source=source, read_only=read_only, options=options)


# ================================================================ modes and policies
def parse_restart(value: str) -> RestartPolicy:
    name, colon, count = str(value).partition(":")
    if name not in _RESTART_POLICIES:
        raise bad("restart", value, f"invalid restart policy '{name}'")
    if colon:
        if name != "on-failure":
            raise bad("restart", value, f"maximum retry count cannot be used with restart "
                      f"policy '{name}'")
        retries = parse_int(count, "restart", 0)
        return RestartPolicy(name, retries)
    return RestartPolicy(name, 0)


def parse_namespace_mode(flag: str, value: str) -> str:
    text = str(value)
    allowed = ("host", "private")
    if flag == "network":
        allowed = ("none", "host", "private", "slirp4netns", "pasta", "bridge", "NETWORK")
        if text == "pasta":
            return text
        if text == "slirp4netns" or text.startswith("slirp4netns:"):
            from nsbox.engine.network import slirp
            try:
                slirp.parse_options(text)
            except ConfigError as exc:
                raise bad(flag, value, str(exc)) from None
            return text
    if flag == "userns":
        if text == "":
            return "host"
        if text in ("remap", "auto"):
            return text
        if text == "keep-id":
            return text
        if text.startswith("keep-id:"):
            raise bad(flag, value, "keep-id takes no options here: use --userns=keep-id")
        allowed = ("host", "private", "remap", "auto", "keep-id")
    if text in allowed:
        return text
    if text.startswith("container:") and len(text) > 10:
        return text
    if flag == "network" and text and text[0].isalnum() and \
            all(c.isalnum() or c in "_.-" for c in text) and text != "container":
        return text  # `bridge` or a network's name (looked up at create)
    raise bad(flag, value, f"invalid {flag} mode: use " + ", ".join(allowed) + " or container:NAME")


_CLOCKS = ("monotonic", "boottime")


def parse_time_offsets(entries: object) -> dict[str, int]:
    """--time-offset monotonic=SECONDS,boottime=SECONDS (repeatable) -> {clock: seconds}."""
    if isinstance(entries, dict):
        entries = [f"{k}={v}" for k, v in entries.items()]
    out: dict[str, int] = {}
    for entry in _as_list(entries):
        for item in str(entry).split(","):
            clock, eq, amount = item.strip().partition("=")
            if clock not in _CLOCKS or not eq:
                raise bad("time-offset", entry, "expected monotonic=SECONDS and/or boottime=SECONDS")
            try:
                out[clock] = int(amount.strip().removesuffix("s"))
            except ValueError:
                raise bad("time-offset", entry, f"invalid number of seconds: {amount!r}") from None
    return out


# Flags Docker refuses with --network container:NAME, the network being another container's.
_NOT_WITH_CONTAINER_NETWORK = ("hostname", "publish", "publish-all", "expose", "dns",
                               "dns-search", "dns-option", "mac-address", "add-host", "link")


def _check_namespace_conflicts(spec: ContainerSpec, opts: dict) -> None:
    """Docker's conflicts between namespace modes and flags that need a namespace of one's own."""
    if spec.hostname and (spec.uts_mode == "host" or spec.uts_mode.startswith("container:")):
        raise ConfigError(f"Conflicting options: --hostname and --uts {spec.uts_mode} (the "
                          "hostname belongs to that UTS namespace)")
    if spec.network_mode.startswith("container:"):
        for flag in _NOT_WITH_CONTAINER_NETWORK:
            if opts.get(flag) not in (None, False, "", []):
                raise ConfigError(f"Conflicting options: --{flag} and --network "
                                  f"{spec.network_mode} (the network is that container's)")
    if spec.time_offsets and spec.timens_mode == "host":
        raise ConfigError("Conflicting options: --time-offset and --timens host (offsets need a "
                          "time namespace of the container's own)")


def _check_sysctls(spec: ContainerSpec) -> None:
    """Docker's --sysctl rules: the names its CLI allows (the ipc ones and net.*), each only
    with a namespace of the container's own; the rules are the runtime's (runtime/sysctl.py)."""
    if not spec.sysctls:
        return
    from nsbox.runtime import sysctl

    modes = {"ipc": spec.ipc_mode, "network": spec.network_mode}
    for key, value in spec.sysctls.items():
        name = sysctl.normalize(key)
        if name is None or sysctl.namespace_of(name) not in modes:
            # kernel.hostname/domainname too: Docker has --hostname and --domainname.
            raise bad("sysctl", f"{key}={value}", f"sysctl '{key}={value}' is not allowed")
        why = sysctl.refusal(key, lambda ns_type: modes[ns_type] != "host")
        if why:
            flag = "--network" if name.startswith("net.") else "--ipc"
            raise ConfigError(f"{why} ({flag} host)")


def default_network() -> str:
    """The network of a container without --network: $NSBOX_DEFAULT_NETWORK (a --network
    value), else Docker's: the default `bridge` network as root; `private` rootless (made
    slirp4netns at create when it can run, as rootless Podman's default).

    The bridge's cost per `run` (docs/networking.md, "Where the time goes") is
    mostly made in a child process alongside the create and the start.
    """
    chosen = os.environ.get(DEFAULT_NETWORK_ENV, "")
    if chosen:
        return chosen
    from nsbox.engine import rootless
    return "private" if rootless.active() else "bridge"


def _network_options(spec: ContainerSpec, opts: dict) -> None:
    """--network (repeatable), --ip, --mac-address, --network-alias, --dns*, --add-host."""
    given = [str(v) for v in _as_list(opts.get("network")) + _as_list(opts.get("net"))
             if str(v) != ""]
    modes = [parse_namespace_mode("network", v) for v in given or [default_network()]]
    spec.network_mode = modes[0]
    bridged = not (modes[0] in _NON_BRIDGE_NETWORKS or modes[0] == "pasta" or
                   modes[0].startswith(("container:", "slirp4netns")))
    if len(modes) > 1:
        if not bridged or any(m in _NON_BRIDGE_NETWORKS or m == "pasta" or
                              m.startswith(("container:", "slirp4netns")) for m in modes[1:]):
            raise bad("network", ",".join(given), "only bridge networks can be combined: "
                      "none, host, private, slirp4netns, pasta and container: stand alone")
    spec.networks = list(dict.fromkeys(modes)) if bridged else []
    for flag, attr in (("ip", "ip"), ("ip6", "ip6"), ("mac-address", "mac_address")):
        value = opts.get(flag)
        if value in (None, ""):
            continue
        if not bridged:
            raise ConfigError(f"--{flag} needs a bridge network, not --network {modes[0]}")
        if flag == "ip":
            import ipaddress
            try:
                value = str(ipaddress.IPv4Address(str(value)))
            except ValueError:
                raise bad(flag, value, f"{value} is not an IPv4 address") from None
        elif flag == "ip6":
            import ipaddress
            try:
                value = str(ipaddress.IPv6Address(str(value)))
            except ValueError:
                raise bad(flag, value, f"{value} is not an IPv6 address") from None
        else:
            value = str(value).lower()
            parts = value.split(":")
            if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdef"
                                                              for c in p) for p in parts):
                raise bad(flag, opts[flag], f"{opts[flag]} is not a valid mac address")
            if int(parts[0], 16) & 1:
                raise bad(flag, opts[flag], "a multicast MAC address cannot be used")
        setattr(spec, attr, value)
    spec.network_aliases = [str(a) for a in _as_list(opts.get("network-alias"))]
    if spec.network_aliases and not bridged:
        raise ConfigError(f"--network-alias needs a bridge network, not --network {modes[0]}")
    spec.dns = [str(d) for d in _as_list(opts.get("dns"))]
    if spec.dns:
        import ipaddress
        for server in spec.dns:
            try:
                ipaddress.ip_address(server)
            except ValueError:
                raise bad("dns", server, f"{server} is not an ip address") from None
    spec.dns_search = [str(d) for d in _as_list(opts.get("dns-search"))]
    spec.dns_options = [str(d) for d in _as_list(opts.get("dns-option"))]
    spec.extra_hosts = [str(h) for h in _as_list(opts.get("add-host"))]
    if spec.extra_hosts:
        from nsbox.engine.network.etcfiles import parse_add_host
        for entry in spec.extra_hosts:
            parse_add_host(entry)


def parse_stop_signal(value: str) -> str:
    import signal

    text = str(value).upper()
    if text.isdigit():
        if not 0 < int(text) < 65:
            raise bad("stop-signal", value, f"invalid signal: {value}")
        return text
    name = text if text.startswith("SIG") else "SIG" + text
    if name not in signal.Signals.__members__ and not name.startswith(("SIGRTMIN", "SIGRTMAX")):
        raise bad("stop-signal", value, f"invalid signal: {value}")
    return name


def parse_entrypoint(value: object) -> list[str] | None:
    """--entrypoint STRING -> [STRING]; "" clears the image's; a list is taken as is."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)] if value != "" else []


def parse_log_opts(entries: object) -> dict[str, str]:
    opts = parse_key_values(entries, "log-opt")
    for key, value in opts.items():
        if key not in _LOG_OPTS:
            raise bad("log-opt", f"{key}={value}", f"unknown log opt '{key}'")
        if key == "max-size":
            parse_size(value, "log-opt")
        else:
            parse_int(value, "log-opt", 1)
    return opts


# ================================================================ all together
def build_spec(image: str, command: list[str] | None, opts: dict,
               environ: dict[str, str] | None = None) -> ContainerSpec:
    """A ContainerSpec from IMAGE, COMMAND and OPTS (long flag names -> values)."""
    unknown = [key for key in opts if key not in RUN_FLAGS]
    if unknown:
        raise ConfigError(f"unknown option: --{unknown[0]}")
    spec = ContainerSpec(image=image, command=list(command) if command else None)

    def get(name: str, default=None):
        value = opts.get(name)
        return default if value is None else value

    if get("name"):
        name = str(opts["name"])
        if not (name[0].isalnum() and all(c.isalnum() or c in "_.-" for c in name)):
            raise bad("name", name, "Invalid container name, only [a-zA-Z0-9][a-zA-Z0-9_.-] "
                      "are allowed")
        spec.name = name
    env: dict[str, str] = {}
    for path in _as_list(opts.get("env-file")):
        env.update(read_env_file(str(path), environ))
    env.update(parse_env(get("env", []), environ))
    spec.env = env
    spec.labels = parse_key_values(get("label", []), "label")
    spec.workdir = get("workdir") or None
    if spec.workdir and not spec.workdir.startswith("/"):
        raise bad("workdir", spec.workdir, "the working directory must be an absolute path")
    spec.user = str(opts["user"]) if get("user") not in (None, "") else None
    spec.hostname = get("hostname") or None
    spec.entrypoint = parse_entrypoint(opts.get("entrypoint"))
    for flag in ("tty", "interactive", "read-only", "init", "privileged", "oom-kill-disable"):
        if flag in opts and opts[flag] is not None:
            parse_bool(opts[flag], flag)
    spec.tty = parse_bool(get("tty", False), "tty")
    spec.interactive = parse_bool(get("interactive", False), "interactive")
    spec.read_only = parse_bool(get("read-only", False), "read-only")
    spec.init = parse_bool(get("init", False), "init")
    spec.privileged = parse_bool(get("privileged", False), "privileged")
    spec.auto_remove = parse_bool(get("rm", False), "rm")
    if get("restart") not in (None, ""):
        spec.restart = parse_restart(opts["restart"])
    if spec.auto_remove and spec.restart.name != "no":
        raise ConfigError("Conflicting options: --restart and --rm")
    if get("stop-signal"):
        spec.stop_signal = parse_stop_signal(opts["stop-signal"])
    if get("stop-timeout") not in (None, ""):
        spec.stop_timeout = parse_int(opts["stop-timeout"], "stop-timeout", -1)
    if get("cgroup-parent") not in (None, ""):
        spec.cgroup_parent = str(opts["cgroup-parent"])
        if ".." in spec.cgroup_parent.split("/"):
            raise bad("cgroup-parent", spec.cgroup_parent, "must not contain '..'")
    spec.resources = build_resources(opts)
    memory = spec.resources.get("memory") or {}
    if memory.get("limit", 0) > 0 and "swap" not in memory and _host().swap_limit_supported():
        memory["swap"] = 2 * memory["limit"]  # Docker's default: as much swap as memory
    for entry in _as_list(opts.get("ulimit")):
        name, limits = parse_ulimit(entry)
        spec.ulimits[name] = limits
    if isinstance(opts.get("ulimit"), dict):  # API: {"nofile": (1024, 2048)}
        spec.ulimits = {k: tuple(v) for k, v in opts["ulimit"].items()}  # type: ignore[misc]
    if get("shm-size") not in (None, ""):
        spec.shm_size = parse_size(opts["shm-size"], "shm-size")
        if spec.shm_size <= 0:
            raise bad("shm-size", opts["shm-size"], "must be greater than 0")
    spec.devices = [parse_device(d) for d in _as_list(opts.get("device"))]
    spec.sysctls = parse_key_values(get("sysctl", []), "sysctl")
    for key, value in spec.sysctls.items():
        if not key or "=" in key or not value:
            raise bad("sysctl", f"{key}={value}", "sysctl must be KEY=VALUE")
    if get("oom-score-adj") not in (None, ""):
        spec.oom_score_adj = parse_int(opts["oom-score-adj"], "oom-score-adj", -1000, 1000)
    mounts = [parse_tmpfs(t) for t in _as_list(opts.get("tmpfs"))]
    mounts += [parse_volume(v) for v in _as_list(opts.get("volume"))]
    mounts += [parse_mount(m) for m in _as_list(opts.get("mount"))]
    seen: set[str] = set()
    for mount in mounts:
        if mount.target in seen:
            raise ConfigError(f"Duplicate mount point: {mount.target}")
        seen.add(mount.target)
    spec.mounts = mounts
    _network_options(spec, opts)
    for flag, attr in _NS_FLAGS.items():
        if get(flag) not in (None, "") or (flag == "userns" and flag in opts):
            setattr(spec, attr, parse_namespace_mode(flag, opts.get(flag) or ""))
    if get("timens") not in (None, ""):
        if opts["timens"] not in ("host", "private"):
            raise bad("timens", opts["timens"], "invalid timens mode: use host or private")
        spec.timens_mode = opts["timens"]
    spec.time_offsets = parse_time_offsets(get("time-offset", []))
    if spec.time_offsets and get("timens") in (None, ""):
        spec.timens_mode = "private"  # offsets imply a time namespace of the container's own
    _check_namespace_conflicts(spec, opts)
    if any(opts.get(f) not in (None, False, "", []) for f in ("publish", "publish-all", "expose")):
        from nsbox.engine.network import ports
        spec.publish = ports.parse_publish(get("publish", []))
        spec.publish_all = parse_bool(get("publish-all", False), "publish-all")
        spec.expose = ports.parse_expose(get("expose", []))
        ports.check_network_mode(spec, lambda text: warn(text.removeprefix("WARNING: ")))
    _check_sysctls(spec)
    spec.cap_add = [str(c) for c in _as_list(opts.get("cap-add"))]
    spec.cap_drop = [str(c) for c in _as_list(opts.get("cap-drop"))]
    spec.security_opt = [str(s) for s in _as_list(opts.get("security-opt"))]
    for opt in spec.security_opt:
        key = opt.partition("=")[0].partition(":")[0]
        if key not in ("seccomp", "apparmor", "label", "no-new-privileges", "mask", "unmask",
                       "guard", "landlock"):
            raise bad("security-opt", opt, f"invalid --security-opt: {opt!r}")
    if get("log-driver"):
        if opts["log-driver"] not in _LOG_DRIVERS:
            raise bad("log-driver", opts["log-driver"], "unknown log driver: use "
                      + " or ".join(_LOG_DRIVERS))
        spec.log_driver = opts["log-driver"]
    spec.log_opts = parse_log_opts(get("log-opt", []))
    spec.runtime = get("runtime") or None
    if any(opts.get(f) not in (None, "", False) for f in RUN_FLAGS if "health" in f):
        from nsbox.engine.health.config import parse_health_flags  # only then: not on run's path
        spec.healthcheck = parse_health_flags(opts)
    return spec
