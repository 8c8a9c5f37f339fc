"""`docker create`: the record, the rootfs, the volumes and the bundle, but no process yet.

A failed create leaves nothing behind: no database row, no container
directory, no mount, no volume.
"""

from __future__ import annotations

import os
import time

from nsbox import _json
from nsbox._lite import suppress
from nsbox.engine.db import sqlite
from nsbox.engine.lifecycle.host import find_runtime
from nsbox.engine.lifecycle.record import (
    CREATING,
    USERDATA,
    Container,
    check_name,
    new_id,
    spec_to_json,
)
from nsbox.engine.model import CREATED, ContainerSpec
from nsbox.engine.procs import crashpoint
from nsbox.errors import ConfigError, ContainerExists, NsboxError

TYPE_CHECKING = False  # typing's own constant costs an import of typing
if TYPE_CHECKING:
    from collections.abc import Callable

    from nsbox.engine.lifecycle.state import EngineBase

_ADJECTIVES = ("brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lucid",
               "merry", "nimble", "proud", "quiet", "rapid", "sharp", "tidy", "vivid", "witty",
               "zen", "bold", "clever", "dreamy", "fervent", "hopeful")
_NOUNS = ("turing", "hopper", "lovelace", "knuth", "ritchie", "thompson", "torvalds", "shannon",
          "dijkstra", "hamilton", "liskov", "lamport", "kay", "backus", "curie", "noether",
          "euler", "gauss", "pike", "wirth", "cerf", "allen", "goldberg", "perlman")


def _randbelow(n: int) -> int:
    """A random int in [0, N) from os.urandom (what `secrets` would do, without importing it)."""
    return int.from_bytes(os.urandom(8), "big") % n


def _choice(items: tuple[str, ...]) -> str:
    return items[_randbelow(len(items))]


def create(engine: EngineBase, spec: ContainerSpec,
           make_id: Callable[[], str] = new_id, then_start: bool = False) -> Container:
    """`docker create`: the record, the rootfs and the bundle, but no process yet.

    Raises ImageNotFound, ContainerExists (name in use), BundleError (bind
    source missing) or ConfigError, leaving nothing behind.  The row comes
    first, `creating` and owned by this process, so that a crash halfway
    leaves a record the next command cleans up (lifecycle/state.py).
    THEN_START (`run`): it stays `creating`, ours, until start() takes it.
    """
    from nsbox.engine import bundle as bundle_mod
    sqlite3 = sqlite()
    runtime = find_runtime(spec.runtime or engine.default_runtime)
    bundle_mod.check_mounts(spec)
    if spec.name is not None:
        check_name(spec.name)
        if any(r["name"] == spec.name for r in engine.db.find_containers(spec.name)):
            raise ContainerExists(f"the container name {spec.name!r} is already in use")
    image = engine.images.resolve(spec.image)
    peer_pids = {}
    for attr, _ in bundle_mod.NAMESPACE_MODES:
        mode = getattr(spec, attr) or ""
        if mode.startswith("container:"):
            peer_pids[mode] = bundle_mod.peer_pid_or_fail(engine.get, mode)
    bundle_mod.command_of(spec, image.section)  # "no command" fails before anything exists
    guard_conf = None
    if any(o.startswith("guard") for o in spec.security_opt) or os.path.exists(
            os.environ.get("NSBOX_GUARD_CONF", "/etc/nsbox/guard.conf")) or \
            os.environ.get("NSBOX_GUARD"):  # (without them, nothing of the guard is imported)
        from nsbox.engine.guard import config as guard_client  # its rules, read and checked
        guard_conf = guard_client.configure(guard_client.setting_of(spec.security_opt))
    nets = None
    if _bridged(spec.network_mode):
        from nsbox.engine.network import attach
        nets = attach.resolve(engine, spec)  # an unknown network or bad --ip: nothing made yet
    from nsbox.engine.db import check_room
    check_room(engine.root)  # a full disk: the reserve is for removals
    from nsbox.engine.logs import log_limits
    try:
        spec.log_opts = log_limits(spec.log_opts)  # the default limits, kept with the record
    except ValueError as err:
        raise ConfigError(f"log limits: {err}") from None

    if spec.network_mode == "private":
        from nsbox.engine import rootless
        if rootless.active():
            from nsbox.engine.network import slirp
            why = slirp.unavailable()
            if not why:
                spec.network_mode = "slirp4netns"  # rootless Podman's default network
            elif spec.publish or spec.publish_all:
                # Only user-mode networking can publish a rootless container's ports.
                raise ConfigError(f"cannot publish ports: slirp4netns cannot run: {why}")
    elif spec.network_mode == "pasta":
        from nsbox.engine.network import pasta
        why = pasta.unavailable()
        if why:
            raise ConfigError(f"--network pasta: {why}")
    cid = make_id()
    userdata = os.path.join(engine.storage.containers_dir, cid, USERDATA)
    name = spec.name
    for attempt in range(100):
        if spec.name is None:
            name = f"{_choice(_ADJECTIVES)}_{_choice(_NOUNS)}"
            if attempt > 10:
                name += f"_{_randbelow(10 ** 6)}"
        row = {"id": cid, "name": name, "image": spec.image, "image_id": image.id,
               "created": time.time(), "state": CREATING, "spec": spec_to_json(spec),
               "bundle": userdata, "runtime": runtime, "extra": {}, "owner_pid": os.getpid()}
        try:
            engine.db.insert_container(row)
            break
        except sqlite3.IntegrityError:
            if spec.name is not None:
                raise ContainerExists(f"the container name {spec.name!r} is already in use") \
                    from None
    else:
        raise NsboxError("could not find a free container name")
    anonymous: list[str] = []
    try:
        crashpoint("create.after_insert")
        info = engine.storage.create_rootfs(cid, image)
        crashpoint("create.after_rootfs")
        idmap: list[int] = []
        if spec.userns_mode in ("remap", "auto"):
            from nsbox.engine import rootless, userns
            if rootless.active():
                raise ConfigError(f"--userns={spec.userns_mode} is for root: rootless "
                                  "containers already run in your user namespace "
                                  "(--userns=keep-id keeps your uid inside)")
            taken = [c.extra.get("idmap") for c in engine.list(all=True) if c.id != cid]
            idmap = userns.allocate(spec.userns_mode, [m for m in taken if m])
            engine.storage.set_idmap(cid, idmap)
        keep_id = None
        if spec.userns_mode == "keep-id":
            from nsbox.engine.rootless import KeepId
            keep_id = KeepId()
            engine.storage.set_shifted(cid, keep_id.uid_map, keep_id.gid_map)
        os.makedirs(userdata, mode=0o700)
        volume_paths, volume_names = {}, {}
        for m in spec.mounts:
            if m.type == "volume":
                vol = engine.volumes.create(m.source or None,
                                            labels=None if m.source else {"nsbox.anonymous-for": cid},
                                            anonymous=not m.source)
                if not m.source:
                    anonymous.append(vol["Name"])
                volume_paths[os.path.normpath(m.target)] = vol["Mountpoint"]
                volume_names[os.path.normpath(m.target)] = vol["Name"]
        covered = {os.path.normpath(m.target) for m in spec.mounts}
        for target in image.volumes:
            target = os.path.normpath(target)
            if target not in covered:
                vol = engine.volumes.create(None, labels={"nsbox.anonymous-for": cid},
                                            anonymous=True)
                anonymous.append(vol["Name"])
                volume_paths[target] = vol["Mountpoint"]
                volume_names[target] = vol["Name"]
        leases = []
        if nets is not None:
            from nsbox.engine.network import attach
            leases = attach.setup_container(engine, cid, name, spec, nets)
        inputs = bundle_mod.BundleInputs(
            container_id=cid, rootfs=info.merged, layer_dirs=[info.upper] + info.lower_dirs,
            userdata=userdata, runtime=runtime, volume_paths=volume_paths, peer_pids=peer_pids,
            idmap=idmap, netns_path=netns_path(engine.run_root, cid, spec.network_mode),
            keep_id=keep_id, run_root=engine.run_root)
        config = bundle_mod.build_config(spec, image.section, inputs)
        if guard_conf is not None:  # deny rules and drift, enforced by the runtime (Landlock)
            config.setdefault("annotations", {}).update(
                guard_client.landlock_annotation(guard_conf, info.lower_dirs))
        if nets is not None and not _rootless_bridges():
            # Docker's: ping without CAP_NET_RAW, in the container's own namespace (not
            # rootless: a range wider than the user namespace's gid map is refused).
            config["linux"].setdefault("sysctl", {}).setdefault("net.ipv4.ping_group_range",
                                                                "0 2147483647")
        if nets is not None or spec.extra_hosts or spec.dns or spec.dns_search or \
                spec.dns_options:
            _write_etc_files(userdata, spec, name, leases, nets)
        if idmap:
            open_to_mapped_root(engine, userdata, volume_paths, idmap)
        elif keep_id is not None:
            open_to_mapped_root(engine, userdata, volume_paths, list(keep_id.ours(0, 0)))
        with open(os.path.join(userdata, "config.json"), "w") as f:
            f.write(_json.dumps_pretty(config, indent=" "))  # as json.dump(indent=1)
        extra = {"anonymous_volumes": anonymous, "volumes": volume_names, "path": config["process"]["args"][0],
                 "args": config["process"]["args"][1:],
                 "stop_signal": bundle_mod.stop_signal(spec, image.section),
                 "hostname": config.get("hostname", ""),
                 "env": config["process"]["env"], "cwd": config["process"]["cwd"],
                 "user": spec.user if spec.user is not None else image.user,
                 "image_entrypoint": image.entrypoint, "image_cmd": image.cmd,
                 "idmap": idmap,
                 # Where the runtime will put its cgroups (below the starter's
                 # own, recorded at start): found again after a crash.
                 "cgroups_path": config.get("linux", {}).get("cgroupsPath", "")}
        if guard_conf is not None:
            extra["guard"] = guard_conf  # the rules as they were at create
        if spec.healthcheck or image.section.get("Healthcheck"):
            from nsbox.engine.health.config import effective, merge
            merged = merge(spec.healthcheck, image.section.get("Healthcheck"))
            if effective(merged) is not None:  # (a test it cannot run fails the create)
                extra["healthcheck"] = merged  # kept only if there is a check to run
            if image.section.get("Shell"):
                extra["health_shell"] = image.section["Shell"]  # CMD-SHELL's shell (SHELL)
        crashpoint("create.after_bundle")
        if nets is not None:
            # The wiring child (network/wiring.py) worked alongside: the runtime
            # joins the namespace by path, so it must be mounted now; `run` joins
            # the rest between the runtime's create and start, `create` here.
            from nsbox.engine.network import wiring
            wiring.mounted(engine.run_root, cid)
            if not then_start:
                wiring.wait(engine.run_root, cid)
        engine.db.update_container(cid, extra=extra, state=CREATING if then_start else CREATED)
    except BaseException:
        import shutil
        if nets is not None:
            from nsbox.engine.network import attach
            with suppress(Exception):
                attach.teardown_container(engine, cid)
        with suppress(Exception):
            engine.storage.remove(cid)
        shutil.rmtree(os.path.join(engine.storage.containers_dir, cid), ignore_errors=True)
        for vol in anonymous:
            with suppress(Exception):
                engine.db.delete_volume(vol)
                shutil.rmtree(os.path.join(engine.volumes.dir, vol), ignore_errors=True)
        engine.db.delete_container(cid)
        raise
    c = engine.get(cid)
    from nsbox.engine.events import emit_container
    emit_container(engine.root, c, "create")
    return c


def open_to_mapped_root(engine: EngineBase, userdata: str, volume_paths: dict[str, str],
                        idmap: list[int]) -> None:
    """Let a remapped container's root reach its bind sources: search permission on the
    directories above them (not read), and its /etc files and new volumes its own."""
    uid, gid = idmap[0], idmap[1]
    for name in ("hosts", "hostname", "resolv.conf"):
        path = os.path.join(userdata, name)
        if os.path.exists(path):
            os.chown(path, uid, gid)
    for path in [userdata, *volume_paths.values()]:
        if path in volume_paths.values() and not os.listdir(path):
            os.chown(path, uid, gid)  # a new volume belongs to the container's root
        path = os.path.dirname(path) if path in volume_paths.values() else path
        while path.startswith(engine.root) and path != os.path.dirname(path):
            mode = os.stat(path).st_mode & 0o777
            if mode & 0o011 != 0o011:
                os.chmod(path, mode | 0o011)
            if path == engine.root:
                break
            path = os.path.dirname(path)


def _bridged(network_mode: str) -> bool:
    """A bridge network (`bridge` or a network's name; nsbox/engine/network/attach.py)."""
    return network_mode not in ("none", "host", "private", "", "shareable") and \
        network_mode != "pasta" and not network_mode.startswith(("container:", "slirp4netns"))


def _write_etc_files(userdata: str, spec: ContainerSpec, name: str, leases: list,
                     nets: list | None) -> None:
    """hosts (the container's address, --add-host) and resolv.conf (--dns*, the network's
    DNS server) over the defaults build_config wrote (nsbox/engine/network/etcfiles.py)."""
    from nsbox.engine.network import etcfiles
    try:
        with open(os.path.join(userdata, "hostname")) as f:
            hostname = f.read().strip()
    except OSError:
        hostname = spec.hostname or ""
    first = leases[0] if leases else None
    server = None
    if nets:
        for net in nets:
            if not net.is_default:  # the default bridge has no DNS server (Docker's)
                from nsbox.engine.network import dns
                server = dns.server_for(net)
                if server:
                    break
    etcfiles.write(userdata, spec, hostname, name, ip=first.ip if first else "",
                   gateway=first.gateway if first else "", dns_server=server,
                   networked=nets is not None, ip6=first.ip6 if first else "")


def netns_path(run_root: str, cid: str, network_mode: str) -> str:
    """The engine-made network namespace a slirp4netns or bridge container joins, else ""."""
    if not network_mode.startswith("slirp4netns") and network_mode != "pasta" and \
            not _bridged(network_mode):
        return ""
    from nsbox.engine.network import netns
    return netns.netns_path(run_root, cid)


def _rootless_bridges() -> bool:
    """Does this (rootless) engine keep its bridges in the user's namespace (usernet.py)?"""
    from nsbox.engine.network import usernet
    return usernet.entered()
