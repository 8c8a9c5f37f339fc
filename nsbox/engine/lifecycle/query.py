"""The read side: list, inspect, logs, top, port, the security posture and the cgroups view.

Nothing here changes a container, except what get() reconciles (a record
whose process is gone becomes `exited`, see lifecycle/state.py).
"""

from __future__ import annotations

import os

from nsbox import _json
from nsbox.engine.lifecycle.host import monitor_alive, runtime_root
from nsbox.engine.lifecycle.record import ACTIVE, DEFAULT_STOP_TIMEOUT, Container
from nsbox.engine.model import DEAD, PAUSED, RESTARTING, RUNNING
from nsbox.errors import ConfigError, ContainerNotFound, InvalidState, NsboxError

TYPE_CHECKING = False  # typing's own constant costs an import of typing
if TYPE_CHECKING:
    from collections.abc import Iterator

    from nsbox.engine.lifecycle.state import EngineBase

NAMESPACES = ("cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts")


def logs(engine: EngineBase, ref: str, follow: bool = False, tail: int | None = None,
         timestamps: bool = False, since: float | None = None, wake_fd: int = -1
         ) -> Iterator[tuple[str, str, bytes]]:
    """(RFC 3339 time, "stdout"|"stderr", line bytes incl. newline), oldest first.

    TIMESTAMPS is accepted for the CLI's sake: the time is always in the tuple.
    WAKE_FD: the pipe start(notify=True) returned, to stop following at once.
    """
    from nsbox.engine.logs import read_logs
    # With WAKE_FD the monitor is alive and will say when it is done: no
    # reconcile, which would wait for it to record an exit it just saw.
    c = engine._lookup(ref) if wake_fd >= 0 else engine.get(ref)

    def running() -> bool:
        # Until the monitor is gone it may still be copying the last output
        # into the log, even after the container's process has exited.
        row = engine.db.container(c.id)
        if row is None:
            return False
        current = Container.from_row(row)
        if current.monitor_pid and monitor_alive(current.monitor_pid, current.id):
            return True
        return engine._reconcile(current).state in ACTIVE
    return read_logs(c.log_path, c.spec.log_driver, follow, tail, since, running,
                     wake_fd=wake_fd)


def log_drops(engine: EngineBase, ref: str) -> tuple[int, int]:
    """(lines, bytes) of REF's output its monitor dropped: its log could not be written."""
    from nsbox.engine.logs import read_drops
    return read_drops(engine._lookup(ref).log_path)


def top(engine: EngineBase, ref: str, ps_args: list[str] | None = None) -> list[list[str]]:
    """Processes of the container: a header row, then one row each.

    Without PS_ARGS the columns are UID PID PPID CMD, read from /proc; with
    them the host's ps(1) runs with those options, as `docker top C -o ...`
    does, and only the rows of the container's processes are kept.
    """
    c = engine.get(ref)
    if c.state not in (RUNNING, PAUSED):
        raise InvalidState(f"container {c.name} is not running")
    pids = engine.oci(c.runtime).pids(c.id)
    if ps_args:
        return _ps_rows(ps_args, pids)
    rows = [["UID", "PID", "PPID", "CMD"]]
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        rows.append([status["Uid"].split()[0], str(pid), status["PPid"].strip(),
                     cmdline or f"[{status['Name'].strip()}]"])
    return rows


def _ps_rows(ps_args: list[str], pids: list[int]) -> list[list[str]]:
    """ps PS_ARGS on the host, rows filtered to PIDS by the output's PID column."""
    import subprocess
    wanted = {str(pid) for pid in pids}
    # procps' -q selects just these pids (fast); a few options (forest, f) refuse
    # to go with it, and then ps lists everything and the filter below selects.
    attempts = [[*ps_args, "-q", ",".join(sorted(wanted, key=int))], ps_args] if wanted else [ps_args]
    result = None
    for argv in attempts:
        try:
            result = subprocess.run(["ps", *argv], capture_output=True, text=True, check=False)
        except OSError as exc:
            raise NsboxError(f"top: cannot run ps: {exc}") from None
        if result.returncode == 0:
            break
    if result is None or result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or [""])[0] if result else ""
        raise ConfigError(f"top: ps {' '.join(ps_args)} failed: {detail}")
    lines = result.stdout.splitlines()
    header = lines[0].split() if lines else []
    if "PID" not in header:
        raise ConfigError(f"top: ps {' '.join(ps_args)} prints no PID column; "
                          "add pid to its output fields")
    column = header.index("PID")
    rows = [header]
    for line in lines[1:]:
        fields = line.split(None, len(header) - 1)
        if len(fields) > column and fields[column] in wanted:
            rows.append(fields)
    return rows


def port(engine: EngineBase, ref: str) -> dict[str, list[str]]:
    """Published ports while it runs: "80/tcp" -> ["0.0.0.0:8080", ...] (network/ports.py)."""
    c = engine.get(ref)
    if not (c.spec.publish or c.spec.publish_all) or c.state not in (RUNNING, PAUSED):
        return {}
    from nsbox.engine.network import ports
    return ports.port_lines(engine, c)


def _ports_views(engine: EngineBase, c: Container) -> tuple[dict, dict]:
    """(HostConfig.PortBindings, NetworkSettings.Ports) of C."""
    if not (c.spec.publish or c.spec.publish_all or c.spec.expose):
        return {}, {}
    from nsbox.engine.network import ports
    running = c.state in (RUNNING, PAUSED)
    return ports.port_bindings(c.spec), ports.network_ports(engine, c) if running else {}


def network_settings(engine: EngineBase, c: Container) -> dict:
    """inspect's NetworkSettings: Networks.NAME.{IPAddress, Gateway, MacAddress, ...},
    SandboxKey (nsbox/engine/network/attach.py)."""
    from nsbox.engine.network import attach
    return attach.settings(engine, c.id, c.spec)


def inspect(engine: EngineBase, ref: str) -> dict:
    """Docker-shaped inspect JSON, plus "Namespaces" and "Cgroups" (nsbox's additions)."""
    from nsbox.engine.bundle import device_mapping
    from nsbox.engine.images.config import format_time
    c = engine.get(ref)
    spec, extra = c.spec, c.extra
    res = spec.resources or {}
    memory = res.get("memory") or {}
    cpu = res.get("cpu") or {}
    nano_cpus = 0
    if cpu.get("quota") and cpu.get("period"):
        nano_cpus = int(cpu["quota"] * 1e9 / cpu["period"])
    try:
        info = engine.storage.rootfs(c.id)
        graph = {"LowerDir": ":".join(info.lower_dirs), "UpperDir": info.upper,
                 "WorkDir": info.work, "MergedDir": info.merged}
    except ContainerNotFound:
        graph = {}
    mounts = []
    for m in spec.mounts:
        entry = {"Type": m.type, "Destination": m.target, "Mode": "",
                 "RW": not m.read_only, "Propagation": "rprivate" if m.type != "tmpfs" else ""}
        if m.type == "bind":
            entry["Source"] = os.path.abspath(m.source)
        elif m.type == "volume":
            entry["Name"] = extra.get("volumes", {}).get(os.path.normpath(m.target), m.source)
            entry["Driver"] = "local"
            entry["Source"] = os.path.join(engine.volumes.dir, entry["Name"], "_data")
        mounts.append(entry)
    for name in extra.get("anonymous_volumes", []):
        if not any(m.get("Name") == name for m in mounts):
            mounts.append({"Type": "volume", "Name": name, "Driver": "local",
                           "Source": os.path.join(engine.volumes.dir, name, "_data"), "RW": True})
    running = c.state in (RUNNING, PAUSED)
    port_bindings, network_ports = _ports_views(engine, c)
    from nsbox.engine.logs import read_drops
    dropped_lines, dropped_bytes = read_drops(c.log_path)
    return {
        "Id": c.id,
        "Created": format_time(c.created),
        "Path": extra.get("path", ""),
        "Args": extra.get("args", []),
        "State": {
            "Status": c.state, "Running": running, "Paused": c.state == PAUSED,
            "Restarting": c.state == RESTARTING, "OOMKilled": c.oom_killed,
            "Dead": c.state == DEAD, "Pid": c.pid if running else 0, "ExitCode": c.exit_code,
            "Error": c.error,
            "StartedAt": format_time(c.started_at) if c.started_at else "0001-01-01T00:00:00Z",
            "FinishedAt": format_time(c.finished_at) if c.finished_at else "0001-01-01T00:00:00Z",
            # nsbox: output the monitor could not write to the log (a full disk)
            "LogDropped": dropped_lines, "LogDroppedBytes": dropped_bytes,
            **_health_state(c),
        },
        "Image": c.image_id,
        "ResolvConfPath": os.path.join(c.bundle, "resolv.conf"),
        "HostnamePath": os.path.join(c.bundle, "hostname"),
        "HostsPath": os.path.join(c.bundle, "hosts"),
        "LogPath": c.log_path,
        "Name": "/" + c.name,
        "RestartCount": c.restart_count,
        "Driver": "overlay",
        "Platform": "linux",
        "HostConfig": {
            "Binds": [f"{m.source}:{m.target}{':ro' if m.read_only else ''}"
                      for m in spec.mounts if m.type in ("bind", "volume") and m.source],
            "LogConfig": {"Type": spec.log_driver, "Config": dict(spec.log_opts)},
            "NetworkMode": spec.network_mode,
            "PortBindings": port_bindings, "PublishAllPorts": spec.publish_all,
            "RestartPolicy": {"Name": spec.restart.name,
                              "MaximumRetryCount": spec.restart.max_retries},
            "AutoRemove": spec.auto_remove,
            "CapAdd": list(spec.cap_add), "CapDrop": list(spec.cap_drop),
            "IpcMode": spec.ipc_mode, "PidMode": spec.pid_mode, "UTSMode": spec.uts_mode,
            "UsernsMode": spec.userns_mode, "CgroupnsMode": spec.cgroupns_mode,
            "CgroupParent": spec.cgroup_parent or "",
            "OomScoreAdj": spec.oom_score_adj or 0,
            "Privileged": spec.privileged, "ReadonlyRootfs": spec.read_only,
            "SecurityOpt": list(spec.security_opt),
            "ShmSize": spec.shm_size or 64 * 1024 * 1024,
            "Sysctls": dict(spec.sysctls),
            "Runtime": os.path.basename(c.runtime),
            "Memory": memory.get("limit", 0) or 0,
            "MemoryReservation": memory.get("reservation", 0) or 0,
            "MemorySwap": memory.get("swap", 0) or 0,
            "NanoCpus": nano_cpus,
            "CpuShares": cpu.get("shares", 0) or 0,
            "CpuPeriod": cpu.get("period", 0) or 0,
            "CpuQuota": cpu.get("quota", 0) or 0,
            "CpusetCpus": cpu.get("cpus", "") or "",
            "CpusetMems": cpu.get("mems", "") or "",
            "PidsLimit": (res.get("pids") or {}).get("limit") or None,
            "BlkioWeight": (res.get("blockIO") or {}).get("weight", 0) or 0,
            "Devices": [dict(zip(("PathOnHost", "PathInContainer", "CgroupPermissions"),
                                 device_mapping(d), strict=True)) for d in spec.devices],
            "Ulimits": [{"Name": k, "Soft": v[0], "Hard": v[1]} for k, v in spec.ulimits.items()],
            "Init": spec.init,
        },
        "GraphDriver": {"Name": "overlay", "Data": graph},
        "Mounts": mounts,
        "Config": {
            "Hostname": extra.get("hostname", ""),
            "User": extra.get("user", "") or "",
            "Env": extra.get("env", []),
            "Cmd": spec.command if spec.command is not None else (
                [] if spec.entrypoint is not None else extra.get("image_cmd")),
            "Entrypoint": spec.entrypoint if spec.entrypoint is not None
            else extra.get("image_entrypoint"),
            "WorkingDir": extra.get("cwd", "/"),
            "Labels": dict(spec.labels),
            "Image": c.image,
            "Tty": spec.tty,
            "OpenStdin": spec.interactive,
            "StopSignal": extra.get("stop_signal", "SIGTERM"),
            "StopTimeout": spec.stop_timeout if spec.stop_timeout is not None
            else DEFAULT_STOP_TIMEOUT,
            **({"Healthcheck": extra.get("healthcheck") or spec.healthcheck}
               if extra.get("healthcheck") or spec.healthcheck else {}),
        },
        "NetworkSettings": {**network_settings(engine, c), "Ports": network_ports},
        "Namespaces": namespaces(c.pid) if running else {},
        "Cgroups": cgroups(engine, c) if running else {},
    }


def _health_state(c: Container) -> dict:
    """{"Health": {Status, FailingStreak, Log}} once a container with a check has started."""
    if not c.extra.get("healthcheck"):  # only there when it has a check to run
        return {}
    from nsbox.engine.health.state import read
    health = read(c.bundle)
    return {"Health": health} if health is not None else {}


def security_posture(engine: EngineBase, ref: str) -> dict:
    """The container's security posture (posture.posture) with its name and id."""
    from nsbox.engine.posture import posture
    c = engine.get(ref)
    try:
        with open(os.path.join(c.bundle, "config.json")) as f:
            config = _json.loads(f.read())
    except (OSError, ValueError) as exc:
        raise NsboxError(f"container {c.name}: cannot read its config.json: {exc}") from None
    # Namespace paths of joined containers are /proc/PID/ns/TYPE: name their owners.
    peers = {f"/proc/{other.pid}": other.name for other in engine.list(all=False)
             if other.pid and other.id != c.id}
    report = posture(config, c.pid if c.state in (RUNNING, PAUSED) else 0, peers)
    if c.extra.get("guard"):
        from nsbox.engine.guard.client import posture_item
        guard = posture_item(c.extra["guard"], c.bundle, c.id, c.state in (RUNNING, PAUSED))
        report["items"].append(guard)
        if guard["weaker"]:
            report["weaker"].append("guard")
    return {"Id": c.id, "Name": c.name, **report}


def cgroups(engine: EngineBase, c: Container) -> dict[str, str]:
    """controller -> host cgroup directory, from the runtime's state.json, else /proc/PID/cgroup."""
    path = os.path.join(runtime_root(engine.run_root, c.runtime), c.id, "state.json")
    try:
        with open(path) as f:
            paths = _json.loads(f.read()).get("cgroup_paths") or {}
        if paths:
            return dict(paths)
    except (OSError, ValueError):
        pass
    out = {}
    try:
        with open(f"/proc/{c.pid}/cgroup") as f:
            for line in f:
                _, controllers, rel = line.rstrip("\n").split(":", 2)
                if not controllers:
                    out["unified"] = "/sys/fs/cgroup/unified" + rel if os.path.isdir(
                        "/sys/fs/cgroup/unified") else "/sys/fs/cgroup" + rel
                    continue
                for ctrl in controllers.split(","):
                    ctrl = ctrl.removeprefix("name=")
                    out[ctrl] = f"/sys/fs/cgroup/{controllers.removeprefix('name=')}{rel}"
    except OSError:
        pass
    return out


def namespaces(pid: int) -> dict[str, dict]:
    out = {}
    for name in NAMESPACES:
        path = f"/proc/{pid}/ns/{name}"
        try:
            inode = os.stat(path).st_ino
            host = os.stat(f"/proc/self/ns/{name}").st_ino
        except OSError:
            continue
        out[name] = {"inode": inode, "path": path, "shared_with_host": inode == host}
    return out
