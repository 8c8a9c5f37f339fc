"""Bridge networking rows of bench/engine_bench.py: nsbox's default bridge against
podman's (netavark 1.4 + aardvark-dns from Debian), inside the network namespace
the bench makes for itself (never the real host's network).

- start-up: `run --rm IMAGE true` on the default bridge (nsbox `--network
  bridge`, podman `--network bridge` = its `podman` network through netavark),
  in the same hyperfine run as the `--network none` rows;
- throughput: one server container (`nc -ll -p 5001 -e sh -c 'cat >/dev/null'`)
  and a client container on the same bridge sending 200 MB (`dd if=/dev/zero
  bs=1M count=200 | nc SERVER 5001`), timed by busybox `time` inside the
  client, so container start-up is not counted; the median of BENCH_NET_REPEAT
  (3) transfers per engine.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

MB = int(os.environ.get("BENCH_NET_MB", "200"))
REPEAT = int(os.environ.get("BENCH_NET_REPEAT", "3"))
PORT = 5001
SERVER_CMD = ["nc", "-ll", "-p", str(PORT), "-e", "sh", "-c", "cat >/dev/null"]


def setup_netns() -> str:
    """Called first thing inside the bench's own network namespace: loopback up."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    return ("the whole run happens in a network namespace of its own (`unshare --net`): "
            "nsbox's nsbox0 bridge, veths and nft table and podman's podman0, veths and "
            "iptables rules exist only there, and its `net.ipv4.ip_forward` is that "
            "namespace's")


def netavark_env(pm, tree: Path) -> dict[str, str]:
    """pm.env with a containers.conf whose network backend is netavark (Debian's
    /usr/lib/podman/netavark), its own network config directory under TREE."""
    conf = Path(pm.env["CONTAINERS_CONF"])
    text = conf.read_text()
    text = re.sub(r'network_backend = "cni"', 'network_backend = "netavark"', text)
    text = re.sub(r'network_config_dir = "[^"]*"', f'network_config_dir = "{tree}/netavark"',
                  text)
    text = re.sub(r'netns = "none"', 'netns = "bridge"', text)
    (tree / "netavark").mkdir(parents=True, exist_ok=True)
    out = conf.with_name("containers-netavark.conf")
    out.write_text(text)
    return dict(pm.env, CONTAINERS_CONF=str(out))


def startup_commands(ns, pm, podman_argv, image: str, net_env: dict[str, str]
                     ) -> dict[str, list[str]]:
    """The bridge rows for the hyperfine run (podman's through `env` for its conf)."""
    cg = ["--cgroup-parent", pm.cgroup_parent] if pm.cgroup_parent else []
    return {
        "nsbox, default bridge": ns.argv("run", "--rm", "--network", "bridge", image, "true"),
        "podman (runc), bridge (netavark)": [
            "env", f"CONTAINERS_CONF={net_env['CONTAINERS_CONF']}",
            *podman_argv("run", "--rm", "--network", "bridge", *cg, image, "true")],
    }


@dataclass
class Throughput:
    engine: str
    seconds: list[float]

    @property
    def mb_per_s(self) -> float:
        return MB / statistics.median(self.seconds)


_REAL = re.compile(r"real\s+(?:(\d+)m\s*)?([\d.]+)s")


def _parse_real(text: str) -> float:
    match = _REAL.search(text)
    if not match:
        raise RuntimeError(f"no `time` output in: {text!r}")
    return int(match.group(1) or 0) * 60 + float(match.group(2))


def _client_script(ip: str) -> str:
    return (f"time sh -c 'dd if=/dev/zero bs=1M count={MB} 2>/dev/null | nc {ip} {PORT}'")


def _run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> str:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout + proc.stderr


def _measure(engine: str, run_argv, ip: str) -> Throughput:
    seconds = []
    for _ in range(REPEAT):
        out = run_argv("run", "--rm", "busybox-client", "sh", "-c", _client_script(ip))
        seconds.append(_parse_real(out))
    return Throughput(engine, seconds)


def throughput(ns, pm, podman_argv, image: str, net_env: dict[str, str]
               ) -> list[Throughput]:
    results = []
    # nsbox: both containers on the default bridge.
    server = ns.run("run", "-d", "--network", "bridge", image, *SERVER_CMD).strip()
    try:
        ip = json.loads(ns.run("inspect", server))[0]["NetworkSettings"]["Networks"][
            "bridge"]["IPAddress"]
        time.sleep(0.3)

        def nsbox_run(*args: str) -> str:
            args = tuple(image if a == "busybox-client" else a for a in args)
            return _run(ns.argv(args[0], args[1], "--network", "bridge", *args[2:]))

        results.append(_measure("nsbox", nsbox_run, ip))
    finally:
        ns.run("rm", "-f", server)
    # podman: both on its default `podman` network (netavark).
    cg = ["--cgroup-parent", pm.cgroup_parent] if pm.cgroup_parent else []
    server = subprocess.run(
        podman_argv("run", "-d", "--network", "bridge", *cg, image, *SERVER_CMD), env=net_env,
        capture_output=True, text=True, check=True, timeout=120).stdout.strip()
    try:
        ip = json.loads(subprocess.run(
            podman_argv("inspect", server), env=net_env, capture_output=True, text=True,
            check=True, timeout=60).stdout)[0]["NetworkSettings"]["Networks"]["podman"][
            "IPAddress"]
        time.sleep(0.3)

        def podman_run(*args: str) -> str:
            args = tuple(image if a == "busybox-client" else a for a in args)
            return _run(podman_argv(args[0], args[1], "--network", "bridge", *cg, *args[2:]),
                        env=net_env)

        results.append(_measure("podman (netavark)", podman_run, ip))
    finally:
        subprocess.run(podman_argv("rm", "-f", "--time", "0", server), env=net_env,
                       capture_output=True, timeout=120)
    return results


def report_lines(results: list[Throughput]) -> list[str]:
    lines = [
        "## 3. Container-to-container TCP over the default bridge",
        "",
        f"A server container (`{shlex.join(SERVER_CMD)}`) and a client container on the "
        f"same bridge (nsbox `bridge`/nsbox0, podman `podman`/podman0 via netavark); the "
        f"client sends {MB} MB: `dd if=/dev/zero bs=1M count={MB} | nc SERVER {PORT}`, timed "
        "by busybox `time` inside the client (container start-up not counted); "
        f"{REPEAT} transfers per engine, median. busybox nc moves data in small reads "
        "and writes, so the absolute rate is nc's, not the bridge's limit; the comparison "
        "is the point.",
        "",
        "| engine | median s | all runs s | MB/s (median) |",
        "|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r.engine} | **{statistics.median(r.seconds):.2f}** | "
                     f"{', '.join(f'{s:.2f}' for s in r.seconds)} | {r.mb_per_s:.0f} |")
    if len(results) == 2:
        lines += ["", f"nsbox / podman throughput: **{results[0].mb_per_s / results[1].mb_per_s:.2f}×**."]
    return lines + [""]


# ------------------------------------------------------------------ work per run
CPU_RUNS = int(os.environ.get("BENCH_CPU_RUNS", "20"))


@dataclass
class CpuCount:
    name: str
    user_ms: float
    sys_ms: float


def _cpuacct_dir() -> Path | None:
    """A v1 cpuacct cgroup directory of this process's own (hybrid or v1 hosts), or None."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "cpuacct" in controllers.split(","):
            for mount in ("/sys/fs/cgroup/cpuacct", "/sys/fs/cgroup/cpu,cpuacct"):
                base = Path(mount + path)
                if (base / "cpuacct.usage_user").exists():
                    return base
    return None


def cpu_per_run(commands: dict[str, list[str]], env: dict[str, str]) -> list[CpuCount]:
    """The CPU of every process of a run (the engine, its monitor and helpers, the
    runtime, the wiring child, the container), from a cpuacct cgroup below our own that
    the runs start in: CPU_RUNS runs of each command, per run.  On a loaded machine
    this moves much less than wall time.  [] without a v1 cpuacct hierarchy."""
    base = _cpuacct_dir()
    if base is None:
        return []
    group = base / f"nsbox-bench-cpu-{os.getpid()}"
    group.mkdir()
    out = []
    try:
        for name, argv in commands.items():
            before = [int((group / f"cpuacct.usage_{k}").read_text()) for k in ("user", "sys")]
            script = (f"echo $$ > {group}/cgroup.procs; i=0; while [ $i -lt {CPU_RUNS} ]; do "
                      f"{shlex.join(argv)} >/dev/null || exit 1; i=$((i+1)); done")
            subprocess.run(["sh", "-c", script], env=env, check=True, timeout=600,
                           stdin=subprocess.DEVNULL)
            time.sleep(0.5)  # the last run's monitor exits just after its starter
            after = [int((group / f"cpuacct.usage_{k}").read_text()) for k in ("user", "sys")]
            out.append(CpuCount(name, (after[0] - before[0]) / CPU_RUNS / 1e6,
                                (after[1] - before[1]) / CPU_RUNS / 1e6))
    finally:
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)
    return out


def cpu_lines(counts: list[CpuCount]) -> list[str]:
    if not counts:
        return []
    lines = ["### Work per run (CPU of all of nsbox's processes)", "",
             f"{CPU_RUNS} runs of each in a cpuacct cgroup of their own (every process of a "
             "run: the CLI, the monitor and its helpers, the runtime, the bridge's wiring "
             "child, the container), per run; the wall times above swing with the "
             "machine's load, this much less.  podman is not counted this way (conmon "
             "and its containers leave the starter's cgroup).", "",
             "| nsbox | user ms | sys ms | total ms |", "|---|---|---|---|"]
    for c in counts:
        lines.append(f"| {c.name} | {c.user_ms:.1f} | {c.sys_ms:.1f} | "
                     f"**{c.user_ms + c.sys_ms:.1f}** |")
    if len(counts) == 2:
        lines += ["", f"The bridge's work over `--network none`: "
                  f"**{sum((counts[0].user_ms, counts[0].sys_ms)) - sum((counts[1].user_ms, counts[1].sys_ms)):.1f} ms** of CPU per run."]
    return lines + [""]


def cleanup() -> None:
    """Before the podman world's own teardown (which reports any podman0 or
    /run/netns as made on the host): podman's bridge and the /run/netns its
    netavark containers used, both the bench's own (its network namespace, its
    private /run tmpfs)."""
    subprocess.run(["ip", "link", "delete", "podman0"], capture_output=True, check=False)
    netns = Path("/run/netns")
    if netns.is_dir() and not any(netns.iterdir()):
        for _ in range(5):
            if subprocess.run(["umount", str(netns)], capture_output=True).returncode:
                break
        netns.rmdir()
