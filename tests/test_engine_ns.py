"""`nsbox ns` (lsns for containers) and nsbox.namespaces(), checked against util-linux's lsns.

lsns reads the same /proc links on its own; every namespace nsbox lists for a
container must be one lsns lists, with the same type, and for namespaces of
the containers alone (not the host's, whose process count moves with
everything else running on the machine) the same process count and PID.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest
from test_engine_cli import Nsbox, one_line_error

from nsbox.engine.observe import namespaces as nsmod

TYPES = ("mnt", "uts", "ipc", "pid", "net", "user", "cgroup", "time")


def lsns() -> dict[int, dict]:
    if not shutil.which("lsns"):
        pytest.skip("lsns (util-linux) is not installed")
    out = subprocess.run(["lsns", "-J", "-o", "NS,TYPE,NPROCS,PID"], capture_output=True,
                         text=True, check=True, timeout=30).stdout
    return {int(row["ns"]): row for row in json.loads(out)["namespaces"]}


def links(pid: int) -> dict[str, int]:
    return {kind: os.stat(f"/proc/{pid}/ns/{kind}").st_ino for kind in TYPES}


def pid_of(nsbox: Nsbox, name: str) -> int:
    return int(nsbox("inspect", "-f", "{{.State.Pid}}", name).stdout)


@pytest.fixture
def trio(nsbox):
    """a; b in a's pid and network namespaces; c in a's ipc namespace with two processes."""
    nsbox("run", "-d", "--name", "a", "busybox", "sleep", "600")
    nsbox("run", "-d", "--name", "b", "--pid", "container:a", "--network", "container:a",
          "busybox", "sleep", "600")
    nsbox("run", "-d", "--name", "c", "--ipc", "container:a", "busybox", "sh", "-c",
          "sleep 600 & sleep 600 & wait")
    deadline = time.monotonic() + 30
    while len(nsbox("top", "c").stdout.splitlines()) < 4:  # header, sh, two sleeps
        assert time.monotonic() < deadline, nsbox("top", "c").stdout
        time.sleep(0.1)
    return nsbox


def test_every_container_namespace_matches_lsns(trio):
    rows = json.loads(trio("ns", "--format", "json").stdout)
    theirs = lsns()
    by_inode = {r["ns"]: r for r in rows}
    for name in ("a", "b", "c"):
        for kind, inode in links(pid_of(trio, name)).items():
            assert inode in by_inode, (name, kind)
            assert name in by_inode[inode]["containers"]
            assert by_inode[inode]["type"] == kind
    for row in rows:
        assert row["ns"] in theirs, row
        assert theirs[row["ns"]]["type"] == row["type"]
        if not row["host"]:
            assert row["nprocs"] == theirs[row["ns"]]["nprocs"], row
            assert row["pid"] == theirs[row["ns"]]["pid"], row
    # c runs sh and two sleeps: its pid namespace has three processes.
    cpid = by_inode[links(pid_of(trio, "c"))["pid"]]
    assert cpid["nprocs"] == 3 and cpid["containers"] == ["c"]
    # The user and time namespaces are the host's (no --userns, no --timens).
    assert by_inode[links(pid_of(trio, "a"))["user"]]["host"] is True


def test_shared_namespaces_name_both_containers(trio):
    rows = json.loads(trio("ns", "--format", "json").stdout)
    a = links(pid_of(trio, "a"))
    by_inode = {r["ns"]: r for r in rows}
    assert by_inode[a["pid"]]["containers"] == ["a", "b"]
    assert by_inode[a["net"]]["containers"] == ["a", "b"]
    assert by_inode[a["ipc"]]["containers"] == ["a", "c"]
    assert by_inode[a["mnt"]]["containers"] == ["a"]
    view = json.loads(trio("ns", "b", "--format", "json").stdout)
    status = {r["type"]: r for r in view["Namespaces"]}
    assert [r["type"] for r in view["Namespaces"]] == list(TYPES)
    assert status["pid"]["status"] == "shared" and status["pid"]["shared_with"] == ["a"]
    assert status["net"]["status"] == "shared" and status["net"]["shared_with"] == ["a"]
    assert status["mnt"]["status"] == "private" and status["uts"]["status"] == "private"
    assert status["user"]["status"] == "host"
    assert status["pid"]["container"] == a["pid"]
    text = trio("ns", "b").stdout
    assert "shared with a" in text.splitlines()[4 + 1]  # header lines, then mnt uts ipc pid
    assert "private" in text.splitlines()[2]
    assert "shared with c" in trio("ns", "a").stdout


def test_table_sort_and_python_api(trio, tmp_path):
    table = trio("ns", "--sort", "nprocs").stdout.splitlines()
    assert table[0].split() == ["NS", "TYPE", "NPROCS", "PID", "HOST", "CONTAINERS"]
    counts = [int(line.split()[2]) for line in table[1:]]
    assert counts == sorted(counts)
    types = [line.split()[1] for line in trio("ns", "--sort", "TYPE").stdout.splitlines()[1:]]
    assert types == sorted(types, key=TYPES.index)

    import nsbox
    from nsbox.engine.containers import Engine
    engine = Engine(root=str(tmp_path / "lib"), run_root=str(tmp_path / "run"))
    api_rows = nsbox.namespaces(engine=engine)
    cli_rows = json.loads(trio("ns", "--format", "json").stdout)
    assert {r["ns"] for r in api_rows} == {r["ns"] for r in cli_rows}
    view = nsbox.namespaces("b", engine=engine)
    assert {r["type"]: r["status"] for r in view["Namespaces"]}["net"] == "shared"
    assert nsbox.get("b", engine=engine).namespaces() == nsbox.namespaces("b", engine=engine)


def test_bad_input_is_one_line_exit_125(nsbox):
    nsbox("run", "-d", "--name", "a", "busybox", "sleep", "600")
    for argv in (["ns", "--sort", "bogus"], ["ns", "--format", "yaml"], ["ns", "nosuch"],
                 ["ns", "a", "b"], ["ns", "a", "--sort", "ns"]):
        proc = nsbox(*argv, check=False)
        assert proc.returncode == 125, argv
        one_line_error(proc)
    nsbox("stop", "-t", "0", "a")
    proc = nsbox("ns", "a", check=False)
    assert proc.returncode == 125 and "not running" in one_line_error(proc)
    assert nsbox("ns").stdout.splitlines()[1:] == []  # nothing runs: only the header


def test_scan_reads_every_process_and_parses_links():
    table = nsmod.scan()
    me = os.getpid()
    assert table[me] == links(me)
    host = nsmod.host_namespaces(table)
    assert set(host) == set(TYPES)
    assert nsmod._inode("net:[4026531840]") == 4026531840
