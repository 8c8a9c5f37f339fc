"""Inject crashes into `nsbox run` and check what the engine makes of them afterwards.

A fault is a SIGKILL of one process at one step: either at a named crash
point (NSBOX_TEST_CRASHPOINT=<name>: the process that reaches
procs.crashpoint(<name>) kills itself there) or after a delay (a timed
kill of the CLI, or of the container's monitor, swept over a window).
Then the invariants of docs/engine.md ("Crash safety"):

- the record matches /proc: a `running` container's init is alive, and an
  exited or created one has no process left in its cgroups;
- a --rm container is gone within SETTLE seconds (while commands run);
- after `rm -f` of what is left and `container prune`: no row, no cgroup,
  no mount, no monitor or container process; exit files only of --rm
  containers removed by their monitor (kept EXIT_FILE_TTL for `wait ID`).

Used by tests/test_engine_crash.py (named points, in `make test`) and
tests/stress.py (`make stress`: timed kills, many at once).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import helpers
from helpers import mounts_under

NSBOX = str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "nsbox")
CGROUP_ROOT = "/sys/fs/cgroup"
SETTLE = 15.0  # seconds a --rm container may take to be gone


class Box:
    """nsbox on its own --root/--runroot below BASE."""

    def __init__(self, base: Path) -> None:
        self.base = Path(base)
        self.prefix = [NSBOX, "--root", str(self.base / "lib"), "--runroot", str(self.base / "run")]

    def argv(self, *args: str) -> list[str]:
        return [*self.prefix, *args]

    def __call__(self, *args: str, crashpoint: str = "", timeout: float = 60,
                 check: bool = True) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        env.pop("NSBOX_TEST_CRASHPOINT", None)
        if crashpoint:
            env["NSBOX_TEST_CRASHPOINT"] = crashpoint
        proc = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout,
                              env=env)
        if check and proc.returncode != 0:
            raise AssertionError(f"nsbox {' '.join(args)} -> {proc.returncode}\n{proc.stderr}")
        return proc

    def rows(self) -> dict[str, tuple[str, str]]:
        """id -> (name, status) of every container, as `ps -a` (which reconciles) shows it."""
        out = self("ps", "-a", "--no-trunc", "--format", "{{.ID}}\t{{.Names}}\t{{.Status}}").stdout
        rows = {}
        for line in out.splitlines():
            cid, name, status = line.split("\t")
            assert cid not in rows, f"two records of {cid}"
            rows[cid] = (name, status)
        return rows

    def inspect(self, ref: str) -> dict:
        import json
        proc = self("inspect", ref, check=False)
        return json.loads(proc.stdout)[0] if proc.returncode == 0 else {}

    def exit_files(self) -> list[str]:
        exits = self.base / "run" / "exits"
        return sorted(os.listdir(exits)) if exits.is_dir() else []


def cgroups_of(cid: str) -> list[str]:
    """The container's cgroup directories (nsbox-<id>), wherever they are."""
    wanted = f"nsbox-{cid}"
    found = []
    for dirpath, dirnames, _files in os.walk(CGROUP_ROOT):
        if wanted in dirnames:
            found.append(os.path.join(dirpath, wanted))
        dirnames[:] = [d for d in dirnames if not d.startswith("nsbox-") or d == wanted]
    return found


def cgroup_pids(dirs: list[str]) -> list[int]:
    pids: set[int] = set()
    for d in dirs:
        for dirpath, _dirs, _files in os.walk(d):
            try:
                with open(os.path.join(dirpath, "cgroup.procs")) as f:
                    pids.update(int(x) for x in f.read().split())
            except OSError:
                pass
    return sorted(pids)


def _alive(pid: int) -> bool:
    return not helpers.pid_is_dead(pid)


def processes_of(cid: str) -> list[str]:
    """Live processes that belong to CID: its monitor (by name or argv) or in its cgroups."""
    found = []
    tag = ("nsbmon-" + cid[:8]).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or not _alive(int(entry)):
            continue
        try:
            with open(f"/proc/{entry}/comm", "rb") as f:
                comm = f.read().strip()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if comm == tag or (cid.encode() in cmdline and b"nsbox.engine.monitor" in cmdline):
            found.append(f"{entry} {comm.decode()}")
    found += [f"{pid} (in its cgroup)" for pid in cgroup_pids(cgroups_of(cid)) if _alive(pid)]
    return found


def check_consistent(box: Box, cid: str, status: str, grace: float = 3.0) -> list[str]:
    """What is wrong with CID's record against /proc (nothing: []), once settled.

    A container being started shows `created` while its processes appear:
    a mismatch only counts if it lasts GRACE seconds.
    """
    deadline = time.monotonic() + grace
    while True:
        problems = _mismatch(box, cid, status)
        if not problems or time.monotonic() > deadline:
            return problems
        time.sleep(0.05)


def _mismatch(box: Box, cid: str, status: str) -> list[str]:
    state = box.inspect(cid).get("State") or {}
    if not state:
        return []  # removed meanwhile
    pids = [p for p in cgroup_pids(cgroups_of(cid)) if _alive(p)]
    if state.get("Running"):
        if not _alive(state.get("Pid", 0)):
            return [f"{cid[:12]}: recorded running ({status}) but its init {state.get('Pid')} is dead"]
        return []
    if pids:
        return [f"{cid[:12]}: recorded {state.get('Status')} ({status}) but processes {pids} run"]
    return []


def wait_settled(box: Box, rm_ids: set[str], timeout: float = SETTLE) -> dict[str, tuple[str, str]]:
    """Poll `ps -a` until no --rm container of RM_IDS is left and none is being made or started."""
    deadline = time.monotonic() + timeout
    while True:
        rows = box.rows()
        pending = [c for c in rows if c in rm_ids]
        if not pending or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def leftovers(box: Box, ids: set[str], rm_ids: set[str]) -> dict[str, list[str]]:
    """After `rm -f` of everything and `container prune`: what is left, by kind."""
    rows = box.rows()
    if rows:
        box("rm", "-f", *rows, check=False)
    box("container", "prune", "-f", check=False)
    left: dict[str, list[str]] = {"row": list(box.rows())}
    deadline = time.monotonic() + 5
    while True:
        left["cgroup"] = [d for cid in ids for d in cgroups_of(cid)]
        left["process"] = [p for cid in ids for p in processes_of(cid)]
        left["mount"] = mounts_under(box.base)
        if not any(left.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    # A user's rm takes the exit file along; a --rm removal keeps it a while for `wait ID`.
    left["exit file"] = [e for e in box.exit_files() if e in ids and e not in rm_ids]
    return {k: v for k, v in left.items() if v}


def kill_monitor_of(cid_prefix_or_name: str) -> bool:
    """SIGKILL every process named like a container's monitor (nsbmon-<id prefix>)."""
    killed = False
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() == "nsbmon-" + cid_prefix_or_name[:8]:
                    os.kill(int(entry), signal.SIGKILL)
                    killed = True
        except OSError:
            pass
    return killed
