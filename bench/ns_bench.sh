#!/bin/sh
# `nsbox ns` (one pass over /proc/*/ns, no subprocess) beside util-linux's lsns.
#
# One hyperfine run, side by side, over COUNT detached `sleep` containers
# (--network none, on their own --root/--runroot):
#   nsbox ns                 every namespace of every container (table)
#   nsbox ns --format json   the same as JSON
#   nsbox ns C               one container's 8 namespaces beside the host's
#   lsns                     every namespace of the host (what nsbox ns narrows)
#   lsns -J                  the same as JSON
# lsns does less here (no container lookup) and is C; the row shows what
# the Python start-up and the engine's database cost on top of the /proc scan.
# Results: bench/results/ns.md (and .json).
#
# usage: sh bench/ns_bench.sh   (as root; COUNT, RUNS, WARMUP from the environment)
set -eu
REPO=$(cd "$(dirname "$0")/.." && pwd)
COUNT=${COUNT:-20}
RUNS=${RUNS:-20}
WARMUP=${WARMUP:-3}
WORK=$(mktemp -d /tmp/nsbox-ns-bench.XXXXXX)
NSBOX="$REPO/.venv/bin/nsbox --root $WORK/lib --runroot $WORK/run"
export NSBOX_DEFAULT_NETWORK=none

cleanup() {
    $NSBOX system reset -f >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

i=0
while [ "$i" -lt "$COUNT" ]; do
    $NSBOX run -d --name "c$i" busybox sleep 3600 >/dev/null
    i=$((i + 1))
done

mkdir -p "$REPO/bench/results"
hyperfine -N --warmup "$WARMUP" --runs "$RUNS" \
    --export-markdown "$REPO/bench/results/ns.md" \
    --export-json "$REPO/bench/results/ns.json" \
    -n "nsbox ns" "$NSBOX ns" \
    -n "nsbox ns --format json" "$NSBOX ns --format json" \
    -n "nsbox ns c0" "$NSBOX ns c0" \
    -n "lsns" "lsns" \
    -n "lsns -J" "lsns -J"
