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
import struct
import subprocess
import sys
import tarfile
import tempfile
import termios
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hostclean import (
    PRIVATE_NET,
    HostNet,
    host_net_state,
    own_cgroup_base,
    remove_test_tree,
    undo_host_net_changes,
)

from nsbox.runtime import syscalls

log = logging.getLogger(__name__)

RUNTIME_ENV = "NSBOX_TEST_RUNTIME"
CGROUPS_ENV = "NSBOX_TEST_CLIENT_CGROUPS"
IMAGE_REF = "localhost/busybox:test"
BUSYBOX = Path("/bin/busybox")
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
# Running clients and daemons (the podman, containerd and dockerd worlds)
# --------------------------------------------------------------------------

def host_path() -> str:
    """PATH for a client: ours, or the usual system directories."""
    return os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")


def run_checked(argv: list[str], env: dict[str, str], *, check: bool, timeout: float,
                cwd: Path | None = None,
                input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a client command, output captured; with CHECK a non-zero exit fails the test
    with both outputs.  Without INPUT_TEXT stdin is /dev/null."""
    log.debug("running %s", argv)
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                          input=input_text, cwd=cwd,
                          stdin=None if input_text is not None else subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} exited {proc.returncode}\nstdout: {proc.stdout}\n"
                             f"stderr: {proc.stderr}")
    return proc


def refuse_shell_unsafe(*paths: Path) -> None:
    """Paths written into a generated shell script must need no quoting."""
    for path in paths:
        if any(ch in str(path) for ch in "'\"\\$` \n"):
            raise ValueError(f"path not usable in a shell wrapper: {path!r}")


def stop_daemon(process: subprocess.Popen[bytes], name: str, client: str,
                empty: Callable[[list[str]], None], timeout: float) -> list[str]:
    """Have a daemon's client EMPTY it (remove its containers, adding problem lines),
    then SIGTERM it, killing it after TIMEOUT seconds; returns the problems found."""
    problems: list[str] = []
    if process.poll() is not None:
        return [f"{name} died early with status {process.returncode}"]
    try:
        empty(problems)
    except (AssertionError, subprocess.TimeoutExpired) as err:
        problems.append(f"could not clean up through {client}: {err}")
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        problems.append(f"{name} ignored SIGTERM")
        process.kill()
        process.wait()
    return problems


def start_daemon(argv: list[str], tree: Path, name: str, home: Path,
                 preexec_fn: Callable[[], None] | None = None) -> subprocess.Popen[bytes]:
    """Start a client daemon in its own session, output to TREE/NAME.log, TMPDIR in
    TREE/tmp."""
    log_file = open(tree / f"{name}.log", "wb")  # noqa: SIM115 - the daemon keeps its copy
    try:
        return subprocess.Popen(argv, env={"PATH": host_path(), "TMPDIR": str(tree / "tmp"),
                                           "HOME": str(home)},
                                stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                                start_new_session=True, preexec_fn=preexec_fn)
    finally:
        log_file.close()


@contextlib.contextmanager
def torn_down(name: str, teardown: Callable[[], list[str]],
              log_file: Path | None = None) -> Iterator[None]:
    """Run the body, then TEARDOWN, failing with what it found; on an error in the
    body, log the daemon's LOG_FILE first."""
    try:
        yield
    except BaseException:
        if log_file is not None:
            log.error("%s log:\n%s", name, log_file.read_text(errors="replace"))
        raise
    finally:
        problems = teardown()
        if problems:
            raise AssertionError(f"{name} teardown: " + "; ".join(problems))


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
    refuse_shell_unsafe(runtime, state_root)
    wrapper_dir.mkdir(parents=True, exist_ok=True)
    state_root.mkdir(parents=True, exist_ok=True)
    wrapper = wrapper_dir / runtime.name
    strip = 1 if runtime.name in RUNTIMES_WITHOUT_CGROUP_MANAGER_FLAG else 0
    wrapper.write_text(_WRAPPER.format(strip=strip, runtime=runtime, state_root=state_root))
    wrapper.chmod(0o755)
    return wrapper


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

def toml_list(items: list[str] | tuple[str, ...]) -> str:
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
        # cwd in the tree: conmon writes its "oom" marker file into its cwd.
        return run_checked(self.argv(*args), self.env, check=check, timeout=timeout,
                           cwd=self.tree, input_text=input_text)

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
        problems += remove_test_tree(self.tree, container_ids, self.cgroup_parent)
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
default_ulimits = {toml_list(DEFAULT_ULIMITS)}
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
runtime_supports_json = {toml_list(known_runtimes)}
# podman 4.3 reads the singular key; its man page says runtime_supports_nocgroups.
runtime_supports_nocgroup = {toml_list(known_runtimes)}

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
        "PATH": host_path(),
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
    with torn_down("podman", podman.teardown):
        rootfs = build_busybox_rootfs(tree / "rootfs")
        layer = tar_rootfs(rootfs, tree / "rootfs.tar")
        podman.run_with_private_var_lib("import", "--change", 'CMD ["sh"]', str(layer), IMAGE_REF)
        shutil.rmtree(rootfs)
        yield podman
