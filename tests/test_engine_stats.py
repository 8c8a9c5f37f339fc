"""`nsbox stats` and `nsbox cgroup` on real containers, and the numbers' arithmetic.

The engine runs with a private --root/--runroot (module-scoped: busybox is
built once); containers a test starts are removed after it.  CPU figures are
measured over generous intervals because other work shares the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from helpers import first_lines

from nsbox.engine.containers import Engine
from nsbox.engine.observe import readings, stats
from nsbox.engine.observe.cgroupview import view

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

NSBOX = str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "nsbox")


# ----------------------------------------------------------------- pure logic
def sample(**fields) -> stats.Sample:
    base = dict(read_at=100.0, started_at=90.0, cpu_total_ns=0, cpu_user_ns=0, cpu_kernel_ns=0,
                system_cpu_ns=0, online_cpus=2, mem_usage=0, mem_inactive_file=0, mem_limit=0,
                networks={}, blk_read=0, blk_write=0, blkio=[], pids=0, pids_limit=0,
                cgroup="v1")
    base.update(fields)
    return stats.Sample(**base)


def test_cpu_percent_is_dockers_formula():
    prev = sample(cpu_total_ns=1_000_000_000, system_cpu_ns=50_000_000_000)
    # 0.5 s of CPU while the 2 CPUs ran 2 s in all (1 s of wall time): 50 % of one CPU.
    cur = sample(cpu_total_ns=1_500_000_000, system_cpu_ns=52_000_000_000)
    assert stats.cpu_percent(prev, cur) == pytest.approx(50.0)
    assert stats.cpu_percent(cur, prev) == 0.0  # counters that went back (a restart)
    assert stats.cpu_percent(None, cur) == 0.0


def test_since_start_averages_over_the_containers_life():
    # 10 s old, 4 s of CPU: 40 % of one CPU on average, whatever the CPU count.
    cur = sample(read_at=110.0, started_at=100.0, cpu_total_ns=4_000_000_000,
                 system_cpu_ns=999_000_000_000, online_cpus=4)
    assert stats.cpu_percent(stats.since_start(cur), cur) == pytest.approx(40.0)


def test_memory_excludes_inactive_file_cache():
    s = sample(mem_usage=10 << 20, mem_inactive_file=4 << 20)
    assert s.mem_used == 6 << 20
    assert sample(mem_usage=1 << 20, mem_inactive_file=2 << 20).mem_used == 1 << 20


@pytest.mark.parametrize("size,binary,decimal", [
    (0, "0B", "0B"), (1234, "1.205KiB", "1.23kB"), (1.5 * (1 << 20), "1.5MiB", "1.57MB"),
    (64 << 20, "64MiB", "67.1MB"), (999, "999B", "999B"), (1 << 30, "1GiB", "1.07GB"),
])
def test_units_are_dockers(size, binary, decimal):
    assert stats.binary_size(size) == binary
    assert stats.decimal_size(size) == decimal


def test_docker_fields_and_api_shape():
    cur = sample(cpu_total_ns=5_000_000_000, mem_usage=3 << 20, mem_limit=64 << 20,
                 networks={"eth0": (1234, 3, 0, 0, 0, 0, 0, 0)}, blk_read=4096, pids=3,
                 blkio=[(8, 0, "read", 4096)])
    target = stats.Target(id="ab" * 32, name="web", state="running", pid=1, started_at=90.0,
                          dirs={})
    row = stats.compute(target, None, cur)
    fields = row.docker()
    assert fields == {"BlockIO": "4.1kB / 0B", "CPUPerc": "50.00%", "Container": "ab" * 6,
                      "ID": "ab" * 6, "MemPerc": "4.69%", "MemUsage": "3MiB / 64MiB",
                      "Name": "web", "NetIO": "1.23kB / 0B", "PIDs": "3"}
    assert row.docker(trunc=False)["ID"] == "ab" * 32
    api = row.api()
    assert api["cpu_stats"]["cpu_usage"]["total_usage"] == 5_000_000_000
    assert api["precpu_stats"]["cpu_usage"]["total_usage"] == 0
    assert api["networks"]["eth0"]["rx_bytes"] == 1234
    assert api["blkio_stats"]["io_service_bytes_recursive"] == [
        {"major": 8, "minor": 0, "op": "read", "value": 4096}]


def test_file_parsers():
    assert readings.keyed("cache 1\ntotal_inactive_file 42\nx 3\n", "total_inactive_file") == 42
    assert readings.keyed("inactive_file 7\n", "inactive_file") == 7
    assert readings.keyed("total_inactive_file 9\ninactive_file 7\n", "inactive_file") == 7
    assert readings.keyed("", "x") == 0
    assert readings.io_v2("8:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n"
                        "8:16 rbytes=1 wbytes=2\n") == [
        (8, 0, "read", 10), (8, 0, "write", 20), (8, 16, "read", 1), (8, 16, "write", 2)]
    assert readings.blkio_v1("8:0 Read 10\n8:0 Write 20\n8:0 Sync 30\n8:0 Total 30\nTotal 30\n") \
        == [(8, 0, "read", 10), (8, 0, "write", 20)]
    assert stats.controller_dirs({"cpu,cpuacct": "/a", "": "/u", "name=systemd": "/s"}) == {
        "cpu": "/a", "cpuacct": "/a", "unified": "/u", "systemd": "/s"}


def test_cgroup_paths_from_state_json(tmp_path):
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"id": "x", "annotations": {"cgroup_paths": "a string"},
                                 "cgroup_paths": {"memory": "/m", "": "/u"}, "config": {}}))
    # The first '"cgroup_paths":' is an annotation's: the whole file is parsed instead.
    assert readings.state_cgroup_paths(str(state)) == {"memory": "/m", "": "/u"}
    state.write_text('{"cgroup_paths":{"pids":"/p"},"config":{"x":1}}')
    assert readings.state_cgroup_paths(str(state)) == {"pids": "/p"}
    assert readings.state_cgroup_paths(str(tmp_path / "missing")) is None


# ----------------------------------------------------------------- real containers
@pytest.fixture(scope="module")
def base():
    path = Path(tempfile.mkdtemp(prefix="nsbox-stats-test-"))
    yield path
    cli_at(path)("rm", "-f", *cli_at(path)("ps", "-aq", "--no-trunc").stdout.split(),
                 check=False)
    shutil.rmtree(path, ignore_errors=True)


def cli_at(base: Path):
    def run(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run([NSBOX, "--root", str(base / "lib"), "--runroot", str(base / "run"),
                               *args], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"nsbox {' '.join(args)} -> {proc.returncode}\n{proc.stderr}")
        return proc
    return run


@pytest.fixture
def cli(base):
    run = cli_at(base)
    before = set(run("ps", "-aq", "--no-trunc").stdout.split())
    yield run
    left = set(run("ps", "-aq", "--no-trunc").stdout.split()) - before
    if left:
        run("rm", "-f", *left, check=False)


@pytest.fixture
def engine(base, cli):
    return Engine(str(base / "lib"), str(base / "run"))


def devnull() -> int:
    fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    _DEVNULLS.append(fd)
    return fd


_DEVNULLS: list[int] = []


@pytest.fixture(autouse=True)
def _close_devnulls():
    yield
    while _DEVNULLS:
        os.close(_DEVNULLS.pop())


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def test_cpu_under_cpus_half_is_about_50_percent(cli, engine):
    # The largest CPU weight, so that on a loaded machine (other tests, other
    # work) the scheduler still gives it all its quota: the quota is what the
    # figure is to show, not the load.
    cid = cli("run", "-d", "--cpus", "0.5", "--cpu-shares", "262144", "busybox", "sh", "-c",
              "while :; do :; done").stdout.strip()
    limit = next((lim for lim in view(engine, cid).limits if lim.flag == "--cpus"), None)
    if limit is None or not limit.files:
        pytest.skip("this host has no cpu controller for the container (no CFS quota file)")
    time.sleep(1.0)
    # The quota caps it at 50 %; a loaded machine may give it less for a moment,
    # so a few generous intervals are tried before the figure is judged.
    readings = []
    for _ in range(4):
        row = stats.snapshot(engine, [cid], interval=3.0)[0]
        readings.append(row.cpu_percent)
        if abs(row.cpu_percent - 50.0) <= 15.0:
            break
    assert abs(readings[-1] - 50.0) <= 15.0, readings
    # The CLI's one-sample form: the average since the start, also near 50 %.
    out = cli("stats", "--no-stream", "--format", "{{.CPUPerc}}", cid).stdout.strip()
    assert out.endswith("%") and float(out[:-1]) <= 65.0, out
    # The quota is what held it there: the kernel throttled it.
    throttled = [ev.value for ev in view(engine, cid).events if ev.counter == "nr_throttled"]
    assert throttled and throttled[0] > 0


def test_memory_usage_grows_when_it_allocates(cli, engine):
    cid = cli("run", "-d", "--memory", "256m", "busybox", "sleep", "1000").stdout.strip()
    before = stats.snapshot(engine, [cid])[0]
    assert before.running and before.mem_limit == 256 << 20
    # 48 MiB into the container's /dev/shm (tmpfs: anonymous, charged to its cgroup).
    assert engine.exec(cid, ["dd", "if=/dev/zero", "of=/dev/shm/blob", "bs=1M",
                             "count=48"], stderr=devnull()) == 0
    after = stats.snapshot(engine, [cid])[0]
    assert after.mem_usage - before.mem_usage >= 40 << 20, (before.mem_usage, after.mem_usage)
    assert after.mem_percent == pytest.approx(after.mem_usage / (256 << 20) * 100)
    line = cli("stats", "--no-stream", "--format", "{{.MemUsage}}", cid).stdout.strip()
    used, _, limit = line.partition(" / ")
    assert limit == "256MiB" and used.endswith("MiB") and float(used[:-3]) >= 40, line


def test_pids_count_matches_the_processes(cli, engine):
    cid = cli("run", "-d", "busybox", "sh", "-c",
              "sleep 1000 & sleep 1000 & sleep 1000 & wait").stdout.strip()
    wait_for(lambda: len(engine.top(cid)) - 1 == 4)
    processes = len(engine.top(cid)) - 1
    assert processes == 4
    assert stats.snapshot(engine, [cid])[0].pids == processes
    assert cli("stats", "--no-stream", "--format", "{{.PIDs}}", cid).stdout.strip() == "4"


def test_no_stream_json_parses_with_dockers_fields(cli):
    names = [f"stj{i}-{os.getpid()}" for i in range(3)]
    ids = [cli("run", "-d", "--name", name, "busybox", "sleep", "1000").stdout.strip()
           for name in names]
    stopped = cli("create", "busybox", "true").stdout.strip()
    out = cli("stats", "--no-stream", "--format", "json").stdout
    rows = [json.loads(line) for line in out.splitlines()]
    by_name = {row["Name"]: row for row in rows}
    assert set(names) <= set(by_name)
    assert stopped[:12] not in {row["ID"] for row in rows}  # running ones only
    keys = {"Container", "Name", "ID", "CPUPerc", "MemUsage", "MemPerc", "NetIO", "BlockIO",
            "PIDs"}
    for name, cid in zip(names, ids, strict=True):
        row = by_name[name]
        assert set(row) == keys
        assert row["ID"] == cid[:12] and row["PIDs"] == "1"
        assert row["CPUPerc"].endswith("%") and " / " in row["MemUsage"]
    # Named ones, -a, --no-trunc and the default table.
    named = [json.loads(line) for line in
             cli("stats", "--no-stream", "--no-trunc", "--format", "json", names[0],
                 stopped[:12]).stdout.splitlines()]
    assert [r["Container"] for r in named] == [names[0], stopped[:12]]
    assert named[0]["ID"] == ids[0]
    assert named[1]["CPUPerc"] == "0.00%" and named[1]["MemUsage"] == "0B / 0B"
    every = cli("stats", "--no-stream", "-a", "--format", "{{.ID}}").stdout.split()
    assert stopped[:12] in every
    table = cli("stats", "--no-stream", names[1]).stdout.splitlines()
    assert table[0].split() == ["CONTAINER", "ID", "NAME", "CPU", "%", "MEM", "USAGE", "/",
                                "LIMIT", "MEM", "%", "NET", "I/O", "BLOCK", "I/O", "PIDS"]
    assert table[1].split()[:2] == [ids[1][:12], names[1]]


def test_stats_stream_redraws_rounds_when_piped(cli, base):
    cid = cli("run", "-d", "busybox", "sleep", "1000").stdout.strip()
    lines = first_lines([NSBOX, "--root", str(base / "lib"), "--runroot", str(base / "run"),
                         "stats", "--interval", "0.2", "--format", "{{.ID}} {{.PIDs}}", cid], 3)
    assert lines == [f"{cid[:12]} 1\n"] * 3  # plain lines, no terminal escapes


def test_stats_bad_input_is_one_line_and_125(cli):
    for args, needle in ((["stats", "--no-stream", "no-such-box"], "no such container"),
                         (["stats", "--interval", "0"], "--interval"),
                         (["cgroup"], "requires exactly 1"),
                         (["cgroup", "no-such-box"], "no such container")):
        proc = cli(*args, check=False)
        assert proc.returncode == 125, (args, proc)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and needle in errors[0], (args, proc.stderr)


def test_cgroup_shows_limits_with_flags_and_pids_events(cli, engine):
    cid = cli("run", "-d", "--memory", "64m", "--pids-limit", "10", "busybox",
              "sleep", "1000").stdout.strip()
    data = json.loads(cli("cgroup", "--format", "json", cid).stdout)
    assert data["Id"] == cid and data["Mode"] in ("v1", "v2", "hybrid")
    limits = {lim["Flag"]: lim for lim in data["Limits"]}
    memory, pids = limits["--memory"], limits["--pids-limit"]
    assert memory["Requested"] == "64MiB" and not memory["Default"]
    assert memory["Setting"] == str(64 << 20)
    assert memory["Files"][0].endswith(("memory.limit_in_bytes", "memory.max"))
    assert os.path.dirname(memory["Files"][0]) in data["Paths"].values()
    assert pids["Setting"] == "10" and pids["Usage"] == "1" and pids["Files"][0].endswith(
        "pids.max")
    events = {ev["Counter"]: ev["Value"] for ev in data["Events"]
              if ev["File"].endswith("pids.events")}
    assert events == {"max": 0}
    # A fork bomb meets the pids limit: the kernel counts each refused fork.
    engine.exec(cid, ["sh", "-c", "for i in $(seq 1 30); do sleep 60 >/dev/null 2>&1 & done;"
                      " true"], stderr=devnull())
    after = json.loads(cli("cgroup", "--format", "json", cid).stdout)
    refused = [ev["Value"] for ev in after["Events"] if ev["File"].endswith("pids.events")]
    assert refused and refused[0] > 0
    # The sleeps that got a pid are still there (sh itself has exited).
    usage = next(lim for lim in after["Limits"] if lim["Flag"] == "--pids-limit")["Usage"]
    assert 8 <= int(usage) <= 10, usage
    text = cli("cgroup", cid).stdout
    assert "--memory " in text and "--pids-limit" in text and "pids.events" in text


def test_cgroup_shows_an_oom_kill(cli, engine):
    from nsbox.engine import hostcaps

    if not hostcaps.swap_limit_supported():
        # --memory-swap would be dropped: with swap, the hog would fill it first.
        pytest.skip("no swap accounting here: --memory-swap cannot cap the hog's swap")
    cid = cli("run", "-d", "--memory", "16m", "--memory-swap", "16m", "busybox",
              "sleep", "1000").stdout.strip()
    code = engine.exec(cid, ["awk", "BEGIN { s = \"x\"; while (1) s = s s }"],
                       stderr=devnull())
    assert code == 137  # SIGKILL from the OOM killer
    events = {(os.path.basename(ev.file), ev.counter): ev.value for ev in view(engine, cid).events}
    kills = events.get(("memory.oom_control", "oom_kill"), events.get(("memory.events",
                                                                        "oom_kill")))
    assert kills is not None and kills >= 1, events
    limits = {lim.flag: lim for lim in view(engine, cid).limits}
    assert limits["--memory-swap"].requested == "16MiB" and not limits["--memory-swap"].default


def test_cgroup_of_a_stopped_container_lists_its_limits_only(cli, engine):
    cid = cli("create", "--memory", "32m", "busybox", "true").stdout.strip()
    v = view(engine, cid)
    assert v.paths == {} and v.events == [] and v.pid == 0
    lim = next(lim for lim in v.limits if lim.flag == "--memory")
    assert lim.requested == "32MiB" and lim.files == [] and lim.setting == ""


def test_network_io_counts_the_containers_own_interfaces(cli, engine):
    # Two --network none containers joined by a veth pair made straight into
    # their namespaces (nothing on the host's), then a ping from one to the other.
    a = cli("run", "-d", "--network", "none", "--cap-add", "NET_RAW", "busybox", "sleep",
            "1000").stdout.strip()
    b = cli("run", "-d", "--network", "none", "busybox", "sleep", "1000").stdout.strip()
    pid_a, pid_b = engine.get(a).pid, engine.get(b).pid
    name = f"st{os.getpid() % 100000}"
    subprocess.run(["ip", "link", "add", "name", f"{name}a", "netns", str(pid_a), "type", "veth",
                    "peer", "name", f"{name}b", "netns", str(pid_b)], check=True)
    for pid, dev, addr in ((pid_a, f"{name}a", "10.251.7.1/30"), (pid_b, f"{name}b",
                                                                   "10.251.7.2/30")):
        subprocess.run(["nsenter", "-t", str(pid), "-n", "ip", "addr", "add", addr, "dev", dev],
                       check=True)
        subprocess.run(["nsenter", "-t", str(pid), "-n", "ip", "link", "set", dev, "up"],
                       check=True)
    assert engine.exec(a, ["ping", "-c", "3", "-s", "1000", "-W", "5", "10.251.7.2"],
                       stdout=devnull()) == 0
    row = stats.snapshot(engine, [a])[0]
    assert set(row.sample.networks) == {f"{name}a"}  # lo is left out, as Docker does
    assert row.net_tx >= 3 * 1000 and row.net_rx >= 3 * 1000, row.sample.networks
    line = cli("stats", "--no-stream", "--format", "{{.NetIO}}", a).stdout.strip()
    rx, _, tx = line.partition(" / ")
    assert rx.endswith("kB") and tx.endswith("kB"), line


def test_stats_on_a_terminal_redraws_in_place(cli, base):
    import pty
    import select

    cid = cli("run", "-d", "busybox", "sleep", "1000").stdout.strip()
    master, slave = pty.openpty()
    proc = subprocess.Popen([NSBOX, "--root", str(base / "lib"), "--runroot", str(base / "run"),
                             "stats", "--interval", "0.2", cid], stdout=slave,
                            stderr=subprocess.PIPE)
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 30
        while seen.count(b"\x1b[2J\x1b[H") < 3 and time.monotonic() < deadline:
            if select.select([master], [], [], 1.0)[0]:
                seen += os.read(master, 65536)
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
    frames = seen.split(b"\x1b[2J\x1b[H")
    assert len(frames) >= 4 and frames[0] == b"", seen  # each round starts with a clear
    assert b"CONTAINER ID" in frames[1] and cid[:12].encode() in frames[2]


@pytest.mark.skipif(not (shutil.which("newuidmap") and shutil.which("useradd")
                         and os.path.exists("/usr/bin/python3")),
                    reason="needs uidmap, useradd and /usr/bin/python3")
def test_rootless_stats_without_a_cgroup_show_dashes_not_the_users_cgroup():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from rootless_user import made_user

    with made_user("nsbox-stats-t") as user:
        try:
            cid = user.run("run", "-d", "busybox", "sleep", "1000").stdout.strip()
            rows = [json.loads(line) for line in
                    user.run("stats", "--no-stream", "--format", "json").stdout.splitlines()]
            assert [row["ID"] for row in rows] == [cid[:12]]
            cgroup = json.loads(user.run("cgroup", "--format", "json", cid).stdout)
            if cgroup["Paths"]:
                # A delegated cgroup (cgroup v2 hosts): real numbers.
                assert rows[0]["PIDs"] == "1" and rows[0]["CPUPerc"].endswith("%")
            else:
                # None here: the init's cgroups are the user's own, whose usage is not
                # the container's, so nothing is shown for them.
                assert rows[0]["CPUPerc"] == "--" and rows[0]["PIDs"] == "--"
                assert rows[0]["MemUsage"] == "-- / --"
                rx, _, tx = rows[0]["NetIO"].partition(" / ")  # its network namespace's own
                assert rx.endswith("B") and tx.endswith("B"), rows[0]
                assert cgroup["Events"] == []
        finally:
            user.remove_containers()


def test_api_stats_stream_chains_precpu(cli, engine):
    import itertools

    import nsbox

    cid = cli("run", "-d", "busybox", "sh", "-c", "while :; do :; done").stdout.strip()
    box = nsbox.get(cid, engine=engine)
    first, second = itertools.islice(box.stats(stream=True, interval=0.5), 2)
    assert first["precpu_stats"]["cpu_usage"]["total_usage"] == 0  # the start
    assert second["precpu_stats"] == first["cpu_stats"]  # then the previous reading
    assert second["cpu_stats"]["cpu_usage"]["total_usage"] > \
        first["cpu_stats"]["cpu_usage"]["total_usage"]
    assert second["read"] > first["read"] and second["preread"] == first["read"]
    rows = nsbox.stats(cid, engine=engine)
    assert len(rows) == 1 and rows[0].id == cid and rows[0].cpu_percent > 0


def test_render_rows_formats():
    from nsbox.engine.cli.cmd_stats import DEFAULT_TABLE, render_rows

    item = {"BlockIO": "0B / 0B", "CPUPerc": "1.00%", "Container": "web", "ID": "abc",
            "MemPerc": "0.50%", "MemUsage": "1MiB / 2MiB", "Name": "web", "NetIO": "0B / 0B",
            "PIDs": "2"}
    assert render_rows("table {{.Name}}\t{{.CPUPerc}}", [item]) == \
        "NAME   CPU %\nweb    1.00%\n"
    assert render_rows("{{.Container}} {{.PIDs}}", [item, item]) == "web 2\nweb 2\n"
    assert json.loads(render_rows("json", [item])) == item
    table = render_rows(DEFAULT_TABLE, [item]).splitlines()
    assert table[0].startswith("CONTAINER ID   NAME   CPU %   MEM USAGE / LIMIT")
    assert table[1].split()[:2] == ["abc", "web"]
    assert render_rows(DEFAULT_TABLE, []) == table[0] + "\n"  # the header alone


def test_state_json_path_is_the_runtimes(tmp_path):
    # readings.cgroup_paths spells out oci.state_root (to spare the import): same place.
    from nsbox.engine.oci import state_root

    for runtime in ("/usr/sbin/runc", "nsbox-runtime", "/opt/x/crun"):
        state = Path(state_root(str(tmp_path), runtime)) / "c1" / "state.json"
        state.parent.mkdir(parents=True)
        state.write_text('{"cgroup_paths":{"pids":"/p/' + os.path.basename(runtime) + '"}}')
        assert readings.cgroup_paths(str(tmp_path), runtime, "c1", 0) == {
            "pids": "/p/" + os.path.basename(runtime)}
