#!/usr/bin/env bash
# Time nsbox-runtime against runc and crun with hyperfine; writes docs/benchmarks.md.
# docs/benchmarks.md explains the method. Usage: make bench, or
#   BENCH_RUNS=10 BENCH_RUNTIMES="runc crun" bench/runtime_bench.sh
#
# Settings (environment):
#   BENCH_RUNTIMES  runtimes to compare      (default: "nsbox-runtime runc crun")
#   BENCH_WARMUP    hyperfine --warmup       (default: 3)
#   BENCH_RUNS      hyperfine --runs         (default: 30)
#   BENCH_INTERLEAVED_RUNS  rounds of bench/interleave.py, 0 for none (default: BENCH_RUNS)
#   BENCH_STRICT    1: fail if a runtime fails its probe instead of leaving it out
#   BENCH_OUT       report path              (default: docs/benchmarks.md)
#   BENCH_RESULTS   raw hyperfine exports    (default: bench/results)
set -euo pipefail

self="$(realpath "${BASH_SOURCE[0]}")"
repo="$(dirname "$(dirname "$self")")"

# All runtimes run in one private mount namespace without the cgroup2 mount,
# because Debian 12's crun refuses hybrid hosts; see docs/benchmarks.md.
if [[ "${NSBOX_BENCH_IN_MOUNTNS:-}" != 1 ]]; then
    export NSBOX_BENCH_IN_MOUNTNS=1
    exec unshare --mount --propagation private "$self" "$@"
fi
unified_note="not mounted"
if mountpoint -q /sys/fs/cgroup/unified; then
    umount /sys/fs/cgroup/unified
    unified_note="unmounted in the benchmark's private mount namespace"
fi

runtimes=(${BENCH_RUNTIMES:-nsbox-runtime runc crun})
warmup="${BENCH_WARMUP:-3}"
runs="${BENCH_RUNS:-30}"
strict="${BENCH_STRICT:-0}"
out="${BENCH_OUT:-$repo/docs/benchmarks.md}"
results="${BENCH_RESULTS:-bench/results}"  # relative to the repo, so the report reads well
py="$repo/.venv/bin/python"
helpers="$repo/tests/helpers.py"

cd "$repo"
log() { printf 'bench: %s\n' "$*" >&2; }

binary_of() {
    case "$1" in
        nsbox-runtime) echo "$repo/.venv/bin/nsbox-runtime" ;;
        *) command -v "$1" || true ;;
    esac
}

work="$(mktemp -d /tmp/nsbox-bench.XXXXXX)"
cgroup_dirs=()
# Every directory there, at any depth: runc and crun make theirs below the
# existing parents of the cgroupsPath (process_api/..., for instance).
mapfile -t unified_before < <(find /sys/fs/cgroup/unified -mindepth 1 -type d 2>/dev/null)
cleanup() {
    local rt bin root id
    for rt in "${runtimes[@]}"; do
        bin="$(binary_of "$rt")"
        [[ -n "$bin" ]] || continue
        for root in "$work/state-$rt" "$work/probe-$rt"; do
            [[ -d "$root" ]] || continue
            for id in $(ls "$root"); do
                "$bin" --root "$root" delete --force "$id" >/dev/null 2>&1 || true
            done
        done
    done
    # Runtimes remove the container's own cgroup, not the parents they had to
    # create in shallower hierarchies; those were recorded before the run.
    local dir
    for dir in "${cgroup_dirs[@]}"; do
        rmdir "$dir" 2>/dev/null || true
    done
    # With cgroup2 unmounted here, runc and crun still make their "unified"
    # directories, as plain dirs in the host's /sys/fs/cgroup tmpfs (hidden
    # under the real mount outside this namespace): remove what this run added.
    if ! mountpoint -q /sys/fs/cgroup/unified \
            && [[ "$(stat -f -c %T /sys/fs/cgroup/unified)" == tmpfs ]]; then
        # Deepest first, so a new parent goes after its new children.
        while IFS= read -r dir; do
            [[ -e "$dir" ]] || continue
            [[ " ${unified_before[*]} " == *" $dir "* ]] || rm -rf --one-file-system "$dir"
        done < <(find /sys/fs/cgroup/unified -mindepth 1 -type d 2>/dev/null | sort -r)
    fi
    if grep -qF " $work" /proc/self/mountinfo; then
        log "mounts left below $work; not removing it"
    else
        rm -rf --one-file-system "$work"
    fi
}
trap cleanup EXIT

# ------------------------------------------------------------------ the bundle
cgroups_path="$("$py" "$helpers" cgroup-dirs)/nsbox-bench-$$"
cgroups_path="${cgroups_path//\/\///}"
mapfile -t cgroup_dirs < <("$py" "$helpers" cgroup-dirs "$cgroups_path")
"$py" "$helpers" bundle "$work/bundle" --oci-version 1.0.2 \
    --cgroups-path "$cgroups_path" -- /bin/true >/dev/null
log "bundle $work/bundle, cgroupsPath $cgroups_path"

# ------------------------------------------------- probe: leave broken ones out
measured=()
: >"$work/excluded.txt"
for rt in "${runtimes[@]}"; do
    bin="$(binary_of "$rt")"
    reason=""
    if [[ -z "$bin" || ! -x "$bin" ]]; then
        reason="not installed"
    else
        rc=0
        "$bin" --root "$work/probe-$rt" run --bundle "$work/bundle" "probe-$rt" \
            >"$work/probe-$rt.log" 2>&1 </dev/null || rc=$?
        if [[ $rc -ne 0 ]]; then
            last="$(grep -v '^[[:space:]]*$' "$work/probe-$rt.log" | tail -n 1 || true)"
            reason="probe run exited $rc: ${last:-no output}"
        fi
    fi
    if [[ -n "$reason" ]]; then
        if [[ "$strict" == 1 ]]; then
            log "$rt: $reason"
            exit 1
        fi
        log "leaving out $rt: $reason"
        printf '%s: %s\n' "$rt" "$reason" >>"$work/excluded.txt"
        continue
    fi
    measured+=("$rt")
done
if [[ ${#measured[@]} -eq 0 ]]; then
    log "no runtime passed the probe"
    exit 1
fi

# ------------------------------------------------------------------ hyperfine
# Shell-quote for the report: plain words stay bare, the rest in single quotes.
q() {
    if [[ "$1" =~ ^[A-Za-z0-9_./=:,+@%-]+$ ]]; then
        printf '%s' "$1"
    else
        printf "'%s'" "${1//\'/\'\\\'\'}"
    fi
}
show_cmd() {
    local first=1 arg
    for arg in "$@"; do
        if [[ $first == 1 ]]; then first=0; else printf ' '; fi
        # Start a new line before each option so long commands stay readable.
        [[ "$arg" == -* ]] && printf '\\\n    '
        q "$arg"
    done
    printf '\n'
}
lifecycle_args=()
run_args=()
interleave_args=()
for rt in "${measured[@]}"; do
    bin="$(q "$(binary_of "$rt")")"
    root="$(q "$work/state-$rt")"
    bundle="$(q "$work/bundle")"
    rt_cmd="$bin --root $root"
    lifecycle_args+=(-n "$rt"
        "$rt_cmd create --bundle $bundle bench-$rt && $rt_cmd start bench-$rt && $rt_cmd delete --force bench-$rt")
    run_args+=(-n "$rt" "$rt_cmd run --bundle $bundle run-$rt")
    interleave_args+=("$rt run" "$rt_cmd run --bundle $bundle run-$rt"
        "$rt lifecycle" "$rt_cmd create --bundle $bundle bench-$rt && $rt_cmd start bench-$rt && $rt_cmd delete --force bench-$rt")
done
# The floor of any Python command line: the interpreter starting with nothing to do.
bare="$(q "$py") -S -c pass"
run_args+=(-n python-floor "$bare")
lifecycle_args+=(-n python-floor "$bare && $bare && $bare")

mkdir -p "$results"
common=(--style basic --warmup "$warmup" --runs "$runs")
run_cmd=(hyperfine "${common[@]}" --export-markdown "$results/run.md"
         --export-json "$results/run.json" "${run_args[@]}")
lifecycle_cmd=(hyperfine "${common[@]}" --export-markdown "$results/lifecycle.md"
               --export-json "$results/lifecycle.json" "${lifecycle_args[@]}")

{
    echo "# in a private mount namespace: unshare --mount --propagation private,"
    echo "# then: umount /sys/fs/cgroup/unified"
    show_cmd "${run_cmd[@]}"
    echo
    show_cmd "${lifecycle_cmd[@]}"
} >"$work/commands.txt"

load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
log "timing run: ${measured[*]}"
"${run_cmd[@]}"
log "timing create && start && delete --force: ${measured[*]}"
"${lifecycle_cmd[@]}"
interleaved_runs="${BENCH_INTERLEAVED_RUNS:-$runs}"
report_extra=()
if [[ "$interleaved_runs" -gt 0 ]]; then
    log "timing both again, interleaved: ${measured[*]}"
    "$py" "$repo/bench/interleave.py" --runs "$interleaved_runs" --warmup "$warmup" \
        --out "$results/interleaved.json" -- "${interleave_args[@]}"
    report_extra=(--interleaved-json "$results/interleaved.json")
fi

# -------------------------------------------------------------------- report
first_line() { "$@" 2>&1 | head -n 1 || true; }
{
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores"
    echo "- memory: $(free -g | awk '/^Mem:/ {print $2}') GiB"
    echo "- OS: Debian $(cat /etc/debian_version), kernel $(uname -r)"
    echo "- cgroups: hybrid (v1 controllers); /sys/fs/cgroup/unified $unified_note"
    echo "- runc: $(first_line runc --version)"
    echo "- crun: $(first_line crun --version)"
    echo "- hyperfine: $(first_line hyperfine --version)"
    echo "- nsbox-runtime: Python $("$py" -c 'import platform; print(platform.python_version())') ($(readlink -f "$py"))"
    echo "- hyperfine settings: --warmup $warmup --runs $runs"
    # Other work on this 2-core host moves wall-clock medians: say how busy it was.
    echo "- load average before / after the timings: $load_before / $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$work/machine.md"

"$py" "$repo/bench/report.py" \
    --run-json "$results/run.json" --run-md "$results/run.md" \
    --lifecycle-json "$results/lifecycle.json" --lifecycle-md "$results/lifecycle.md" \
    --commands "$work/commands.txt" --machine "$work/machine.md" \
    --excluded "$work/excluded.txt" --out "$out" "${report_extra[@]}"
cp "$work/commands.txt" "$results/commands.txt"
log "wrote $out"
