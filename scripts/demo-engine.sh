#!/bin/bash
# The engine half of `make demo`: one `nsbox run --rm --network none --memory 64m
# --pids-limit 64 busybox ...` in a private, temporary --root/--runroot,
# printing the container's namespaces beside the host's and the limits the
# container reads from its own cgroup files (v1 or v2, whichever it sees).
#
# usage: scripts/demo-engine.sh NSBOX [RUNTIME]
#   NSBOX    the nsbox command (.venv/bin/nsbox)
#   RUNTIME  an OCI runtime for `nsbox --runtime` (default: nsbox-runtime)
set -euo pipefail

nsbox_bin=${1:?usage: demo-engine.sh NSBOX [RUNTIME]}
runtime=${2:-}

tmp="$(mktemp -d /tmp/nsbox-engine-demo.XXXXXX)"
nsbox=("$nsbox_bin" --root "$tmp/root" --runroot "$tmp/run")
if [ -n "$runtime" ]; then nsbox+=(--runtime "$runtime"); fi

cleanup() {
    local ids
    ids="$("${nsbox[@]}" ps -a -q --no-trunc 2>/dev/null || true)"
    if [ -n "$ids" ]; then
        # shellcheck disable=SC2086
        "${nsbox[@]}" rm -f $ids >/dev/null 2>&1 || true
    fi
    if grep -qF " $tmp" /proc/self/mountinfo; then
        echo "demo: mounts left below $tmp; not removing it" >&2
        return 1
    fi
    rm -rf --one-file-system "$tmp"
}
trap cleanup EXIT

# Runs inside the container (busybox sh).  Lines: "ns NAME LINK" and
# "limit KIND VALUE FILE".  The cgroup files are looked up under the path
# /proc/self/cgroup gives (with a cgroup namespace: the container's own
# cgroup is the root), then at the mount's root.
# shellcheck disable=SC2016
inside='
for ns in /proc/1/ns/*; do echo "ns ${ns##*/} $(readlink "$ns")"; done
mem1=; pids1=; v2=
while IFS=: read -r _ ctrls path; do
    path=${path%/}
    case ",$ctrls," in
        *,memory,*) mem1=/sys/fs/cgroup/memory$path ;;
        *,pids,*) pids1=/sys/fs/cgroup/pids$path ;;
        ,,) v2=/sys/fs/cgroup$path ;;
    esac
done < /proc/self/cgroup
limit() {
    kind=$1; shift
    for f in "$@"; do
        if [ -r "$f" ]; then echo "limit $kind $(cat "$f") $f"; return; fi
    done
    echo "limit $kind - (no cgroup file visible)"
}
limit memory "$mem1/memory.limit_in_bytes" /sys/fs/cgroup/memory/memory.limit_in_bytes \
    "$v2/memory.max" /sys/fs/cgroup/memory.max
limit pids "$pids1/pids.max" /sys/fs/cgroup/pids/pids.max "$v2/pids.max" /sys/fs/cgroup/pids.max
'

echo "# a private image store: busybox:latest is built there from /bin/busybox on first use"
echo "+ nsbox --root $tmp/root --runroot $tmp/run${runtime:+ --runtime $runtime} run --rm --network none --memory 64m --pids-limit 64 busybox sh -c '<print /proc/1/ns/* and the cgroup limits>'"
out="$("${nsbox[@]}" run --rm --network none --memory 64m --pids-limit 64 busybox sh -c "$inside")"

printf '%-18s %-22s %-22s\n' namespace "in the container" "on the host"
limits=()
while read -r kind name value file; do
    case "$kind" in
        ns)
            host="$(readlink "/proc/$$/ns/$name" 2>/dev/null || echo -)"
            if [ "$host" = "$value" ]; then note="shared with the host"; else note="new"; fi
            printf '%-18s %-22s %-22s %s\n' "$name" "$value" "$host" "$note"
            ;;
        limit)
            shown="$value"
            if [[ "$value" =~ ^[0-9]+$ ]] && [ "$name" = memory ]; then
                shown="$value bytes ($((value / 1048576)) MiB)"
            fi
            limits+=("$(printf '  %-7s %-26s %s' "$name" "$shown" "$file")")
            ;;
    esac
done <<<"$out"
echo "limits, as the container reads them from its own cgroup files:"
printf '%s\n' "${limits[@]}"
