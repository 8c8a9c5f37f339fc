"""The session-end host check's parsing and diff logic (tests/host_state.py), on text."""

from __future__ import annotations

import host_state
from host_state import describe, new_items, parse_ip_link, parse_mountinfo, parse_nft_tables

IP_LINK = """\
1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT\\    link/loopback
4: eth0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1400 qdisc pfifo_fast state UP\\    link/ether
7: veth1a2b@if6: <BROADCAST,MULTICAST> mtu 1500 qdisc noop state DOWN\\    link/ether
"""

MOUNTINFO = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
26 24 0:24 / /dev/pts rw,relatime - devpts devpts rw,mode=600
29 26 0:26 / /dev/pts rw,relatime - devpts devpts rw,mode=600
90 27 0:50 / /tmp/pytest-of-root/x/rootfs rw - overlay overlay rw
91 27 0:51 / /tmpfoo rw - tmpfs tmpfs rw
92 27 0:52 / /run/with\\040space rw - tmpfs my\\040src rw
"""


def test_ip_link_names_drop_the_peer_suffix():
    assert parse_ip_link(IP_LINK) == {"lo", "eth0", "veth1a2b"}


def test_mountinfo_skips_temp_dirs_keeps_stacked_twins_and_unescapes():
    got = parse_mountinfo(MOUNTINFO, exclude=["/tmp"])
    assert got == {"/ (ext4 /dev/vda)", "/dev/pts (devpts devpts)",
                   "/dev/pts (devpts devpts) #2", "/tmpfoo (tmpfs tmpfs)",
                   "/run/with space (tmpfs my src)"}


def test_nft_tables():
    assert parse_nft_tables("table inet filter\ntable ip nat\n") == {"inet filter", "ip nat"}


def test_nothing_new_is_no_problem():
    snap = {"links": frozenset({"lo"}), "sysctls": frozenset({"a.b=1"})}
    assert new_items(snap, dict(snap)) == {}


def test_gone_items_are_not_problems_and_new_ones_are_listed_sorted():
    before = {"links": frozenset({"lo", "eth0", "old0"}), "mounts": frozenset({"/"})}
    after = {"links": frozenset({"lo", "eth0", "cni-podman0", "br9"}),
             "mounts": frozenset({"/", "/run/netns (nsfs nsfs)"})}
    assert new_items(before, after) == {"links": ["br9", "cni-podman0"],
                                        "mounts": ["/run/netns (nsfs nsfs)"]}


def test_a_changed_sysctl_is_reported_with_both_values():
    before = {"sysctls": frozenset({"fs.mqueue.queues_max=256", "kernel.core_pattern=core"})}
    after = {"sysctls": frozenset({"fs.mqueue.queues_max=1024", "kernel.core_pattern=core"})}
    assert new_items(before, after) == {"sysctls": ["fs.mqueue.queues_max: '256' -> '1024'"]}


def test_a_category_only_one_side_has_is_not_compared():
    # e.g. nft got installed (or removed) while the tests ran
    assert new_items({"links": frozenset()}, {"links": frozenset(), "nft": frozenset({"ip t"})}) == {}


def test_describe_lists_each_category_and_item():
    text = describe({"links": ["cni-podman0"], "netpaths": ["/run/netns", "/var/lib/cni"]})
    assert text == "links:\n  cni-podman0\nnetpaths:\n  /run/netns\n  /var/lib/cni"


def test_test_cgroup_names():
    match = host_state.TEST_CGROUP_NAME.search
    assert match("nsbox-t-3f9a0c1b2d4e") and match("nsboxtest-nsbox-pm-x") and match("t-3f9a0c1b2d4e")
    assert match("libpod-" + "a" * 64) and match("b" * 64)
    assert not match("process_api") and not match("system.slice") and not match("t-short")


def test_a_real_snapshot_has_every_category_and_diffs_empty_against_itself():
    snap = host_state.take()
    assert {"links", "mounts", "cgroups", "sysctls", "netpaths"} <= set(snap)
    assert "lo" in snap["links"]
    assert new_items(snap, snap) == {}
