"""What does the guard cost, and how fast does it see?  (docs/guard.md; results in
bench/results/guard.md)

1. `nsbox run --rm busybox true`: guard=off vs guard=default with a guard already
   running (a watched idle container keeps it: the steady state), and guard=default
   cold (each run starts and stops the guard process).  hyperfine, one run.
2. The issue's target, a system-call-heavy workload in a container, unwatched vs
   watched, with the guard running for both (a watched idle container keeps
   it): bench/guard_loop.c (open/close/stat of /etc/passwd, static binary
   bind-mounted in), the ns per iteration it prints, runs interleaved; plus
   `dd bs=1` and a loop of `cat` through hyperfine.
3. What the guard costs the rest of the host (processes nobody watches):
   getpid, the open/close/stat loop and `dd bs=1` on the host, rounds with
   the guard stopped and running interleaved.
4. Events: a watched container writes below /etc in a tight shell loop (one
   open for writing per iteration); `nsbox guard watch` reads them: events/s,
   drops (guard status), and detection latency (kernel timestamp of the system
   call's end -> the guard handling it, CLOCK_MONOTONIC both), median and p99.
5. The openat program's own time per run (the kernel's BPF run-time statistics,
   enabled through bpf(BPF_ENABLE_STATS) for the bench only), unwatched vs
   watched: the part of 2. that is the guard's, without the workload's noise.

usage: .venv/bin/python bench/guard_bench.py   (root; RUNS, WARMUP, LOOPS, ROUNDS, ITERS
from env; gcc for guard_loop.c)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NSBOX = os.path.join(REPO, ".venv", "bin", "nsbox")
RUNS = int(os.environ.get("RUNS", "10"))
WARMUP = int(os.environ.get("WARMUP", "2"))
LOOPS = int(os.environ.get("LOOPS", "20000"))
ROUNDS = int(os.environ.get("ROUNDS", "5"))
ITERS = int(os.environ.get("ITERS", "200000"))


def _median_row(label: str, values: list[float], base: list[float] | None = None) -> str:
    row = f"- {label}: median {statistics.median(values):.1f} ns ({len(values)} runs)"
    if base:
        row += f", {statistics.median(base) / statistics.median(values):.3f}x as fast"
    return row


def workload_rows(run, loop_dir: str) -> list[str]:  # noqa: ANN001
    """guard_loop in a container, unwatched and watched, interleaved (the guard is running)."""
    out: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(ROUNDS):
        for watched in (False, True):
            opt = ["--security-opt", "guard=default"] if watched else []
            proc = run("run", "--rm", *opt, "-v", f"{loop_dir}:/b:ro", "busybox",
                       "/b/guard_loop", "files", str(ITERS))
            out[watched].append(float(proc.stdout.split()[-1]))
    return ["## open/close/stat of /etc/passwd in a container (ns per iteration)", "",
            _median_row("unwatched", out[False]),
            _median_row("watched (guard=default)", out[True], out[False]), ""]


class BpfRunTimeStats:
    """The kernel's run-time statistics of BPF programs (run_cnt, run_time_ns), on while
    this object holds the fd of bpf(BPF_ENABLE_STATS): no sysctl is changed, and they
    stop when the fd is closed.  They time the programs alone, so they tell what the
    guard's programs cost per call without the noise of a whole workload's wall time
    (and add ~20 ns a run of their own: the clock is read around each run)."""

    BPF_ENABLE_STATS, BPF_STATS_RUN_TIME, NR_BPF = 32, 0, 321

    def __enter__(self) -> BpfRunTimeStats:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        attr = (ctypes.c_uint8 * 128)()  # union bpf_attr: enable_stats.type = RUN_TIME (0)
        self.fd = libc.syscall(self.NR_BPF, self.BPF_ENABLE_STATS, ctypes.byref(attr), 128)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "bpf(BPF_ENABLE_STATS)")
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    @staticmethod
    def read(name: str) -> tuple[int, int]:
        """(run_time_ns, run_cnt) of the loaded program NAME (bpftool)."""
        progs = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], check=True,
                                          capture_output=True, text=True).stdout)
        for prog in progs:
            if prog.get("name") == name:
                return prog.get("run_time_ns", 0), prog.get("run_cnt", 0)
        raise LookupError(f"no BPF program {name} is loaded")


def program_rows(run, loop_dir: str) -> list[str]:  # noqa: ANN001
    """The openat exit program's time per run while guard_loop runs unwatched and watched."""
    out: dict[bool, list[float]] = {False: [], True: []}
    with BpfRunTimeStats() as stats:
        for _ in range(ROUNDS):
            for watched in (False, True):
                opt = ["--security-opt", "guard=default"] if watched else []
                t0, n0 = stats.read("guard_x_openat")
                run("run", "--rm", *opt, "-v", f"{loop_dir}:/b:ro", "busybox",
                    "/b/guard_loop", "files", str(ITERS))
                t1, n1 = stats.read("guard_x_openat")
                out[watched].append((t1 - t0) / max(n1 - n0, 1))
    return ["## the openat exit program per run, kernel BPF run-time stats (ns)", "",
            "(every openat of the host runs it; during the unwatched rounds most runs are "
            "guard_loop's, stopping at the cgroup check)", "",
            f"- unwatched: median {statistics.median(out[False]):.1f} ns",
            f"- watched (guard=default, /etc/passwd read: path built and matched): median "
            f"{statistics.median(out[True]):.1f} ns", ""]


def _host_sample(loop: str) -> dict[str, float]:
    def ns(*args: str) -> float:
        return float(subprocess.run([loop, *args], check=True, capture_output=True,
                                    text=True).stdout)
    t0 = time.monotonic()
    subprocess.run(["dd", "if=/dev/zero", "of=/dev/null", "bs=1", "count=300000"], check=True,
                   capture_output=True)
    dd = (time.monotonic() - t0) * 1e9 / 300000
    return {"getpid": ns("getpid", str(ITERS * 10)), "open/close/stat": ns("files", str(ITERS)),
            "dd bs=1 (per byte)": dd}


def host_rows(run, loop: str) -> list[str]:  # noqa: ANN001
    """The host's own processes with the guard stopped and running, rounds interleaved."""
    out: dict[bool, list[dict]] = {False: [], True: []}
    for _ in range(ROUNDS):
        for guarded in (False, True):
            if guarded:
                run("run", "-d", "--name", "hostcost", "--security-opt", "guard=default",
                    "busybox", "sleep", "100000")
            out[guarded].append(_host_sample(loop))
            if guarded:
                run("rm", "-f", "hostcost")
                deadline = time.monotonic() + 30
                while json.loads(run("guard", "status").stdout).get("running") and \
                        time.monotonic() < deadline:
                    time.sleep(0.2)
    rows = ["## the host's unwatched processes, guard stopped vs running (ns per iteration)", ""]
    for key in out[False][0]:
        off = [x[key] for x in out[False]]
        on = [x[key] for x in out[True]]
        rows.append(f"- {key}: {statistics.median(off):.1f} -> {statistics.median(on):.1f} "
                    f"(+{statistics.median(on) - statistics.median(off):.1f} ns, "
                    f"{statistics.median(off) / statistics.median(on):.3f}x as fast)")
    return rows + [""]


def events_row(run, env: dict, name: str, count: int, pause: str) -> list[str]:  # noqa: ANN001
    watcher = subprocess.Popen([NSBOX, "guard", "watch", "--timeout", "120"], env=env,
                               stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    drops_before = json.loads(run("guard", "status").stdout)["drops"]
    script = f"i=0; while [ $i -lt {count} ]; do {pause}: > /etc/f; i=$((i+1)); done"
    t0 = time.monotonic()
    run("run", "--name", name, "--security-opt", "guard=default", "busybox", "sh", "-c", script)
    elapsed = time.monotonic() - t0
    drops = json.loads(run("guard", "status").stdout)["drops"] - drops_before
    latencies, seen, lost = [], 0, 0
    deadline = time.monotonic() + 60
    while seen + lost < count and time.monotonic() < deadline:
        text = watcher.stdout.readline()
        if not text:
            break
        item = json.loads(text)
        if item.get("type") == "subscriber_dropped":
            lost += item["lines"]
        if item.get("container", {}).get("name") == name and \
                item.get("event", {}).get("path") == "/etc/f":
            seen += 1
            latencies.append((item["seen_ns"] - item["ktime_ns"]) / 1e6)
    watcher.kill()
    run("rm", "-f", name)
    latencies.sort()
    row = [f"- {name}: {count} opens for writing in {elapsed:.2f} s (the whole `nsbox run`), "
           f"~{count / elapsed:.0f} events/s; kernel drops: {drops}; seen by `guard watch`: "
           f"{seen} (lines it was too slow for: {lost})"]
    if latencies:
        row.append(f"  detection latency (system call end -> guard): median "
                   f"{statistics.median(latencies):.2f} ms, p99 "
                   f"{latencies[max(0, int(len(latencies) * 0.99) - 1)]:.2f} ms, "
                   f"max {latencies[-1]:.2f} ms")
    return row


def main() -> int:
    work = tempfile.mkdtemp(prefix="nsbox-guard-bench-")
    env = {**os.environ, "NSBOX_ROOT": f"{work}/lib", "NSBOX_RUNROOT": f"{work}/run",
           "NSBOX_DEFAULT_NETWORK": "none"}
    env.pop("NSBOX_GUARD", None)
    nsbox = f"env NSBOX_ROOT={work}/lib NSBOX_RUNROOT={work}/run NSBOX_DEFAULT_NETWORK=none {NSBOX}"
    out = os.path.join(REPO, "bench", "results")
    os.makedirs(out, exist_ok=True)

    def run(*args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([NSBOX, *args], env=env, check=True, capture_output=True,
                              text=True, **kw)

    lines = ["# guard benchmark (noisy, provisional)", ""]
    try:
        run("run", "--rm", "busybox", "true")  # the offline busybox image
        loop = os.path.join(work, "loop", "guard_loop")
        os.makedirs(os.path.dirname(loop))
        subprocess.run(["gcc", "-static", "-O2", "-o", loop,
                        os.path.join(REPO, "bench", "guard_loop.c")], check=True)
        lines += host_rows(run, loop)
        subprocess.run(["hyperfine", "-N", "--warmup", str(WARMUP), "--runs", str(RUNS),
                        "--export-markdown", f"{out}/guard-cold.md",
                        "-n", "guard=off", f"{nsbox} run --rm busybox true",
                        "-n", "guard=default (cold: starts the guard)",
                        f"{nsbox} run --rm --security-opt guard=default busybox true"],
                       check=True)
        run("run", "-d", "--name", "keeper", "--security-opt", "guard=default", "busybox",
            "sleep", "100000")
        lines += workload_rows(run, os.path.dirname(loop))
        lines += program_rows(run, os.path.dirname(loop))
        dd = "dd if=/dev/zero of=/dev/null bs=1 count=500000"
        cat = "i=0; while [ $i -lt 500 ]; do cat /etc/passwd /etc/group; i=$((i+1)); done"
        subprocess.run(["hyperfine", "-N", "--warmup", str(WARMUP), "--runs", str(RUNS),
                        "--export-markdown", f"{out}/guard-warm.md",
                        "-n", "run --rm, guard=off", f"{nsbox} run --rm busybox true",
                        "-n", "run --rm, guard=default (guard running)",
                        f"{nsbox} run --rm --security-opt guard=default busybox true",
                        "-n", "dd bs=1, unwatched", f"{nsbox} run --rm busybox sh -c '{dd} 2>/dev/null'",
                        "-n", "dd bs=1, watched",
                        f"{nsbox} run --rm --security-opt guard=default busybox sh -c '{dd} 2>/dev/null'",
                        "-n", "cat loop, unwatched",
                        f"{nsbox} run --rm busybox sh -c '{cat} >/dev/null'",
                        "-n", "cat loop, watched",
                        f"{nsbox} run --rm --security-opt guard=default busybox sh -c '{cat} >/dev/null'"],
                       check=True)
        # 4. events: rate, drops, latency; a burst, then a paced run (200, 5 ms apart)
        for name, count, pause in (("burst", LOOPS, ""), ("paced", 200, "usleep 5000; ")):
            lines += events_row(run, env, name, count, pause)
        lines.append("")
        for name in ("guard-cold.md", "guard-warm.md"):
            with open(f"{out}/{name}") as f:
                lines.append(f.read())
        with open(f"{out}/guard.md", "w") as f:
            f.write("\n".join(lines) + "\n")
        print("\n".join(lines))
    finally:
        subprocess.run([NSBOX, "rm", "-f", "keeper", "burst", "hostcost"], env=env,
                       capture_output=True)
        subprocess.run([NSBOX, "system", "reset", "-f"], env=env, capture_output=True)
        subprocess.run(["rm", "-rf", work])
    return 0


if __name__ == "__main__":
    sys.exit(main())
