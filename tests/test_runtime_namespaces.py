"""End-to-end namespace tests of `nsbox-runtime` on the real kernel.

Each container reports what it sees from the inside (/proc/self/ns links,
uid_map, uptime, hostname, /proc/self/cgroup) and the test compares that
with what the host sees.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helpers
import pytest
from helpers import pid_is_dead, wait_for, write_config

# The time namespace (Linux 5.6, CONFIG_TIME_NS) is the one a supported kernel may
# still lack; without it, the tests leave it out and the time tests skip.
HAS_TIME_NS = os.path.exists("/proc/self/ns/time")
needs_time_ns = pytest.mark.skipif(not HAS_TIME_NS,
                                   reason="this kernel has no time namespace (/proc/self/ns/time)")

# spec type -> /proc/<pid>/ns name
PROC_NAMES = {"user": "user", "mount": "mnt", "pid": "pid", "network": "net", "ipc": "ipc",
              "uts": "uts", "cgroup": "cgroup", **({"time": "time"} if HAS_TIME_NS else {})}
ALL_TYPES = tuple(PROC_NAMES)

# Prints "name link" for every namespace of the container process itself.
PRINT_NS = (f"for n in {' '.join(PROC_NAMES.values())}; "
            "do echo $n $(readlink /proc/self/ns/$n); done")

ID_MAP = [{"containerID": 0, "hostID": 100000, "size": 1000},
          {"containerID": 1000, "hostID": 200000, "size": 1000},
          {"containerID": 65534, "hostID": 300000, "size": 1}]
SIMPLE_MAP = [{"containerID": 0, "hostID": 100000, "size": 65536}]


# ------------------------------------------------------------------ helpers
def host_ns() -> dict[str, str]:
    return {name: os.readlink(f"/proc/self/ns/{name}") for name in PROC_NAMES.values()}


def parse_ns(output: str) -> dict[str, str]:
    links = dict(line.split(" ", 1) for line in output.strip().splitlines())
    assert set(links) == set(PROC_NAMES.values()), output
    return links


def set_namespaces(spec: dict, types: list[str], joins: dict[str, str] | None = None) -> None:
    """linux.namespaces = TYPES (new) plus JOINS (type -> path); id maps when a user ns is new."""
    joins = joins or {}
    spec["linux"]["namespaces"] = ([{"type": t} for t in types]
                                   + [{"type": t, "path": p} for t, p in joins.items()])
    if "user" in types:
        spec["linux"]["uidMappings"] = SIMPLE_MAP
        spec["linux"]["gidMappings"] = SIMPLE_MAP
    else:
        spec["linux"].pop("uidMappings", None)
        spec["linux"].pop("gidMappings", None)


def host_proc_only(spec: dict) -> None:
    """Keep two mounts: a tmpfs /dev and the host's /proc, recursively bound.

    A fresh procfs needs CAP_SYS_ADMIN over the PID namespace, which a new
    user namespace lacks for the host's one; /proc/self still resolves in
    the host's procfs, which is all the namespace links need. sysfs and the
    cgroup mounts are left out for the same reason.
    """
    spec["mounts"] = [{"destination": "/proc", "type": "bind", "source": "/proc",
                       "options": ["rbind"]},
                      {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                       "options": ["nosuid", "mode=755"]}]
    spec["linux"]["maskedPaths"] = []
    spec["linux"]["readonlyPaths"] = []
    spec["linux"].pop("resources", None)
    spec.pop("hostname", None)


def state_of(run_runtime, cid: str) -> dict:
    return json.loads(run_runtime("state", cid).stdout)


@pytest.fixture
def userns_bundle_factory(busybox_rootfs: Path) -> Iterator[Callable[..., Path]]:
    """Like bundle_factory, but in a directory that any user may traverse.

    pytest's tmp_path is mode 0700: a container root mapped to an
    unprivileged host id could not reach a rootfs there (runc has the same
    requirement).
    """
    base = Path(tempfile.mkdtemp(prefix="nsbox-userns-"))
    base.chmod(0o755)
    made: list[Path] = []

    def factory(args: list[str] | None = None, name: str | None = None, **overrides: Any
                ) -> Path:
        path = base / (name or f"bundle{len(made) + 1}")
        made.append(path)
        return helpers.make_bundle(path, args or ["/bin/true"], rootfs_template=busybox_rootfs,
                                   **overrides)

    yield factory
    leaked = helpers.unmount_all_under(base)
    shutil.rmtree(base, ignore_errors=True)
    assert not leaked, f"mounts leaked below {base}: {leaked}"


@pytest.fixture
def userns_bundle(userns_bundle_factory: Callable[..., Path]) -> Path:
    return userns_bundle_factory(name="bundle")


# ------------------------------------------------------------------ new vs shared
@pytest.mark.parametrize("ns_type", ALL_TYPES)
def test_a_new_namespace_differs_from_the_host(userns_bundle, run_runtime, container_id,
                                               ns_type):
    bundle = userns_bundle
    # Only this namespace (and mount, for the rootfs) is new; all others are the host's.
    types = sorted({ns_type, "mount"})

    def mutate(spec: dict) -> None:
        host_proc_only(spec)
        set_namespaces(spec, types)
        spec["process"]["args"] = ["sh", "-c", PRINT_NS]

    write_config(bundle, mutate)
    inside = parse_ns(run_runtime("run", "--bundle", str(bundle), container_id).stdout)
    host = host_ns()
    for spec_type, name in PROC_NAMES.items():
        if spec_type in types:
            assert inside[name] != host[name], f"{name} should be new"
        else:
            assert inside[name] == host[name], f"{name} should be the host's"


@pytest.mark.parametrize("ns_type", ALL_TYPES)
def test_a_namespace_not_asked_for_is_the_hosts(userns_bundle, run_runtime, container_id,
                                                ns_type):
    bundle = userns_bundle
    # Every namespace but this one is new.
    types = [t for t in ALL_TYPES if t != ns_type]

    def mutate(spec: dict) -> None:
        host_proc_only(spec)
        set_namespaces(spec, types)
        if ns_type == "mount":
            # Without a mount namespace nothing is mounted (the mount table is the
            # host's) and the process is chrooted into its root: no /proc to read
            # there, so the host reads the links of the running process.
            spec["mounts"] = []
            spec["root"]["readonly"] = False
            spec["process"]["args"] = ["sleep", "30"]
        else:
            spec["process"]["args"] = ["sh", "-c", PRINT_NS]

    write_config(bundle, mutate)
    if ns_type == "mount":
        run_runtime("run", "--detach", "--bundle", str(bundle), container_id)
        pid = state_of(run_runtime, container_id)["pid"]
        inside = {name: os.readlink(f"/proc/{pid}/ns/{name}") for name in PROC_NAMES.values()}
        run_runtime("delete", "--force", container_id)
    else:
        inside = parse_ns(run_runtime("run", "--bundle", str(bundle), container_id).stdout)
    host = host_ns()
    for spec_type, name in PROC_NAMES.items():
        if spec_type == ns_type:
            assert inside[name] == host[name], f"{name} should be the host's"
        else:
            assert inside[name] != host[name], f"{name} should be new"


# ------------------------------------------------------------------ joining by path
@needs_time_ns
def test_joining_namespaces_by_path_shares_them(userns_bundle_factory, run_runtime):
    bundle_factory = userns_bundle_factory
    owner_id, joiner_id = helpers.new_container_id("owner"), helpers.new_container_id("join")
    owner = bundle_factory(["sleep", "100"], name="owner")

    def owner_mutate(spec: dict) -> None:
        set_namespaces(spec, list(ALL_TYPES))
        spec["linux"]["timeOffsets"] = {"monotonic": {"secs": 1000, "nanosecs": 0}}
        # Only the mounts the joiner can make too (it has no network namespace of its own).
        spec["mounts"] = [m for m in spec["mounts"] if m["type"] not in ("sysfs", "cgroup")]

    write_config(owner, owner_mutate)
    run_runtime("run", "--detach", "--bundle", str(owner), owner_id)
    owner_pid = state_of(run_runtime, owner_id)["pid"]
    owner_ns = {name: os.readlink(f"/proc/{owner_pid}/ns/{name}") for name in PROC_NAMES.values()}

    joined = ["user", "pid", "network", "ipc", "uts", "cgroup", "time"]  # all eight: needs_time_ns
    joiner = bundle_factory(["sh", "-c", PRINT_NS + "; echo self $$; hostname"], name="joiner")

    def joiner_mutate(spec: dict) -> None:
        set_namespaces(spec, ["mount"], {t: f"/proc/{owner_pid}/ns/{PROC_NAMES[t]}"
                                         for t in joined})
        spec.pop("hostname", None)  # the uts namespace is the owner's, not ours to name
        spec["mounts"] = [m for m in spec["mounts"] if m["type"] not in ("sysfs", "cgroup")]

    write_config(joiner, joiner_mutate)
    out = run_runtime("run", "--bundle", str(joiner), joiner_id).stdout
    lines = out.strip().splitlines()
    inside = parse_ns("\n".join(lines[:-2]))
    for spec_type in joined:
        name = PROC_NAMES[spec_type]
        assert inside[name] == owner_ns[name], f"{name} not shared"
    assert inside["mnt"] != owner_ns["mnt"] and inside["mnt"] != host_ns()["mnt"]
    # In the owner's PID namespace, where the owner's init already is PID 1.
    assert lines[-2].split()[0] == "self" and int(lines[-2].split()[1]) > 1
    assert lines[-1] == "nsbox"  # the owner's hostname, through its uts namespace


def test_joining_the_mount_namespace_still_runs_in_root_path(bundle_factory, run_runtime):
    """Joined by path, the mount namespace is the owner's, but the process runs in its own
    root.path (as with runc and crun), and nothing is mounted in the owner's namespace."""
    owner_id, joiner_id = helpers.new_container_id("owner"), helpers.new_container_id("join")
    owner = bundle_factory(["sleep", "100"], name="owner")
    (owner / "rootfs" / "marker").write_text("owner\n")
    run_runtime("run", "--detach", "--bundle", str(owner), owner_id)
    owner_pid = state_of(run_runtime, owner_id)["pid"]
    owner_mounts = Path(f"/proc/{owner_pid}/mountinfo").read_text()

    joiner = bundle_factory(["sh", "-c", "cat /marker; sleep 30"], name="joiner")
    (joiner / "rootfs" / "marker").write_text("joiner\n")

    def mutate(spec: dict) -> None:
        set_namespaces(spec, ["network"], {"mount": f"/proc/{owner_pid}/ns/mnt",
                                            "pid": f"/proc/{owner_pid}/ns/pid"})
        spec.pop("hostname", None)
        spec["mounts"] = []
        spec["linux"]["maskedPaths"] = spec["linux"]["readonlyPaths"] = []
        spec["root"]["readonly"] = False

    write_config(joiner, mutate)
    run_runtime("run", "--detach", "--bundle", str(joiner), joiner_id)
    pid = state_of(run_runtime, joiner_id)["pid"]
    assert os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink(f"/proc/{owner_pid}/ns/mnt")
    wait_for(lambda: os.path.samestat(os.stat(f"/proc/{pid}/root/marker"),
                                      os.stat(joiner / "rootfs" / "marker")))
    assert Path(f"/proc/{owner_pid}/mountinfo").read_text() == owner_mounts
    run_runtime("delete", "--force", joiner_id)


def test_joining_a_missing_namespace_path_fails(bundle, run_runtime, container_id, runtime_root):
    def mutate(spec: dict) -> None:
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"]
                                       if n["type"] != "network"]
        spec["linux"]["namespaces"].append({"type": "network", "path": "/proc/999999999/ns/net"})

    write_config(bundle, mutate)
    result = run_runtime("run", "--bundle", str(bundle), container_id, check=False)
    assert result.returncode != 0
    assert "/proc/999999999/ns/net" in result.stderr
    assert helpers.list_container_ids(runtime_root) == []


def test_joining_a_namespace_of_the_wrong_type_fails(bundle, run_runtime, container_id,
                                                     runtime_root):
    def mutate(spec: dict) -> None:
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"]
                                       if n["type"] != "network"]
        spec["linux"]["namespaces"].append({"type": "network", "path": "/proc/self/ns/uts"})

    write_config(bundle, mutate)
    result = run_runtime("run", "--bundle", str(bundle), container_id, check=False)
    assert result.returncode != 0
    assert "network" in result.stderr
    assert helpers.list_container_ids(runtime_root) == []


# ------------------------------------------------------------------ user namespace
def test_user_namespace_with_several_ranges(userns_bundle, run_runtime, container_id):
    bundle = userns_bundle
    def mutate(spec: dict) -> None:
        spec["linux"]["namespaces"].append({"type": "user"})
        spec["linux"]["uidMappings"] = ID_MAP
        spec["linux"]["gidMappings"] = ID_MAP
        spec["process"]["args"] = [
            "sh", "-c", "cat /proc/self/uid_map; echo --; cat /proc/self/gid_map; echo --;"
                        " stat -c '%u %g' /bin/busybox; id -u; id -g"]

    write_config(bundle, mutate)
    out = run_runtime("run", "--bundle", str(bundle), container_id).stdout
    uid_map, gid_map, rest = out.split("--\n")
    expected = [[str(m["containerID"]), str(m["hostID"]), str(m["size"])] for m in ID_MAP]
    assert [line.split() for line in uid_map.strip().splitlines()] == expected
    assert [line.split() for line in gid_map.strip().splitlines()] == expected
    # The rootfs belongs to host root, which has no mapping: the overflow id.
    owner, uid, gid = rest.strip().splitlines()
    assert owner == "65534 65534"
    assert (uid, gid) == ("0", "0")


def test_user_namespace_maps_container_root_to_the_host_id(userns_bundle, run_runtime,
                                                            container_id):
    bundle = userns_bundle
    shared = bundle / "shared"
    shared.mkdir()
    os.chown(shared, 100000, 100000)  # container root may write here
    (bundle / "rootfs" / "mark").mkdir()

    def mutate(spec: dict) -> None:
        spec["linux"]["namespaces"].append({"type": "user"})
        spec["linux"]["uidMappings"] = ID_MAP
        spec["linux"]["gidMappings"] = ID_MAP
        spec["mounts"].append({"destination": "/mark", "type": "bind", "source": str(shared),
                               "options": ["rbind", "rw"]})
        spec["process"]["capabilities"]["effective"].append("CAP_CHOWN")
        spec["process"]["capabilities"]["permitted"].append("CAP_CHOWN")
        spec["process"]["capabilities"]["bounding"].append("CAP_CHOWN")
        spec["process"]["args"] = ["sh", "-c", "touch /mark/root; chown 1000:1000 /mark/root;"
                                               " touch /mark/user; chown 1005:1005 /mark/user"]

    write_config(bundle, mutate)
    run_runtime("run", "--bundle", str(bundle), container_id)
    st = os.stat(shared / "root")
    assert (st.st_uid, st.st_gid) == (200000, 200000)  # container 1000 -> host 200000
    st = os.stat(shared / "user")
    assert (st.st_uid, st.st_gid) == (200005, 200005)


def test_new_user_namespace_needs_both_mappings_or_neither(bundle, run_runtime, container_id,
                                                           runtime_root):
    def mutate(spec: dict) -> None:
        spec["linux"]["namespaces"].append({"type": "user"})
        spec["linux"]["uidMappings"] = SIMPLE_MAP

    write_config(bundle, mutate)
    result = run_runtime("run", "--bundle", str(bundle), container_id, check=False)
    assert result.returncode != 0
    assert "both uidMappings and gidMappings" in result.stderr
    assert helpers.list_container_ids(runtime_root) == []


# ------------------------------------------------------------------ time namespace
@needs_time_ns
def test_time_namespace_offsets_shift_uptime(bundle, run_runtime, container_id):
    year = 86400 * 365

    def mutate(spec: dict) -> None:
        spec["linux"]["namespaces"].append({"type": "time"})
        spec["linux"]["timeOffsets"] = {"monotonic": {"secs": year, "nanosecs": 0},
                                        "boottime": {"secs": 2 * year, "nanosecs": 0}}
        spec["process"]["args"] = ["cat", "/proc/uptime"]

    write_config(bundle, mutate)
    host_before = float(Path("/proc/uptime").read_text().split()[0])
    inside = float(run_runtime("run", "--bundle", str(bundle), container_id).stdout.split()[0])
    host_after = float(Path("/proc/uptime").read_text().split()[0])
    assert host_before + 2 * year - 1 <= inside <= host_after + 2 * year + 1


def test_time_offsets_without_a_time_namespace_are_refused(bundle, run_runtime, container_id):
    write_config(bundle, lambda s: s["linux"].update(
        timeOffsets={"monotonic": {"secs": 10, "nanosecs": 0}}))
    result = run_runtime("run", "--bundle", str(bundle), container_id, check=False)
    assert result.returncode != 0
    assert "time" in result.stderr


# ------------------------------------------------------------------ uts
def test_hostname_and_domainname_in_a_new_uts_namespace(bundle, run_runtime, container_id):
    host_name = Path("/proc/sys/kernel/hostname").read_text()

    def mutate(spec: dict) -> None:
        spec["hostname"] = "box-one"
        spec["domainname"] = "example.test"
        spec["process"]["args"] = ["sh", "-c", "hostname; cat /proc/sys/kernel/domainname"]

    write_config(bundle, mutate)
    out = run_runtime("run", "--bundle", str(bundle), container_id).stdout
    assert out.splitlines() == ["box-one", "example.test"]
    assert Path("/proc/sys/kernel/hostname").read_text() == host_name


def test_hostname_without_a_uts_namespace_is_refused(bundle, run_runtime, container_id):
    write_config(bundle, lambda s: s["linux"].update(
        namespaces=[n for n in s["linux"]["namespaces"] if n["type"] != "uts"]))
    result = run_runtime("run", "--bundle", str(bundle), container_id, check=False)
    assert result.returncode != 0
    assert "uts" in result.stderr


# ------------------------------------------------------------------ pid namespace
def test_init_is_pid_1_and_its_death_kills_the_namespace(bundle, run_runtime, container_id,
                                                          tmp_path):
    go = tmp_path / "shared" / "go"
    go.parent.mkdir()
    os.mkfifo(go)
    (bundle / "rootfs" / "mark").mkdir()

    def mutate(spec: dict) -> None:
        spec["mounts"].append({"destination": "/mark", "type": "bind",
                               "source": str(go.parent), "options": ["rbind"]})
        # Two background sleepers; the init waits for the fifo, then exits
        # without waiting for them.
        spec["process"]["args"] = ["sh", "-c", "sleep 100 & sleep 101 & echo $$ > /mark/pid;"
                                               " read x < /mark/go"]

    write_config(bundle, mutate)
    run_runtime("run", "--detach", "--bundle", str(bundle), container_id)
    init_pid = state_of(run_runtime, container_id)["pid"]
    assert wait_for(lambda: (go.parent / "pid").exists() and (go.parent / "pid").read_text()
                    ) == "1\n"
    pids = wait_for(lambda: len(p := json.loads(
        run_runtime("ps", "--format", "json", container_id).stdout)) == 3 and p)
    others = [p for p in pids if p != init_pid]
    assert len(others) == 2
    for pid in others:
        assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep\x00")
        assert not pid_is_dead(pid)

    with open(go, "w") as f:
        f.write("\n")
    wait_for(lambda: pid_is_dead(init_pid))
    # The kernel kills every other process of the namespace with its init.
    for pid in others:
        wait_for(lambda pid=pid: pid_is_dead(pid))
    assert state_of(run_runtime, container_id)["status"] == "stopped"


def test_pid_namespace_hides_host_processes(bundle, run_runtime, container_id):
    write_config(bundle, lambda s: s["process"].update(
        args=["sh", "-c", "ls /proc | grep -c '^[0-9]'; echo $$"]))
    count, self_pid = run_runtime("run", "--bundle", str(bundle), container_id).stdout.split()
    # sh, plus the ls and grep of its pipeline.
    assert int(count) <= 3
    assert self_pid == "1"


# ------------------------------------------------------------------ cgroup namespace
def test_cgroup_namespace_shows_root_paths(bundle, run_runtime, container_id):
    write_config(bundle, lambda s: s["process"].update(args=["cat", "/proc/self/cgroup"]))
    lines = run_runtime("run", "--bundle", str(bundle), container_id).stdout.splitlines()
    assert lines
    paths = {line.split(":", 2)[1]: line.split(":", 2)[2] for line in lines}
    assert "0::/" in lines
    for controllers, path in paths.items():
        assert path == "/", f"{controllers}: {path}"


def test_without_cgroup_namespace_the_host_path_shows(bundle, run_runtime, container_id):
    def mutate(spec: dict) -> None:
        spec["process"]["args"] = ["cat", "/proc/self/cgroup"]
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"]
                                       if n["type"] != "cgroup"]

    write_config(bundle, mutate)
    lines = run_runtime("run", "--bundle", str(bundle), container_id).stdout.splitlines()
    unified = next(line for line in lines if line.startswith("0::"))
    assert unified.endswith(f"/nsbox-{container_id}")


# ------------------------------------------------------------------ network: loopback
# lo's flags and addresses, and a TCP round trip over 127.0.0.1.
LOOPBACK_PROBE = ("ip -o addr show lo; echo flags $(ip -o link show lo);"
                  " timeout 5 nc -l -p 7777 -e echo over-loopback & for i in 1 2 3 4 5 6 7 8 9 10;"
                  " do nc 127.0.0.1 7777 </dev/null 2>/dev/null && break; sleep 0.1; done; wait")


@pytest.mark.parametrize("with_userns", [False, True], ids=["netns", "userns+netns"])
def test_a_new_network_namespace_has_loopback_up(userns_bundle_factory, run_runtime, container_id,
                                                 with_userns):
    """Like runc, the runtime brings lo up in a network namespace it creates."""
    bundle = userns_bundle_factory(["sh", "-c", LOOPBACK_PROBE])

    def mutate(spec: dict) -> None:
        if with_userns:
            set_namespaces(spec, ["user", "network", "mount", "pid", "ipc", "uts"])
            host_proc_only(spec)

    write_config(bundle, mutate)
    out = run_runtime("run", "--bundle", str(bundle), container_id).stdout
    assert "inet 127.0.0.1/8" in out, out
    link = next(line for line in out.splitlines() if line.startswith("flags "))
    assert "<LOOPBACK,UP,LOWER_UP>" in link, out
    assert out.splitlines()[-1] == "over-loopback", out


def test_a_joined_network_namespace_keeps_its_loopback_as_it_is(bundle, run_runtime,
                                                                container_id):
    """A network namespace given by path belongs to someone else: lo stays down."""
    unshare = helpers.require_binary("unshare")
    holder = subprocess.Popen([unshare, "--net", "sleep", "100"])
    try:
        net = f"/proc/{holder.pid}/ns/net"
        assert wait_for(lambda: os.readlink(net) != os.readlink("/proc/self/ns/net"))

        def mutate(spec: dict) -> None:
            spec["process"]["args"] = ["sh", "-c", "ip -o link show lo; ip -o addr show lo"]
            spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"]
                                           if n["type"] != "network"]
            spec["linux"]["namespaces"].append({"type": "network", "path": net})

        write_config(bundle, mutate)
        out = run_runtime("run", "--bundle", str(bundle), container_id).stdout
        assert "<LOOPBACK>" in out and "127.0.0.1" not in out, out
    finally:
        holder.kill()
        holder.wait()


# ------------------------------------------------------------------ nesting
def own_bounding_caps() -> list[str]:
    """Capability names in this process's bounding set: all the outer container may get."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            mask = int(line.split()[1], 16)
    return [name for bit, name in enumerate(ALL_CAPS) if mask & (1 << bit)]


def nested_bundle(bundle_factory, inner_args: list[str]) -> Path:
    """An outer container, privileged enough to run nsbox-runtime inside itself.

    The runtime, its venv and interpreter, and the host's shared libraries
    are bound read-only at their host paths, so the same console script works.
    """
    python_home = Path(os.path.realpath(sys.executable)).parents[1]
    outer = bundle_factory(["/bin/sh", "-c", " ".join(inner_args)], name="outer")
    rootfs = outer / "rootfs"
    helpers.make_bundle(rootfs / "inner", ["hostname"], hostname="inner-box")
    binds = [str(helpers.REPO_ROOT), str(python_home), "/usr/lib", "/usr/lib64"]
    if not Path(sys.prefix).is_relative_to(helpers.REPO_ROOT):
        binds.append(sys.prefix)
    for name in ("lib", "lib64"):  # Debian's merged /usr: /lib -> usr/lib
        if Path(f"/{name}").is_symlink():
            (rootfs / name).symlink_to(os.readlink(f"/{name}"))
    caps = own_bounding_caps()

    def mutate(spec: dict) -> None:
        for path in binds:
            (rootfs / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
            spec["mounts"].append({"destination": path, "type": "bind", "source": path,
                                   "options": ["rbind", "ro"]})
        spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != "/sys/fs/cgroup"]
        spec["mounts"].append({"destination": "/sys/fs/cgroup", "type": "bind",
                               "source": "/sys/fs/cgroup", "options": ["rbind", "rw"]})
        spec["mounts"].append({"destination": "/run", "type": "tmpfs", "source": "tmpfs",
                               "options": ["mode=755"]})
        sys_mount = next(m for m in spec["mounts"] if m["destination"] == "/sys")
        sys_mount["options"] = [o for o in sys_mount["options"] if o != "ro"]
        spec["root"]["readonly"] = False
        spec["process"]["capabilities"] = {k: caps for k in
                                           ("bounding", "effective", "permitted")}
        spec["process"]["noNewPrivileges"] = False
        spec["process"]["env"] = [f"PATH={sys.prefix}/bin:/bin", "PYTHONDONTWRITEBYTECODE=1"]
        spec["linux"]["maskedPaths"] = []
        spec["linux"]["readonlyPaths"] = []
        spec["linux"].pop("resources", None)
        spec["linux"].pop("seccomp", None)
        # No cgroup namespace: the inner runtime places its container below ours.
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"]
                                       if n["type"] != "cgroup"]

    write_config(outer, mutate)
    return outer


ALL_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
]


def test_nested_runtime_runs_an_inner_container(bundle_factory, run_runtime, container_id):
    runtime = f"{sys.prefix}/bin/nsbox-runtime"
    outer = nested_bundle(bundle_factory, [
        f"{runtime} --root /run/inner run --bundle /inner inner-{container_id[-6:]};",
        "echo exit=$?;",
        f"{runtime} --root /run/inner list -q | wc -l"])
    result = run_runtime("run", "--bundle", str(outer), container_id, check=False, timeout=60)
    assert result.stdout.splitlines() == ["inner-box", "exit=0", "0"], (
        f"stdout: {result.stdout}\nstderr: {result.stderr}")
    assert result.returncode == 0
