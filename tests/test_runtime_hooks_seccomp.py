"""Lifecycle hooks and seccomp, driven through the `nsbox-runtime` CLI.

Hooks: each kind runs at its moment of the lifecycle, in the right namespaces,
with the state on stdin and its own args/env; a hook past its timeout fails
create and leaves nothing behind.

Seccomp: a profile in config.json is really enforced in the init and in
`exec`'d processes, with or without no_new_privs.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from runtime_leaks import assert_nothing_left

HOOK_KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart",
              "poststop")

# Records, for hook $0: its stdin, its mount namespace, its args and env, and its
# place in the shared order log.  $DIR is where it writes (a host path, or the
# bind-mounted /hooklog inside the container for startContainer).
RECORDER = ('cat > "$DIR/$0.json"; readlink /proc/self/ns/mnt > "$DIR/$0.mnt";'
            ' echo "$HOOKVAR $*" > "$DIR/$0.args"; echo "$0" >> "$DIR/order"')


def recorder_hook(kind: str, directory: str) -> dict[str, Any]:
    return {"path": "/bin/sh",
            "args": ["sh", "-c", RECORDER, kind, "first-arg", "second arg"],
            "env": ["PATH=/usr/bin:/bin", f"DIR={directory}", f"HOOKVAR=var-of-{kind}"],
            "timeout": 10}


def read_order(log_dir: Path) -> list[str]:
    order = log_dir / "order"
    return order.read_text().split() if order.exists() else []


def wait_for(predicate, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def state_of(run_runtime, cid: str) -> dict:
    return json.loads(run_runtime("state", cid).stdout)


@pytest.fixture
def hooked_bundle(bundle_factory, tmp_path):
    """A bundle with a recorder hook of every kind; the process notes whether the
    startContainer hook had run before it, then waits for /hooklog/stop."""
    log_dir = tmp_path / "hooklog"
    log_dir.mkdir()

    def add_hooks(spec: dict) -> None:
        spec["hooks"] = {kind: [recorder_hook(kind, "/hooklog" if kind == "startContainer"
                                              else str(log_dir))]
                         for kind in HOOK_KINDS}
        spec["mounts"].append({"destination": "/hooklog", "type": "bind",
                               "source": str(log_dir), "options": ["rbind", "rw"]})

    process = ("[ -e /hooklog/startContainer.json ] && echo yes > /hooklog/process-saw-start;"
               " echo process >> /hooklog/order;"
               " while [ ! -e /hooklog/stop ]; do sleep 0.05; done")
    bundle = bundle_factory(args=["sh", "-c", process], mutate=add_hooks)
    return bundle, log_dir


def test_hooks_run_at_their_moment(hooked_bundle, run_runtime, runtime_root, container_id):
    bundle, log_dir = hooked_bundle
    host_mnt = os.readlink("/proc/self/ns/mnt")

    run_runtime("create", "--bundle", str(bundle), container_id)
    state = state_of(run_runtime, container_id)
    init_pid = state["pid"]
    container_mnt = os.readlink(f"/proc/{init_pid}/ns/mnt")
    assert container_mnt != host_mnt
    # create ran exactly the create-time hooks, in the spec's order.
    assert read_order(log_dir) == ["prestart", "createRuntime", "createContainer"]

    for kind in ("prestart", "createRuntime"):
        hook_state = json.loads((log_dir / f"{kind}.json").read_text())
        assert hook_state["id"] == container_id
        assert hook_state["pid"] == init_pid
        assert hook_state["status"] in ("creating", "created")
        assert hook_state["bundle"] == str(bundle)
        # Run by the runtime, in the host's mount namespace.
        assert (log_dir / f"{kind}.mnt").read_text().strip() == host_mnt
    cc_state = json.loads((log_dir / "createContainer.json").read_text())
    assert cc_state["id"] == container_id and cc_state["pid"] == init_pid
    # Run in the container's mount namespace (before pivot_root, so host paths worked).
    assert (log_dir / "createContainer.mnt").read_text().strip() == container_mnt
    for kind in ("prestart", "createRuntime", "createContainer"):
        assert (log_dir / f"{kind}.args").read_text() == \
            f"var-of-{kind} first-arg second arg\n"
    assert not (log_dir / "startContainer.json").exists()

    run_runtime("start", container_id)
    wait_for(lambda: "process" in read_order(log_dir), what="the container process")
    wait_for(lambda: (log_dir / "poststart.json").exists(), what="the poststart hook")
    order = read_order(log_dir)
    assert order.index("startContainer") < order.index("process")
    assert (log_dir / "process-saw-start").read_text() == "yes\n"
    sc_state = json.loads((log_dir / "startContainer.json").read_text())
    assert sc_state["id"] == container_id
    assert (log_dir / "startContainer.mnt").read_text().strip() == container_mnt
    assert (log_dir / "startContainer.args").read_text() == \
        "var-of-startContainer first-arg second arg\n"
    ps_state = json.loads((log_dir / "poststart.json").read_text())
    assert ps_state["status"] == "running" and ps_state["pid"] == init_pid
    assert (log_dir / "poststart.mnt").read_text().strip() == host_mnt
    assert not (log_dir / "poststop.json").exists()

    (log_dir / "stop").touch()
    wait_for(lambda: state_of(run_runtime, container_id)["status"] == "stopped",
             what="the container to stop")
    assert "poststop" not in read_order(log_dir)
    run_runtime("delete", container_id)
    order = read_order(log_dir)
    assert order[-1] == "poststop" and order.count("poststop") == 1
    stop_state = json.loads((log_dir / "poststop.json").read_text())
    assert stop_state["id"] == container_id and stop_state["status"] == "stopped"
    assert (log_dir / "poststop.mnt").read_text().strip() == host_mnt
    assert_nothing_left(runtime_root, bundle, container_id)


def test_poststop_runs_on_force_delete(hooked_bundle, run_runtime, runtime_root, container_id):
    bundle, log_dir = hooked_bundle
    run_runtime("run", "--detach", "--bundle", str(bundle), container_id)
    run_runtime("delete", "--force", container_id)
    assert read_order(log_dir)[-1] == "poststop"
    assert_nothing_left(runtime_root, bundle, container_id)


@pytest.mark.parametrize("kind", ["createRuntime", "prestart", "createContainer"])
def test_hook_timeout_fails_create(bundle_factory, run_runtime, runtime_root, container_id,
                                   kind):
    """A hook sleeping past its timeout is killed (with its children), create fails
    in about the timeout, and nothing is left."""
    # The hook's sh keeps the container id on its command line, so a surviving
    # hook process would be found by the leftover check; its sleep child carries
    # it in its environment.
    hook = {"path": "/bin/sh", "args": ["sh", "-c", f"sleep 30 & wait; : {container_id}"],
            "env": ["PATH=/usr/bin:/bin", f"HOOK_MARK={container_id}"], "timeout": 1}
    b = bundle_factory(args=["sleep", "60"], mutate=lambda s: s.update(hooks={kind: [hook]}))
    started = time.monotonic()
    result = run_runtime("create", "--bundle", str(b), container_id, check=False, timeout=20)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and kind in lines[0] and "timed out" in lines[0], result.stderr
    assert elapsed < 6, f"create took {elapsed:.1f}s for a 1s hook timeout"
    assert_nothing_left(runtime_root, b, container_id)
    assert processes_with_env(f"HOOK_MARK={container_id}") == []


def processes_with_env(entry: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if entry.encode() in f.read().split(b"\0"):
                        found.append(int(pid))
            except OSError:
                continue
    return found


def test_failing_poststart_hook_is_not_fatal(bundle_factory, run_runtime, container_id,
                                             tmp_path):
    marker = tmp_path / "second-ran"
    hooks = [{"path": "/bin/sh", "args": ["sh", "-c", "echo nope >&2; exit 4"]},
             {"path": "/bin/sh", "args": ["sh", "-c", f"touch {marker}"]}]
    b = bundle_factory(args=["sleep", "60"], mutate=lambda s: s.update(hooks={"poststart": hooks}))
    run_runtime("create", "--bundle", str(b), container_id)
    result = run_runtime("start", container_id)
    assert "poststart" in result.stderr and "nope" in result.stderr
    assert marker.exists()
    assert state_of(run_runtime, container_id)["status"] == "running"


def test_hook_gets_only_its_env(bundle_factory, run_runtime, container_id, tmp_path):
    """Hooks get exactly hook.env: nothing of the runtime's environment leaks in."""
    out = tmp_path / "env.txt"
    hook = {"path": "/bin/sh", "args": ["sh", "-c", f"/usr/bin/env > {out}"],
            "env": ["ONLY=this"]}
    b = bundle_factory(mutate=lambda s: s.update(hooks={"createRuntime": [hook]}))
    env = dict(os.environ, SECRET_OF_CALLER="leak")
    run_runtime("run", "--bundle", str(b), container_id, env=env)
    lines = [line for line in out.read_text().splitlines() if not line.startswith("PWD=")]
    assert lines == ["ONLY=this"], lines


def _env_names(path: Path) -> dict[str, str]:
    """The environment a hook dumped with `env`, minus what sh itself sets."""
    env = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    for name in ("PWD", "OLDPWD", "SHLVL", "_"):
        env.pop(name, None)
    return env


def _env_hooks(out_dir: Path) -> dict:
    """createRuntime hooks dumping their env: one without `env`, one with `env: []`."""
    def hook(name: str, **extra) -> dict:
        return {"path": "/bin/sh", "args": ["sh", "-c", f"/usr/bin/env > {out_dir}/{name}"],
                **extra}
    return {"createRuntime": [hook("inherited"), hook("empty", env=[])]}


def test_hook_without_env_gets_the_runtimes_environment(bundle_factory, run_runtime,
                                                        container_id, tmp_path):
    """As runc and crun: no `env` means the runtime's environment; `env: []` means none."""
    b = bundle_factory(mutate=lambda s: s.update(hooks=_env_hooks(tmp_path)))
    env = dict(os.environ, CALLER_VAR="from the caller", LISTEN_FDS="1", LISTEN_PID="1")
    run_runtime("run", "--bundle", str(b), container_id, env=env)
    inherited = _env_names(tmp_path / "inherited")
    assert inherited["CALLER_VAR"] == "from the caller"
    assert inherited["PATH"] == os.environ["PATH"]
    # Socket activation addressed the runtime, not its hooks (runc unsets these too).
    assert "LISTEN_FDS" not in inherited and "LISTEN_PID" not in inherited
    assert _env_names(tmp_path / "empty") == {}


def test_hook_env_matches_runc(bundle_factory, run_runtime, container_id, tmp_path, runc,
                               register_runtime):
    import helpers

    env = dict(os.environ, CALLER_VAR="from the caller")
    results = {}
    for name, prefix in (("nsbox", None), ("runc", register_runtime(
            helpers.runtime_argv(tmp_path / "runc-root", runc)))):
        out_dir = tmp_path / name
        out_dir.mkdir()
        with helpers.cgroup_under_own(f"hookenv-{name}-{container_id}") as cgroup:
            def mutate(spec: dict, d: Path = out_dir, c: str = cgroup) -> None:
                spec.update(hooks=_env_hooks(d), ociVersion="1.0.2")
                spec["linux"]["cgroupsPath"] = c

            b = bundle_factory(name=f"b-{name}", mutate=mutate)
            if prefix is None:
                run_runtime("run", "--bundle", str(b), container_id, env=env)
            else:
                helpers.run_cli(prefix, "run", "--bundle", str(b), container_id + "-r", env=env)
        results[name] = (_env_names(out_dir / "inherited"), _env_names(out_dir / "empty"))
    assert results["nsbox"] == results["runc"]


# ================================================================= seccomp
def seccomp_profile(*rules: dict, default: str = "SCMP_ACT_ALLOW") -> dict:
    return {"defaultAction": default,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": list(rules)}


DENY_MKDIR = {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}


def seccomp_bundle(bundle_factory, args: list[str], profile: dict, **overrides):
    return bundle_factory(args=args, root__readonly=False, linux__seccomp=profile, **overrides)


def test_seccomp_denies_mkdir_in_init_and_exec(bundle_factory, run_runtime, container_id):
    script = ("grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status;"
              " mkdir /tmp/x && echo made-x; touch /tmp/file && echo touched;"
              " while [ ! -e /tmp/stop ]; do sleep 0.05; done")
    b = seccomp_bundle(bundle_factory, ["sh", "-c", script], seccomp_profile(DENY_MKDIR))
    run_runtime("run", "--detach", "--bundle", str(b), container_id)
    result = run_runtime("exec", container_id, "sh", "-c",
                         "grep -E '^Seccomp:' /proc/self/status; mkdir /tmp/y && echo made-y;"
                         " ls /tmp", check=False)
    assert "Seccomp:\t2" in result.stdout, result.stdout
    assert "made-y" not in result.stdout and "Operation not permitted" in result.stderr
    assert "file" in result.stdout.split()  # the init's touch worked: only mkdir is denied
    assert not (b / "rootfs/tmp/x").exists() and not (b / "rootfs/tmp/y").exists()
    run_runtime("exec", container_id, "touch", "/tmp/stop")


def test_seccomp_in_init_output(bundle_factory, run_runtime, container_id):
    script = ("grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status;"
              " mkdir /tmp/x && echo made-x; touch /tmp/file && echo touched")
    b = seccomp_bundle(bundle_factory, ["sh", "-c", script], seccomp_profile(DENY_MKDIR))
    result = run_runtime("run", "--bundle", str(b), container_id)
    assert set(result.stdout.split("\n")[:2]) == {"Seccomp:\t2", "NoNewPrivs:\t1"}, result.stdout
    assert "made-x" not in result.stdout and "touched" in result.stdout
    assert "Operation not permitted" in result.stderr


def test_without_seccomp_mkdir_works(bundle_factory, run_runtime, container_id):
    """Control: the same bundle without the profile can mkdir and has no filter."""
    b = bundle_factory(args=["sh", "-c", "grep '^Seccomp:' /proc/self/status; mkdir /tmp/x"
                             " && echo made-x"], root__readonly=False)
    result = run_runtime("run", "--bundle", str(b), container_id)
    assert result.stdout == "Seccomp:\t0\nmade-x\n"


def test_seccomp_without_no_new_privileges(bundle_factory, run_runtime, container_id):
    """noNewPrivileges false: the filter is loaded while still privileged."""
    b = seccomp_bundle(bundle_factory,
                       ["sh", "-c", "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status;"
                        " mkdir /tmp/x && echo made-x"],
                       seccomp_profile(DENY_MKDIR), process__noNewPrivileges=False)
    result = run_runtime("run", "--bundle", str(b), container_id, check=False)
    assert sorted(result.stdout.splitlines()) == ["NoNewPrivs:\t0", "Seccomp:\t2"], result.stdout
    assert "Operation not permitted" in result.stderr


def test_seccomp_unknown_syscall_names_are_skipped(bundle_factory, run_runtime, container_id):
    rule = {"names": ["no_such_syscall_xyz", "mkdir", "mkdirat", "another_fake_one"],
            "action": "SCMP_ACT_ERRNO"}
    b = seccomp_bundle(bundle_factory, ["sh", "-c", "mkdir /tmp/x && echo made-x"],
                       seccomp_profile(rule))
    result = run_runtime("run", "--bundle", str(b), container_id, check=False)
    assert "made-x" not in result.stdout
    assert "Operation not permitted" in result.stderr


def test_seccomp_errno_ret(bundle_factory, run_runtime, container_id):
    rule = dict(DENY_MKDIR, errnoRet=28)  # ENOSPC
    b = seccomp_bundle(bundle_factory, ["sh", "-c", "mkdir /tmp/x && echo made-x"],
                       seccomp_profile(rule))
    result = run_runtime("run", "--bundle", str(b), container_id, check=False)
    assert "made-x" not in result.stdout
    assert "No space left on device" in result.stderr, result.stderr


def test_seccomp_argument_condition(bundle_factory, run_runtime, container_id):
    """A rule with an argument filter: kill(pid, SIGUSR1) is denied, kill(pid, 0) is not."""
    rule = {"names": ["kill"], "action": "SCMP_ACT_ERRNO",
            "args": [{"index": 1, "value": 10, "op": "SCMP_CMP_EQ"}]}  # 10 = SIGUSR1
    script = 'trap "" USR1; kill -USR1 $$ && echo usr1-sent; kill -0 $$ && echo zero-sent'
    b = seccomp_bundle(bundle_factory, ["sh", "-c", script], seccomp_profile(rule))
    result = run_runtime("run", "--bundle", str(b), container_id, check=False)
    assert result.stdout == "zero-sent\n", result.stdout + result.stderr
    assert "Operation not permitted" in result.stderr
