"""The init as a child that shares the runtime's memory until execve
(init.shares_runtime_memory, syscalls.clone_init, bin/syscall_module.c).

Checked on the real kernel: which containers get it (strace shows CLONE_VM
on the one clone3 of a `run`) and which are still forked; that the program
starts as under runc (default signal dispositions, nothing blocked), with
or without it; that execve's arguments are checked before `created`; and
that an init killed while it holds the runtime's interpreter leaves no
state, cgroup or process behind and says so.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import helpers
import pytest
from cgroupv2 import requires_cgroup2
from test_runtime_single_fork import STAGE_1_REASONS, needs_stage_1, traced_forks

from nsbox.runtime import namespaces as nsmod
from nsbox.runtime import syscalls as sc
from nsbox.runtime.init import InitContext, shares_runtime_memory
from nsbox.runtime.spec import default_spec, parse_spec

REPO = Path(__file__).resolve().parent.parent
# Host root mapped to itself: every mount of the default spec works in the user namespace.
SIMPLE_MAP = [{"containerID": 0, "hostID": 0, "size": 65536}]
SIGNAL_MASKS = ("SigBlk", "SigIgn", "SigCgt")
SIGPIPE, SIGXFSZ = 13, 25


def launcher_has_clone_init() -> bool:
    """Whether nsbox-runtime is the compiled launcher on x86-64, which has clone_init."""
    try:
        with open(helpers.nsbox_runtime_path(), "rb") as program:
            compiled = program.read(4) == b"\x7fELF"
    except FileNotFoundError:
        return False
    return compiled and platform.machine() == "x86_64"


needs_clone_init = pytest.mark.skipif(
    not launcher_has_clone_init(),
    reason="nsbox-runtime is not the compiled launcher on x86-64, the one with clone_init")


# ------------------------------------------------------------------ the decision
def decision(mutate, hook_stop: bool = False, available: bool = True,
             monkeypatch: pytest.MonkeyPatch | None = None) -> bool:
    raw = default_spec(args=["/bin/true"])
    mutate(raw)
    spec = parse_spec(raw)
    plan = nsmod.plan(spec.linux)
    ctx = InitContext(container_id="c", spec=spec, rootfs="/", bundle="/", ns_plan=plan,
                      fifo_fd=-1, hook_stop=hook_stop)
    monkeypatch.setattr(sc, "can_clone_init", lambda: available)
    return shares_runtime_memory(spec, plan, ctx)


def test_a_plain_container_shares_the_runtimes_memory(monkeypatch):
    assert decision(lambda raw: None, monkeypatch=monkeypatch)
    assert not decision(lambda raw: None, available=False, monkeypatch=monkeypatch)


@pytest.mark.parametrize("why", [*STAGE_1_REASONS, "host pid", "hooks", "startContainer"])
def test_what_keeps_a_forked_init(why, monkeypatch):
    def mutate(raw: dict) -> None:
        if why in STAGE_1_REASONS:
            needs_stage_1(raw, why)
        elif why == "host pid":
            raw["linux"]["namespaces"] = [n for n in raw["linux"]["namespaces"]
                                          if n["type"] != "pid"]
        elif why == "startContainer":
            raw["hooks"] = {"startContainer": [{"path": "/bin/true"}]}

    assert not decision(mutate, hook_stop=why == "hooks", monkeypatch=monkeypatch)


# ------------------------------------------------------------------ the kernel
traced_clones = traced_forks  # the clone/fork calls of a whole `run`, under strace


@needs_clone_init
def test_run_clones_the_init_with_the_runtimes_memory(runtime, bundle_factory, container_id,
                                                      tmp_path):
    clones = traced_clones(runtime, bundle_factory(), container_id, tmp_path)
    assert len(clones) == 1, clones
    assert "CLONE_VM" in clones[0] and "CLONE_NEWPID" in clones[0], clones


@needs_clone_init
def test_a_user_namespace_still_forks(runtime, bundle_factory, container_id, tmp_path):
    def mutate(spec: dict) -> None:
        spec["linux"]["namespaces"].append({"type": "user"})
        spec["linux"]["uidMappings"] = spec["linux"]["gidMappings"] = SIMPLE_MAP

    clones = traced_clones(runtime, bundle_factory(mutate=mutate), container_id, tmp_path)
    assert clones and not any("CLONE_VM" in c for c in clones), clones


def signal_masks(output: str) -> dict[str, int]:
    return {name: int(value, 16) for name, value in
            (line.split(":\t") for line in output.splitlines() if line.startswith(SIGNAL_MASKS))}


SHOW_MASKS = ["grep", "-E", "^Sig(Blk|Ign|Cgt)", "/proc/self/status"]


@pytest.mark.parametrize("how", ["shared", "forked (user namespace)", "plain interpreter"])
def test_the_program_gets_default_signal_dispositions(how, runtime, runtime_root,
                                                      register_runtime, bundle_factory,
                                                      container_id):
    """Python ignores SIGPIPE and SIGXFSZ for itself; the container's program
    must not inherit that (`yes | head` would see EPIPE, not die), nor any
    blocked signal, whichever way its init was made."""
    def mutate(spec: dict) -> None:
        if how.startswith("forked"):
            spec["linux"]["namespaces"].append({"type": "user"})
            spec["linux"]["uidMappings"] = spec["linux"]["gidMappings"] = SIMPLE_MAP

    bundle = bundle_factory(args=SHOW_MASKS, mutate=mutate)
    prefix = runtime
    if how == "plain interpreter":
        prefix = register_runtime([sys.executable, str(REPO / "bin" / "nsbox-runtime"),
                                   "--root", str(runtime_root)])
    out = helpers.run_cli(prefix, "run", "--bundle", str(bundle), container_id).stdout
    masks = signal_masks(out)
    assert masks["SigBlk"] == 0, out
    assert masks["SigIgn"] & (1 << (SIGPIPE - 1) | 1 << (SIGXFSZ - 1)) == 0, out
    assert masks["SigCgt"] == 0, out  # the runtime's handlers do not reach the program


def test_exec_gets_default_signal_dispositions(run_runtime, bundle_factory, container_id):
    bundle = bundle_factory(args=["sleep", "30"])
    run_runtime("run", "--detach", "--bundle", str(bundle), container_id)
    out = run_runtime("exec", container_id, *SHOW_MASKS).stdout
    masks = signal_masks(out)
    assert masks["SigBlk"] == 0 and masks["SigCgt"] == 0, out
    assert masks["SigIgn"] & (1 << (SIGPIPE - 1) | 1 << (SIGXFSZ - 1)) == 0, out


@pytest.mark.parametrize("env, problem", [
    (["PATH=/bin", "=nameless"], "a variable without a name"),
    (["PATH=/bin", "X=a\u0000b"], "a NUL byte"),
])
def test_execve_arguments_are_refused_by_create(env, problem, run_runtime, runtime_root,
                                                bundle_factory, container_id):
    """What execve cannot take fails `create`, before the container is reported ready."""
    bundle = bundle_factory(mutate=lambda spec: spec["process"].__setitem__("env", env))
    result = run_runtime("create", "--bundle", str(bundle), container_id, check=False)
    assert result.returncode == 1 and problem in result.stderr, result
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (runtime_root / container_id).exists()


@pytest.mark.parametrize("how", ["shared", "plain interpreter"])
def test_an_init_killed_during_setup_leaves_nothing(how, runtime, runtime_root, register_runtime,
                                                    bundle_factory, container_id, cg_path):
    """A seccomp filter that kills on write(2) kills the init when it reports
    `created`: with the shared init that is while it holds the runtime's
    interpreter, which the runtime then cannot use.  Either way `run` fails
    with one line, and no state, cgroup or process is left."""
    if how == "shared" and not launcher_has_clone_init():
        pytest.skip("nsbox-runtime has no clone_init (x86-64 launchers only)")

    def mutate(spec: dict) -> None:
        spec["linux"]["cgroupsPath"] = cg_path
        spec["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW",
                                    "architectures": ["SCMP_ARCH_X86_64"],
                                    "syscalls": [{"names": ["write"],
                                                  "action": "SCMP_ACT_KILL_PROCESS"}]}

    before = set(helpers.missing_cgroup_dirs(cg_path))
    bundle = bundle_factory(args=["/bin/true"], mutate=mutate)
    prefix = runtime
    if how == "plain interpreter":
        prefix = register_runtime([sys.executable, str(REPO / "bin" / "nsbox-runtime"),
                                   "--root", str(runtime_root)])
    result = helpers.run_cli(prefix, "run", "--bundle", str(bundle), container_id, check=False)
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    if how == "shared":
        assert "container init killed by signal 31 (SYS) before it was ready" in lines[0]
    assert not (runtime_root / container_id).exists()
    assert set(helpers.missing_cgroup_dirs(cg_path)) == before  # every directory made is gone
    listed = helpers.run_cli(prefix, "list", "--format", "json").stdout
    assert json.loads(listed or "[]") in ([], None)


@pytest.mark.cgroupv2
@requires_cgroup2
@needs_clone_init
def test_on_cgroup_v2_the_shared_init_is_born_in_its_cgroup(runtime, run_runtime, bundle_factory,
                                                            container_id, cg_path, tmp_path):
    """Born there (clone3's CLONE_INTO_CGROUP with CLONE_VM): moving it later
    would take the kernel's global threadgroup lock (cgroups.fork_into)."""
    def mutate(spec: dict) -> None:
        spec["linux"]["cgroupsPath"] = cg_path

    clones = traced_clones(runtime, bundle_factory(mutate=mutate), container_id, tmp_path)
    assert len(clones) == 1 and "CLONE_VM" in clones[0], clones
    assert "CLONE_INTO_CGROUP" in clones[0], clones
    bundle = bundle_factory(args=["sleep", "30"], mutate=mutate)
    run_runtime("run", "--detach", "--bundle", str(bundle), container_id + "-2")
    pid = json.loads(run_runtime("state", container_id + "-2").stdout)["pid"]
    assert Path(f"/proc/{pid}/cgroup").read_text().strip() == f"0::{cg_path}"


def test_exec_waits_for_the_containers_lock(run_runtime, runtime, runtime_root, bundle_factory,
                                            container_id):
    """`create` and `run` hold the container's lock while its init still shares
    their memory (until its execve): `exec` must take it before it enters."""
    import fcntl
    import time

    from nsbox.runtime.state import LOCK_FILE

    bundle = bundle_factory(args=["sleep", "30"])
    run_runtime("run", "--detach", "--bundle", str(bundle), container_id)
    with open(runtime_root / container_id / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        waiting = subprocess.Popen([*runtime, "exec", container_id, "true"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(0.5)
        assert waiting.poll() is None  # still waiting for the lock
    assert waiting.wait(timeout=30) == 0, waiting.stderr.read()


REFUSE_CLONE3 = """
import os, sys
from nsbox.runtime.security import seccomp, seccomp_compile
section = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
           "syscalls": [{"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]}
seccomp.load_filter(seccomp_compile.compile_filter(section))
os.execv(sys.argv[1], sys.argv[1:])
"""


@needs_clone_init
def test_a_runtime_refused_clone3_forks_the_init(runtime, bundle_factory, container_id, tmp_path):
    """Under a filter that answers clone3 with ENOSYS (Docker's default profile
    does), clone_init and the fork through clone3 are refused: the runtime
    falls back to a plain fork, and the container runs."""
    bundle = bundle_factory(args=["sh", "-c", "echo $$"])
    result = subprocess.run([sys.executable, "-c", REFUSE_CLONE3, *runtime, "--debug", "run",
                             "--bundle", str(bundle), container_id],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"  # the init of its pid namespace, made by fork and unshare
    assert "forking the init" in result.stderr, result.stderr
