"""Shared machinery for the real-client tests: podman and containerd driving an
OCI runtime given by path.

The runtime under test comes from ``NSBOX_TEST_RUNTIME`` (default: the venv's
``nsbox-runtime``), so the same tests run against runc while nsbox-runtime is
being written.  Every client gets a private tree under /tmp: its own config,
storage, runtime state and sockets, so nothing under /var/lib, /run or /etc is
written and everything can be torn down by removing that tree.

Nor is the host's network touched: every podman command and the containerd
daemon run in a network namespace of their own (``unshare --net``), podman's
default network mode is "none", its CNI config and plugin directories are
empty directories in the tree, and both teardowns check (and undo) any new
host link named cni-*/podman*, /var/lib/cni or /run/netns.

Switches (environment):
  NSBOX_TEST_RUNTIME         path of the runtime (absolute, or a name on PATH)
  NSBOX_TEST_CLIENT_CGROUPS  "1" lets the clients place containers in cgroups
                             (below this process's own cgroup); default off
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import platform
import pty
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nsbox.runtime import syscalls

log = logging.getLogger(__name__)

RUNTIME_ENV = "NSBOX_TEST_RUNTIME"
CGROUPS_ENV = "NSBOX_TEST_CLIENT_CGROUPS"
IMAGE_REF = "localhost/busybox:test"
BUSYBOX = Path("/bin/busybox")
CONTAINERD_NAMESPACE = "nsboxtest"
# native copies the 2 MB layer per container but needs no overlay mount of its
# own, which keeps teardown to the shim's single rootfs bind mount.
CONTAINERD_SNAPSHOTTER = "native"
# The host caps nofile at 20000; podman's root default (1048576) would make
# every container creation fail with EPERM in setrlimit.
DEFAULT_ULIMITS = ("nofile=1024:1024", "nproc=4096:4096")
# Runtimes that lack crun's global --cgroup-manager flag, which podman passes
# whenever cgroups are disabled.  The wrapper drops the flag for them only, so
# a runtime that should understand it still gets it.
RUNTIMES_WITHOUT_CGROUP_MANAGER_FLAG = frozenset({"runc"})


# --------------------------------------------------------------------------
# Selection of the runtime and switches
# --------------------------------------------------------------------------

def runtime_under_test() -> Path:
    """Absolute path of the OCI runtime the client tests drive."""
    configured = os.environ.get(RUNTIME_ENV)
    if not configured:
        return Path(sys.prefix) / "bin" / "nsbox-runtime"
    if os.sep not in configured:
        found = shutil.which(configured)
        if found:
            return Path(found)
    return Path(configured).absolute()


def cgroups_enabled() -> bool:
    """The single switch that lets podman/containerd put containers in cgroups."""
    return os.environ.get(CGROUPS_ENV, "") == "1"


def missing_binaries(*names: str) -> list[str]:
    return [name for name in names if shutil.which(name) is None]


# --------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------

def build_busybox_rootfs(rootfs: Path) -> Path:
    """Lay out a minimal rootfs: static busybox, its applets as symlinks, a root user."""
    bin_dir = rootfs / "bin"
    bin_dir.mkdir(parents=True)
    shutil.copy2(BUSYBOX, bin_dir / "busybox")
    applets = subprocess.run([str(BUSYBOX), "--list"], check=True, capture_output=True,
                             text=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (bin_dir / applet).symlink_to("busybox")
    for name in ("dev", "proc", "sys", "tmp", "root", "etc", "run", "var"):
        (rootfs / name).mkdir(exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\n")
    return rootfs


def _as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def tar_rootfs(rootfs: Path, tar_path: Path) -> Path:
    """Write the rootfs as an uncompressed tar owned by root, paths relative to /."""
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(rootfs.iterdir()):
            tar.add(entry, arcname=entry.name, filter=_as_root)
    return tar_path


def _oci_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def write_oci_archive(layer_tar: Path, archive: Path, ref: str = IMAGE_REF,
                      cmd: tuple[str, ...] = ("sh",)) -> str:
    """Write an OCI image-layout tar holding one image with layer_tar as its only layer.

    Returns the manifest digest.  Both the containerd name annotation (full
    reference) and the OCI ref.name (tag) are set so `ctr image import` names
    the image `ref` without needing --base-name.
    """
    layer = layer_tar.read_bytes()
    layer_digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": _oci_arch(),
        "os": "linux",
        "config": {"Cmd": list(cmd), "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created_by": "nsbox tests/clients.py"}],
    }
    config_blob = json.dumps(config, sort_keys=True).encode()
    config_digest = "sha256:" + hashlib.sha256(config_blob).hexdigest()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": len(config_blob)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": len(layer)}],
    }
    manifest_blob = json.dumps(manifest, sort_keys=True).encode()
    manifest_digest = "sha256:" + hashlib.sha256(manifest_blob).hexdigest()
    index = {
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": len(manifest_blob),
            "platform": {"architecture": _oci_arch(), "os": "linux"},
            "annotations": {"io.containerd.image.name": ref,
                            "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[-1]},
        }],
    }

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = _as_root(tarfile.TarInfo(name))
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(archive, "w") as tar:
        add(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        add(tar, "index.json", json.dumps(index).encode())
        for digest, blob in ((config_digest, config_blob), (manifest_digest, manifest_blob),
                             (layer_digest, layer)):
            add(tar, "blobs/sha256/" + digest.split(":", 1)[1], blob)
    return manifest_digest


# --------------------------------------------------------------------------
# Runtime wrapper
# --------------------------------------------------------------------------

_WRAPPER = """#!/bin/sh
# Written by nsbox tests/clients.py.  Pins the runtime's state directory inside
# the test tree: podman has no config key for runtime flags, and the cleanup
# command conmon runs after a container exits does not repeat --runtime-flag.
strip={strip}
skip=0
for arg do
  shift
  if [ "$skip" = 1 ]; then skip=0; continue; fi
  if [ "$strip" = 1 ]; then
    case $arg in
      --cgroup-manager) skip=1; continue;;
      --cgroup-manager=*) continue;;
    esac
  fi
  set -- "$@" "$arg"
done
exec {runtime} --root {state_root} "$@"
"""


def write_runtime_wrapper(runtime: Path, wrapper_dir: Path, state_root: Path) -> Path:
    """Write an executable that runs `runtime --root state_root ARGS...`.

    The wrapper keeps the runtime's basename because podman looks runtimes up
    by basename in runtime_supports_json / runtime_supports_nocgroup.
    """
    for path in (runtime, state_root):
        if any(ch in str(path) for ch in "'\"\\$` \n"):
            raise ValueError(f"path not usable in a shell wrapper: {path!r}")
    wrapper_dir.mkdir(parents=True, exist_ok=True)
    state_root.mkdir(parents=True, exist_ok=True)
    wrapper = wrapper_dir / runtime.name
    strip = 1 if runtime.name in RUNTIMES_WITHOUT_CGROUP_MANAGER_FLAG else 0
    wrapper.write_text(_WRAPPER.format(strip=strip, runtime=runtime, state_root=state_root))
    wrapper.chmod(0o755)
    return wrapper


# --------------------------------------------------------------------------
# Mounts, processes, cgroups
# --------------------------------------------------------------------------

def _unescape_mountinfo(field_text: str) -> str:
    # mountinfo octal-escapes space, tab, newline and backslash.
    return (field_text.replace("\\040", " ").replace("\\011", "\t")
            .replace("\\012", "\n").replace("\\134", "\\"))


def mountpoints_under(root: Path, pid: int | str = "self") -> list[str]:
    """Mount points at or below root in pid's mount namespace, deepest first."""
    prefix = str(root).rstrip("/")
    found = []
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            point = _unescape_mountinfo(line.split()[4])
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def unmount_all_under(root: Path) -> list[str]:
    """Lazily unmount everything below root; returns what was still mounted."""
    leftovers = mountpoints_under(root)
    for _ in range(5):
        points = mountpoints_under(root)
        if not points:
            break
        for point in points:
            with contextlib.suppress(OSError):
                syscalls.umount2(point, syscalls.MNT_DETACH)
    return leftovers


def pids_using_tree(tree: Path) -> list[int]:
    """Live processes that belong to a test tree.

    That is: its path is in their command line (conmon, containerd, shims), or
    their root directory is inside it (container processes after pivot_root).
    """
    needle = str(tree).encode()
    root_prefix = str(tree).rstrip("/") + "/"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            if state == "Z":
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            root = os.readlink(f"/proc/{entry}/root")
        except OSError:
            continue
        if needle in cmdline or root.startswith(root_prefix):
            found.append(int(entry))
    return found


def kill_pids(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def own_cgroup_base() -> str:
    """A cgroup path that is at or below this process's cgroup in every hierarchy.

    Clients that are given an absolute cgroup path create it in every mounted
    hierarchy, so on a hybrid host the path must extend the deepest of our own
    paths, and all the others must be its prefixes.
    """
    paths = []
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controllers.startswith("name=") and controllers != "name=systemd":
                continue
            paths.append(path)
    deepest = max(paths, key=len)
    for path in paths:
        if not (deepest + "/").startswith(path.rstrip("/") + "/"):
            raise RuntimeError(f"own cgroups are not nested: {paths}")
    return deepest.rstrip("/")


def _own_cgroup_dirs() -> list[Path]:
    """This process's cgroup directory in every mounted hierarchy."""
    base = Path("/sys/fs/cgroup")
    pure_v2 = (base / "cgroup.controllers").exists()
    dirs = []
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if not controllers:
                root = base if pure_v2 else base / "unified"
            else:
                root = base / controllers.removeprefix("name=")
            if root.is_dir():
                dirs.append(root / path.lstrip("/"))
    return dirs


def _rmdir_bottom_up(top: Path) -> None:
    for dirpath, _, _ in sorted(os.walk(top), key=lambda t: t[0].count("/"), reverse=True):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)


def remove_leaked_cgroups(container_ids: set[str], max_depth: int = 4) -> list[str]:
    """Find (and rmdir) cgroups below our own whose name contains a container id.

    A runtime given no cgroupsPath may still create cgroups named after the
    container (runc does); they must be gone once the container is deleted.
    """
    if not container_ids:
        return []
    leaked = []
    for own in _own_cgroup_dirs():
        base_depth = str(own).count("/")
        for dirpath, dirnames, _ in os.walk(own):
            if str(dirpath).count("/") - base_depth >= max_depth:
                dirnames.clear()
            for name in list(dirnames):
                if any(cid in name for cid in container_ids):
                    leaked.append(os.path.join(dirpath, name))
                    dirnames.remove(name)
    for path in leaked:
        _rmdir_bottom_up(Path(path))
    return leaked


def describe_leaked_cgroups(leaked: list[str]) -> str:
    names = sorted({os.path.basename(path) for path in leaked})
    return (f"{len(leaked)} cgroup dirs left behind for {len(names)} containers "
            f"({', '.join(name[:16] for name in names)}), e.g. {leaked[0]}")


def remove_cgroup_dirs(relative: str) -> None:
    """rmdir a cgroup path (relative to each hierarchy root) bottom-up in every hierarchy."""
    base = Path("/sys/fs/cgroup")
    roots = [base] if (base / "cgroup.controllers").exists() else \
        [p for p in base.iterdir() if p.is_dir() and not p.is_symlink()]
    own_dirs = set(_own_cgroup_dirs())
    for root in roots:
        top = root / relative.lstrip("/")
        if top.is_dir():
            _rmdir_bottom_up(top)
        # The parents a client made on the way (podman/conmon create the whole
        # --cgroup-parent path in hierarchies where our own cgroup is the root)
        # go too, while empty; never our own cgroup or anything above it.
        parent = top.parent
        while parent != root and parent not in own_dirs and root in parent.parents:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent


# --------------------------------------------------------------------------
# The host's network state
# --------------------------------------------------------------------------

# Runs the command in a new network namespace (util-linux).
PRIVATE_NET = ("unshare", "--net", "--")
# Bridges a container client makes on the host for its default network (podman's
# CNI bridge is cni-podman0, netavark's podman0); deleted when they appear.
CLIENT_BRIDGE_PREFIXES = ("cni-", "podman")
# Directories CNI and podman's netns package create on the host.
CNI_DIR = "/var/lib/cni"
NETNS_DIR = "/run/netns"


@dataclass(frozen=True)
class HostNet:
    links: frozenset[str]
    dirs: frozenset[str]


def _link_names() -> frozenset[str]:
    return frozenset(os.listdir("/sys/class/net"))


def host_net_state() -> HostNet:
    """What of the host's network a client could leave behind, as it is now."""
    return HostNet(links=_link_names(),
                   dirs=frozenset(d for d in (CNI_DIR, NETNS_DIR) if os.path.lexists(d)))


def _remove_new_netns_dir(who: str) -> str:
    """Undo a /run/netns podman made: its cni-* namespaces, then the self bind mount
    (podman, like `ip netns add`, bind-mounts the directory on itself)."""
    netns = Path(NETNS_DIR)
    for entry in netns.glob("cni-*"):
        with contextlib.suppress(OSError):
            syscalls.umount2(str(entry), syscalls.MNT_DETACH)
        with contextlib.suppress(OSError):
            entry.unlink()
    left = sorted(p.name for p in netns.iterdir())
    if left:  # someone else's namespaces: not ours to remove
        return f"{who} made {NETNS_DIR} on the host; left as it now holds {left}"
    for _ in range(5):
        if NETNS_DIR not in mountpoints_under(netns):
            break
        with contextlib.suppress(OSError):
            syscalls.umount2(NETNS_DIR, syscalls.MNT_DETACH)
    with contextlib.suppress(OSError):
        netns.rmdir()
    return f"{who} made {NETNS_DIR} on the host (removed)"


def undo_host_net_changes(before: HostNet, who: str) -> list[str]:
    """Remove client-made bridges and network directories that are new since BEFORE;
    returns a problem line for each (their appearance is the bug, not the cleanup)."""
    problems = []
    for link in sorted(_link_names() - before.links):
        if link.startswith(CLIENT_BRIDGE_PREFIXES):
            subprocess.run(["ip", "link", "delete", link], check=False, capture_output=True)
            problems.append(f"{who} made host network link {link} (deleted)")
    if CNI_DIR not in before.dirs and os.path.lexists(CNI_DIR):
        shutil.rmtree(CNI_DIR, ignore_errors=True)  # only CNI plugins write there
        problems.append(f"{who} made {CNI_DIR} on the host (removed)")
    if NETNS_DIR not in before.dirs and os.path.isdir(NETNS_DIR):
        problems.append(_remove_new_netns_dir(who))
    return problems


# --------------------------------------------------------------------------
# Pseudo-terminal driver
# --------------------------------------------------------------------------

@dataclass
class PtyResult:
    status: int
    output: str


def run_in_pty(argv: list[str], env: dict[str, str], steps: list[tuple[str, bytes]],
               timeout: float = 30.0) -> PtyResult:
    """Run argv on a new pseudo-terminal and play a little expect script.

    steps is a list of (wait_for, send): once wait_for shows up in the output
    read since the previous step, send is written.  Reads until the program
    closes the terminal, then returns its exit status and everything it wrote.
    """
    pid, master = pty.fork()
    if pid == 0:  # child: already session leader with the pty as controlling tty
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
            os.execvpe(argv[0], argv, env)
        finally:
            os._exit(127)
    output = bytearray()
    pending = list(steps)
    mark = 0
    deadline = time.monotonic() + timeout
    try:
        while True:
            if pending and pending[0][0].encode() in output[mark:]:
                mark = len(output)
                os.write(master, pending.pop(0)[1])
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise TimeoutError(f"{argv} on a pty timed out; output so far: {bytes(output)!r}")
            ready, _, _ = select.select([master], [], [], min(remaining, 0.5))
            if not ready:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the slave side is closed
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(master)
    _, wait_status = os.waitpid(pid, 0)
    return PtyResult(os.waitstatus_to_exitcode(wait_status), output.decode(errors="replace"))


# --------------------------------------------------------------------------
# Podman
# --------------------------------------------------------------------------

def _toml_list(items: list[str] | tuple[str, ...]) -> str:
    return "[" + ", ".join(json.dumps(item) for item in items) + "]"


@dataclass
class Podman:
    """A podman whose whole world (config, storage, locks, runtime state) is `tree`."""

    tree: Path
    runtime: Path
    runtime_wrapper: Path
    env: dict[str, str]
    cgroup_parent: str | None = None
    var_lib_containers_existed: bool = False
    host_net_before: HostNet | None = None

    @property
    def global_args(self) -> list[str]:
        # A network namespace of its own per command: whatever podman (or a CNI
        # plugin it might call) sets up lands there and goes away with it.
        return [*PRIVATE_NET, "podman", "--runtime", str(self.runtime_wrapper)]

    def container_args(self) -> list[str]:
        """Options every `run`/`create` gets: no network, and cgroup placement if on."""
        args = ["--network", "none"]
        if self.cgroup_parent:
            args += ["--cgroup-parent", self.cgroup_parent]
        return args

    def argv(self, *args: str) -> list[str]:
        return self.global_args + list(args)

    def run(self, *args: str, check: bool = True, timeout: float = 30,
            input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = self.argv(*args)
        log.debug("running %s", argv)
        # cwd in the tree: conmon writes its "oom" marker file into its cwd.
        proc = subprocess.run(argv, env=self.env, capture_output=True, text=True,
                              timeout=timeout, input=input_text, cwd=self.tree,
                              stdin=None if input_text is not None else subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"{argv} exited {proc.returncode}\nstdout: {proc.stdout}\n"
                                 f"stderr: {proc.stderr}")
        return proc

    def run_with_private_var_lib(self, *args: str, timeout: float = 60) -> None:
        """Run a podman command that copies images, hiding the host's /var/lib.

        podman 4.3 keeps c/image's blob-info cache at the fixed path
        /var/lib/containers/cache for root, with no setting to move it; a
        private mount namespace with a throwaway tmpfs on /var/lib keeps that
        write off the host.
        """
        argv = self.argv(*args)
        proc = subprocess.run(argv, env=self.env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, cwd=self.tree,
                              preexec_fn=_enter_private_var_lib)
        if proc.returncode != 0:
            raise AssertionError(f"{argv} exited {proc.returncode}\nstderr: {proc.stderr}")

    def states(self) -> dict[str, str]:
        """Container name -> lower-case state, as `podman ps -a` reports it."""
        listing = json.loads(self.run("ps", "-a", "--format", "json").stdout or "[]")
        return {entry["Names"][0]: entry["State"].lower() for entry in listing}

    def container_ids_ever(self) -> set[str]:
        """Ids of every container this podman created, from its event log."""
        proc = self.run("events", "--stream=false", "--filter", "type=container",
                        "--format", "{{.ID}}", check=False, timeout=30)
        return {line.strip() for line in proc.stdout.splitlines() if len(line.strip()) == 64}

    def teardown(self) -> list[str]:
        """Remove all containers and storage, unmount, kill strays; returns problems found."""
        problems: list[str] = []
        container_ids = self.container_ids_ever()
        for args in (("rm", "--all", "--force", "--time", "0"), ("system", "reset", "--force")):
            try:
                proc = self.run(*args, check=False, timeout=60)
                if proc.returncode != 0:
                    problems.append(f"podman {' '.join(args)}: {proc.stderr.strip()}")
            except subprocess.TimeoutExpired:
                problems.append(f"podman {' '.join(args)} timed out")
        strays = pids_using_tree(self.tree)
        if strays:
            problems.append(f"processes left running: {strays}")
            kill_pids(strays)
        leftover_mounts = unmount_all_under(self.tree)
        if leftover_mounts:
            problems.append(f"mounts left: {leftover_mounts}")
        leaked_cgroups = remove_leaked_cgroups(container_ids)
        if leaked_cgroups:
            problems.append(describe_leaked_cgroups(leaked_cgroups))
        if self.cgroup_parent:
            remove_cgroup_dirs(self.cgroup_parent)
        shutil.rmtree(self.tree, ignore_errors=True)
        if not self.var_lib_containers_existed and Path("/var/lib/containers").exists():
            problems.append("/var/lib/containers appeared during the run")
        if self.host_net_before is not None:
            problems += undo_host_net_changes(self.host_net_before, "podman")
        return problems


def _enter_private_var_lib() -> None:
    syscalls.unshare(syscalls.CLONE_NEWNS)
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    syscalls.mount("tmpfs", "/var/lib", "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV,
                   "mode=0755")


def make_podman(tree: Path, runtime: Path) -> Podman:
    """Write a containers.conf/storage.conf/registries.conf world under tree."""
    for sub in ("conf", "graph", "run", "tmp", "tmpfiles", "net", "cni-plugins", "hooks",
                "home/.config/containers"):
        (tree / sub).mkdir(parents=True, exist_ok=True)
    wrapper = write_runtime_wrapper(runtime, tree / "bin", tree / "runtime-state")
    known_runtimes = sorted({"crun", "runc", runtime.name})
    cgroups = "enabled" if cgroups_enabled() else "disabled"
    containers_conf = f"""\
[containers]
netns = "none"
cgroups = "{cgroups}"
default_ulimits = {_toml_list(DEFAULT_ULIMITS)}
log_driver = "k8s-file"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
lock_type = "file"
tmp_dir = "{tree}/tmp"
static_dir = "{tree}/graph/libpod"
volume_path = "{tree}/graph/volumes"
image_copy_tmp_dir = "{tree}/tmpfiles"
hooks_dir = ["{tree}/hooks"]
conmon_path = ["/usr/bin/conmon"]
runtime_supports_json = {_toml_list(known_runtimes)}
# podman 4.3 reads the singular key; its man page says runtime_supports_nocgroups.
runtime_supports_nocgroup = {_toml_list(known_runtimes)}

[network]
network_backend = "cni"
network_config_dir = "{tree}/net"
# No plugins: a bridge network (cni-podman0, /var/lib/cni IPAM) cannot be set up.
cni_plugin_dirs = ["{tree}/cni-plugins"]
"""
    storage_conf = f"""\
[storage]
driver = "overlay"
graphroot = "{tree}/graph"
runroot = "{tree}/run"
"""
    conf = tree / "conf"
    (conf / "containers.conf").write_text(containers_conf)
    (conf / "storage.conf").write_text(storage_conf)
    (conf / "registries.conf").write_text("")
    # c/image looks for a policy in $HOME before /etc/containers/policy.json.
    (tree / "home/.config/containers/policy.json").write_text(
        json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": str(tree / "home"),
        "XDG_CONFIG_HOME": str(tree / "home/.config"),
        "XDG_DATA_HOME": str(tree / "home/.local/share"),
        "TMPDIR": str(tree / "tmpfiles"),
        "CONTAINERS_CONF": str(conf / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(conf / "storage.conf"),
        "CONTAINERS_REGISTRIES_CONF": str(conf / "registries.conf"),
        "TERM": "xterm",
        "LANG": "C.UTF-8",
    }
    cgroup_parent = None
    if cgroups_enabled():
        cgroup_parent = f"{own_cgroup_base()}/nsboxtest-{tree.name}"
    return Podman(tree=tree, runtime=runtime, runtime_wrapper=wrapper, env=env,
                  cgroup_parent=cgroup_parent,
                  var_lib_containers_existed=Path("/var/lib/containers").exists(),
                  host_net_before=host_net_state())


@contextlib.contextmanager
def podman_world(runtime: Path) -> Iterator[Podman]:
    """A podman world with the busybox image imported; torn down and checked on exit."""
    tree = Path(tempfile.mkdtemp(prefix="nsbox-pm-", dir="/tmp"))
    podman = make_podman(tree, runtime)
    try:
        rootfs = build_busybox_rootfs(tree / "rootfs")
        layer = tar_rootfs(rootfs, tree / "rootfs.tar")
        podman.run_with_private_var_lib("import", "--change", 'CMD ["sh"]', str(layer), IMAGE_REF)
        shutil.rmtree(rootfs)
        yield podman
    finally:
        problems = podman.teardown()
        if problems:
            raise AssertionError("podman teardown: " + "; ".join(problems))


# --------------------------------------------------------------------------
# containerd
# --------------------------------------------------------------------------

@dataclass
class Containerd:
    """A private containerd daemon (own root, state, socket) and a ctr to talk to it."""

    tree: Path
    runtime: Path
    process: subprocess.Popen[bytes]
    cgroup_base: str | None = None
    container_ids: set[str] = field(default_factory=set)
    host_net_before: HostNet | None = None

    @property
    def socket(self) -> Path:
        return self.tree / "containerd.sock"

    @property
    def runtime_root(self) -> Path:
        return self.tree / "runtime-state"

    @property
    def fifo_dir(self) -> Path:
        return self.tree / "fifo"

    @property
    def env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                "HOME": str(self.tree), "TMPDIR": str(self.tree / "tmp"), "TERM": "xterm"}

    def ctr_argv(self, *args: str) -> list[str]:
        return ["ctr", "--address", str(self.socket), "--namespace", CONTAINERD_NAMESPACE,
                *args]

    def ctr(self, *args: str, check: bool = True,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
        argv = self.ctr_argv(*args)
        log.debug("running %s", argv)
        proc = subprocess.run(argv, env=self.env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"{argv} exited {proc.returncode}\nstdout: {proc.stdout}\n"
                                 f"stderr: {proc.stderr}")
        return proc

    def run_options(self, container_id: str) -> list[str]:
        """`ctr run` options that route to the runtime under test and keep state in tree."""
        self.container_ids.add(container_id)
        opts = ["--snapshotter", CONTAINERD_SNAPSHOTTER, "--fifo-dir", str(self.fifo_dir),
                "--runc-binary", str(self.runtime), "--runc-root", str(self.runtime_root)]
        if self.cgroup_base:
            opts += ["--cgroup", f"{self.cgroup_base}/{container_id}"]
        else:
            # ctr's default is /<namespace>/<id> from the hierarchy root, which is
            # outside our own cgroup; empty leaves placement to the runtime.
            opts += ["--cgroup", ""]
        return opts

    def task_exec(self, container_id: str, exec_id: str, *command: str,
                  check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.ctr("task", "exec", "--fifo-dir", str(self.fifo_dir), "--exec-id", exec_id,
                        container_id, *command, check=check)

    def tasks(self) -> dict[str, str]:
        """Task id -> status (RUNNING, STOPPED, ...)."""
        lines = self.ctr("task", "ls").stdout.splitlines()[1:]
        return {parts[0]: parts[2] for parts in (line.split() for line in lines) if parts}

    def containers(self) -> list[str]:
        return self.ctr("container", "ls", "--quiet").stdout.split()

    def _delete_everything(self, problems: list[str]) -> None:
        for task in self.tasks():
            self.ctr("task", "kill", "--signal", "SIGKILL", task, check=False)
        deadline = time.monotonic() + 10
        while running := [task for task, status in self.tasks().items() if status != "STOPPED"]:
            if time.monotonic() > deadline:
                problems.append(f"tasks would not stop: {running}")
                break
            time.sleep(0.1)
        for task in self.tasks():
            self.ctr("task", "delete", "--force", task, check=False)
        for container in self.containers():
            self.ctr("container", "delete", container, check=False)
        # The shims mount container rootfs in containerd's private namespace,
        # so look there: with every task deleted nothing may be left.
        with contextlib.suppress(OSError):
            inside = mountpoints_under(self.tree, self.process.pid)
            if inside:
                problems.append(f"mounts left in containerd's namespace: {inside}")

    def teardown(self) -> list[str]:
        """Delete every task and container, stop the daemon, kill strays; returns problems."""
        problems: list[str] = []
        if self.process.poll() is None:
            try:
                self._delete_everything(problems)
            except (AssertionError, subprocess.TimeoutExpired) as err:
                problems.append(f"could not clean up through ctr: {err}")
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                problems.append("containerd ignored SIGTERM")
                self.process.kill()
                self.process.wait()
        else:
            problems.append(f"containerd died early with status {self.process.returncode}")
        strays = pids_using_tree(self.tree)
        if strays:
            problems.append(f"processes left running: {strays}")
            kill_pids(strays)
        leftover_mounts = unmount_all_under(self.tree)
        if leftover_mounts:
            problems.append(f"mounts left: {leftover_mounts}")
        leaked_cgroups = remove_leaked_cgroups(self.container_ids)
        if leaked_cgroups:
            problems.append(describe_leaked_cgroups(leaked_cgroups))
        if self.cgroup_base:
            remove_cgroup_dirs(self.cgroup_base)
        shutil.rmtree(self.tree, ignore_errors=True)
        if self.host_net_before is not None:
            problems += undo_host_net_changes(self.host_net_before, "containerd")
        return problems


def _enter_private_run() -> None:
    """Give containerd (and so its shims and the runtime) a private, empty /run
    and a network namespace of its own.

    containerd 1.6 hard-codes the shims' sockets under /run/containerd/s
    whatever its state directory is; in a private mount namespace they land
    in a throwaway tmpfs, concurrent test sessions cannot trip over each
    other, and every mount the shims make dies with the namespace.
    """
    syscalls.unshare(syscalls.CLONE_NEWNS | syscalls.CLONE_NEWNET)
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    syscalls.mount("tmpfs", "/run", "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV, "mode=0755")


def _containerd_config(tree: Path) -> str:
    disabled = [
        "io.containerd.grpc.v1.cri",
        # would create /opt/containerd
        "io.containerd.internal.v1.opt",
        "io.containerd.snapshotter.v1.aufs",
        "io.containerd.snapshotter.v1.btrfs",
        "io.containerd.snapshotter.v1.devmapper",
        "io.containerd.snapshotter.v1.zfs",
    ]
    return f"""\
version = 2
root = "{tree}/root"
state = "{tree}/state"
temp = "{tree}/tmp"
disabled_plugins = {_toml_list(disabled)}

[grpc]
  address = "{tree}/containerd.sock"

[ttrpc]
  address = "{tree}/containerd.sock.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""
"""


def _wait_for_socket(path: Path, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"containerd exited with {process.returncode} before listening")
        if path.exists():
            with socket.socket(socket.AF_UNIX) as sock, contextlib.suppress(OSError):
                sock.connect(str(path))
                return
        time.sleep(0.05)
    raise TimeoutError(f"containerd did not listen on {path} within {timeout}s")


@contextlib.contextmanager
def containerd_world(runtime: Path) -> Iterator[Containerd]:
    """A running private containerd with the busybox image imported."""
    tree = Path(tempfile.mkdtemp(prefix="nsbox-cd-", dir="/tmp"))
    for sub in ("tmp", "runtime-state", "fifo"):
        (tree / sub).mkdir()
    config = tree / "config.toml"
    config.write_text(_containerd_config(tree))
    host_net_before = host_net_state()
    log_file = open(tree / "containerd.log", "wb")  # noqa: SIM115 - lives as long as the daemon
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
           "TMPDIR": str(tree / "tmp"), "HOME": str(tree)}
    process = subprocess.Popen(["containerd", "--config", str(config)], env=env,
                               stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                               start_new_session=True, preexec_fn=_enter_private_run)
    log_file.close()
    cgroup_base = f"{own_cgroup_base()}/nsboxtest-{tree.name}" if cgroups_enabled() else None
    daemon = Containerd(tree=tree, runtime=runtime, process=process, cgroup_base=cgroup_base,
                        host_net_before=host_net_before)
    try:
        _wait_for_socket(daemon.socket, process, timeout=20)
        rootfs = build_busybox_rootfs(tree / "rootfs")
        layer = tar_rootfs(rootfs, tree / "rootfs.tar")
        write_oci_archive(layer, tree / "busybox-oci.tar")
        shutil.rmtree(rootfs)
        daemon.ctr("image", "import", "--snapshotter", CONTAINERD_SNAPSHOTTER,
                   str(tree / "busybox-oci.tar"))
        yield daemon
    except BaseException:
        log.error("containerd log:\n%s", (tree / "containerd.log").read_text(errors="replace"))
        raise
    finally:
        problems = daemon.teardown()
        if problems:
            raise AssertionError("containerd teardown: " + "; ".join(problems))
