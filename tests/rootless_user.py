"""An unprivileged user for rootless tests, with nsbox installed for it; undone afterwards.

`made_user(name)` is a context manager giving a RootlessUser: the account (by
useradd, or, where /etc is read-only as in the cgroup v2 lane's guest, by
entries in bind-mounted copies of its files), a subordinate id range of its
own, a home under /tmp and an installation of nsbox in a venv made from
Debian's /usr/bin/python3 (the development interpreter lives under /root,
out of a normal user's reach).  On exit the user's processes are killed,
the account removed and /etc/subuid and /etc/subgid restored byte for byte.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"
SUBID_FILES = ("/etc/subuid", "/etc/subgid")
# The skip marks of a test module whose tests run as a user made_user creates.
NEEDS_USER = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create the test user"),
    pytest.mark.skipif(not (shutil.which("newuidmap") and shutil.which("useradd")
                            and os.path.exists(SYSTEM_PYTHON)),
                       reason="needs uidmap, useradd and /usr/bin/python3"),
]


class RootlessUser:
    def __init__(self, name: str, home: Path) -> None:
        self.name = name
        self.home = home
        entry = pwd.getpwnam(name)
        self.uid, self.gid = entry.pw_uid, entry.pw_gid
        self.nsbox = str(home / "venv" / "bin" / "nsbox")
        self.cgroup: str | None = None  # a cgroup2 dir to start the user's commands in

    def run(self, *args: str, check: bool = True, timeout: float = 60, env: dict | None = None,
            input: str | None = None) -> subprocess.CompletedProcess:  # noqa: A002
        environment = {"HOME": str(self.home), "PATH": "/usr/bin:/bin", **(env or {})}
        argv = ["runuser", "-u", self.name, "--", "env", "-i",
                *(f"{k}={v}" for k, v in environment.items()), self.nsbox, *args]
        if self.cgroup:
            # Moved in as root, then the user's command (and what it starts) inherits it.
            argv = ["sh", "-c", f'echo $$ > "{self.cgroup}/cgroup.procs" && exec "$@"', "sh",
                    *argv]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input,
                              cwd="/")
        if check and proc.returncode != 0:
            raise AssertionError(f"nsbox {' '.join(args)} -> {proc.returncode}\n{proc.stderr}")
        return proc

    def remove_containers(self) -> None:
        """Remove every container the user has (what a test left), without checking."""
        ids = self.run("ps", "-a", "-q", "--no-trunc", check=False).stdout.split()
        if ids:
            self.run("rm", "-f", *ids, check=False)

    def processes(self) -> list[int]:
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.stat(f"/proc/{entry}").st_uid == self.uid:
                        pids.append(int(entry))
                except FileNotFoundError:
                    pass
        return pids

    def kill_all(self) -> None:
        for _ in range(50):
            pids = self.processes()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)


def user_fixtures(name: str):  # noqa: ANN201 - two pytest fixtures
    """The fixtures of a module whose tests run as the user NAME: `user` (made once for
    the module) and `clean` (the user, with every container removed after the test).
    Bind them in the module: `user, clean = user_fixtures(NAME)`."""

    @pytest.fixture(scope="module")
    def user():  # noqa: ANN202
        with made_user(name) as box:
            yield box

    @pytest.fixture
    def clean(user):  # noqa: ANN001, ANN202
        yield user
        user.remove_containers()

    return user, clean


def _free_subid_start() -> int:
    end = 400000
    for path in SUBID_FILES:
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    fields = line.strip().split(":")
                    if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
                        end = max(end, int(fields[1]) + int(fields[2]))
    return end


def _add_account_by_hand(name: str, home: Path, stack: contextlib.ExitStack) -> None:
    """Where /etc is read-only: writable copies of its account files, bind-mounted over them."""
    uid = max(p.pw_uid for p in pwd.getpwall() if p.pw_uid < 60000) + 1
    copies = Path(tempfile.mkdtemp(prefix="nsbox-etc-"))
    stack.callback(shutil.rmtree, copies, ignore_errors=True)
    lines = {"passwd": f"{name}:x:{uid}:{uid}::{home}:/bin/sh\n", "group": f"{name}:x:{uid}:\n",
             "subuid": "", "subgid": ""}
    for base, line in lines.items():
        original = Path("/etc") / base
        copy = copies / base
        copy.write_bytes(original.read_bytes() if original.exists() else b"")
        with open(copy, "a") as f:
            f.write(line)
        os.chmod(copy, 0o644)
        if not original.exists():
            raise RuntimeError(f"{original} is missing and /etc is read-only")
        subprocess.run(["mount", "--bind", str(copy), str(original)], check=True)
        stack.callback(subprocess.run, ["umount", str(original)], check=False)


@contextlib.contextmanager
def made_user(name: str):
    with contextlib.ExitStack() as stack:
        saved = {p: Path(p).read_bytes() if os.path.exists(p) else None for p in SUBID_FILES}
        home = Path(tempfile.mkdtemp(prefix="nsbox-rootless-"))
        os.chmod(home, 0o755)
        stack.callback(shutil.rmtree, home, ignore_errors=True)
        if os.access("/etc/passwd", os.W_OK):
            subprocess.run(["userdel", name], capture_output=True, check=False)  # a crashed run
            subprocess.run(["useradd", "-M", "-d", str(home), "-s", "/bin/sh",
                            "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0", name],
                           check=True, capture_output=True)
            stack.callback(subprocess.run, ["userdel", name], capture_output=True, check=False)
        else:
            _add_account_by_hand(name, home, stack)

        def restore() -> None:
            for path, content in saved.items():
                if content is not None and os.access(path, os.W_OK):
                    Path(path).write_bytes(content)
        stack.callback(restore)
        start = _free_subid_start()
        for path in SUBID_FILES:
            with open(path, "a") as f:
                f.write(f"{name}:{start}:65536\n")
        user = RootlessUser(name, home)
        # The default run root of a user without XDG_RUNTIME_DIR (rootless.default_run_root).
        stack.callback(shutil.rmtree, f"/tmp/nsbox-run-{user.uid}", ignore_errors=True)
        stack.callback(user.kill_all)  # runs first: before the account goes
        os.chown(home, user.uid, user.gid)
        # An installation as pip would make one: a venv, nsbox on its path, the launchers.
        subprocess.run(["runuser", "-u", name, "--", SYSTEM_PYTHON, "-m", "venv", "--without-pip",
                        str(home / "venv")], check=True, capture_output=True)
        site = next((home / "venv" / "lib").glob("python3*/site-packages"))
        # pyroute2, nsbox's one dependency the bridge networks need (pip would have
        # installed it): this interpreter's copy, through a directory that holds it alone.
        extra = home / "venv" / "deps"
        extra.mkdir()
        spec = importlib.util.find_spec("pyroute2")
        if spec is not None and spec.submodule_search_locations:
            (extra / "pyroute2").symlink_to(spec.submodule_search_locations[0])
        (site / "nsbox.pth").write_text(f"{REPO}\n{extra}\n")
        for binary in ("nsbox", "nsbox-runtime"):
            text = (REPO / "bin" / binary).read_text().split("\n", 1)[1]
            launcher = home / "venv" / "bin" / binary
            launcher.write_text(f"#!{home}/venv/bin/python\n{text}")
            os.chmod(launcher, 0o755)
        for path in (site / "nsbox.pth", home / "venv" / "bin" / "nsbox",
                     home / "venv" / "bin" / "nsbox-runtime"):
            os.chown(path, user.uid, user.gid)
        yield user
        user.kill_all()
        assert not user.processes()
