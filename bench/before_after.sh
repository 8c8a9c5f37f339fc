# Sourced (not run) by the benches that time this tree's engine beside the tree at
# an earlier commit: bench/events_bench.sh, bench/health_bench.sh.
#
# The caller sets REPO (this checkout), BASE (the commit to compare with), PY (the
# venv's python) and WORK (an empty scratch directory), then calls unpack_base and
# makes one engine command line per row with nsbox_of.

unpack_base() {  # the tree at BASE into $WORK/base, with this tree's compiled monitor loop
    mkdir -p "$WORK/base"
    git -C "$REPO" archive "$BASE" bin nsbox | tar -x -C "$WORK/base"
    cp "$REPO/nsbox/engine/nsbox-monitor-loop" "$WORK/base/nsbox/engine/"
}

nsbox_of() {  # TREE NAME: the command line of that tree's engine on its own roots
    echo "env PYTHONPATH=$1 $PY $1/bin/nsbox --root $WORK/$2/lib --runroot $WORK/$2/run"
}

seed_engines() {  # ENGINE...: build the offline busybox image once per root
    for engine do
        $engine run --rm busybox true
    done
}

remove_engines() {  # ENGINE...: reset each engine's roots, then remove $WORK
    for engine do
        $engine system reset -f >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
}
