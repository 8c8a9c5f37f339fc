"""What a user asks of a container: the engine's typed request and records.

`ContainerSpec` is what `nsbox run/create` flags and `nsbox.api.run(...)`
keyword arguments become (engine/flags.py parses the Docker-style strings);
the container layer turns it, with the image config, into an OCI bundle.
"""

from __future__ import annotations

from nsbox._record import record


@record
class MountSpec:
    """One -v / --mount / --tmpfs entry."""

    type: str  # "bind", "volume" or "tmpfs"
    target: str
    source: str = ""  # host path (bind) or volume name (volume; empty = anonymous)
    read_only: bool = False
    options: list[str] = list  # e.g. ["rprivate"], ["size=64m", "mode=1777"]


@record
class RestartPolicy:
    name: str = "no"  # no, on-failure, always, unless-stopped
    max_retries: int = 0  # on-failure[:N]


@record
class ContainerSpec:
    """A container to create, in Docker's terms."""

    image: str
    command: list[str] | None = None  # None: the image's Cmd
    entrypoint: list[str] | None = None  # None: the image's Entrypoint; [] clears it
    name: str | None = None
    env: dict[str, str] = dict
    workdir: str | None = None
    user: str | None = None  # "uid[:gid]" or "name[:group]"
    hostname: str | None = None
    labels: dict[str, str] = dict
    tty: bool = False
    interactive: bool = False
    mounts: list[MountSpec] = list
    read_only: bool = False
    init: bool = False  # a reaping PID 1 (catatonit) in front of the command
    restart: RestartPolicy = RestartPolicy
    auto_remove: bool = False  # --rm
    stop_signal: str | None = None  # None: the image's StopSignal, else SIGTERM
    stop_timeout: int | None = None  # None: 10 s
    # OCI linux.resources, already converted from --memory, --cpus, ...
    resources: dict = dict
    ulimits: dict[str, tuple[int, int]] = dict  # "nofile" -> (soft, hard)
    shm_size: int | None = None  # bytes; None: 64 MiB
    devices: list[str] = list  # --device HOST[:CONTAINER[:rwm]]
    sysctls: dict[str, str] = dict
    oom_score_adj: int | None = None
    # Namespace modes: "private" (default), "host", or "container:NAME"
    pid_mode: str = "private"
    ipc_mode: str = "private"
    uts_mode: str = "private"
    network_mode: str = "private"  # "none" and "private": a new netns with lo only;
    # "container:NAME" also takes NAME's /etc/hosts, /etc/resolv.conf and hostname;
    # "bridge" or a network's name: a bridge network (nsbox/engine/network/, the first one)
    networks: list[str] = list  # every bridge network (--network repeated), network_mode first
    ip: str | None = None  # --ip: the address on the first network
    ip6: str | None = None  # --ip6: the IPv6 address on the first network (made with --ipv6)
    mac_address: str | None = None  # --mac-address, on the first network
    network_aliases: list[str] = list  # --network-alias: DNS names on user-defined networks
    dns: list[str] = list  # --dns
    dns_search: list[str] = list  # --dns-search
    dns_options: list[str] = list  # --dns-option
    extra_hosts: list[str] = list  # --add-host HOST:IP (or HOST:host-gateway)
    userns_mode: str = "host"
    cgroupns_mode: str = "private"
    timens_mode: str = "host"  # "private": a new time namespace (--timens, --time-offset)
    time_offsets: dict[str, int] = dict  # clock ("monotonic", "boottime") -> seconds
    cap_add: list[str] = list
    cap_drop: list[str] = list
    security_opt: list[str] = list
    privileged: bool = False
    log_driver: str = "json-file"  # or "k8s-file"
    log_opts: dict[str, str] = dict  # max-size, max-file
    runtime: str | None = None  # OCI runtime binary or name; None: nsbox-runtime
    cgroup_parent: str | None = None  # --cgroup-parent; None: $NSBOX_CGROUP_PARENT or the default
    # -p: one dict per container port, {"container_port": 80, "proto": "tcp", "host_ip": "",
    # "host_port": "" (any free one) | "8080" | "8000-8010" (one of)}; network/ports.py
    publish: list[dict] = list
    publish_all: bool = False  # -P: every exposed port to a free host port
    expose: list[str] = list  # --expose: ["80/tcp", ...]
    # Docker's HealthConfig from --health-*/--no-healthcheck (durations in ns), merged over
    # the image's at create; None: the image's (nsbox/engine/health/config.py)
    healthcheck: dict | None = None


# Container states as Docker names them (docker ps / inspect .State.Status).
CREATED, RUNNING, PAUSED, RESTARTING, EXITED, DEAD = (
    "created", "running", "paused", "restarting", "exited", "dead")
