#!/bin/busybox sh
# PID 1 of the cgroup v2 lane's guest (tests/v2lane/lane.py builds the initramfs).
#
# stage 1, from the initramfs: load the virtio/9p/overlay modules, mount the
#   host's root read-only over 9p at /newroot, give it fresh proc, sysfs,
#   devtmpfs and cgroup2 mounts, tmpfs where tests write, and an overlay over
#   the repository; then switch_root into it.
# stage 2, PID 1 in the host's root view: enable every controller for the
#   root cgroup's children, run pytest, print the exit marker, power off.
#
# The host reads the serial console: "NSBOX-V2LANE-EXIT-<token>=<n>" carries
# pytest's exit code, "NSBOX-V2LANE-ERROR: ..." a broken lane. Every path
# ends in lane_exit, so the host never has to wait for its timeout.

if [ "$1" = stage2 ]; then
    BB=/run/v2lane/busybox
    JOB=/run/v2lane/job/env
else
    BB=/bin/busybox
    JOB=/job/env
fi

lane_exit() {
    echo "NSBOX-V2LANE-EXIT-$LANE_TOKEN=$1"
    $BB poweroff -f
    echo o >/proc/sysrq-trigger
    $BB sleep 30
}

fail() {
    echo "NSBOX-V2LANE-ERROR: $*"
    lane_exit 125
}

stage1() {
    $BB --install -s /bin
    export PATH=/bin
    mount -t proc proc /proc || fail "mount /proc"
    mount -t sysfs sysfs /sys || fail "mount /sys"
    mount -t devtmpfs devtmpfs /dev || fail "mount /dev"

    while read -r module; do
        insmod "/lib/modules/$module.ko" || fail "insmod $module"
    done </lib/modules/load-order

    # cache=loose: the share is read-only for the guest and lives one run.
    mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 \
        hostroot /newroot || fail "mount the host's root over 9p"
    r=/newroot
    lane=$r/run/v2lane
    # The repository first, while the host's /tmp and /run are still visible
    # (a CI checkout may live there): writes below it (caches, stray files)
    # land in guest memory, and it is moved to its own path further down.
    [ -d "$r$LANE_REPO" ] || fail "$LANE_REPO is not visible over 9p"
    mkdir -p /run && mount -t tmpfs -o mode=0755 tmpfs /run || fail "mount a tmpfs for /run"
    mkdir -p /run/v2lane/repo /run/v2lane/repo-upper /run/v2lane/repo-work /run/v2lane/job
    mount -t overlay overlay \
        -o "lowerdir=$r$LANE_REPO,upperdir=/run/v2lane/repo-upper,workdir=/run/v2lane/repo-work" \
        /run/v2lane/repo || fail "overlay over $LANE_REPO"

    mount -t proc proc $r/proc || fail "mount proc"
    mount -t sysfs sysfs $r/sys || fail "mount sysfs"
    mount -t cgroup2 -o nsdelegate cgroup2 $r/sys/fs/cgroup || fail "mount cgroup2"
    mount -t devtmpfs devtmpfs $r/dev || fail "mount devtmpfs"
    mkdir -p $r/dev/pts $r/dev/shm
    mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts $r/dev/pts || fail "mount devpts"
    mount -t tmpfs -o mode=1777 tmpfs $r/dev/shm || fail "mount /dev/shm"
    mount -t tmpfs -o mode=1777 tmpfs $r/tmp || fail "mount /tmp"
    if [ -d $r/var/tmp ]; then
        mount -t tmpfs -o mode=1777 tmpfs $r/var/tmp || fail "mount /var/tmp"
    fi
    mount --move /run $r/run || fail "move /run"
    # Below a tmpfs just mounted (/tmp/...) the path has to be made again.
    [ -d "$r$LANE_REPO" ] || mkdir -p "$r$LANE_REPO" || fail "mkdir $LANE_REPO"
    mount --move $lane/repo "$r$LANE_REPO" || fail "move the overlay to $LANE_REPO"
    cp /init $lane/init && cp $BB $lane/busybox && cp $JOB $lane/job/env || fail "copy the init"

    # io.max tests need the virtio disk; its node appears asynchronously.
    i=0
    while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    [ -b /dev/vda ] || fail "no /dev/vda"

    umount /proc /sys
    umount -l /dev
    exec switch_root $r /run/v2lane/busybox sh /run/v2lane/init stage2
    fail "switch_root"
}

stage2() {
    # Like the host, where the tests run in the root of the cgroup2 tree:
    # children of the root get every controller the kernel has.
    for controller in $($BB cat /sys/fs/cgroup/cgroup.controllers); do
        echo "+$controller" >/sys/fs/cgroup/cgroup.subtree_control ||
            echo "v2lane: cannot enable $controller for the root's children"
    done
    $BB ip link set lo up
    $BB hostname v2lane
    cd "$LANE_REPO" || fail "cd $LANE_REPO"
    [ -x "$LANE_PYTHON" ] || fail "$LANE_PYTHON is not visible in the guest"
    echo "NSBOX-V2LANE-BEGIN-$LANE_TOKEN"
    "$LANE_PYTHON" -m pytest "$@" </dev/null
    lane_exit $?
}

# Sets LANE_TOKEN, LANE_REPO, LANE_PYTHON, exports the tests' environment and
# sets "$@" to pytest's arguments.
[ -r $JOB ] || fail "no job file $JOB"
stage=$1
. $JOB

if [ "$stage" = stage2 ]; then
    stage2 "$@"
else
    stage1
fi
