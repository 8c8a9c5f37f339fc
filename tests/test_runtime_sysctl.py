"""linux.sysctl is only written into namespaces the container owns (runc's rules).

A sysctl of a namespace the container shares with the host would change the
host.  So these tests never risk the host's values, even against a broken
runtime:

  * every case that must be refused writes the value the host already has (a
    regression writes the same value back), and checks afterwards that the
    host's value is unchanged;
  * every case that must be accepted runs in namespaces of the container's
    own (new, or joined from another container).

The pure rule table (nsbox/runtime/sysctl.py) is tested first, then the
runtime on the real kernel, then the engine's `--sysctl`.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from helpers import write_config
from runtime_leaks import assert_nothing_left

from nsbox.engine.flags import build_spec
from nsbox.errors import ConfigError
from nsbox.runtime import sysctl

NSBOX = str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "nsbox")


def host_value(name: str) -> str:
    """The host's value, as /proc/sys gives it (trailing newline dropped)."""
    return Path("/proc/sys", name.replace(".", "/")).read_text().rstrip("\n")


# ================================================================ the rule table
def owns_only(*types: str):
    return lambda ns_type: ns_type in types


ALL = ("ipc", "network", "uts")


@pytest.mark.parametrize("key,owned,fields,expected", [
    # IPC: the eight kernel.* names and fs.mqueue.*
    ("kernel.msgmax", ALL, {}, None),
    ("kernel.shm_rmid_forced", ("ipc",), {}, None),
    ("fs.mqueue.queues_max", ("ipc",), {}, None),
    ("fs/mqueue/msg_max", ("ipc",), {}, None),
    ("kernel.sem", ("network", "uts"), {}, "host's ipc namespace"),
    ("fs.mqueue.queues_max", (), {}, "host's ipc namespace"),
    # network: net.*
    ("net.ipv4.ip_forward", ("network",), {}, None),
    ("net/ipv4/ping_group_range", ("network",), {}, None),
    ("net.ipv4.ping_group_range", ("ipc", "uts"), {}, "host's network namespace"),
    ("net/core/somaxconn", (), {}, "host's network namespace"),
    # uts: kernel.hostname / kernel.domainname, not together with their fields
    ("kernel.domainname", ("uts",), {}, None),
    ("kernel.hostname", ("uts",), {"hostname": ""}, None),
    ("kernel.hostname", ("ipc", "network"), {}, "host's uts namespace"),
    ("kernel.hostname", ALL, {"hostname": "web"}, "conflicts with the 'hostname' field"),
    ("kernel.domainname", ALL, {"domainname": "x.test"}, "conflicts with the 'domainname'"),
    # not namespaced: refused whatever the container owns
    ("kernel.core_pattern", ALL, {}, "not in a separate kernel namespace"),
    ("kernel.msgmax_not", ALL, {}, "not in a separate kernel namespace"),
    ("fs.file-max", ALL, {}, "not in a separate kernel namespace"),
    ("vm.overcommit_memory", ALL, {}, "not in a separate kernel namespace"),
    ("netx.y", ALL, {}, "not in a separate kernel namespace"),
    ("fs.mqueue", ALL, {}, "not in a separate kernel namespace"),
    # names that are no /proc/sys file of their own
    ("net/../kernel/core_pattern", ALL, {}, "not a valid sysctl name"),
    ("net.ipv4..ip_forward", ALL, {}, "not a valid sysctl name"),
    ("", ALL, {}, "not a valid sysctl name"),
    (".net.ipv4.ip_forward", ALL, {}, "not a valid sysctl name"),
])
def test_rule_table(key, owned, fields, expected):
    why = sysctl.refusal(key, owns_only(*owned), fields)
    if expected is None:
        assert why is None
    else:
        assert why is not None and expected in why, why


def test_normalize_reads_keys_as_the_init_writes_them():
    assert sysctl.normalize("net/ipv4/ip_forward") == "net.ipv4.ip_forward"
    assert sysctl.normalize("fs.mqueue/queues_max") == "fs.mqueue.queues_max"
    assert sysctl.normalize("net/../kernel") is None


# ================================================================ the runtime
def _namespaces(spec: dict, drop: tuple[str, ...] = (), paths: dict[str, str] | None = None):
    namespaces = [ns for ns in spec["linux"]["namespaces"] if ns["type"] not in drop]
    for ns in namespaces:
        if paths and ns["type"] in paths:
            ns["path"] = paths[ns["type"]]
    spec["linux"]["namespaces"] = namespaces


def _own_ns(kind: str) -> str:
    """This process's namespace: the runtime (our child) is in it too."""
    return f"/proc/{os.getpid()}/ns/{kind}"


# id: (sysctl name, namespaces dropped, namespaces joined by path, config fields, error words)
REFUSED = {
    "mqueue-without-ipc": ("fs.mqueue.queues_max", ("ipc",), {}, {}, ["host's ipc"]),
    "msgmax-without-ipc": ("kernel.msgmax", ("ipc",), {}, {}, ["host's ipc"]),
    "shm-in-the-hosts-ipc-by-path": ("kernel.shmmni", (), {"ipc": _own_ns("ipc")}, {},
                                     ["host's ipc"]),
    "net-without-netns": ("net.ipv4.ping_group_range", ("network",), {}, {},
                          ["host's network"]),
    "net-slashes-without-netns": ("net/ipv4/ping_group_range", ("network",), {}, {},
                                  ["host's network"]),
    "net-in-the-hosts-netns-by-path": ("net.ipv4.ping_group_range", (),
                                       {"network": _own_ns("net")}, {}, ["host's network"]),
    "hostname-without-uts": ("kernel.hostname", ("uts",), {}, {}, ["host's uts"]),
    "domainname-without-uts": ("kernel.domainname", ("uts",), {}, {}, ["host's uts"]),
    "hostname-and-the-field": ("kernel.hostname", (), {}, {"hostname": "FIELD"},
                               ["conflicts", "hostname"]),
    "domainname-and-the-field": ("kernel.domainname", (), {}, {"domainname": "FIELD"},
                                 ["conflicts", "domainname"]),
    "not-namespaced": ("kernel.core_pattern", (), {}, {}, ["not in a separate"]),
    "not-namespaced-fs": ("fs.file-max", (), {}, {}, ["not in a separate"]),
}


@pytest.mark.parametrize("case", list(REFUSED), ids=list(REFUSED))
@pytest.mark.parametrize("command", ["create", "run"])
def test_a_sysctl_outside_the_containers_namespaces_is_refused(
        bundle_factory, run_runtime, runtime_root, container_id, tmp_path, case, command):
    name, drop, paths, fields, words = REFUSED[case]
    # The host's own value: should the check ever be lost, nothing changes.
    value = host_value(name.replace("/", "."))
    before = value
    marker = tmp_path / "hook-ran"

    def mutate(spec: dict) -> None:
        spec.pop("hostname", None)
        _namespaces(spec, drop, paths)
        for field in fields:
            # The same value as the sysctl: only the double source is at fault.
            spec[field] = value
        spec["linux"]["sysctl"] = {name: value}
        spec["hooks"] = {"prestart": [{"path": "/bin/sh",
                                       "args": ["sh", "-c", f"touch {marker}"]}]}

    b = bundle_factory(mutate=mutate)
    result = run_runtime(command, "--bundle", str(b), container_id, check=False)
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for word in (name, *words):
        assert word in lines[0], lines[0]
    assert not marker.exists()  # refused before any process ran
    assert_nothing_left(runtime_root, b, container_id)
    assert host_value(name.replace("/", ".")) == before


def test_sysctls_in_the_containers_own_namespaces(bundle_factory, run_runtime, container_id):
    host = {n: host_value(n) for n in ("net.ipv4.ping_group_range", "fs.mqueue.queues_max",
                                       "kernel.msgmax", "kernel.domainname",
                                       "kernel.hostname")}
    queues = "77" if host["fs.mqueue.queues_max"] != "77" else "78"
    msgmax = "12345" if host["kernel.msgmax"] != "12345" else "23456"
    wanted = {"net/ipv4/ping_group_range": "0 0", "fs.mqueue.queues_max": queues,
              "kernel/msgmax": msgmax, "kernel.domainname": "own.test",
              "kernel.hostname": "own-host"}

    def mutate(spec: dict) -> None:
        spec.pop("hostname", None)
        spec["linux"]["sysctl"] = wanted
        spec["process"]["args"] = ["cat"] + [f"/proc/sys/{k.replace('.', '/')}" for k in wanted]

    b = bundle_factory(mutate=mutate)
    out = run_runtime("run", "--bundle", str(b), container_id).stdout
    assert out.split("\n")[:-1] == ["0\t0", queues, msgmax, "own.test", "own-host"]
    assert {n: host_value(n) for n in host} == host


def test_net_and_ipc_sysctls_in_namespaces_joined_from_another_container(
        bundle_factory, run_runtime, container_id):
    """runc allows net.* in a network namespace joined by path that is not the
    runtime's own; nsbox does, and the same for ipc."""
    host = {n: host_value(n) for n in ("net.ipv4.ping_group_range", "kernel.shmmni")}
    shmmni = "1234" if host["kernel.shmmni"] != "1234" else "2345"
    holder = bundle_factory(args=["sleep", "100"], name="holder")
    run_runtime("run", "--detach", "--bundle", str(holder), container_id)
    pid = run_runtime("state", container_id).stdout.split('"pid": ')[1].split(",")[0]

    def mutate(spec: dict) -> None:
        spec.pop("hostname", None)
        _namespaces(spec, paths={"network": f"/proc/{pid}/ns/net",
                                 "ipc": f"/proc/{pid}/ns/ipc"})
        spec["linux"]["sysctl"] = {"net.ipv4.ping_group_range": "0 0", "kernel.shmmni": shmmni}

    joiner = bundle_factory(args=["true"], name="joiner", mutate=mutate)
    run_runtime("run", "--bundle", str(joiner), container_id + "-j")
    # The values live on in the holder's namespaces, and only there.
    out = run_runtime("exec", container_id, "cat", "/proc/sys/net/ipv4/ping_group_range",
                      "/proc/sys/kernel/shmmni").stdout
    assert out.split("\n")[:-1] == ["0\t0", shmmni]
    assert {n: host_value(n) for n in host} == host
    run_runtime("delete", "--force", container_id)


def test_a_missing_namespace_path_is_one_line(bundle_factory, run_runtime, runtime_root,
                                              container_id, tmp_path):
    def mutate(spec: dict) -> None:
        _namespaces(spec, paths={"network": str(tmp_path / "no-such-netns")})
        spec["linux"]["sysctl"] = {"net.ipv4.ping_group_range": "0 0"}

    b = bundle_factory(mutate=mutate)
    result = run_runtime("create", "--bundle", str(b), container_id, check=False)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no-such-netns" in lines[0], result.stderr
    assert_nothing_left(runtime_root, b, container_id)


def test_domainname_without_a_uts_namespace_is_refused(bundle, run_runtime, runtime_root,
                                                       container_id):
    """As runc: a domainname field with no uts namespace of its own is an error, not
    silently dropped."""
    def mutate(spec: dict) -> None:
        spec.pop("hostname", None)
        spec["domainname"] = "x.test"
        _namespaces(spec, drop=("uts",))

    write_config(bundle, mutate)
    result = run_runtime("create", "--bundle", str(bundle), container_id, check=False)
    assert result.returncode != 0 and "domainname" in result.stderr
    assert_nothing_left(runtime_root, bundle, container_id)


# ================================================================ the engine's --sysctl
def engine_error(**opts) -> str:
    with pytest.raises(ConfigError) as info:
        build_spec("busybox", None, {k.replace("_", "-"): v for k, v in opts.items()})
    return str(info.value)


@pytest.mark.parametrize("opts,words", [
    ({"sysctl": ["net.ipv4.ip_forward=1"], "network": "host"}, ["host's network", "--network host"]),
    ({"sysctl": ["kernel.msgmax=1"], "ipc": "host"}, ["host's ipc", "--ipc host"]),
    ({"sysctl": ["fs.mqueue.queues_max=1"], "ipc": "host"}, ["host's ipc"]),
    ({"sysctl": ["kernel.hostname=x"]}, ["'kernel.hostname=x' is not allowed", '"--sysctl"']),
    ({"sysctl": ["kernel.domainname=x"]}, ["is not allowed"]),
    ({"sysctl": ["kernel.core_pattern=core"]}, ["is not allowed"]),
    ({"sysctl": ["vm.swappiness=1"]}, ["is not allowed"]),
])
def test_engine_refuses_sysctls_docker_refuses(opts, words):
    message = engine_error(**opts)
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("opts", [
    {"sysctl": ["net.ipv4.ip_forward=1"]},
    {"sysctl": ["net.ipv4.ip_forward=1"], "network": "none"},
    {"sysctl": ["net.ipv4.ip_forward=1"], "network": "container:other"},
    {"sysctl": ["net.ipv4.ip_forward=1"], "ipc": "host"},
    {"sysctl": ["kernel.msgmax=1", "fs.mqueue.msg_max=10"], "network": "host"},
    {"sysctl": ["kernel.shm_rmid_forced=1"], "ipc": "container:other"},
])
def test_engine_accepts_sysctls_of_its_own_namespaces(opts):
    build_spec("busybox", None, opts)


def nsbox_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([NSBOX, "--root", str(tmp_path / "lib"), "--runroot",
                           str(tmp_path / "run"), *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("flags,name", [
    (["--network", "host"], "net.ipv4.ping_group_range"),
    (["--ipc", "host"], "fs.mqueue.queues_max"),
    ([], "kernel.core_pattern"),
])
def test_engine_cli_refusal_is_125_and_leaves_the_host_alone(tmp_path, flags, name):
    before = host_value(name)
    proc = nsbox_cli(tmp_path, "run", "--rm", *flags, "--sysctl", f"{name}={before}",
                     "busybox", "true")
    assert proc.returncode == 125, proc.stderr
    assert name in proc.stderr
    assert host_value(name) == before
    assert nsbox_cli(tmp_path, "ps", "-a", "-q").stdout == ""


def test_engine_cli_sysctls_in_its_own_namespaces(tmp_path):
    host = {n: host_value(n) for n in ("net.ipv4.ping_group_range", "fs.mqueue.queues_max")}
    queues = "77" if host["fs.mqueue.queues_max"] != "77" else "78"
    proc = nsbox_cli(tmp_path, "run", "--rm", "--sysctl", "net.ipv4.ping_group_range=0 0",
                     "--sysctl", f"fs.mqueue.queues_max={queues}", "busybox", "cat",
                     "/proc/sys/net/ipv4/ping_group_range", "/proc/sys/fs/mqueue/queues_max")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:-1] == ["0\t0", queues]
    assert {n: host_value(n) for n in host} == host


def test_hostname_of_this_host_is_what_kernel_hostname_reads():
    # host_value() is what the refusal cases write back: make sure it reads right.
    assert host_value("kernel.hostname") == socket.gethostname()
