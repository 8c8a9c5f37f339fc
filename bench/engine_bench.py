"""Benchmark the nsbox engine against podman; writes docs/benchmarks-engine.md.

Two measurements, in one run:

1. Start-up: `nsbox run --rm IMAGE true` (nsbox-runtime, also with seccomp=unconfined, and runc) against
   `podman --runtime runc run --rm --network none IMAGE true`, timed with hyperfine.
2. Host memory per idle detached container: 50 `sleep 3600` containers per
   engine, and the PSS/RSS of every process outside the containers that exists
   for one container (nsbox's monitor, podman's conmon).
3. Bridge networking (bench/engine_bench_net.py): `run --rm` on the default
   bridge (nsbox's nsbox0, podman's netavark podman0) in the same hyperfine run,
   and container-to-container TCP throughput over it.

Run as root: `make bench-engine`, or `/work/main/.venv/bin/python bench/engine_bench.py`.
The whole run happens in a private mount namespace and a network namespace of
its own (see `_enter_namespace`): the host's network is never touched.

Settings (environment): BENCH_WARMUP (3), BENCH_RUNS (20), BENCH_IDLE (50),
BENCH_OUT (docs/benchmarks-engine.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import clients  # noqa: E402  (tests/clients.py: the isolated podman world)
import engine_bench_net as netbench  # noqa: E402  (bench/: the bridge rows)
import hostclean  # noqa: E402  (tests/hostclean.py: what a client left on the host)

from nsbox.runtime import syscalls  # noqa: E402

log = logging.getLogger("engine_bench")

NS_ENV = "NSBOX_ENGINE_BENCH_IN_MOUNTNS"
IMAGE = "localhost/busybox:bench"
NSBOX = REPO / ".venv" / "bin" / "nsbox"
UNIFIED = Path("/sys/fs/cgroup/unified")
RUNC = shutil.which("runc") or "runc"


@dataclass
class Notes:
    """What the report says about how the run was set up, and what went wrong."""

    setup: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def problem_lines(self) -> list[str]:
        """The report's closing section."""
        return ["## Problems found", "",
                *([f"- {p}" for p in self.problems] or ["- none in this run"]), ""]


# --------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------

def _enter_namespace() -> None:
    """Re-exec the script in a private mount and network namespace, unless already there."""
    if os.environ.get(NS_ENV) == "1":
        return
    env = dict(os.environ, **{NS_ENV: "1"})
    os.execvpe("unshare", ["unshare", "--mount", "--net", "--propagation", "private",
                           sys.executable, *sys.argv], env)


def _prepare_namespace(notes: Notes) -> None:
    # runc keeps its state in /run/runc when podman gives it no --root.
    syscalls.mount("tmpfs", "/run", "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV, "mode=0755")
    notes.setup.append("the whole run happens in a private mount namespace with a private tmpfs "
                       "on `/run` (runc's default state directory `/run/runc` under podman)")
    notes.setup.append(netbench.setup_netns())


@contextlib.contextmanager
def scratch_tree(prefix: str, notes: Notes) -> Iterator[Path]:
    """A work tree under /tmp, removed at the end; a mount still below it is a problem."""
    work = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield work
    finally:
        leftovers = hostclean.unmount_all_under(work)
        if leftovers:
            notes.problems.append(f"mounts left under the nsbox root: {leftovers}")
        shutil.rmtree(work, ignore_errors=True)


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.strip().splitlines()[0] if out.strip() else "?"


def machine_notes() -> list[str]:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return [
        f"kernel {platform.release()}, {os.cpu_count()} CPUs ({cpu}), {mem_kib / 1048576:.1f} GiB RAM",
        f"Python {platform.python_version()} ({sys.executable})",
        _version(["podman", "--version"]),
        _version(["crun", "--version"]),
        _version(["runc", "--version"]),
        _version(["conmon", "--version"]),
        _version(["hyperfine", "--version"]),
    ]


# --------------------------------------------------------------------------
# Engines
# --------------------------------------------------------------------------

@dataclass
class Nsbox:
    root: Path
    runroot: Path

    def argv(self, *args: str, runtime: str | None = None) -> list[str]:
        argv = [str(NSBOX), "--root", str(self.root), "--runroot", str(self.runroot)]
        if runtime:
            argv += ["--runtime", runtime]
        return argv + list(args)

    def run(self, *args: str, timeout: float = 60) -> str:
        proc = subprocess.run(self.argv(*args), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RuntimeError(f"{self.argv(*args)} exited {proc.returncode}: {proc.stderr}")
        return proc.stdout


def podman_argv(*args: str) -> list[str]:
    # runc, not Debian 12's default crun: crun 1.8.1 refuses hybrid hosts outright
    # ("cgroups in hybrid mode not supported"), even with --cgroups=disabled.
    return ["podman", "--runtime", RUNC, *args]


def podman_container_args(pm: clients.Podman) -> list[str]:
    """`run` options: no network, cgroups below our own cgroup (like nsbox's)."""
    assert pm.cgroup_parent, "podman_world was made without cgroups"
    return ["--network", "none", "--cgroup-parent", pm.cgroup_parent]


def podman(pm: clients.Podman, *args: str, timeout: float = 60) -> str:
    proc = subprocess.run(podman_argv(*args), env=pm.env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"podman {args} exited {proc.returncode}: {proc.stderr}")
    return proc.stdout


def import_busybox(ns: Nsbox, pm: clients.Podman, work: Path) -> None:
    """Import one busybox tar (tests/clients.py's rootfs) as IMAGE into both engines."""
    rootfs = clients.build_busybox_rootfs(work / "rootfs")
    layer = clients.tar_rootfs(rootfs, work / "rootfs.tar")
    ns.run("import", "-c", 'CMD ["sh"]', str(layer), IMAGE)
    pm.run_with_private_var_lib("import", "--change", 'CMD ["sh"]', str(layer), IMAGE)


def hyperfine_argv(commands: dict[str, list[str]], warmup: int, runs: int,
                   export: Path) -> list[str]:
    """One hyperfine invocation timing every named command, results as JSON in EXPORT."""
    argv = ["hyperfine", "--shell=none", "--warmup", str(warmup), "--runs", str(runs),
            "--export-json", str(export)]
    for name, cmd in commands.items():
        argv += ["--command-name", name, shlex.join(cmd)]
    return argv


# --------------------------------------------------------------------------
# 1. start-up time
# --------------------------------------------------------------------------

@dataclass
class Timing:
    name: str
    command: str
    median: float
    mean: float
    stddev: float
    minimum: float
    maximum: float


def time_startup(ns: Nsbox, pm: clients.Podman, work: Path, warmup: int,
                 runs: int, net_env: dict[str, str], notes: Notes) -> list[Timing]:
    commands = {
        "nsbox (nsbox-runtime)": ns.argv("run", "--rm", "--network", "none", IMAGE, "true"),
        "nsbox, seccomp=unconfined": ns.argv("run", "--rm", "--network", "none",
                                             "--security-opt", "seccomp=unconfined", IMAGE,
                                             "true"),
        "nsbox --runtime runc": ns.argv("run", "--rm", "--network", "none", IMAGE, "true",
                                        runtime=RUNC),
        "podman (runc)": podman_argv("run", "--rm", *podman_container_args(pm), IMAGE, "true"),
    }
    bridge_rows = netbench.startup_commands(ns, pm, podman_argv, IMAGE, net_env)
    commands.update(bridge_rows)
    for name, cmd in list(commands.items()):
        # One plain run first, so a failure shows its message instead of hyperfine's.
        proc = subprocess.run(cmd, env=pm.env, capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
        if proc.returncode != 0 and name in bridge_rows:
            notes.problems.append(f"{name} left out: `{shlex.join(cmd)}` exited "
                                  f"{proc.returncode}: {proc.stderr.strip()[-300:]}")
            del commands[name]
        elif proc.returncode != 0:
            raise RuntimeError(f"{name}: {shlex.join(cmd)} exited {proc.returncode}: "
                               f"{proc.stderr.strip()}")
    export = work / "startup.json"
    argv = hyperfine_argv(commands, warmup, runs, export)
    log.info("hyperfine: %d commands x %d runs", len(commands), runs)
    subprocess.run(argv, env=pm.env, check=True, stdin=subprocess.DEVNULL)
    results = json.loads(export.read_text())["results"]
    return [Timing(r["command"], shlex.join(commands[r["command"]]), r["median"], r["mean"],
                   r["stddev"], r["min"], r["max"]) for r in results]


# --------------------------------------------------------------------------
# 2. memory per idle container
# --------------------------------------------------------------------------

@dataclass
class MemoryResult:
    engine: str
    containers: int
    processes: int
    pss_kib: list[int]   # per container: summed over its outside processes
    rss_kib: list[int]
    process_names: list[str]


def _smaps_rollup(pid: int) -> tuple[int, int]:
    pss = rss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
    return pss, rss


def outside_processes(container_id: str) -> list[int]:
    """Live processes in our pid namespace whose command line names the container.

    Processes inside the container are in another pid namespace and are left
    out: only the engine's per-container overhead on the host counts.
    """
    own_pidns = os.readlink("/proc/self/ns/pid")
    needle = container_id.encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle not in f.read():
                    continue
            if os.readlink(f"/proc/{entry}/ns/pid") != own_pidns:
                continue
            with open(f"/proc/{entry}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
        except OSError:
            continue
        found.append(int(entry))
    return found


def measure_idle(engine: str, ids: list[str]) -> MemoryResult:
    pss_list, rss_list, names = [], [], set()
    processes = 0
    for container_id in ids:
        pids = outside_processes(container_id)
        if not pids:
            raise RuntimeError(f"{engine}: no host process found for container {container_id}")
        pss = rss = 0
        for pid in pids:
            one_pss, one_rss = _smaps_rollup(pid)
            pss, rss = pss + one_pss, rss + one_rss
            names.add(Path(os.readlink(f"/proc/{pid}/exe")).name)
        processes += len(pids)
        pss_list.append(pss)
        rss_list.append(rss)
    return MemoryResult(engine, len(ids), processes, pss_list, rss_list, sorted(names))


def start_idle_nsbox(ns: Nsbox, count: int) -> list[str]:
    return [ns.run("run", "-d", "--network", "none", "--name", f"bench-idle-{i}", IMAGE,
                   "sleep", "3600").strip()
            for i in range(count)]


def start_idle_podman(pm: clients.Podman, count: int) -> list[str]:
    return [podman(pm, "run", "-d", "--name", f"bench-idle-{i}", *podman_container_args(pm),
                   IMAGE, "sleep", "3600").strip()
            for i in range(count)]


@contextlib.contextmanager
def idle_containers(ns: Nsbox, pm: clients.Podman, count: int, work: Path,
                    notes: Notes) -> Iterator[tuple[list[str], list[str]]]:
    """COUNT detached `sleep` containers per engine (nsbox ids, podman ids), removed at
    the end and then checked for leftovers."""
    nsbox_ids: list[str] = []
    podman_ids: list[str] = []
    try:
        log.info("starting %d idle nsbox containers", count)
        nsbox_ids = start_idle_nsbox(ns, count)
        log.info("starting %d idle podman containers", count)
        podman_ids = start_idle_podman(pm, count)
        yield nsbox_ids, podman_ids
    finally:
        if nsbox_ids:
            ns.run("rm", "-f", *nsbox_ids, timeout=300)
        if podman_ids:
            podman(pm, "rm", "-f", "--time", "0", *podman_ids, timeout=300)
    check_clean("nsbox", nsbox_ids, work, notes)
    check_clean("podman", podman_ids, pm.tree, notes)


def find_cgroups(container_ids: list[str]) -> list[str]:
    """Cgroup directories (any hierarchy) whose name contains one of the ids."""
    found = []
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        if not hierarchy.is_dir() or hierarchy.is_symlink() or hierarchy == UNIFIED:
            continue
        for dirpath, dirnames, _ in os.walk(hierarchy):
            for name in dirnames:
                if any(cid in name for cid in container_ids):
                    found.append(os.path.join(dirpath, name))
    return found


def check_clean(engine: str, ids: list[str], tree: Path, notes: Notes) -> None:
    # conmon runs `podman container cleanup` after rm returns; give such
    # stragglers a few seconds before calling them leftovers.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (
            any(outside_processes(cid) for cid in ids) or hostclean.pids_using_tree(tree)):
        time.sleep(0.2)
    leftovers = []
    for container_id in ids:
        if pids := outside_processes(container_id):
            leftovers.append(f"processes {pids} for {container_id[:12]}")
    if pids := hostclean.pids_using_tree(tree):
        leftovers.append(f"processes using {tree}: {pids}")
    if mounts := [m for m in hostclean.mountpoints_under(tree) if "/containers/" in m or
                  "/overlay" in m]:
        leftovers.append(f"mounts {mounts[:3]}... ({len(mounts)})")
    if cgroups := find_cgroups(ids):
        leftovers.append(f"cgroups {cgroups[:3]} ({len(cgroups)})")
    if leftovers:
        notes.problems.append(f"{engine}: after rm -f: " + "; ".join(leftovers))
    else:
        notes.setup.append(f"{engine}: after `rm -f` of all {len(ids)} idle containers, no "
                           "process, mount or cgroup named after them was left")


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------

def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def _mib(kib: float) -> str:
    return f"{kib / 1024:.2f}"


def write_report(out: Path, timings: list[Timing], memory: list[MemoryResult],
                 notes: Notes, warmup: int, runs: int, started: str, wall: float,
                 net: list | None = None, cpu: list | None = None) -> None:
    by_name = {t.name: t for t in timings}
    podman_t = by_name["podman (runc)"]
    lines = [
        "# Engine benchmarks: nsbox vs podman",
        "",
        f"Generated by `bench/engine_bench.py` (`make bench-engine`) on {started}; "
        f"the run took {wall:.0f} s. Numbers are from that one run.",
        "",
        "## Machine",
        "",
        *[f"- {note}" for note in machine_notes()],
        "",
        "## Set-up",
        "",
        "- One busybox image for both engines: a rootfs of the host's static `/bin/busybox` "
        "with its applets as symlinks (`tests/clients.py: build_busybox_rootfs`), tarred and "
        f"imported as `{IMAGE}` with `nsbox import` and `podman import`.",
        "- nsbox: a private `--root` and `--runroot` under a temporary directory. Containers "
        "get a cgroup `nsbox-<id>` below the caller's own cgroup (the engine always does).",
        "- podman: `tests/clients.py: podman_world` - its own containers.conf / storage.conf / "
        "registries.conf in a temporary tree (overlay storage, cgroupfs manager, file "
        "events/locks), `--network none`, OCI runtime **runc** (`--runtime runc`: Debian "
        "12's default crun 1.8.1 refuses this hybrid-cgroup host with \"cgroups in hybrid "
        "mode not supported\", even with `--cgroups=disabled`), and "
        "**`--cgroup-parent <our own cgroup>/nsboxtest-<tree>`** so that, like nsbox, every "
        "container gets a cgroup below the caller's own cgroup "
        "(`NSBOX_TEST_CLIENT_CGROUPS=1` in tests/clients.py terms).",
        *[f"- {note}" for note in notes.setup],
        "",
        "## 1. `run --rm busybox true`",
        "",
        f"hyperfine `--shell=none --warmup {warmup} --runs {runs}`, all commands in "
        "one hyperfine invocation.",
        "",
        "| engine | median ms | mean ± σ ms | min ms | max ms | median / podman |",
        "|---|---|---|---|---|---|",
    ]
    for t in timings:
        lines.append(f"| {t.name} | **{_ms(t.median)}** | {_ms(t.mean)} ± {_ms(t.stddev)} | "
                     f"{_ms(t.minimum)} | {_ms(t.maximum)} | {t.median / podman_t.median:.2f}× |")
    ratio = by_name["nsbox (nsbox-runtime)"].median / podman_t.median
    verdict = "meets" if ratio <= 0.5 else "misses"
    lines += [
        "",
        f"nsbox (nsbox-runtime) / podman = **{ratio:.2f}×** — {verdict} the target of ≤ 0.5×.",
        "",
        "The default security profile (seccomp allowlist, compiled once and cached) costs "
        f"**{_ms(by_name['nsbox (nsbox-runtime)'].median - by_name['nsbox, seccomp=unconfined'].median)} ms** "
        "at the median over `--security-opt seccomp=unconfined` (target: at most 10 ms).",
        "",
        *_bridge_cost_lines(by_name),
        *netbench.cpu_lines(cpu or []),
        "Exact commands (podman's run with the environment of the podman world, "
        "`CONTAINERS_CONF` etc. pointing into the temporary tree):",
        "",
        "```",
        *[t.command for t in timings],
        "```",
        "",
        "## 2. Host memory per idle detached container",
        "",
        f"{memory[0].containers} detached `sleep 3600` containers per engine, started one "
        "after the other; then, per container, the `Pss` and `Rss` from "
        "`/proc/PID/smaps_rollup` summed over every process in the host's pid namespace "
        "whose command line contains the container's full id (the processes inside the "
        "container are in their own pid namespace and not counted). For nsbox that is the "
        "monitor (`nsbox-monitor-loop`, the C loop shipped with the package), for podman `conmon`.",
        "",
        "| engine | processes / container | process | PSS mean KiB (MiB) | PSS min–max KiB "
        "| RSS mean KiB (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for m in memory:
        pss, rss = statistics.mean(m.pss_kib), statistics.mean(m.rss_kib)
        lines.append(f"| {m.engine} | {m.processes / m.containers:.1f} | "
                     f"{', '.join(m.process_names)} | **{pss:.0f}** ({_mib(pss)}) | "
                     f"{min(m.pss_kib)}–{max(m.pss_kib)} | {rss:.0f} ({_mib(rss)}) |")
    nsbox_m, podman_m = memory
    pss_ratio = statistics.mean(nsbox_m.pss_kib) / statistics.mean(podman_m.pss_kib)
    rss_ratio = statistics.mean(nsbox_m.rss_kib) / statistics.mean(podman_m.rss_kib)
    lines += [
        "",
        f"nsbox / podman: PSS **{pss_ratio:.2f}×**, RSS {rss_ratio:.2f}× "
        f"({'meets' if pss_ratio <= 1 else 'misses'} the target: nsbox ≤ conmon's PSS).",
        "",
        "PSS divides shared pages among the processes that map them, so it falls as more "
        "identical monitors run; RSS counts every mapped page in full.",
        "",
        "Commands:",
        "",
        "```",
        f"nsbox --root R --runroot RR run -d --network none --name bench-idle-N {IMAGE} "
        "sleep 3600   # x50",
        "podman --runtime runc run -d --name bench-idle-N --network none "
        f"--cgroup-parent CGPARENT {IMAGE} sleep 3600   # x50",
        "nsbox --root R --runroot RR rm -f ID...;  podman rm -f --time 0 ID...",
        "```",
        "",
        *netbench.report_lines(net or []),
        *notes.problem_lines(),
    ]
    out.write_text("\n".join(lines))
    log.info("wrote %s", out)


def _bridge_cost_lines(by_name: dict[str, Timing]) -> list[str]:
    pairs = [("nsbox", "nsbox, default bridge", "nsbox (nsbox-runtime)"),
             ("podman", "podman (runc), bridge (netavark)", "podman (runc)")]
    costs = [f"{who} {_ms(by_name[b].median - by_name[n].median)} ms"
             for who, b, n in pairs if b in by_name and n in by_name]
    if not costs:
        return []
    return ["The default bridge (address, veth, routes, firewall, /etc/hosts and resolv.conf; "
            "undone at `--rm`) over `--network none`, at the median: "
            + ", ".join(costs) + ".", ""]


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

def main() -> int:
    logging.basicConfig(level=logging.INFO, format="engine-bench: %(message)s")
    if os.geteuid() != 0:
        log.error("run as root")
        return 2
    _enter_namespace()
    warmup = int(os.environ.get("BENCH_WARMUP", "3"))
    runs = int(os.environ.get("BENCH_RUNS", "20"))
    idle = int(os.environ.get("BENCH_IDLE", "50"))
    out = Path(os.environ.get("BENCH_OUT", REPO / "docs" / "benchmarks-engine.md"))
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t0 = time.monotonic()
    notes = Notes()
    _prepare_namespace(notes)

    with scratch_tree("nsbox-eb-", notes) as work:
        ns = Nsbox(work / "nsbox-root", work / "nsbox-run")
        os.environ[clients.CGROUPS_ENV] = "1"
        with clients.podman_world(Path(RUNC)) as pm:
            # podman_world imported clients.IMAGE_REF; give both engines the same tar.
            import_busybox(ns, pm, work)

            net_env = netbench.netavark_env(pm, work)
            timings = time_startup(ns, pm, work, warmup, runs, net_env, notes)
            try:
                cpu = netbench.cpu_per_run(
                    {"default bridge": ns.argv("run", "--rm", "--network", "bridge", IMAGE,
                                               "true"),
                     "`--network none`": ns.argv("run", "--rm", "--network", "none", IMAGE,
                                                 "true")}, pm.env)
            except (OSError, subprocess.SubprocessError) as err:
                cpu = []
                notes.problems.append(f"work per run not measured: {err}")
            try:
                net = netbench.throughput(ns, pm, podman_argv, IMAGE, net_env)
            except (RuntimeError, subprocess.SubprocessError, KeyError, ValueError) as err:
                net = []
                notes.problems.append(f"throughput not measured: {err}")

            with idle_containers(ns, pm, idle, work, notes) as (nsbox_ids, podman_ids):
                time.sleep(2)  # let every monitor reach its idle loop
                memory = [measure_idle("nsbox", nsbox_ids), measure_idle("podman", podman_ids)]
            netbench.cleanup()
    write_report(out, timings, memory, notes, warmup, runs, started, time.monotonic() - t0,
                 net, cpu)
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
