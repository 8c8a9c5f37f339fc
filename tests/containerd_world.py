"""A private containerd daemon driving the runtime under test (see tests/clients.py).

containerd runs in its own mount and network namespaces with a private /run, its
own root, state and socket under a /tmp tree; teardown kills what is left in the
tree, unmounts it, removes leaked cgroups and undoes any host network change.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from clients import (
    build_busybox_rootfs,
    cgroups_enabled,
    host_path,
    run_checked,
    start_daemon,
    stop_daemon,
    tar_rootfs,
    toml_list,
    torn_down,
    write_oci_archive,
)
from hostclean import (
    HostNet,
    host_net_state,
    mountpoints_under,
    own_cgroup_base,
    remove_test_tree,
    undo_host_net_changes,
)

from nsbox.runtime import syscalls

CONTAINERD_NAMESPACE = "nsboxtest"
# native copies the 2 MB layer per container but needs no overlay mount of its
# own, which keeps teardown to the shim's single rootfs bind mount.
CONTAINERD_SNAPSHOTTER = "native"


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
        return {"PATH": host_path(),
                "HOME": str(self.tree), "TMPDIR": str(self.tree / "tmp"), "TERM": "xterm"}

    def ctr_argv(self, *args: str) -> list[str]:
        return ["ctr", "--address", str(self.socket), "--namespace", CONTAINERD_NAMESPACE,
                *args]

    def ctr(self, *args: str, check: bool = True,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return run_checked(self.ctr_argv(*args), self.env, check=check, timeout=timeout)

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
        problems = stop_daemon(self.process, "containerd", "ctr", self._delete_everything,
                               timeout=10)
        problems += remove_test_tree(self.tree, self.container_ids, self.cgroup_base)
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
disabled_plugins = {toml_list(disabled)}

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
    process = start_daemon(["containerd", "--config", str(config)], tree, "containerd",
                           home=tree, preexec_fn=_enter_private_run)
    cgroup_base = f"{own_cgroup_base()}/nsboxtest-{tree.name}" if cgroups_enabled() else None
    daemon = Containerd(tree=tree, runtime=runtime, process=process, cgroup_base=cgroup_base,
                        host_net_before=host_net_before)
    with torn_down("containerd", daemon.teardown, tree / "containerd.log"):
        _wait_for_socket(daemon.socket, process, timeout=20)
        rootfs = build_busybox_rootfs(tree / "rootfs")
        layer = tar_rootfs(rootfs, tree / "rootfs.tar")
        write_oci_archive(layer, tree / "busybox-oci.tar")
        shutil.rmtree(rootfs)
        daemon.ctr("image", "import", "--snapshotter", CONTAINERD_SNAPSHOTTER,
                   str(tree / "busybox-oci.tar"))
        yield daemon
