"""nsbox.runtime.rootfs.mountinfo: the mount table parsed, all of it or only some types."""

from __future__ import annotations

import os
from pathlib import Path

from nsbox.runtime.rootfs.mountinfo import read_mountinfo

SAMPLE = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:5 - cgroup2 cgroup2 rw
32 30 0:28 /process_api /sys/fs/cgroup/cpu rw,nosuid shared:6 - cgroup cgroup rw,cpu
40 22 0:40 / /mnt/with\\040space rw master:7 - tmpfs none rw
41 22 0:41 / /mnt/cgroupish rw - fuse.cgroup cgroup rw
"""


def test_all_mounts_and_only_some_types(tmp_path: Path) -> None:
    (tmp_path / "mountinfo").write_text(SAMPLE)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        every = read_mountinfo("mountinfo", dir_fd=fd)
        cgroups = read_mountinfo("mountinfo", dir_fd=fd, fstypes=frozenset(("cgroup", "cgroup2")))
    finally:
        os.close(fd)
    assert [e.mountpoint for e in every] == [
        "/", "/sys/fs/cgroup", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/cpu",
        "/mnt/with space", "/mnt/cgroupish"]
    assert every[4].optional == ["master:7"] and every[0].optional == ["shared:1"]
    assert cgroups == [e for e in every if e.fstype in ("cgroup", "cgroup2")]
    assert [(e.root, e.super_options) for e in cgroups] == [("/", "rw"),
                                                           ("/process_api", "rw,cpu")]


def test_this_process_s_table_filtered_the_same() -> None:
    types = frozenset(("cgroup", "cgroup2", "proc"))
    assert read_mountinfo(fstypes=types) == [e for e in read_mountinfo() if e.fstype in types]
