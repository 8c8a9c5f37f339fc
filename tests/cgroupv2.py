"""Marking tests that need a pure cgroup v2 host.

A cgroup v2 test carries two marks: `cgroupv2`, which `make test-v2` selects to
run in its qemu guest (tests/v2lane/), and `requires_cgroup2`, which skips it
on a host whose /sys/fs/cgroup is not a cgroup2 mount (hybrid or v1, like the
development machine)::

    from cgroupv2 import CGROUPV2, requires_cgroup2

    pytestmark = CGROUPV2                    # every test in the module

    @pytest.mark.cgroupv2                    # or a single test
    @requires_cgroup2
    def test_memory_max(...): ...

The skip is an ordinary skip even under CI=true: CI runs these tests in the
guest (tests/test_v2lane.py), where the condition holds.
"""

from __future__ import annotations

import pytest

CGROUP_ROOT = "/sys/fs/cgroup"


def is_cgroup2_mount(path: str = CGROUP_ROOT, mountinfo: str = "/proc/self/mountinfo") -> bool:
    """True when PATH itself is a cgroup2 mount point (not a tmpfs of v1 hierarchies)."""
    fstype = None
    with open(mountinfo) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if left.split()[4] == path:
                fstype = right.split()[0]  # the last mount on PATH is the visible one
    return fstype == "cgroup2"


requires_cgroup2 = pytest.mark.skipif(
    not is_cgroup2_mount(),
    reason=f"needs a cgroup v2 host ({CGROUP_ROOT} is not a cgroup2 mount here); "
           "`make test-v2` runs it in a qemu guest",
)

# pytestmark for a module of cgroup v2 tests. A list, as pytestmark must be.
CGROUPV2 = [pytest.mark.cgroupv2, requires_cgroup2]
