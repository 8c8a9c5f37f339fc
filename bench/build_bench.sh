#!/bin/sh
# An unchanged rebuild of a 10-step Containerfile: `nsbox build` vs `buildah bud`,
# both with a warm cache (the issue's target: nsbox at most 0.5x buildah).
#
# One hyperfine run, two rows, on the same busybox base (nsbox's offline image,
# given to buildah through an oci-archive written by `nsbox save` and pulled into its store):
#   nsbox    nsbox build -q -t bench:1 CONTEXT       (own --root/--runroot)
#   buildah  buildah bud --layers -q -t bench:1 CONTEXT  (overlay driver, its own
#            --root/--runroot under the work dir: the host's storage is not touched;
#            RUN steps would use --isolation chroot, as the hybrid cgroup hierarchy
#            here does not suit crun)
# Both builds run once before timing, so every step is cached for both.
# Results: bench/results/build.md (and .json).
#
# usage: sh bench/build_bench.sh   (as root; RUNS, WARMUP from the environment)
set -eu
REPO=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-10}
WARMUP=${WARMUP:-2}
WORK=$(mktemp -d /tmp/nsbox-build-bench.XXXXXX)
export NSBOX_DEFAULT_NETWORK=none
NSBOX="$REPO/.venv/bin/nsbox --root $WORK/lib --runroot $WORK/run"
BUILDAH="buildah --storage-driver overlay --root $WORK/broot --runroot $WORK/brun"

cleanup() {
    $BUILDAH rm --all >/dev/null 2>&1 || true
    $BUILDAH rmi --all --force >/dev/null 2>&1 || true
    $NSBOX system reset -f >/dev/null 2>&1 || true
    grep -o " $WORK[^ ]*" /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

$NSBOX run --rm busybox true
$NSBOX save --format oci-archive -o "$WORK/busybox.tar" busybox
mkdir -p "$WORK/ctx"
echo hello > "$WORK/ctx/a.txt"
cat > "$WORK/ctx/Containerfile" <<'CF'
ARG BASE=busybox
FROM $BASE
ENV APP=/app MODE=bench
WORKDIR /app
COPY a.txt /app/a.txt
RUN echo one > /app/one
RUN echo two > /app/two
LABEL bench=build
EXPOSE 8080
USER 1000
CMD ["cat", "/app/a.txt"]
CF
$NSBOX build -q -t bench:1 "$WORK/ctx" >/dev/null
# buildah's base is an image of its own store, as nsbox's is (not re-read from the archive).
$BUILDAH tag "$($BUILDAH pull -q "oci-archive:$WORK/busybox.tar")" localhost/busybox:latest
$BUILDAH bud --isolation chroot --layers -q -t bench:1 --build-arg BASE=localhost/busybox:latest \
    "$WORK/ctx" >/dev/null

mkdir -p "$REPO/bench/results"
hyperfine -N --warmup "$WARMUP" --runs "$RUNS" \
    --export-markdown "$REPO/bench/results/build.md" \
    --export-json "$REPO/bench/results/build.json" \
    -n nsbox "$NSBOX build -q -t bench:1 $WORK/ctx" \
    -n buildah "$BUILDAH bud --isolation chroot --layers -q -t bench:1 --build-arg BASE=localhost/busybox:latest $WORK/ctx"
