"""Time commands in rotating order: each round runs every command once.

hyperfine runs all of one command's runs before the next command's, so on a
shared host a burst of other work lands on one runtime's block and moves the
ratios.  Interleaving spreads it over all of them alike.  Each command runs
through `sh -c` (as hyperfine's do) and its wall-clock time includes that
shell's start, the same for every command.

    interleave.py --runs N --warmup W --out FILE.json -- NAME 'CMD' [NAME 'CMD' ...]

FILE.json: {"runs": N, "results": [{"name": ..., "command": ..., "times_ms": [...],
"median_ms": ...}, ...]}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def run_once(command: str) -> float:
    start = time.perf_counter()
    subprocess.run(["sh", "-c", command], check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return (time.perf_counter() - start) * 1000


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", required=True)
    parser.add_argument("pairs", nargs="+", help="NAME COMMAND, repeated")
    args = parser.parse_args(argv)
    if len(args.pairs) % 2:
        parser.error("give NAME COMMAND pairs")
    commands = list(zip(args.pairs[0::2], args.pairs[1::2], strict=True))
    for _ in range(args.warmup):
        for _name, command in commands:
            run_once(command)
    times: dict[str, list[float]] = {name: [] for name, _ in commands}
    for round_no in range(args.runs):
        shift = round_no % len(commands)  # each command takes each position in turn
        for name, command in commands[shift:] + commands[:shift]:
            times[name].append(run_once(command))
    results = [{"name": name, "command": command, "times_ms": times[name],
                "median_ms": statistics.median(times[name])} for name, command in commands]
    with open(args.out, "w") as f:
        json.dump({"runs": args.runs, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
