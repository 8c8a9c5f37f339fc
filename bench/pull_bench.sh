#!/bin/sh
# `nsbox pull` of a 5-layer image of about 100 MB from a registry on 127.0.0.1, beside
# `podman pull` (into an empty store) and `skopeo copy` (to a local directory), in one
# hyperfine run.  The issue's targets: nsbox at most 0.8x podman and at most 1.0x skopeo.
#
# The image (bench/pull_image.py): 5 gzip layers, each 14 MiB of random bytes (which do
# not compress) and 8 MiB of base64 text (which compresses about 4:3), so the pull moves
# about 100 MB and inflates about 110 MiB; pushed by skopeo as Docker schema 2 to Debian's
# docker-registry, started here on a free port of 127.0.0.1 with its storage in the work
# dir.  Every command starts from an empty store (--prepare):
#   nsbox   nsbox --root W/lib pull -q --tls-verify=false HOST/bench/pull:1
#   podman  podman --root W/proot --storage-driver overlay pull -q --tls-verify=false ...
#   skopeo  skopeo copy --src-tls-verify=false docker://HOST/bench/pull:1 dir:W/skopeo
# podman and skopeo run in a private mount namespace with a tmpfs on /var/lib: c/image
# writes its blob-info cache to /var/lib/containers/cache as root, with no setting to move
# it, and the host's is left alone.  (nsbox pays the same `unshare` cost through the same
# wrapper, so the rows differ only in the tool.)
# Timing: ROUNDS hyperfine invocations of RUNS runs each, pooled (medians and means over all).
# Results: bench/results/pull.md.  Also printed: what each tool did (CPU
# seconds of user+system, from one extra run of each under /usr/bin/time), since the
# wall time on a shared, loaded machine is noisy.
#
# usage: sh bench/pull_bench.sh   (as root; RUNS, ROUNDS, WARMUP from the environment)
set -eu
REPO=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-2}
ROUNDS=${ROUNDS:-5}
WARMUP=${WARMUP:-1}
WORK=$(mktemp -d /tmp/nsbox-pull-bench.XXXXXX)
PY="$REPO/.venv/bin/python"
PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
HOST=127.0.0.1:$PORT
IMAGE=$HOST/bench/pull:1
REG_PID=

cleanup() {
    [ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null || true
    grep -o " $WORK[^ ]*" /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# A private world for podman/skopeo: config, policy, storage all under WORK.
mkdir -p "$WORK/conf" "$WORK/home/.config/containers" "$WORK/ptmp" "$WORK/net"
cat > "$WORK/conf/containers.conf" <<EOF
[network]
network_config_dir = "$WORK/net"

[engine]
events_logger = "none"
tmp_dir = "$WORK/ptmp"
image_copy_tmp_dir = "$WORK/ptmp"
EOF
printf '' > "$WORK/conf/registries.conf"
echo '{"default": [{"type": "insecureAcceptAnything"}]}' > "$WORK/home/.config/containers/policy.json"
export HOME="$WORK/home" CONTAINERS_CONF="$WORK/conf/containers.conf" \
       CONTAINERS_REGISTRIES_CONF="$WORK/conf/registries.conf" TMPDIR="$WORK/ptmp"
# Each command in a private mount namespace with /var/lib a throwaway tmpfs (see above).
PRIV="unshare -m --propagation private sh -c"
VARLIB="mount -t tmpfs -o mode=0755 tmpfs /var/lib &&"

cat > "$WORK/registry.yml" <<EOF
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $WORK/registry
http:
  addr: $HOST
EOF
/usr/bin/docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
REG_PID=$!
i=0
until $PY -c "import urllib.request; urllib.request.urlopen('http://$HOST/v2/', timeout=1)" 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 200 ] || { cat "$WORK/registry.log"; exit 1; }; sleep 0.05
done

$PY "$REPO/bench/pull_image.py" "$WORK/layout"
$PRIV "$VARLIB skopeo copy -q --format v2s2 --dest-tls-verify=false oci:$WORK/layout:bench docker://$IMAGE"

NSBOX_CMD="$REPO/.venv/bin/nsbox --root $WORK/lib --runroot $WORK/run pull -q --tls-verify=false $IMAGE"
PODMAN_CMD="podman --root $WORK/proot --runroot $WORK/prun --storage-driver overlay pull -q --tls-verify=false $IMAGE"
SKOPEO_CMD="skopeo copy -q --src-tls-verify=false docker://$IMAGE dir:$WORK/skopeo"
# Each run starts from an empty store and no dirty page cache (sync): the writes of the
# previous run (200+ MB) would otherwise be written back during the next one.
NSBOX_PREP="rm -rf $WORK/lib $WORK/run; sync"
PODMAN_PREP="rm -rf $WORK/proot $WORK/prun; sync"
SKOPEO_PREP="rm -rf $WORK/skopeo; sync"

echo "CPU seconds (user+sys) of one pull each, wall seconds:"
for row in nsbox podman skopeo; do
    case $row in
        nsbox) cmd=$NSBOX_CMD; prep=$NSBOX_PREP ;;
        podman) cmd=$PODMAN_CMD; prep=$PODMAN_PREP ;;
        skopeo) cmd=$SKOPEO_CMD; prep=$SKOPEO_PREP ;;
    esac
    sh -c "$prep"
    /usr/bin/time -f "  $row: %U user + %S sys, %e wall, %M KiB max RSS" $PRIV "$VARLIB $cmd" >/dev/null
done

# ROUNDS hyperfine runs of RUNS each, pooled: load bursts from other work on the machine
# then fall on every row instead of on whichever row was running.
mkdir -p "$REPO/bench/results"
r=1
while [ $r -le "$ROUNDS" ]; do
    hyperfine --warmup "$WARMUP" --runs "$RUNS" --style basic \
        --export-json "$WORK/round-$r.json" \
        -n nsbox --prepare "$NSBOX_PREP" "$PRIV '$VARLIB $NSBOX_CMD'" \
        -n podman --prepare "$PODMAN_PREP" "$PRIV '$VARLIB $PODMAN_CMD'" \
        -n skopeo --prepare "$SKOPEO_PREP" "$PRIV '$VARLIB $SKOPEO_CMD'" >/dev/null
    r=$((r + 1))
done
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
$PY - "$WORK" "$ROUNDS" "$REPO/bench/results/pull.md" "$LOAD" <<'PYEOF'
import json, statistics, sys
work, rounds, out, load = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
times, cpu = {}, {}
for r in range(1, rounds + 1):
    for result in json.load(open(f"{work}/round-{r}.json"))["results"]:
        times.setdefault(result["command"], []).extend(result["times"])
        cpu.setdefault(result["command"], []).append(result["user"] + result["system"])
rows = ["| tool | runs | median (s) | mean (s) | min (s) | CPU user+sys per pull (s) |",
        "|---|---|---|---|---|---|"]
for name, ts in times.items():
    rows.append(f"| {name} | {len(ts)} | {statistics.median(ts):.3f} | {statistics.mean(ts):.3f} | "
                f"{min(ts):.3f} | {statistics.mean(cpu[name]):.3f} |")
med = {name: statistics.median(ts) for name, ts in times.items()}
rows.append("")
rows.append(f"nsbox/podman = {med['nsbox'] / med['podman']:.2f}x (target <= 0.8), "
            f"nsbox/skopeo = {med['nsbox'] / med['skopeo']:.2f}x (target <= 1.0), at the median; "
            f"load average at the end: {load}")
open(out, "w").write("\n".join(rows) + "\n")
print("\n".join(rows))
PYEOF
