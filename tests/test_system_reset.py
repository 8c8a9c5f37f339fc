"""`nsbox system reset` as root, on a private --root/--runroot (the rootless case is in
tests/test_rootless.py)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import helpers
from test_engine_cli import Nsbox


def _alive(pid: int) -> bool:
    return not helpers.pid_is_dead(pid)


def test_reset_clears_a_private_root(tmp_path: Path):
    nsbox = Nsbox(tmp_path)
    # What other commands leave in the run root (published ports' records, DNS
    # servers' configs, the runtimes' ociVersion cache) goes too.
    for name in ("ports", "networks"):
        (tmp_path / "run" / name).mkdir(parents=True)
    (tmp_path / "run" / "oci-versions.json").write_text("{}")
    nsbox("run", "-d", "--name", "up", "-v", "anon:/data", "busybox", "sleep", "300")
    nsbox("create", "--name", "made", "busybox", "true")
    nsbox("volume", "create", "kept")
    pid = int(nsbox("inspect", "-f", "{{.State.Pid}}", "up").stdout)
    assert helpers.mounts_under(str(tmp_path))
    proc = nsbox("system", "reset", "--force")
    assert proc.stderr == ""
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)
    assert not (tmp_path / "lib").exists() and not (tmp_path / "run").exists()
    assert not helpers.mounts_under(str(tmp_path))
    # The engine starts again from nothing.
    assert nsbox.ids() == []
    assert nsbox("volume", "ls", "-q").stdout == ""
    assert nsbox("run", "--rm", "busybox", "echo", "fresh").stdout == "fresh\n"


def test_reset_keeps_what_is_not_the_engines(tmp_path: Path):
    """--root may name any directory: only the engine's own entries go, and the directory
    itself only when that empties it."""
    root = tmp_path / "lib"
    root.mkdir()
    (root / "notes.txt").write_text("mine\n")
    nsbox = Nsbox(tmp_path)
    nsbox("run", "--name", "done", "busybox", "true")
    proc = nsbox("system", "reset", "-f")
    assert (root / "notes.txt").read_text() == "mine\n"
    assert sorted(os.listdir(root)) == ["notes.txt"]
    assert "notes.txt" in proc.stderr and "Error" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_reset_asks_first(tmp_path: Path):
    nsbox = Nsbox(tmp_path)
    nsbox("create", "--name", "stays", "busybox", "true")
    # No terminal on stdin and no --force: a one-line refusal.
    proc = nsbox("system", "reset", check=False)
    assert proc.returncode == 125
    assert proc.stderr.startswith("Error:") and len(proc.stderr.splitlines()) == 1
    assert "--force" in proc.stderr
    # A terminal: the question, and "n" keeps everything.
    master, slave = os.openpty()
    try:
        os.write(master, b"n\n")
        proc = subprocess.run([*nsbox.prefix, "system", "reset"], stdin=slave,
                              capture_output=True, text=True, timeout=60)
    finally:
        os.close(slave)
        os.close(master)
    assert proc.returncode == 0, proc.stderr
    assert "Are you sure you want to continue? [y/N]" in proc.stdout
    assert str(tmp_path / "lib") in proc.stdout
    assert len(nsbox.ids()) == 1
