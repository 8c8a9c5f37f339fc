"""A snapshot of the host state tests could leave behind, and the diff of two.

tests/conftest.py takes one before the first test and one after the last, and
fails the session when anything new remains.  A snapshot maps a category to a
set of strings; a string is either an item ("eth0") or a "key=value" pair
(sysctls), whose changed value is reported as a change, not as an addition::

    before = take()
    ...                        # the tests
    problems = new_items(before, take())
    print(describe(problems))

Categories:

links     network links (`ip -o link`, else /sys/class/net)
mounts    mount points in /proc/self/mountinfo outside the temp dirs
cgroups   cgroup directories below our own cgroup (every hierarchy) whose name
          is a test's: *nsbox*, a runtime test's container id (t-<12 hex>),
          podman's libpod-* / 64-hex container ids
nft       nft tables (`nft list tables`; absent when nft is not installed)
sysctls   fs.mqueue.queues_max, net.ipv4.ping_group_range, kernel.core_pattern, net.ipv4.ip_forward,
          net.ipv6.conf.all.forwarding (an IPv6 bridge network sets it)
netpaths  /run/netns and /var/lib/cni (and the entries of /run/netns)
hidden    on a hybrid host, directories in /sys/fs/cgroup's tmpfs below the cgroup2
          mount point, hidden by that mount (a runtime run without the mount, as
          crun is, makes them there); listed from a mount namespace without it

It is also a script: `.venv/bin/python tests/host_state.py` prints a snapshot.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

Snapshot = dict[str, frozenset[str]]

SYSCTLS = ("fs.mqueue.queues_max", "net.ipv4.ping_group_range", "kernel.core_pattern",
           "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding")
NET_PATHS = ("/run/netns", "/var/lib/cni")
CGROUP_ROOT = Path("/sys/fs/cgroup")
# How deep below our own cgroup to look (cgroup_under_own nests a few levels).
CGROUP_DEPTH = 5
TEST_CGROUP_NAME = re.compile(r"nsbox|^t-[0-9a-f]{12}|^libpod-|^[0-9a-f]{64}$")


def temp_dirs() -> list[str]:
    """Directories whose mounts belong to tests (each test checks its own tmp_path)."""
    found = {tempfile.gettempdir(), "/tmp", "/var/tmp"}
    return sorted(os.path.realpath(d) for d in found)


# --------------------------------------------------------------------- parsing
def parse_ip_link(text: str) -> frozenset[str]:
    """Link names from `ip -o link` ("4: eth0@if5: <...>" -> "eth0")."""
    names = set()
    for line in text.splitlines():
        parts = line.split(": ", 2)
        if len(parts) >= 2 and parts[0].strip().isdigit():
            names.add(parts[1].split("@", 1)[0])
    return frozenset(names)


def _unescape(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def _under(path: str, dirs: Iterable[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


def parse_mountinfo(text: str, exclude: Iterable[str] = ()) -> frozenset[str]:
    """"MOUNTPOINT (FSTYPE SOURCE)" for each mount, except at or below EXCLUDE.

    A second mount of the same kind stacked on the same point gets " #2", so a
    leaked bind mount on top of its twin is still new.
    """
    exclude = list(exclude)
    found: set[str] = set()
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5:
            continue
        point = _unescape(fields[4])
        if _under(point, exclude):
            continue
        fstype, source = (right.split() + ["", ""])[:2]
        item, layer = f"{point} ({fstype} {_unescape(source)})", 1
        while (f"{item} #{layer}" if layer > 1 else item) in found:
            layer += 1
        found.add(f"{item} #{layer}" if layer > 1 else item)
    return frozenset(found)


def parse_nft_tables(text: str) -> frozenset[str]:
    """"FAMILY NAME" from `nft list tables` ("table inet filter")."""
    return frozenset(" ".join(line.split()[1:3]) for line in text.splitlines()
                     if line.startswith("table "))


# --------------------------------------------------------------------- reading
def links() -> frozenset[str]:
    if shutil.which("ip"):
        proc = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=False)
        if proc.returncode == 0:
            return parse_ip_link(proc.stdout)
    return frozenset(os.listdir("/sys/class/net"))


def mounts() -> frozenset[str]:
    return parse_mountinfo(Path("/proc/self/mountinfo").read_text(), temp_dirs())


def own_cgroup_dirs() -> list[Path]:
    """Our own cgroup directory in every mounted hierarchy."""
    pure_v2 = (CGROUP_ROOT / "cgroup.controllers").exists()
    dirs = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if not controllers:
            root = CGROUP_ROOT if pure_v2 else CGROUP_ROOT / "unified"
        else:
            root = CGROUP_ROOT / controllers.removeprefix("name=")
        if (root / "cgroup.procs").exists():
            dirs.append(root / path.lstrip("/"))
    return dirs


def named_cgroups(depth: int = CGROUP_DEPTH) -> frozenset[str]:
    found = set()
    for own in own_cgroup_dirs():
        base = str(own).rstrip("/").count("/")
        for dirpath, dirnames, _ in os.walk(own):
            if dirpath.count("/") - base >= depth:
                dirnames.clear()
            for name in list(dirnames):
                if TEST_CGROUP_NAME.search(name):
                    found.add(os.path.join(dirpath, name))
                    dirnames.remove(name)  # its children are its test's, reported with it
    return frozenset(found)


def nft_tables() -> frozenset[str] | None:
    """None when nft is not installed (then the category is left out)."""
    if not shutil.which("nft"):
        return None
    proc = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False)
    return parse_nft_tables(proc.stdout) if proc.returncode == 0 else None


def sysctls(names: Iterable[str] = SYSCTLS) -> frozenset[str]:
    found = set()
    for name in names:
        try:
            value = Path("/proc/sys", *name.split(".")).read_text().strip()
        except OSError as exc:
            value = f"<unreadable: {exc.strerror}>"
        found.add(f"{name}={value}")
    return frozenset(found)


def net_paths(paths: Iterable[str] = NET_PATHS) -> frozenset[str]:
    found = set()
    for path in paths:
        if os.path.lexists(path):
            found.add(path)
            if path == "/run/netns" and os.path.isdir(path):
                found.update(f"{path}/{entry}" for entry in os.listdir(path))
    return frozenset(found)


def hidden_cgroup_dirs() -> frozenset[str] | None:
    """None where /sys/fs/cgroup/unified is no mount point (then the category is left out)."""
    unified = CGROUP_ROOT / "unified"
    if not os.path.ismount(unified) or not shutil.which("unshare"):
        return None
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"umount {unified} && find {unified} -mindepth 1 -maxdepth {CGROUP_DEPTH + 3} -type d"],
        capture_output=True, text=True, check=False)
    return frozenset(proc.stdout.split()) if proc.returncode == 0 else None


def take() -> Snapshot:
    snapshot: Snapshot = {"links": links(), "mounts": mounts(), "cgroups": named_cgroups(),
                          "sysctls": sysctls(), "netpaths": net_paths()}
    for name, items in (("nft", nft_tables()), ("hidden", hidden_cgroup_dirs())):
        if items is not None:
            snapshot[name] = items
    return snapshot


# --------------------------------------------------------------------- diffing
def _split(item: str) -> tuple[str, str] | None:
    key, sep, value = item.partition("=")
    return (key, value) if sep else None


def new_items(before: Mapping[str, frozenset[str]], after: Mapping[str, frozenset[str]]
              ) -> dict[str, list[str]]:
    """Category -> what AFTER has that BEFORE had not, sorted; empty categories left out.

    A "key=value" item whose key BEFORE had with another value is reported as
    "key: old -> new".  A category only one side has is not compared (a tool
    that appeared or vanished in between says nothing about the tests).
    """
    result: dict[str, list[str]] = {}
    for category in sorted(set(before) & set(after)):
        old_values = {kv[0]: kv[1] for kv in map(_split, before[category]) if kv}
        lines = []
        for item in sorted(after[category] - before[category]):
            pair = _split(item)
            if category == "sysctls" and pair and pair[0] in old_values:
                lines.append(f"{pair[0]}: {old_values[pair[0]]!r} -> {pair[1]!r}")
            else:
                lines.append(item)
        if lines:
            result[category] = lines
    return result


def describe(problems: Mapping[str, list[str]]) -> str:
    """The report: one block per category."""
    out = []
    for category, items in problems.items():
        out.append(f"{category}:")
        out.extend(f"  {item}" for item in items)
    return "\n".join(out)


if __name__ == "__main__":
    json.dump({k: sorted(v) for k, v in take().items()}, sys.stdout, indent=2)
    print()
