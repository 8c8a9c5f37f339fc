"""A private Docker daemon (dockerd 20.10 from Debian) driving the OCI runtime under test.

dockerd gets a tree of its own under /tmp: --data-root, --exec-root, pidfile,
socket, daemon.json and the docker CLI's config dir.  It runs in a mount and
network namespace made for it (``unshare --mount --net``), where

- /run is an empty tmpfs: the managed containerd puts its shims' sockets in
  /run/containerd/s whatever its state directory is;
- the bridge, iptables, masquerading and forwarding are off, and what is left
  (a compose project's bridge, a container's veth) is made in the namespace,
  so the host's links, rules and sysctls are never touched;
- /proc/sys/kernel/keys/root_max{keys,bytes} are bind-mounted copies: dockerd
  raises these host-wide limits at start when they are low;
- AppArmor reads as disabled, or dockerd would load its profile into the kernel.

dockerd's trust key (written to /etc/docker/key.json by default) is moved
into the tree by daemon.json's ``deprecated-key-path``.  Containers use the
cgroupfs driver with a cgroup parent below this process's own cgroup, so no
/docker cgroup is made on the host.  The runtime is registered as ``nsbox``
and made the default; docker calls it through a two-line wrapper that logs
each invocation, so a test can tell the runtime under test really ran.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from clients import (
    host_path,
    refuse_shell_unsafe,
    run_checked,
    start_daemon,
    stop_daemon,
    torn_down,
)
from hostclean import (
    HostNet,
    hierarchy_roots,
    host_net_state,
    own_cgroup_base,
    remove_test_tree,
    undo_host_net_changes,
)

RUNTIME_NAME = "nsbox"
IMAGE = "busybox"
# The Debian CLI that matches dockerd 20.10; another `docker` may come first on PATH.
DOCKER_CLI = "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else "docker"
# Host paths dockerd would use without its private flags; none may appear.
HOST_PATHS = ("/var/lib/docker", "/run/docker", "/run/docker.sock", "/run/containerd",
              "/etc/docker/key.json", "/etc/docker/daemon.json")
# Host-wide limits dockerd raises at start (daemon/keys.go); shadowed in its namespace.
ROOT_KEY_LIMITS = ("root_maxkeys", "root_maxbytes")

_WRAPPER = """#!/bin/sh
# Written by nsbox tests/dockerd.py: records each call dockerd's shim makes.
echo "$*" >> {calls}
exec {runtime} "$@"
"""

_START = """set -e
ip link set lo up
# A new network namespace copies the host's ip_forward; with 0 (Debian's
# default) `docker run` prints "IPv4 forwarding is disabled" on every run.
# This namespace is the test's own, as on a Docker host where it is on.
echo 1 > /proc/sys/net/ipv4/ip_forward
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
for f in {key_limits}; do
  cp /proc/sys/kernel/keys/$f {tree}/keys/$f
  mount --bind {tree}/keys/$f /proc/sys/kernel/keys/$f
done
# With AppArmor on, dockerd would load its docker-default profile into the
# kernel (host-wide, left behind): it reads this flag to decide.
if [ -e /sys/module/apparmor/parameters/enabled ]; then
  echo N > {tree}/keys/apparmor-enabled
  mount --bind {tree}/keys/apparmor-enabled /sys/module/apparmor/parameters/enabled
fi
exec "$@"
"""


def cgroup_dirs_named(name: str) -> list[Path]:
    """Directories called NAME right below any hierarchy root (a leaked /docker)."""
    return [root / name for root in hierarchy_roots() if (root / name).is_dir()]


@dataclass
class Docker:
    """dockerd + its containerd in `tree`, and the docker CLI pointed at them."""

    tree: Path
    runtime: Path
    process: subprocess.Popen[bytes]
    cgroup_parent: str
    host_net_before: HostNet | None = None
    host_paths_before: frozenset[str] = frozenset()
    docker_cgroups_before: frozenset[Path] = frozenset()
    container_ids: set[str] = field(default_factory=set)

    @property
    def socket(self) -> Path:
        return self.tree / "docker.sock"

    @property
    def calls_log(self) -> Path:
        return self.tree / "runtime-calls.log"

    @property
    def runtime_state(self) -> Path:
        # dockerd 20.10 gives every runc-like runtime the root <exec-root>/runtime-runc.
        return self.tree / "exec" / "runtime-runc" / "moby"

    @property
    def env(self) -> dict[str, str]:
        return {"PATH": host_path(),
                "HOME": str(self.tree / "home"), "DOCKER_CONFIG": str(self.tree / "cli"),
                "DOCKER_HOST": f"unix://{self.socket}", "TMPDIR": str(self.tree / "tmp"),
                "TERM": "xterm", "LANG": "C.UTF-8"}

    def argv(self, *args: str) -> list[str]:
        return [DOCKER_CLI, *args]

    def run(self, *args: str, check: bool = True, timeout: float = 60,
            input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_checked(self.argv(*args), self.env, check=check, timeout=timeout,
                           cwd=self.tree, input_text=input_text)

    def compose(self, project_dir: Path, *args: str, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run_checked(["docker-compose", "--no-ansi", *args], self.env, check=check,
                           timeout=timeout, cwd=project_dir)

    def inspect(self, name: str, template: str) -> str:
        return self.run("inspect", "--format", template, name).stdout.strip()

    def all_ids(self) -> set[str]:
        ids = set(self.run("ps", "-a", "-q", "--no-trunc").stdout.split())
        self.container_ids |= ids
        return ids

    def runtime_calls(self) -> list[list[str]]:
        """Each runtime invocation so far, as its argument list (global flags included)."""
        if not self.calls_log.exists():
            return []
        return [line.split() for line in self.calls_log.read_text().splitlines()]

    def _remove_everything(self, problems: list[str]) -> None:
        ids = self.all_ids()
        if ids:
            proc = self.run("rm", "--force", *sorted(ids), check=False, timeout=120)
            if proc.returncode != 0:
                problems.append(f"docker rm -f: {proc.stderr.strip()}")
        left = self.all_ids()
        if left:
            problems.append(f"containers left after rm -f: {sorted(left)}")
        if self.runtime_state.is_dir():
            states = sorted(p.name for p in self.runtime_state.iterdir()
                            if not p.name.startswith("."))
            if states:
                problems.append(f"runtime state left in {self.runtime_state}: {states}")

    def teardown(self) -> list[str]:
        """Remove containers, stop dockerd (and with it containerd), undo what is left."""
        problems = stop_daemon(self.process, "dockerd", "docker", self._remove_everything,
                               timeout=30)
        # stray_wait: the managed containerd exits after dockerd.
        problems += remove_test_tree(self.tree, self.container_ids, self.cgroup_parent,
                                     stray_wait=10)
        for path in set(cgroup_dirs_named("docker")) - self.docker_cgroups_before:
            with contextlib.suppress(OSError):
                path.rmdir()
            problems.append(f"dockerd made the host cgroup {path}")
        for path in HOST_PATHS:
            if path not in self.host_paths_before and os.path.lexists(path):
                problems.append(f"{path} appeared on the host")
        if self.host_net_before is not None:
            problems += undo_host_net_changes(self.host_net_before, "dockerd")
        return problems


def write_runtime_wrapper(runtime: Path, tree: Path) -> Path:
    refuse_shell_unsafe(runtime, tree)
    wrapper = tree / "bin" / "runtime-under-test"
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    wrapper.write_text(_WRAPPER.format(calls=tree / "runtime-calls.log", runtime=runtime))
    wrapper.chmod(0o755)
    return wrapper


def dockerd_argv(tree: Path, wrapper: Path, cgroup_parent: str) -> list[str]:
    return [
        "dockerd", "--config-file", str(tree / "daemon.json"),
        "--data-root", str(tree / "data"), "--exec-root", str(tree / "exec"),
        "--pidfile", str(tree / "docker.pid"), "-H", f"unix://{tree / 'docker.sock'}",
        "--add-runtime", f"{RUNTIME_NAME}={wrapper}", "--default-runtime", RUNTIME_NAME,
        "--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false",
        "--ip-forward=false", "--userland-proxy=false",
        "--storage-driver", "vfs",
        "--exec-opt", "native.cgroupdriver=cgroupfs", "--cgroup-parent", cgroup_parent,
    ]


def _wait_for_daemon(docker: Docker, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if docker.process.poll() is not None:
            raise RuntimeError(f"dockerd exited with {docker.process.returncode} at start")
        if docker.socket.exists() and docker.run("version", check=False,
                                                 timeout=10).returncode == 0:
            return
        time.sleep(0.1)
    raise TimeoutError(f"dockerd did not answer on {docker.socket} within {timeout}s")


def save_busybox(archive: Path, scratch: Path) -> None:
    """`nsbox save` the engine's offline busybox image into a docker-archive."""
    nsbox = [str(Path(sys.prefix) / "bin" / "nsbox"), "--root", str(scratch / "lib"),
             "--runroot", str(scratch / "run")]
    # create makes the offline busybox image on first use; save then writes it out.
    for args in (["create", "--name", "seed", IMAGE, "true"], ["rm", "seed"],
                 ["save", "-o", str(archive), IMAGE]):
        subprocess.run([*nsbox, *args], check=True, capture_output=True, timeout=120)


@contextlib.contextmanager
def docker_world(runtime: Path, log_calls: bool = True) -> Iterator[Docker]:
    """A running private dockerd with busybox loaded; torn down and checked on exit.

    LOG_CALLS False registers the runtime itself rather than the logging wrapper
    (bench/docker_bench.py: the wrapper's sh would be timed too).
    """
    tree = Path(tempfile.mkdtemp(prefix="nsbox-dk-", dir="/tmp"))
    for sub in ("data", "exec", "home", "cli", "tmp", "keys"):
        (tree / sub).mkdir()
    (tree / "daemon.json").write_text(json.dumps({
        "deprecated-key-path": str(tree / "key.json"),
        "log-driver": "json-file",
    }))
    wrapper = write_runtime_wrapper(runtime, tree) if log_calls else runtime
    cgroup_parent = f"{own_cgroup_base()}/nsboxtest-{tree.name}"
    host_net_before = host_net_state()
    host_paths_before = frozenset(p for p in HOST_PATHS if os.path.lexists(p))
    docker_cgroups_before = frozenset(cgroup_dirs_named("docker"))
    start = _START.format(tree=tree, key_limits=" ".join(ROOT_KEY_LIMITS))
    # unshare(1) execs sh, which execs dockerd: the Popen pid is dockerd's.
    process = start_daemon(
        ["unshare", "--mount", "--net", "--propagation", "private", "--",
         "sh", "-c", start, "start-dockerd", *dockerd_argv(tree, wrapper, cgroup_parent)],
        tree, "dockerd", home=tree / "home")
    docker = Docker(tree=tree, runtime=runtime, process=process, cgroup_parent=cgroup_parent,
                    host_net_before=host_net_before, host_paths_before=host_paths_before,
                    docker_cgroups_before=docker_cgroups_before)
    with torn_down("dockerd", docker.teardown, tree / "dockerd.log"):
        _wait_for_daemon(docker, timeout=60)
        archive = tree / "busybox.tar"
        save_busybox(archive, tree / "nsbox")
        loaded = docker.run("load", "--input", str(archive), timeout=120).stdout
        ref = loaded.strip().rsplit(" ", 1)[-1]
        docker.run("tag", ref, IMAGE)
        yield docker
