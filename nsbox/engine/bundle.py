"""ContainerSpec + image config -> an OCI bundle's config.json.

The starting point is the runtime's `default_spec()` (what `runc spec`
writes); the image config (Entrypoint, Cmd, Env, WorkingDir, User,
StopSignal, Volumes) comes next, and the user's request last, so it wins.
Security defaults live in `apply_security` alone, so a hardened profile can
replace that one function.
"""

from __future__ import annotations

import os
import stat

from nsbox._record import record
from nsbox.errors import BundleError, ConfigError, ContainerNotFound, InvalidState

TYPE_CHECKING = False  # typing's own constant costs an import of typing
if TYPE_CHECKING:
    from nsbox.engine.model import ContainerSpec

CATATONIT = "/usr/bin/catatonit"
INIT_PATH = "/dev/init"
DEFAULT_SHM = 64 * 1024 * 1024
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# ContainerSpec field -> OCI namespace type.
NAMESPACE_MODES = (("pid_mode", "pid"), ("ipc_mode", "ipc"), ("uts_mode", "uts"),
                   ("network_mode", "network"), ("cgroupns_mode", "cgroup"))


@record
class BundleInputs:
    """What build_config needs besides the request and the image."""

    container_id: str
    rootfs: str                      # the overlay's merged dir (mounted at start)
    layer_dirs: list[str]            # upper first, then the image's lowers: for /etc/passwd lookups
    userdata: str                    # the container's own files: config.json, hosts, logs
    runtime: str                     # runtime binary path (its basename says runc or not)
    volume_paths: dict[str, str] = dict  # target -> host dir
    # "container:NAME" -> pid of that container's init (resolved by the engine)
    peer_pids: dict[str, int] = dict
    # [uid_base, gid_base, size] of a remapped user namespace (--userns=remap|auto), or []
    idmap: list = list
    # A network namespace the engine makes and keeps at this path (slirp4netns), or ""
    netns_path: str = ""
    # --userns=keep-id: rootless.KeepId (the maps, and the user's uid and gid), or None
    keep_id: object = None
    # "container:NAME" -> that container's record (its hostname and /etc files); when
    # empty, what peer_pid_or_fail looked up in this process
    peers: dict = dict
    # The engine's run root (the runtimes' ociVersion cache); "" = the storage root
    run_root: str = ""


def command_of(spec: ContainerSpec, image_section: dict) -> list[str]:
    """Entrypoint + Cmd as Docker combines them: a new entrypoint drops the image's Cmd."""
    entrypoint = spec.entrypoint if spec.entrypoint is not None else (image_section.get("Entrypoint") or [])
    if spec.command is not None:
        cmd = spec.command
    elif spec.entrypoint is not None:
        cmd = []
    else:
        cmd = image_section.get("Cmd") or []
    args = list(entrypoint) + list(cmd)
    if not args:
        raise ConfigError("no command specified: the image has no Cmd or Entrypoint")
    return args


def _find_file(layer_dirs: list[str], relpath: str) -> str | None:
    for top in layer_dirs:
        path = os.path.join(top, relpath)
        if os.path.lexists(path):
            return path if os.path.isfile(path) else None
    return None


def _read_db(layer_dirs: list[str], relpath: str) -> list[list[str]]:
    path = _find_file(layer_dirs, relpath)
    if path is None:
        return []
    with open(path, errors="replace") as f:
        return [line.rstrip("\n").split(":") for line in f if line.strip() and not line.startswith("#")]


def resolve_user(user: str, layer_dirs: list[str]) -> tuple[int, int, list[int]]:
    """'name|uid[:group|gid]' -> (uid, gid, additional gids) using the rootfs /etc/passwd and /etc/group."""
    if not user:
        return 0, 0, []
    name, _, group = user.partition(":")
    passwd = _read_db(layer_dirs, "etc/passwd")
    entry = None
    if name.isdigit():
        uid = int(name)
        entry = next((e for e in passwd if len(e) > 3 and e[2] == name), None)
    else:
        entry = next((e for e in passwd if len(e) > 3 and e[0] == name), None)
        if entry is None:
            raise ConfigError(f"unable to find user {name}: no matching entries in passwd file")
        uid = int(entry[2])
    gid = int(entry[3]) if entry is not None and entry[3].isdigit() else 0
    groups = _read_db(layer_dirs, "etc/group")
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            match = next((g for g in groups if len(g) > 2 and g[0] == group), None)
            if match is None:
                raise ConfigError(f"unable to find group {group}: no matching entries in group file")
            gid = int(match[2])
    extra: list[int] = []
    if entry is not None and not group:
        for g in groups:
            if len(g) > 3 and entry[0] in g[3].split(",") and g[2].isdigit() and int(g[2]) != gid:
                extra.append(int(g[2]))
    return uid, gid, extra


def _own_cgroup() -> str:
    """This process's cgroup path (cgroup2 line, or the memory controller's on v1/hybrid)."""
    paths: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for ctrl in controllers.split(",") if controllers else [""]:
                paths[ctrl] = path
    return paths.get("memory") or paths.get("") or "/"


# Where containers go by default on a pure cgroup v2 host (Docker's /docker):
# a top-level cgroup of our own, an absolute path from the hierarchy's root.
DEFAULT_V2_PARENT = "/nsbox"
DEFAULT_SYSTEMD_SLICE = "machine.slice"  # Podman's, with --cgroup-manager systemd
CGROUP_MANAGERS = ("cgroupfs", "systemd")


def cgroup_manager() -> str:
    """The engine's cgroup manager: `nsbox --cgroup-manager`, else $NSBOX_CGROUP_MANAGER."""
    manager = os.environ.get("NSBOX_CGROUP_MANAGER") or "cgroupfs"
    if manager not in CGROUP_MANAGERS:
        raise ConfigError(f"cgroup manager {manager!r}: use cgroupfs or systemd")
    return manager


def cgroups_path(container_id: str, runtime: str, parent: str | None = None) -> str:
    """The OCI cgroupsPath of a container.

    PARENT: --cgroup-parent, else $NSBOX_CGROUP_PARENT (the configured default).
    - systemd manager: `SLICE:nsbox:ID` (a transient scope nsbox-ID.scope in
      the slice, default machine.slice);
    - a cgroupfs parent: `/PARENT/nsbox-ID`, absolute (a relative parent is
      taken from the hierarchy's root, as Docker does);
    - no parent on a pure cgroup v2 host: `/nsbox/nsbox-ID`, so controllers
      can be enabled top-down from the root: the caller's own cgroup (a login
      scope) holds processes and may pass none down;
    - no parent on a v1/hybrid host: below the caller's own cgroup, as
      before (there a cgroup that holds processes can still have children
      with limits).
    """
    if parent is None:
        parent = os.environ.get("NSBOX_CGROUP_PARENT") or ""
    name = f"nsbox-{container_id}"
    if cgroup_manager() == "systemd":
        slice_name = parent or DEFAULT_SYSTEMD_SLICE
        if not slice_name.endswith(".slice") or "/" in slice_name or ":" in slice_name:
            raise ConfigError(f"--cgroup-parent {parent!r}: with the systemd cgroup manager the "
                              "parent is a slice name (machine.slice, a-b.slice)")
        return f"{slice_name}:nsbox:{container_id}"
    if parent:
        if ".." in parent.split("/") or ":" in parent:
            raise ConfigError(f"--cgroup-parent {parent!r}: expected a cgroup path such as /nsbox")
        return os.path.join("/", parent.strip("/"), name)
    from nsbox.runtime import cgroups

    if cgroups.mode() == "v2":
        return os.path.join(DEFAULT_V2_PARENT, name)
    if os.path.basename(runtime) in ("runc", "crun"):
        # runc and crun read an absolute path from the hierarchy root; make it ours.
        return os.path.join(_own_cgroup(), name)
    return name  # nsbox-runtime resolves relative paths under its caller's


def _signal_name(value: str | None, image_value: str) -> str:
    text = (value or image_value or "SIGTERM").upper()
    if text.isdigit():
        return text
    return text if text.startswith("SIG") else "SIG" + text


def stop_signal(spec: ContainerSpec, image_section: dict) -> str:
    return _signal_name(spec.stop_signal, image_section.get("StopSignal") or "")


def device_mapping(text: str) -> tuple[str, str, str]:
    """(host path, container path, cgroup permissions) of a --device value.

    HOST, HOST:CONTAINER, HOST:CONTAINER:PERMS or HOST:PERMS; PERMS are
    letters of "rwm" (default "rwm"), kept exactly as given.
    """
    parts = text.split(":")
    host = parts[0]
    target = parts[1] if len(parts) > 1 and parts[1] else host
    access = parts[2] if len(parts) > 2 and parts[2] else "rwm"
    if len(parts) == 2 and parts[1] and set(parts[1]) <= set("rwm") and not parts[1].startswith("/"):
        target, access = host, parts[1]
    return host, target, access


def _device(text: str) -> tuple[dict, dict]:
    """The linux.devices node and its linux.resources.devices rule for one --device.

    The rule is the only access the container gets to the node: the runtime
    adds none for linux.devices (runc neither).
    """
    host, target, access = device_mapping(text)
    try:
        st = os.stat(host)
    except OSError as err:
        raise ConfigError(f"--device {text}: {host}: {err.strerror}") from None
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        raise ConfigError(f"--device {text}: {host} is not a device node")
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    node = {"path": target, "type": kind, "major": major, "minor": minor,
            "fileMode": stat.S_IMODE(st.st_mode), "uid": 0, "gid": 0}
    rule = {"allow": True, "type": kind, "major": major, "minor": minor, "access": access}
    return node, rule


def apply_security(config: dict, spec: ContainerSpec) -> None:
    """Capabilities, seccomp, masked paths, no_new_privs, LSM labels: see nsbox/engine/security.py."""
    from nsbox.engine import security
    security.apply(config, spec.cap_add, spec.cap_drop, spec.privileged, spec.security_opt)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def write_etc_files(userdata: str, hostname: str, nameserver: str = "") -> dict[str, str]:
    """hosts, hostname and resolv.conf of the container: target -> host file.

    resolv.conf is the host's, or names NAMESERVER alone when given (slirp4netns's DNS)."""
    hosts = os.path.join(userdata, "hosts")
    _write(hosts, "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                  f"127.0.1.1\t{hostname}\n")
    hostname_file = os.path.join(userdata, "hostname")
    _write(hostname_file, hostname + "\n")
    resolv = os.path.join(userdata, "resolv.conf")
    if nameserver:
        _write(resolv, f"nameserver {nameserver}\n")
        return {"/etc/hosts": hosts, "/etc/hostname": hostname_file, "/etc/resolv.conf": resolv}
    try:
        # shutil.copyfile, without importing shutil (and re, bz2, lzma with it).
        with open("/etc/resolv.conf", "rb") as src, open(resolv, "wb") as dst:
            dst.write(src.read())
    except OSError:
        _write(resolv, "")
    return {"/etc/hosts": hosts, "/etc/hostname": hostname_file, "/etc/resolv.conf": resolv}


def check_mounts(spec: ContainerSpec) -> None:
    """Fail early (before anything is created) on a bind mount whose source is missing."""
    for m in spec.mounts:
        if m.type not in ("bind", "volume", "tmpfs"):
            raise ConfigError(f"mount type {m.type!r} is not one of bind, volume, tmpfs")
        if not m.target.startswith("/"):
            raise ConfigError(f"mount target {m.target!r} must be an absolute path")
        if m.type == "bind" and not os.path.exists(m.source):
            raise BundleError(f"bind source path does not exist: {m.source}")


def build_config(spec: ContainerSpec, image_section: dict, inputs: BundleInputs) -> dict:
    """The config.json of the container (also writes its hosts/hostname/resolv.conf)."""
    from nsbox.runtime.spec import default_spec
    config = default_spec(args=command_of(spec, image_section))
    process = config["process"]
    linux = config["linux"]
    cid = inputs.container_id

    args = process["args"]
    if spec.init:
        if not os.path.isfile(CATATONIT):
            raise ConfigError(f"--init needs {CATATONIT}: apt-get install catatonit")
        process["args"] = [INIT_PATH, "--"] + args
        config["mounts"].append({"destination": INIT_PATH, "type": "bind", "source": CATATONIT,
                                 "options": ["bind", "ro", "nosuid", "nodev"]})
    process["terminal"] = bool(spec.tty)

    # Env: runtime default PATH, then the image's, then the user's (later wins).
    env: dict[str, str] = {}
    # Another container's network brings its hostname and /etc files (as Docker);
    # the host's UTS namespace its hostname.
    net_peer = _peer(spec.network_mode, inputs)
    uts_peer = _peer(spec.uts_mode, inputs)
    if uts_peer is not None or net_peer is not None:
        hostname = _hostname_of(uts_peer if uts_peer is not None else net_peer)
    elif spec.uts_mode == "host":
        hostname = os.uname().nodename
    else:
        hostname = spec.hostname or cid[:12]
    for item in [DEFAULT_PATH, f"HOSTNAME={hostname}"] + list(image_section.get("Env") or []):
        key, _, value = item.partition("=")
        env[key] = value
    if spec.tty:
        env["TERM"] = "xterm"
    env.update(spec.env)
    process["env"] = [f"{k}={v}" for k, v in env.items()]
    process["cwd"] = spec.workdir or image_section.get("WorkingDir") or "/"
    if not process["cwd"].startswith("/"):
        raise ConfigError(f"the working directory {process['cwd']!r} is not an absolute path")
    keep_id = inputs.keep_id
    if keep_id is not None and spec.user is None:
        uid, gid, extra = keep_id.uid, keep_id.gid, []  # keep-id: the user's own ids
    else:
        uid, gid, extra = resolve_user(spec.user if spec.user is not None else
                                       (image_section.get("User") or ""), inputs.layer_dirs)
    process["user"] = {"uid": uid, "gid": gid}
    if extra:
        process["user"]["additionalGids"] = extra
    if spec.oom_score_adj is not None:
        process["oomScoreAdj"] = spec.oom_score_adj
    if spec.ulimits:
        process["rlimits"] = [r for r in process["rlimits"]
                              if r["type"].removeprefix("RLIMIT_").lower() not in spec.ulimits]
        for name, (soft, hard) in spec.ulimits.items():
            process["rlimits"].append({"type": "RLIMIT_" + name.upper(), "soft": soft, "hard": hard})

    config["root"] = {"path": inputs.rootfs, "readonly": bool(spec.read_only)}
    config["hostname"] = hostname
    config["annotations"] = {"org.nsbox.container.id": cid,
                             **{f"org.nsbox.label.{k}": v for k, v in spec.labels.items()}}

    # Mounts: defaults, then /etc files, then the user's (a user mount on the same target wins).
    shm = spec.shm_size if spec.shm_size is not None else DEFAULT_SHM
    for mount in config["mounts"]:
        if mount["destination"] == "/dev/shm":
            mount["options"] = [o for o in mount["options"] if not o.startswith("size=")]
            mount["options"].append(f"size={max(shm // 1024, 4)}k")
    user_targets = {os.path.normpath(m.target) for m in spec.mounts}
    # The resolver of user-mode networking: slirp4netns's, or what pasta forwards to the host's.
    nameserver = "10.0.2.3" if spec.network_mode.startswith("slirp4netns") else \
        "169.254.1.1" if spec.network_mode == "pasta" else ""
    etc_files = write_etc_files(inputs.userdata, hostname, nameserver)
    if net_peer is not None:
        etc_files.update((target, os.path.join(net_peer.bundle, name)) for target, name in (
            ("/etc/hosts", "hosts"), ("/etc/resolv.conf", "resolv.conf"),
            ("/etc/hostname", "hostname")) if os.path.isfile(os.path.join(net_peer.bundle, name)))
    for target, source in etc_files.items():
        if target not in user_targets:
            config["mounts"].append({"destination": target, "type": "bind", "source": source,
                                     "options": ["rbind", "rprivate"]})
    if spec.read_only:
        for target in ("/tmp", "/run"):
            if target not in user_targets:
                config["mounts"].append({"destination": target, "type": "tmpfs", "source": "tmpfs",
                                         "options": ["nosuid", "nodev", "mode=1777"]})
    for m in spec.mounts:
        if m.type == "bind":
            source = os.path.abspath(m.source)
            if not os.path.exists(source):
                raise BundleError(f"bind source path does not exist: {m.source}")
            options = ["rbind"] + [o for o in m.options if o not in ("ro", "rw")]
            if not any(o.endswith("private") or o.endswith("shared") or o.endswith("slave")
                       for o in options):
                options.append("rprivate")
            if m.read_only or "ro" in m.options:
                options.append("ro")
            config["mounts"].append({"destination": m.target, "type": "bind", "source": source,
                                     "options": options})
        elif m.type == "volume":
            source = inputs.volume_paths[os.path.normpath(m.target)]
            options = ["rbind", "rprivate"] + (["ro"] if m.read_only else [])
            config["mounts"].append({"destination": m.target, "type": "bind", "source": source,
                                     "options": options})
        else:
            options = ["nosuid", "nodev"] + list(m.options)
            if not any(o.startswith("mode=") for o in options):
                options.append("mode=1777")
            if m.read_only:
                options.append("ro")
            config["mounts"].append({"destination": m.target, "type": "tmpfs", "source": "tmpfs",
                                     "options": options})
    # Anonymous volumes of the image the user did not cover.
    for target, source in inputs.volume_paths.items():
        if target not in user_targets:
            config["mounts"].append({"destination": target, "type": "bind", "source": source,
                                     "options": ["rbind", "rprivate"]})

    # Namespaces.
    namespaces = {ns["type"]: ns for ns in linux["namespaces"]}
    for attr, kind in NAMESPACE_MODES:
        mode = getattr(spec, attr) or "private"
        if mode == "host":
            namespaces.pop(kind, None)
        elif mode.startswith("container:"):
            pid = inputs.peer_pids.get(mode)
            if not pid:
                raise InvalidState(f"{attr.replace('_', '-')} {mode}: that container is not running")
            proc_name = {"network": "net"}.get(kind, kind)
            namespaces[kind] = {"type": kind, "path": f"/proc/{pid}/ns/{proc_name}"}
        elif kind == "network" and inputs.netns_path:
            namespaces[kind] = {"type": kind, "path": inputs.netns_path}
        elif mode in ("private", "none", "bridge", "", "shareable"):
            namespaces.setdefault(kind, {"type": kind})
        else:
            raise ConfigError(f"{attr.replace('_', '-')}: unsupported mode {mode!r}")
    if inputs.idmap:
        from nsbox.engine.userns import oci_mappings
        namespaces["user"] = {"type": "user"}
        linux["uidMappings"], linux["gidMappings"] = oci_mappings(inputs.idmap)
    elif keep_id is not None:
        namespaces["user"] = {"type": "user"}
        linux["uidMappings"] = [{"containerID": c, "hostID": h, "size": n} for c, h, n in keep_id.uid_map]
        linux["gidMappings"] = [{"containerID": c, "hostID": h, "size": n} for c, h, n in keep_id.gid_map]
        for target, source in keep_id.write_account_files(inputs.userdata, inputs.layer_dirs).items():
            if target not in user_targets:
                config["mounts"].append({"destination": target, "type": "bind", "source": source,
                                         "options": ["rbind", "rprivate"]})
    elif spec.userns_mode not in ("host", ""):
        raise ConfigError(f"userns mode {spec.userns_mode!r} is not supported")
    if spec.timens_mode == "private" or spec.time_offsets:
        namespaces["time"] = {"type": "time"}
        if spec.time_offsets:
            linux["timeOffsets"] = {clock: {"secs": int(secs), "nanosecs": 0}
                                    for clock, secs in spec.time_offsets.items()}
    elif spec.timens_mode not in ("host", ""):
        raise ConfigError(f"timens mode {spec.timens_mode!r} is not supported")
    linux["namespaces"] = list(namespaces.values())
    if "uts" not in namespaces or namespaces["uts"].get("path"):
        config.pop("hostname", None)  # not the container's own UTS namespace: not its to set
    if "cgroup" not in namespaces:
        pass  # /sys/fs/cgroup then shows the host's hierarchy, read-only

    # Resources, devices, sysctls.
    resources = linux.setdefault("resources", {"devices": [{"allow": False, "access": "rwm"}]})
    for key, value in (spec.resources or {}).items():
        if key == "devices":
            resources["devices"] = resources.get("devices", []) + list(value)
        else:
            resources[key] = value
    _drop_unsupported(resources)
    devices = []
    for text in spec.devices:
        node, rule = _device(text)
        devices.append(node)
        resources.setdefault("devices", []).append(rule)
    if devices:
        linux["devices"] = devices
    if spec.sysctls:
        linux["sysctl"] = dict(spec.sysctls)
    linux["cgroupsPath"] = cgroups_path(cid, inputs.runtime, spec.cgroup_parent)
    apply_security(config, spec)
    from nsbox.engine.oci import spec_version_for
    version = spec_version_for(inputs.runtime, inputs.run_root or os.path.dirname(
        os.path.dirname(os.path.dirname(os.path.abspath(inputs.userdata)))))
    if version:
        config["ociVersion"] = version  # what that runtime accepts (crun 1.8 refuses 1.2.0)
    from nsbox.engine import rootless
    if rootless.active():
        _adjust_for_rootless(config, spec)
    return config


def _drop_unsupported(resources: dict) -> None:
    """Leave out what the kernel cannot enforce, as Docker does (flags.py warned already):
    a block I/O weight without a weight file, a swap limit without swap accounting."""
    blkio = resources.get("blockIO") or {}
    memory = resources.get("memory") or {}
    if not (blkio.get("weight") or blkio.get("weightDevice") or memory.get("swap")):
        return
    from nsbox.engine import hostcaps
    if (blkio.get("weight") or blkio.get("weightDevice")) and not hostcaps.blkio_weight_supported():
        resources["blockIO"] = blkio = {k: v for k, v in blkio.items()
                                        if k not in ("weight", "weightDevice")}
        if not blkio:
            del resources["blockIO"]
    if memory.get("swap") and not hostcaps.swap_limit_supported():
        resources["memory"] = {k: v for k, v in memory.items() if k != "swap"}


def _peer(mode: str, inputs: BundleInputs):  # noqa: ANN202 - a Container, or None
    """The container a `container:NAME` MODE names (looked up by the engine), else None."""
    if not mode.startswith("container:"):
        return None
    return inputs.peers.get(mode) or _looked_up_peers.get(mode)


def _hostname_of(peer) -> str:  # noqa: ANN001 - a Container
    """A container's hostname: as recorded at its creation, else its /etc/hostname file."""
    name = (getattr(peer, "extra", None) or {}).get("hostname") or ""
    if not name:
        try:
            with open(os.path.join(peer.bundle, "hostname")) as f:
                name = f.read().strip()
        except OSError:
            name = os.uname().nodename
    return name


def _adjust_for_rootless(config: dict, spec: ContainerSpec) -> None:
    """What rootless mode changes in CONFIG (see nsbox/engine/rootless.py)."""
    from nsbox.engine import rootless
    linux = config["linux"]
    if spec.cgroup_parent or cgroup_manager() == "systemd":
        raise ConfigError("rootless mode puts containers in its delegated cgroup (or none): "
                          "--cgroup-parent and --cgroup-manager systemd need root")
    delegated = rootless.delegated_parent()
    if delegated is not None:
        # Under a delegated cgroup2 subtree the container's cgroup goes there.
        # A device filter is a BPF program, which only the host's root may
        # attach; the shared user namespace has no device nodes to open anyway.
        linux["cgroupsPath"] = rootless.delegated_cgroups_path(
            delegated, os.path.basename(linux["cgroupsPath"]))
        linux["resources"].pop("devices", None)
    else:
        # No cgroup: nothing to put limits (or the default pids limit) in.
        rootless.check_resources(spec)
        linux.pop("resources", None)
        linux.pop("cgroupsPath", None)
        # Without a pids cgroup, a fork bomb meets RLIMIT_NPROC instead: it
        # counts the processes of one real user (the container's users are
        # the user's ids), and a capability only inside a user namespace does
        # not lift it.
        if not any(r["type"] == "RLIMIT_NPROC" for r in config["process"].get("rlimits", [])):
            from nsbox.engine.security import DEFAULT_PIDS_LIMIT
            config["process"].setdefault("rlimits", []).append(
                {"type": "RLIMIT_NPROC", "soft": DEFAULT_PIDS_LIMIT, "hard": DEFAULT_PIDS_LIMIT})
    if spec.pid_mode == "host":
        # A procfs may only be mounted for a pid namespace of our own user
        # namespace: with the host's, the container gets the host's /proc.
        for mount in config["mounts"]:
            if mount["destination"] == "/proc" and mount["type"] == "proc":
                mount.update(type="bind", source="/proc",
                             options=["rbind", "nosuid", "noexec", "nodev"])


# "container:NAME" -> the Container peer_pid_or_fail found, for build_config in the same
# create (BundleInputs.peers, when the engine passes it, comes first).
_looked_up_peers: dict[str, object] = {}


def peer_pid_or_fail(lookup, mode: str) -> int:  # noqa: ANN001 - Engine.get
    """Pid of the running container a `container:NAME` mode names."""
    ref = mode.split(":", 1)[1]
    try:
        peer = lookup(ref)
    except ContainerNotFound:
        raise ContainerNotFound(f"{mode}: no such container") from None
    if peer.state != "running" or not peer.pid:
        raise InvalidState(f"{mode}: that container is not running")
    _looked_up_peers[mode] = peer
    return peer.pid
