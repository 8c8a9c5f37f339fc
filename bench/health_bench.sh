#!/bin/sh
# Does the healthcheck code cost `nsbox run --rm` anything when no check is asked for?
#
# One hyperfine run, three rows, each engine on its own --root/--runroot:
#   before  the tree at BASE (the commit before healthchecks), unpacked with
#           `git archive` (the repository is not touched), with this tree's
#           compiled monitor loop copied in
#   after   this tree: `run --rm busybox true`
#   check   this tree with a check that never fires in the run
#           (--health-cmd true --health-interval 1h): the cost of having one
# Every row runs through the same launcher (bin/nsbox of its tree, the venv's
# Python, PYTHONPATH at the tree), with --network none so that nothing touches
# the host's network.  Results: bench/results/health.md (and .json).
#
# usage: sh bench/health_bench.sh   (as root; BASE, RUNS, WARMUP from the environment)
set -eu
REPO=$(cd "$(dirname "$0")/.." && pwd)
BASE=${BASE:-171a2b2^}
RUNS=${RUNS:-20}
WARMUP=${WARMUP:-3}
PY="$REPO/.venv/bin/python"
WORK=$(mktemp -d /tmp/nsbox-health-bench.XXXXXX)
export NSBOX_DEFAULT_NETWORK=none

. "$REPO/bench/before_after.sh"
unpack_base
BEFORE=$(nsbox_of "$WORK/base" before)
AFTER=$(nsbox_of "$REPO" after)
CHECK=$(nsbox_of "$REPO" check)

cleanup() {
    remove_engines "$BEFORE" "$AFTER" "$CHECK"
}
trap cleanup EXIT

seed_engines "$BEFORE" "$AFTER" "$CHECK"

mkdir -p "$REPO/bench/results"
hyperfine -N --warmup "$WARMUP" --runs "$RUNS" \
    --export-markdown "$REPO/bench/results/health.md" \
    --export-json "$REPO/bench/results/health.json" \
    -n before "$BEFORE run --rm busybox true" \
    -n after "$AFTER run --rm busybox true" \
    -n check "$CHECK run --rm --health-cmd true --health-interval 1h busybox true"
