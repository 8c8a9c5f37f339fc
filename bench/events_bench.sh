#!/bin/sh
# Does the event journal cost `nsbox run --rm` anything?
#
# Two parts, results in bench/results/events.md (and events.json):
# 1. hyperfine, two rows, each engine on its own --root/--runroot:
#      before  the tree at BASE (the commit before the journal), unpacked with
#              `git archive` (the repository is not touched), with this tree's
#              compiled monitor loop copied in
#      after   this tree: `run --rm busybox true` writes 5 events
#              (create, attach, start, die, destroy)
#    Both run through the same launcher (bin/nsbox of its tree, the venv's
#    Python, PYTHONPATH at the tree), with --network none.  The two trees
#    also differ by whatever else was committed in between.
# 2. emit() alone: the cost of one event, appended 2000 times to a journal
#    in a temporary root (the same open/flock/write/close as in a command).
#
# usage: sh bench/events_bench.sh   (as root; BASE, RUNS, WARMUP from the environment)
set -eu
REPO=$(cd "$(dirname "$0")/.." && pwd)
BASE=${BASE:-10ac36b^}
RUNS=${RUNS:-20}
WARMUP=${WARMUP:-3}
PY="$REPO/.venv/bin/python"
WORK=$(mktemp -d /tmp/nsbox-events-bench.XXXXXX)
export NSBOX_DEFAULT_NETWORK=none

. "$REPO/bench/before_after.sh"
unpack_base
BEFORE=$(nsbox_of "$WORK/base" before)
AFTER=$(nsbox_of "$REPO" after)

cleanup() {
    remove_engines "$BEFORE" "$AFTER"
}
trap cleanup EXIT

seed_engines "$BEFORE" "$AFTER"

mkdir -p "$REPO/bench/results"
hyperfine -N --warmup "$WARMUP" --runs "$RUNS" \
    --export-markdown "$REPO/bench/results/events.md" \
    --export-json "$REPO/bench/results/events.json" \
    -n before "$BEFORE run --rm busybox true" \
    -n after "$AFTER run --rm busybox true"

PYTHONPATH="$REPO" "$PY" - "$WORK/emit" >>"$REPO/bench/results/events.md" <<'PYEOF'
import sys, time
from nsbox.engine import events
root, n = sys.argv[1], 2000
attrs = {"name": "bench", "image": "busybox"}
events.emit(root, "container", "create", "0" * 64, attrs)  # the directory exists
start = time.perf_counter()
for _ in range(n):
    events.emit(root, "container", "start", "0" * 64, attrs)
per = (time.perf_counter() - start) / n
print(f"\nemit(): {per * 1e6:.1f} µs per event ({n} events); "
      f"5 per `run --rm`: {5 * per * 1e3:.3f} ms")
PYEOF
cat "$REPO/bench/results/events.md"
