"""Rootless mode: the engine's core commands run by an unprivileged user these tests create.

The user comes from tests/rootless_user.py: its own subordinate id range,
a home under /tmp, nsbox installed in a venv of /usr/bin/python3, all
undone at the end.  Its networking (slirp4netns, pasta, published ports) is
in test_rootless_net.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import helpers
from rootless_user import NEEDS_USER, user_fixtures

USER = "nsbox-rootless-t"

pytestmark = NEEDS_USER
user, clean = user_fixtures(USER)


def test_container_root_is_the_user(clean):
    proc = clean.run("run", "--rm", "--network", "none", "busybox", "sh", "-c",
                     "id -u; head -1 /proc/self/uid_map; stat -c %u /bin/busybox")
    lines = proc.stdout.split("\n")
    assert lines[0] == "0"
    assert lines[1].split() == ["0", str(clean.uid), "1"]
    assert lines[2] == "0"  # image files owned by root inside, by the user on disk
    info = clean.run("info").stdout
    assert "Rootless: yes" in info and str(clean.home) in info
    # On the host, the container's processes belong to the user.
    cid = clean.run("run", "-d", "--network", "none", "busybox", "sleep", "300").stdout.strip()
    pid = int(clean.run("inspect", "-f", "{{.State.Pid}}", cid).stdout)
    assert os.stat(f"/proc/{pid}").st_uid == clean.uid
    root_dir = clean.home / ".local" / "share" / "nsbox"
    assert root_dir.is_dir() and root_dir.stat().st_uid == clean.uid
    # One small pause process holds the user's namespaces, and the container is in them.
    pauses = [p for p in clean.processes() if _argv0(p) == "nsbox-pause"]
    assert len(pauses) == 1
    assert os.readlink(f"/proc/{pauses[0]}/exe") == os.path.realpath("/bin/sh")
    assert os.readlink(f"/proc/{pauses[0]}/ns/user") == os.readlink(f"/proc/{pid}/ns/user")


def test_core_commands(clean):
    clean.run("run", "-d", "--name", "web", "--network", "none", "busybox", "sh", "-c",
              "echo started; exec sleep 300")
    ps = clean.run("ps").stdout
    assert "web" in ps and "Up" in ps
    assert clean.run("exec", "web", "sh", "-c", "echo in-$(hostname)").stdout.startswith("in-")
    assert clean.run("logs", "web").stdout == "started\n"
    assert clean.run("inspect", "-f", "{{.State.Status}}", "web").stdout.strip() == "running"
    clean.run("stop", "-t", "1", "web")
    assert clean.run("inspect", "-f", "{{.State.Status}}", "web").stdout.strip() == "exited"
    clean.run("start", "web")
    assert clean.run("inspect", "-f", "{{.State.Status}}", "web").stdout.strip() == "running"
    clean.run("rm", "-f", "web")
    assert clean.run("ps", "-a", "-q").stdout == ""
    # In the foreground (-i): the runtime's own `run`, told there are no cgroups.
    assert clean.run("run", "-i", "--rm", "--network", "none", "busybox", "sh", "-c",
                     "read x; echo got $x", input="hello\n").stdout == "got hello\n"
    # Exit codes, volumes, images.
    assert clean.run("run", "--rm", "--network", "none", "busybox", "sh", "-c", "exit 3",
                     check=False).returncode == 3
    clean.run("volume", "create", "data")
    clean.run("run", "--rm", "--network", "none", "-v", "data:/data", "busybox", "sh", "-c",
              "echo kept > /data/f")
    assert clean.run("run", "--rm", "--network", "none", "-v", "data:/data", "busybox",
                     "cat", "/data/f").stdout == "kept\n"
    clean.run("volume", "rm", "data")
    assert "busybox" in clean.run("images").stdout


def test_healthcheck(clean):
    """The monitor's health runner and `healthcheck run` as an unprivileged user."""
    def health() -> dict:
        out = clean.run("inspect", "-f", "{{json .State.Health}}", "hc").stdout
        return json.loads(out) if out.strip() not in ("", "null") else {}

    def wait_status(wanted: str) -> None:
        deadline = time.monotonic() + 60
        while health().get("Status") != wanted:
            assert time.monotonic() < deadline, health()
            time.sleep(0.3)

    clean.run("run", "-d", "--name", "hc", "--network", "none", "--health-cmd",
              "test -f /tmp/ok", "--health-interval", "1s", "busybox", "sh", "-c",
              "touch /tmp/ok; exec sleep 300")
    wait_status("healthy")
    assert "(healthy)" in clean.run("ps").stdout
    clean.run("exec", "hc", "rm", "/tmp/ok")
    wait_status("unhealthy")
    assert clean.run("healthcheck", "run", "hc", check=False).returncode == 1
    clean.run("rm", "-f", "hc")

    def runners() -> list[int]:
        found = []
        for pid in clean.processes():
            try:
                if Path(f"/proc/{pid}/comm").read_text().startswith("nsbhc-") and \
                        not helpers.pid_is_dead(pid):
                    found.append(pid)
            except OSError:
                pass
        return found

    deadline = time.monotonic() + 15
    while runners():
        assert time.monotonic() < deadline, "the health runner outlived its container"
        time.sleep(0.2)


def test_host_namespaces_and_refused_modes(clean):
    # --pid host: the host's /proc (a procfs needs a pid namespace of our own), still masked.
    proc = clean.run("run", "--rm", "--pid", "host", "--network", "none", "busybox", "sh", "-c",
                     "cat /proc/1/comm; head -c 5 /proc/kcore | wc -c")
    with open("/proc/1/comm") as f:
        assert proc.stdout.split("\n")[:2] == [f.read().strip(), "0"]
    # --network host: the host's interfaces.
    proc = clean.run("run", "--rm", "--network", "host", "busybox", "ls", "/sys/class/net")
    assert sorted(proc.stdout.split()) == sorted(os.listdir("/sys/class/net"))
    # A limit is refused with the host's pid namespace as well.
    proc = clean.run("run", "--rm", "--pid", "host", "-m", "64m", "busybox", "true", check=False)
    assert proc.returncode == 125 and "need cgroups" in proc.stderr
    for mode in ("remap", "auto"):
        proc = clean.run("run", "--rm", f"--userns={mode}", "busybox", "true", check=False)
        assert proc.returncode == 125 and "is for root" in proc.stderr


def test_layers_with_whiteouts_and_opaque_dirs(clean):
    """Overlay metadata of a multi-layer image in user.* xattrs (userxattr): the upper layer's
    whiteouts and opaque directories hide the lower content inside the container."""
    from imagedata import tar_bytes, write_docker_archive

    lower = tar_bytes([("a", "dir"), ("a/file", "file", b"gone"), ("a/other", "file", b"stays"),
                       ("opq", "dir"), ("opq/lower.txt", "file", b"hidden"),
                       ("redo", "dir"), ("redo/old", "file", b"old")])
    upper = tar_bytes([("a", "dir"), ("a/.wh.file", "file"), ("opq", "dir"),
                       ("opq/.wh..wh..opq", "file"), ("opq/upper.txt", "file", b"new"),
                       (".wh.redo", "file"), ("redo", "dir"), ("redo/new", "file", b"new")])
    shared = Path(tempfile.mkdtemp(prefix="nsbox-rootless-wh-"))
    os.chmod(shared, 0o755)
    try:
        archive = write_docker_archive(shared / "wh.tar", [([lower, upper], ["wh:test"], None)])
        os.chmod(archive, 0o644)
        clean.run("load", "-i", str(archive))
        proc = clean.run("run", "--rm", "--network", "none", "-v", "/bin/busybox:/bin/busybox:ro",
                         "wh:test", "/bin/busybox", "sh", "-c", "/bin/busybox ls -A /a /opq /redo")
        assert proc.stdout.split() == ["/a:", "other", "/opq:", "upper.txt", "/redo:", "new"]
        clean.run("rmi", "wh:test")
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_limits_are_refused(clean):
    proc = clean.run("run", "--rm", "-m", "64m", "--pids-limit", "10", "busybox", "true",
                     check=False)
    assert proc.returncode == 125
    lines = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "rootless" in lines[0] and "memory" in lines[0], proc.stderr
    assert "pids" in lines[0] and "need cgroups" in lines[0]
    assert "resource limits are refused" in clean.run("info").stdout
    assert clean.run("ps", "-a", "-q").stdout == ""  # nothing left of the refused run
    # pause and update need the cgroup the container does not have: a clear refusal.
    clean.run("run", "-d", "--name", "nocg", "--network", "none", "busybox", "sleep", "300")
    for args in (("pause", "nocg"), ("update", "--memory", "64m", "nocg")):
        proc = clean.run(*args, check=False)
        assert proc.returncode == 125 and "rootless containers get no cgroup" in proc.stderr
    assert clean.run("inspect", "-f", "{{.State.Status}}", "nocg").stdout.strip() == "running"


def test_fork_bomb_meets_rlimit_nproc(clean):
    """No pids cgroup in rootless mode: RLIMIT_NPROC (the default pids limit) stops a fork bomb."""
    # The bomb's shell dies at its first failed fork; counting and killing use builtins.
    proc = clean.run("run", "--rm", "--network", "none", "busybox", "sh", "-c",
                     "ulimit -u; ulimit -Hu; sh -c 'while :; do sleep 60 & done' 2>/dev/null; "
                     "set -- /proc/[0-9]*; echo started $#; kill -9 -1; exit 0", timeout=120)
    lines = proc.stdout.split("\n")
    assert lines[0] == "2048" and lines[1] == "2048"
    started = int(lines[2].split()[1])
    assert 1000 < started <= 2048, proc.stdout  # it did run, and stopped at the limit


def test_missing_subordinate_ids_is_a_clear_error(clean, tmp_path):
    saved = Path("/etc/subuid").read_bytes()
    try:
        Path("/etc/subuid").write_text("".join(
            line for line in saved.decode().splitlines(keepends=True)
            if not line.startswith(f"{USER}:")))
        # A fresh run root: no pause process yet, so one must be made (and cannot).
        run_root = Path(tempfile.mkdtemp(prefix="nsbox-rootless-run-"))
        os.chown(run_root, clean.uid, clean.gid)
        proc = clean.run("--runroot", str(run_root), "ps", check=False)
        shutil.rmtree(run_root, ignore_errors=True)
    finally:
        Path("/etc/subuid").write_bytes(saved)
    assert proc.returncode == 125
    assert "no subordinate uid range" in proc.stderr and "usermod" in proc.stderr


def test_keep_id(clean, tmp_path):
    """--userns=keep-id: the user's own uid and name inside, image owners kept (from a
    chowned copy of the layers, dropped with the image), files written to a bind mount
    the user's on the host."""
    shared = Path(tempfile.mkdtemp(prefix="nsbox-keepid-"))
    os.chown(shared, clean.uid, clean.gid)
    tree = helpers.build_busybox_rootfs(tmp_path / "rootfs")
    tarball = shared / "image.tar"
    subprocess.run(["tar", "-C", str(tree), "-cf", str(tarball), "."], check=True)
    os.chown(tarball, clean.uid, clean.gid)
    shifted = clean.home / ".local" / "share" / "nsbox" / "shifted"
    try:
        clean.run("import", str(tarball), "localhost/keepid:1")
        before = set(os.listdir(shifted)) if shifted.exists() else set()
        proc = clean.run("run", "--rm", "--network", "none", "--userns=keep-id",
                         "-v", f"{shared}:/shared", "localhost/keepid:1", "sh", "-c",
                         "id -u; id -g; whoami; stat -c '%u:%g' /bin/busybox /; "
                         "echo mine > /shared/out")
        assert proc.stdout.split() == [str(clean.uid), str(clean.gid), clean.name, "0:0", "0:0"]
        st = os.stat(shared / "out")
        assert (st.st_uid, st.st_gid) == (clean.uid, clean.gid)
        cid = clean.run("run", "-d", "--network", "none", "--userns=keep-id",
                        "localhost/keepid:1", "sleep", "300").stdout.strip()
        assert clean.run("exec", cid, "id", "-u").stdout.strip() == str(clean.uid)
        pid = int(clean.run("inspect", "-f", "{{.State.Pid}}", cid).stdout)
        assert os.stat(f"/proc/{pid}").st_uid == clean.uid
        clean.run("rm", "-f", cid)
        assert set(os.listdir(shifted)) > before
        clean.run("rmi", "localhost/keepid:1")
        assert set(os.listdir(shifted)) <= before
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_run_root_made_by_someone_else_is_refused(clean):
    run_root = Path(tempfile.mkdtemp(prefix="nsbox-rootless-foreign-"))  # root's, 0700
    try:
        proc = clean.run("--runroot", str(run_root), "ps", check=False)
    finally:
        shutil.rmtree(run_root, ignore_errors=True)
    assert proc.returncode == 125
    assert "not a directory only this user can use" in proc.stderr


def test_escape_battery_in_rootless_mode(clean):
    """The container-escape battery (tests/security_battery.py), as the rootless user."""
    import security_battery as battery

    cache = Path(tempfile.mkdtemp(prefix="nsbox-rootless-probe-"))
    os.chmod(cache, 0o755)
    try:
        probe = battery.build_probe(cache)
        os.chmod(probe, 0o755)
        results = battery.run_battery(
            lambda *args, check=False, timeout=120: clean.run(*args, check=check, timeout=timeout),
            probe, ["--network", "none"])
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    assert set(results) >= {name for name, _ in battery.CHECKS}
    unsafe = {name: result for name, result in results.items() if result[0] not in battery.SAFE}
    assert not unsafe


def _subordinate_start(path: str) -> int:
    with open(path) as f:
        return next(int(line.split(":")[1]) for line in f if line.startswith(f"{USER}:"))


def test_inspect_security_reports_the_rootless_mapping_and_nproc(clean):
    """Container root is the unprivileged user (not host root), and RLIMIT_NPROC is the pids limit."""
    clean.run("run", "-d", "--name", "post", "--network", "none", "busybox", "sleep", "300")
    clean.run("create", "--name", "post-created", "--network", "none", "busybox", "true")
    clean.run("run", "-d", "--name", "post-keepid", "--network", "none", "--userns=keep-id",
              "busybox", "sleep", "300")
    reports = {}
    for name in ("post", "post-created", "post-keepid"):
        report = json.loads(clean.run("inspect", "--security", "-f", "{{json .}}", name).stdout)
        reports[name] = {i["item"]: i for i in report["items"]}
        assert report["weaker"] == [], (name, report["weaker"])
    for name in ("post", "post-created"):  # live (/proc/PID/uid_map) and from the config
        mapping = reports[name]["user mapping"]
        assert mapping["value"] == f"container root = host uid {clean.uid} (rootless)", mapping
        assert not mapping["weaker"] and "unprivileged" in mapping["why"]
        pids = reports[name]["pids limit"]
        assert pids["value"] == "RLIMIT_NPROC 2048" and not pids["weaker"], pids
        assert str(clean.uid) in pids["why"]
    # keep-id: the container's root is the first subordinate id.
    mapping = reports["post-keepid"]["user mapping"]
    assert mapping["value"] == (f"container root = host uid "
                                f"{_subordinate_start('/etc/subuid')} (rootless)"), mapping
    text = clean.run("inspect", "--security", "post").stdout
    assert "container root is host root" not in text and "unlimited" not in text
    assert "0 item(s) weaker" in text


def test_pause_process_ends_on_term_only_without_containers(clean):
    clean.run("run", "-d", "--name", "keeper", "--network", "none", "busybox", "sleep", "300")
    pause = _pause_pid(clean)
    os.kill(pause, signal.SIGTERM)
    time.sleep(1)
    assert _alive(pause), "the pause process ended under a running container"
    assert clean.run("exec", "keeper", "echo", "still").stdout == "still\n"
    clean.run("rm", "-f", "keeper")
    assert _pause_pid(clean) == pause
    os.kill(pause, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _alive(pause) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pause), f"an idle pause process outlived SIGTERM: {_sharing(pause)}"
    deadline = time.monotonic() + 10
    while clean.processes() and time.monotonic() < deadline:
        time.sleep(0.05)  # until reaped
    assert not clean.processes()
    # The next command makes a new one.
    assert clean.run("run", "--rm", "--network", "none", "busybox", "echo", "again").stdout == "again\n"
    assert _pause_pid(clean) != pause


def test_system_reset(clean):
    """`system reset` as the user: no container, process, storage or mount of the user is left."""
    clean.run("run", "-d", "--name", "r1", "--network", "none", "busybox", "sleep", "300")
    clean.run("run", "--name", "r2", "--network", "none", "-v", "rdata:/data", "busybox", "true")
    clean.run("volume", "create", "rvol")
    pid = int(clean.run("inspect", "-f", "{{.State.Pid}}", "r1").stdout)
    pause = _pause_pid(clean)
    with open(f"/proc/{pause}/mountinfo") as f:
        assert str(clean.home) in f.read()  # the container's overlay, in the user's namespace
    root_dir = clean.home / ".local" / "share" / "nsbox"
    run_root = Path(f"/tmp/nsbox-run-{clean.uid}")
    assert root_dir.is_dir() and run_root.is_dir()
    # Without -f and without a terminal: a one-line refusal, nothing removed.
    proc = clean.run("system", "reset", check=False)
    assert proc.returncode == 125
    assert proc.stderr.startswith("Error:") and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "--force" in proc.stderr
    assert _alive(pid) and root_dir.is_dir()
    proc = clean.run("system", "reset", "-f")
    assert proc.stderr == ""
    deadline = time.monotonic() + 10
    while clean.processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not clean.processes()
    assert not root_dir.exists() and not run_root.exists()
    with open("/proc/self/mountinfo") as f:
        assert str(clean.home) not in f.read()
    # A fresh start works.
    assert clean.run("ps", "-a", "-q").stdout == ""
    assert clean.run("volume", "ls", "-q").stdout == ""
    assert clean.run("run", "--rm", "--network", "none", "busybox", "echo", "new").stdout == "new\n"


def _pause_pid(user) -> int:  # noqa: ANN001 - RootlessUser
    pauses = [p for p in user.processes() if _argv0(p) == "nsbox-pause"]
    assert len(pauses) == 1, pauses
    return pauses[0]


def _sharing(pid: int) -> list[str]:
    """Processes in PID's user or mount namespace (PID's own left out)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != pid:
            try:
                if any(os.stat(f"/proc/{entry}/ns/{ns}").st_ino == os.stat(f"/proc/{pid}/ns/{ns}").st_ino
                       for ns in ("user", "mnt")):
                    found.append(f"{entry} {_argv0(int(entry))}")
            except OSError:
                pass
    return found


def _alive(pid: int) -> bool:
    return not helpers.pid_is_dead(pid)


def _argv0(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""
