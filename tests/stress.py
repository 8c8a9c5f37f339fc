"""`make stress`: timed SIGKILLs swept over `nsbox run`, many at once; prints a table.

Each trial runs `nsbox run [--rm] [-d] busybox sh -c 'echo hi; sleep 0.3; exit 3'`
and SIGKILLs, after a delay swept over 0-300 ms, either the CLI or every
process of the container's monitor (nsbmon-<id>).  CONCURRENCY trials run at
once on one --root.  Afterwards, per trial, the invariants of
tests/crash_harness.py: one record, the record matching /proc, a --rm
container gone within a bounded time; then `rm -f` of everything and
`container prune`, and what is left, by kind.

    .venv/bin/python tests/stress.py [--trials 500] [--concurrency 50]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from crash_harness import Box, check_consistent, kill_monitor_of, leftovers  # noqa: E402

MODES = (("run --rm", ("--rm",)), ("run -d", ("-d",)), ("run -d --rm", ("-d", "--rm")))
VICTIMS = ("cli", "monitor")


def trial(box: Box, n: int) -> dict:
    label, flags = MODES[n % len(MODES)]
    victim = VICTIMS[(n // len(MODES)) % len(VICTIMS)]
    delay = (n * 7919 % 300) / 1000.0  # 0..299 ms, spread over the trials
    name = f"s{n}"
    proc = subprocess.Popen(box.argv("run", *flags, "--name", name, "busybox", "sh", "-c",
                                     "echo hi; sleep 0.3; exit 3"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    if victim == "cli":
        proc.kill()
    else:
        out = box("inspect", "-f", "{{.Id}}", name, check=False).stdout.strip()
        if out:
            kill_monitor_of(out)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return {"mode": label, "victim": victim, "failure": "the CLI hung"}
    return {"mode": label, "victim": victim, "name": name, "rm": "--rm" in flags,
            "delay": delay}


def check(box: Box, results: list[dict]) -> tuple[list[str], dict[str, int]]:
    failures = [f"{r['mode']} ({r['victim']}): {r['failure']}" for r in results if "failure" in r]
    # --rm containers: gone within a bounded time (ps reconciles).
    rm_names = {r["name"] for r in results if r.get("rm")}
    deadline = time.monotonic() + 20
    while True:
        rows = box.rows()
        left = {cid: (n, s) for cid, (n, s) in rows.items() if n in rm_names}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    failures += [f"--rm container {n} left: {s}" for n, s in left.values()]
    # The CLI killed, the monitor lived: the real exit code, never one made up.
    cli_killed = {r["name"] for r in results if r.get("victim") == "cli"}
    for cid, (name, status) in rows.items():
        failures += check_consistent(box, cid, status)
        if name in cli_killed and not (status.startswith("Exited (3)") or status == "Created"):
            failures.append(f"{name} (CLI killed): {status}, not Exited (3)")
    ids = set(rows)
    rm_ids = {cid for cid, (n, _) in rows.items() if n in rm_names}
    found = leftovers(box, ids, rm_ids)
    return failures, {kind: len(items) for kind, items in found.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="nsbox-stress-"))
    box = Box(base)
    box("run", "--rm", "busybox", "true")
    started = time.monotonic()
    results: list[dict] = []
    failures: list[str] = []
    left: dict[str, int] = {}
    batch = args.concurrency
    for first in range(0, args.trials, batch):
        with ThreadPoolExecutor(max_workers=batch) as pool:
            got = list(pool.map(lambda n: trial(box, n),
                                range(first, min(first + batch, args.trials))))
        results += got
        more, found = check(box, got)
        failures += more
        for kind, count in found.items():
            left[kind] = left.get(kind, 0) + count
    elapsed = time.monotonic() - started
    print(f"{'trials':>8} {'failures':>9} {'seconds':>8}  leftovers by kind")
    kinds = ", ".join(f"{k}: {v}" for k, v in sorted(left.items())) or "none"
    print(f"{len(results):>8} {len(failures):>9} {elapsed:>8.0f}  {kinds}")
    print()
    print(f"{'mode':<14} {'killed':<8} {'trials':>6}")
    for label, _ in MODES:
        for victim in VICTIMS:
            count = sum(1 for r in results if r["mode"] == label and r["victim"] == victim)
            print(f"{label:<14} {victim:<8} {count:>6}")
    for failure in failures[:20]:
        print("FAIL", failure)
    subprocess.run(["rm", "-rf", "--one-file-system", str(base)], check=False)
    return 1 if failures or left else 0


if __name__ == "__main__":
    os.environ.pop("NSBOX_TEST_CRASHPOINT", None)
    # Root's default network is the bridge: never on the real host's network (as conftest.py).
    os.environ.setdefault("NSBOX_DEFAULT_NETWORK", "none")
    sys.exit(main())
