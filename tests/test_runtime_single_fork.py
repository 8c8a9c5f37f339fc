"""One fork for `create` where one is enough (init.single_stage_ok / init.init_direct).

Without a user or time namespace the runtime clones the init straight into
its new pid namespace; with one, stage 1 still forks the init.  Checked on
the real kernel by counting the process-creating system calls of a whole
`run` under strace, and by the init being PID 1 of its own namespace.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import helpers
import pytest

from nsbox.runtime import namespaces as nsmod
from nsbox.runtime.init import needs_hook_stop, single_stage_ok
from nsbox.runtime.spec import default_spec, parse_spec

SIMPLE_MAP = [{"containerID": 0, "hostID": 100000, "size": 65536}]
FORKS = re.compile(r"^\d+\s+(clone3?|fork|vfork)\((.*)$")


# ------------------------------------------------------------------ the decision
def plan_of(mutate) -> tuple:
    raw = default_spec(args=["/bin/true"])
    mutate(raw)
    spec = parse_spec(raw)
    return spec, nsmod.plan(spec.linux)


def test_plain_container_needs_one_fork():
    spec, plan = plan_of(lambda s: None)
    assert single_stage_ok(spec, plan)


STAGE_1_REASONS = ["user", "time", "pid-by-path", "idmapped mount"]


def needs_stage_1(raw: dict, why: str) -> None:
    """Give the config RAW one of STAGE_1_REASONS."""
    linux = raw["linux"]
    if why == "user":
        linux["namespaces"].append({"type": "user"})
        linux["uidMappings"] = linux["gidMappings"] = SIMPLE_MAP
    elif why == "time":
        linux["namespaces"].append({"type": "time"})
    elif why == "pid-by-path":
        linux["namespaces"] = [n for n in linux["namespaces"] if n["type"] != "pid"]
        linux["namespaces"].append({"type": "pid", "path": "/proc/self/ns/pid"})
    else:
        raw["mounts"].append({"destination": "/mnt", "type": "bind", "source": "/tmp",
                              "options": ["rbind", "idmap"],
                              "uidMappings": SIMPLE_MAP, "gidMappings": SIMPLE_MAP})


@pytest.mark.parametrize("why", STAGE_1_REASONS)
def test_what_still_needs_stage_1(why):
    spec, plan = plan_of(lambda raw: needs_stage_1(raw, why))
    assert not single_stage_ok(spec, plan)


# ------------------------------------------------------------------ the kernel
def traced_forks(runtime: list[str], bundle: Path, container_id: str, tmp_path: Path) -> list[str]:
    """The clone/fork calls of a whole `run` (the runtime and everything it forks)."""
    strace = helpers.require_binary("strace")
    out = tmp_path / "strace.txt"
    subprocess.run([strace, "-f", "-qq", "-o", str(out), "-e", "trace=clone,clone3,fork,vfork",
                    *runtime, "run", "--bundle", str(bundle), container_id],
                   check=True, timeout=60, stdin=subprocess.DEVNULL, capture_output=True)
    return [m.group(1) + "(" + m.group(2) for line in out.read_text().splitlines()
            if (m := FORKS.match(line)) and "resumed>" not in line]


def test_run_forks_the_init_once_into_its_pid_namespace(runtime, bundle_factory, container_id,
                                                        tmp_path):
    bundle = bundle_factory(args=["/bin/true"])
    forks = traced_forks(runtime, bundle, container_id, tmp_path)
    assert len(forks) == 1, forks  # two (stage 1, then the init) before
    assert forks[0].startswith("clone3(") and "CLONE_NEWPID" in forks[0], forks


def test_a_time_namespace_keeps_stage_1(runtime, bundle_factory, container_id, tmp_path):
    # A time namespace, like a user namespace, takes only children: stage 1
    # unshares it and forks the init into it.
    bundle = bundle_factory(args=["/bin/true"], mutate=lambda spec: spec["linux"][
        "namespaces"].append({"type": "time"}))
    forks = traced_forks(runtime, bundle, container_id, tmp_path)
    assert len(forks) == 2, forks  # stage 1, then the init it forks


def test_the_one_fork_init_is_pid_1_and_the_container_works(run_runtime, bundle_factory,
                                                            container_id):
    bundle = bundle_factory(args=["sh", "-c", "echo $$; grep NSpid /proc/self/status"])
    out = run_runtime("run", "--bundle", str(bundle), container_id).stdout.split("\n")
    assert out[0] == "1", out
    assert out[1].split()[-1] == "1", out  # PID 1 in the innermost namespace


# ------------------------------------------------------------------ the hook stop
@pytest.mark.parametrize("hooks, agent, stops", [
    ({}, False, False),
    ({"poststart": [{"path": "/bin/true"}], "poststop": [{"path": "/bin/true"}]}, False, False),
    ({}, True, True),  # a seccomp agent reads the state with the init's pid from the stop
    *[({kind: [{"path": "/bin/true"}]}, False, True)
      for kind in ("prestart", "createRuntime", "createContainer", "startContainer")],
])
def test_the_init_stops_before_pivot_root_only_for_hooks_or_a_seccomp_agent(hooks, agent, stops):
    data = default_spec(["/bin/true"])
    data["hooks"] = hooks
    assert needs_hook_stop(parse_spec(data), seccomp_agent=agent) is stops


# A channel message is a JSON object whose last key is its type (Channel.send); strace
# splits a write another process interrupts into "<unfinished ...>" and "resumed".
MESSAGE = re.compile(r'\\"type\\":\\"(\w+)\\"}", \d+(?:\) = \d+| <unfinished \.\.\.>)$',
                     re.MULTILINE)


def traced_messages(runtime: list[str], bundle: Path, container_id: str, tmp_path: Path
                    ) -> list[str]:
    """The types of the channel messages a whole `run` writes, in order."""
    strace = helpers.require_binary("strace")
    out = tmp_path / "strace.txt"
    subprocess.run([strace, "-f", "-qq", "-s", "65536", "-o", str(out), "-e", "trace=write",
                    *runtime, "run", "--bundle", str(bundle), container_id],
                   check=True, timeout=60, stdin=subprocess.DEVNULL, capture_output=True)
    return MESSAGE.findall(out.read_text())


def test_without_hooks_the_init_goes_straight_to_created(runtime, bundle_factory,
                                                         container_id, tmp_path):
    plain = traced_messages(runtime, bundle_factory(args=["/bin/true"]), container_id, tmp_path)
    assert plain == ["go", "created"]
    hooked = bundle_factory(args=["/bin/true"], name="hooked", mutate=lambda spec: spec.update(
        hooks={"prestart": [{"path": "/bin/true"}]}))
    assert traced_messages(runtime, hooked, f"{container_id}-h", tmp_path) == [
        "go", "run_hooks", "hooks_done", "created"]
