"""Healthchecks: --health-*, an image's Healthcheck, the monitor's runner, `healthcheck run`.

Real containers (busybox) in a private --root/--runroot (tests/crash_harness.Box),
and probes run on the host; the pure logic (flag parsing, status rules) is in
test_engine_health_units.py.  The
machine is shared and loaded: intervals are short (1s) but every wait for a
status is generous and polls.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from crash_harness import NSBOX, Box, kill_monitor_of, leftovers
from helpers import pid_is_dead

from nsbox.engine.health import config as hconfig

WAIT = 60.0  # seconds a status may take to come on a loaded machine


# ------------------------------------------------------------------ the box and helpers
@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory):
    b = Box(tmp_path_factory.mktemp("health"))
    b("run", "--rm", "busybox", "true")  # builds busybox once
    yield b
    left = leftovers(b, set(), set())
    assert left == {}, left
    assert _wait_for(lambda: not _runners(b), 15), _runners(b)


def _wait_for(cond, timeout: float = WAIT, step: float = 0.2) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())


def _cmdlines() -> dict[int, bytes]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and not pid_is_dead(int(entry)):
            try:
                out[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                pass
    return out


def _runners(box: Box) -> list[int]:
    """Live health runners of BOX's containers (their command lines name its root)."""
    found = []
    for pid, cmd in _cmdlines().items():
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith("nsbhc-") and str(box.base).encode() in cmd:
            found.append(pid)
    return found


def _health(box: Box, name: str) -> dict:
    return (box.inspect(name).get("State") or {}).get("Health") or {}


def _status(box: Box, name: str) -> str:
    return box("ps", "-a", "--filter", f"name={name}", "--format", "{{.Status}}").stdout.strip()


def _run(box: Box, name: str, *flags: str, cmd: tuple[str, ...] = ("sleep", "1000")) -> str:
    return box("run", "-d", "--name", name, *flags, "busybox", *cmd).stdout.strip()


# ------------------------------------------------------------------ probes on the host
def test_probe_kills_the_whole_tree_at_its_timeout():
    """probe.run on a host command: a check and its background child go at the timeout."""
    from nsbox.engine.health import probe
    began = time.monotonic()
    result = probe.run(["sh", "-c", "sleep 4247 & sleep 4248; wait"], 0.5)
    assert time.monotonic() - began < 10
    assert result.exit_code == -1 and result.output == "Health check exceeded timeout (0.5s)"
    assert _wait_for(lambda: not _sleepers("4247") and not _sleepers("4248"), 5)


def test_probe_output_and_exit_code():
    from nsbox.engine.health import probe
    result = probe.run(["sh", "-c", "head -c 10000 /dev/zero | tr '\\0' x; echo err >&2; exit 4"],
                       30)
    assert result.exit_code == 4
    assert result.output == "x" * 4096 + "..."
    result = probe.run(["sh", "-c", "echo out; echo err >&2"], 30)
    assert (result.exit_code, result.output) == (0, "out\nerr\n")
    assert result.start <= result.end
    # A background process holding the pipe does not keep the result waiting.
    began = time.monotonic()
    result = probe.run(["sh", "-c", "sleep 4249 & echo started"], 30)
    assert result.exit_code == 0 and result.output == "started\n"
    assert time.monotonic() - began < 10
    for pid in _sleepers("4249"):
        os.kill(pid, signal.SIGKILL)


# ------------------------------------------------------------------ real containers
def test_passing_check_becomes_healthy(box):
    cid = _run(box, "hc-pass", "--health-cmd", "echo fine", "--health-interval", "1s")
    try:
        assert _wait_for(lambda: _health(box, "hc-pass").get("Status") == "healthy"), \
            _health(box, "hc-pass")
        health = _health(box, "hc-pass")
        assert health["FailingStreak"] == 0
        entry = health["Log"][-1]
        assert entry["ExitCode"] == 0 and entry["Output"] == "fine\n"
        assert entry["Start"] <= entry["End"] and entry["End"].endswith("Z")
        assert _status(box, "hc-pass").endswith("(healthy)")
        config = box.inspect("hc-pass")["Config"]["Healthcheck"]
        assert config["Test"] == ["CMD-SHELL", "echo fine"] and config["Interval"] == 10 ** 9
        assert _runners_by_name(cid)
        assert _health_events(box, cid) == ["health_status: healthy"]  # once: on the change
    finally:
        box("rm", "-f", "hc-pass")
    assert _wait_for(lambda: not _runners_by_name(cid), 15), "the runner outlived its container"


def _health_events(box: Box, cid: str) -> list[str]:
    """The health_status actions the journal holds for CID, oldest first."""
    from nsbox.engine import events
    return [e.Action for e in events.read(str(box.base / "lib"))
            if e.Actor.ID == cid and e.Action.startswith("health_status")]


def test_failing_check_becomes_unhealthy_after_retries(box):
    cid = _run(box, "hc-fail", "--health-cmd", "echo broken >&2; exit 3", "--health-interval", "1s",
         "--health-retries", "3")
    try:
        assert _wait_for(lambda: _health(box, "hc-fail").get("Status") == "unhealthy"), \
            _health(box, "hc-fail")
        health = _health(box, "hc-fail")
        assert health["FailingStreak"] >= 3
        # Never unhealthy before the third failure in a row.
        assert len(health["Log"]) >= 3
        assert all(e["ExitCode"] == 3 and e["Output"] == "broken\n" for e in health["Log"])
        assert _status(box, "hc-fail").endswith("(unhealthy)")
        assert _health_events(box, cid) == ["health_status: unhealthy"]
        time.sleep(0.1)
        assert _wait_for(lambda: len(_health(box, "hc-fail")["Log"]) == 5, 30)
        time.sleep(2.5)
        assert len(_health(box, "hc-fail")["Log"]) == 5  # the last five only
    finally:
        box("rm", "-f", "hc-fail")


def test_checks_emit_docker_exec_events(box):
    """Each check is an exec for `events` too: exec_create/exec_start: CMD, exec_die, one execID."""
    cid = _run(box, "hc-exec", "--health-cmd", "test -f /tmp/ok", "--health-interval", "1s",
               "--health-retries", "1", cmd=("sh", "-c", "touch /tmp/ok; sleep 1000"))
    try:
        assert _wait_for(lambda: _health(box, "hc-exec").get("Status") == "healthy")
        box("exec", "hc-exec", "rm", "/tmp/ok")
        assert _wait_for(lambda: _health(box, "hc-exec").get("Status") == "unhealthy")
    finally:
        box("rm", "-f", "hc-exec")
    from nsbox.engine import events
    mine = [e for e in events.read(str(box.base / "lib")) if e.Actor.ID == cid]
    checks: dict[str, list] = {}
    for e in mine:
        if e.Action.startswith("exec_") and "execID" in e.Actor.Attributes:
            checks.setdefault(e.Actor.Attributes["execID"], []).append(e)
    shown = "/bin/sh -c test -f /tmp/ok"
    runs = {xid: evs for xid, evs in checks.items() if evs[0].Action == f"exec_create: {shown}"}
    assert len(runs) >= 2, [e.Action for e in mine]
    codes = set()
    for xid, evs in runs.items():
        assert len(xid) == 64
        # The last check may have been cut short by rm -f (exec_die 137); every check is whole.
        assert [e.Action for e in evs] == [f"exec_create: {shown}", f"exec_start: {shown}",
                                           "exec_die"], [e.Action for e in evs]
        assert evs[0].Actor.Attributes["name"] == "hc-exec"
        codes.add(evs[2].Actor.Attributes["exitCode"])
    assert {"0", "1"} <= codes, codes
    # exec_die comes before the health_status it decided.
    actions = [e.Action for e in mine]
    assert actions.index("health_status: unhealthy") > actions.index("exec_die")


def _sleepers(marker: str) -> list[int]:
    return [pid for pid, cmd in _cmdlines().items() if cmd == f"sleep\0{marker}\0".encode()]


def test_hanging_check_is_killed_at_its_timeout(box):
    """The check and what it started are killed at --health-timeout; it counts as a failure."""
    _run(box, "hc-hang", "--health-cmd", "sleep 4243 & sleep 4242; wait",
         "--health-timeout", "1s", "--health-interval", "1h")
    try:
        assert _status(box, "hc-hang").endswith("(health: starting)")
        began = time.monotonic()
        proc = box("healthcheck", "run", "hc-hang", check=False, timeout=60)
        took = time.monotonic() - began
        assert proc.returncode == 1 and proc.stdout == "starting\n", proc
        assert 1.0 <= took < 20, took
        entry = _health(box, "hc-hang")["Log"][-1]
        assert entry["ExitCode"] == -1
        assert entry["Output"] == "Health check exceeded timeout (1s)"
        # Nothing of the check is left: neither its command nor the child it put in the background.
        assert _wait_for(lambda: not _sleepers("4242") and not _sleepers("4243"), 5), \
            (_sleepers("4242"), _sleepers("4243"))
        # Retries 3: the third failure in a row makes it unhealthy.
        for expected in ("starting", "unhealthy"):
            proc = box("healthcheck", "run", "hc-hang", check=False, timeout=60)
            assert proc.returncode == 1 and proc.stdout == expected + "\n"
        assert _health(box, "hc-hang")["FailingStreak"] == 3
        assert not _sleepers("4242") and not _sleepers("4243")
    finally:
        box("rm", "-f", "hc-hang")


def test_runner_kills_a_hanging_check(box):
    _run(box, "hc-hang2", "--health-cmd", "sleep 4244", "--health-timeout", "1s",
         "--health-interval", "1s", "--health-retries", "2")
    try:
        assert _wait_for(lambda: _health(box, "hc-hang2").get("Status") == "unhealthy")
        assert all(e["ExitCode"] == -1 for e in _health(box, "hc-hang2")["Log"])
        assert len(_sleepers("4244")) <= 1  # at most the check running now
    finally:
        box("rm", "-f", "hc-hang2")
    assert _wait_for(lambda: not _sleepers("4244"), 15), _sleepers("4244")


def test_healthcheck_run(box):
    _run(box, "hc-now", "--health-cmd", "test -f /tmp/ok", "--health-interval", "1h",
         cmd=("sh", "-c", "touch /tmp/ok; sleep 1000"))
    try:
        assert _status(box, "hc-now").endswith("(health: starting)")
        proc = box("healthcheck", "run", "hc-now", check=False)
        assert (proc.returncode, proc.stdout) == (0, "healthy\n"), proc
        assert _status(box, "hc-now").endswith("(healthy)")
        box("exec", "hc-now", "rm", "/tmp/ok")
        for n, expected in enumerate(("healthy", "healthy", "unhealthy"), 1):
            proc = box("healthcheck", "run", "hc-now", check=False)
            assert (proc.returncode, proc.stdout) == (1, expected + "\n"), proc
            assert _health(box, "hc-now")["FailingStreak"] == n
        assert _status(box, "hc-now").endswith("(unhealthy)")
        box("pause", "hc-now")
        proc = box("healthcheck", "run", "hc-now", check=False)
        assert proc.returncode == 125 and "is paused" in proc.stderr
        assert _status(box, "hc-now").endswith("(Paused)")
        box("unpause", "hc-now")
        names = box("ps", "--filter", "health=unhealthy", "--format", "{{.Names}}").stdout
        assert "hc-now" in names.split()
        for other in ("healthy", "none", "starting"):
            names = box("ps", "--filter", f"health={other}", "--format", "{{.Names}}").stdout
            assert "hc-now" not in names.split()
        bad = box("ps", "--filter", "health=fine", check=False)
        assert bad.returncode == 125 and "Unrecognised filter value for health: fine" in bad.stderr
        box("stop", "-t", "0", "hc-now")
        proc = box("healthcheck", "run", "hc-now", check=False)
        assert proc.returncode == 125 and proc.stderr.count("\n") == 1
        assert "is not running" in proc.stderr
    finally:
        box("rm", "-f", "hc-now")
    proc = box("healthcheck", "run", "no-such-box", check=False)
    assert proc.returncode == 125 and "no such container" in proc.stderr


def _kill_monitor_and_runner(cid: str) -> None:
    """SIGKILL the container's monitor (in Python or its C loop) and its health runner."""
    kill_monitor_of(cid)
    for pid, cmd in _cmdlines().items():
        if cid.encode() in cmd and b"nsbox-monitor-loop" in cmd:
            os.kill(pid, signal.SIGKILL)
    for pid in _runners_by_name(cid):
        os.kill(pid, signal.SIGKILL)


def _runners_by_name(cid: str) -> list[int]:
    found = []
    for pid in _cmdlines():
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "nsbhc-" + cid[:8]:
                found.append(pid)
        except OSError:
            pass
    return found


def test_status_survives_a_monitor_restart(box):
    cid = _run(box, "hc-crash", "--health-cmd", "test -f /tmp/ok", "--health-interval", "1s",
               cmd=("sh", "-c", "touch /tmp/ok; sleep 1000"))
    try:
        assert _wait_for(lambda: _health(box, "hc-crash").get("Status") == "healthy")
        old = _runners_by_name(cid)
        assert len(old) == 1
        _kill_monitor_and_runner(cid)
        assert _wait_for(lambda: all(pid_is_dead(p) for p in old), 10)
        # The next command sees the container and its recorded health, not a reset.
        health = _health(box, "hc-crash")
        assert health["Status"] == "healthy", health
        assert box.inspect("hc-crash")["State"]["Running"]
        # ... and a runner again, which goes on from that status.
        assert _wait_for(lambda: bool(_runners_by_name(cid)), 20)
        new = _runners_by_name(cid)
        assert len(new) == 1 and new != old
        box("exec", "hc-crash", "rm", "/tmp/ok")
        assert _wait_for(lambda: _health(box, "hc-crash").get("Status") == "unhealthy")
        assert _runners_by_name(cid) == new  # no second runner came along meanwhile
    finally:
        box("rm", "-f", "hc-crash")
    assert _wait_for(lambda: not _runners_by_name(cid), 15)


def test_paused_container_is_not_checked(box):
    _run(box, "hc-pause", "--health-cmd", "true", "--health-interval", "1s")
    try:
        assert _wait_for(lambda: _health(box, "hc-pause").get("Status") == "healthy")
        box("pause", "hc-pause")
        time.sleep(1.5)  # a check under way when it froze ends (it would time out frozen)
        last = _health(box, "hc-pause")["Log"][-1]["End"]
        time.sleep(3)
        assert _health(box, "hc-pause")["Log"][-1]["End"] == last
        box("unpause", "hc-pause")
        assert _wait_for(lambda: _health(box, "hc-pause")["Log"][-1]["End"] != last)
        assert _health(box, "hc-pause")["Status"] == "healthy"
    finally:
        box("rm", "-f", "hc-pause")


def test_foreground_container_is_checked(box):
    """`run -it` has no monitor: it starts the runner itself."""
    import shlex
    inner = " ".join(shlex.quote(a) for a in box.argv(
        "run", "-it", "--rm", "--name", "hc-fg", "--health-cmd", "echo ok",
        "--health-interval", "1s", "busybox", "sh", "-c",
        "while [ ! -f /tmp/stop ]; do sleep 0.2; done; echo bye"))
    proc = subprocess.Popen(["script", "-qec", inner, "/dev/null"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert _wait_for(lambda: _health(box, "hc-fg").get("Status") == "healthy"), \
            _health(box, "hc-fg")
        cid = box.inspect("hc-fg")["Id"]
        assert len(_runners_by_name(cid)) == 1
        box("exec", "hc-fg", "touch", "/tmp/stop")
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and b"bye" in out, out
        assert _wait_for(lambda: not _runners_by_name(cid), 15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        box("rm", "-f", "hc-fg", check=False)


def test_restart_resets_to_starting(box):
    _run(box, "hc-restart", "--health-cmd", "true", "--health-interval", "1s")
    try:
        assert _wait_for(lambda: _health(box, "hc-restart").get("Status") == "healthy")
        logged = len(_health(box, "hc-restart")["Log"])
        box("stop", "-t", "0", "hc-restart")
        assert _health(box, "hc-restart")["Status"] == "healthy"  # kept while stopped
        assert "health" not in _status(box, "hc-restart")
        box("start", "hc-restart")
        health = _health(box, "hc-restart")
        # As Docker: starting again, earlier results kept.
        assert health["Status"] in ("starting", "healthy") and len(health["Log"]) >= logged
        assert _wait_for(lambda: _health(box, "hc-restart").get("Status") == "healthy")
    finally:
        box("rm", "-f", "hc-restart")


@pytest.fixture(scope="module")
def checked_image(box):
    """An image whose config has a Healthcheck that always fails (CMD-SHELL)."""
    from nsbox.engine.images.builders import write_busybox_layer
    from nsbox.engine.images.store import ImageStore
    store = ImageStore(str(box.base / "lib"))
    layer = box.base / "layer.tar"
    with open(layer, "wb") as out:
        write_busybox_layer(out)
    store.import_rootfs(str(layer), "localhost/hc-image:latest",
                        config={"Cmd": ["sleep", "1000"],
                                "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
                                "Healthcheck": {"Test": ["CMD-SHELL", "echo image; exit 1"],
                                                "Interval": 10 ** 9, "Retries": 1}})
    layer.unlink()
    yield "localhost/hc-image:latest"
    box("rmi", "-f", "localhost/hc-image:latest", check=False)


def test_image_healthcheck_runs(box, checked_image):
    box("run", "-d", "--name", "hc-img", checked_image)
    try:
        assert _wait_for(lambda: _health(box, "hc-img").get("Status") == "unhealthy")
        assert _health(box, "hc-img")["Log"][-1]["Output"] == "image\n"
        # Flags without --health-cmd change the image's timings, not its test.
        box("run", "-d", "--name", "hc-img2", "--health-interval", "1h", checked_image)
        config = box.inspect("hc-img2")["Config"]["Healthcheck"]
        assert config["Test"] == ["CMD-SHELL", "echo image; exit 1"]
        assert config["Interval"] == 3600 * 10 ** 9 and config["Retries"] == 1
    finally:
        box("rm", "-f", "hc-img", "hc-img2", check=False)


def test_healthcheck_of_a_built_image(box, tmp_path):
    """`nsbox build` keeps HEALTHCHECK in the image config; a container runs it."""
    (tmp_path / "Dockerfile").write_text(
        "FROM busybox\n"
        "HEALTHCHECK --interval=1s --retries=2 CMD test -e /tmp/ready || exit 1\n"
        'CMD ["sleep", "1000"]\n')
    box("build", "-t", "hc-built", str(tmp_path), timeout=300)
    try:
        image = json.loads(box("image", "inspect", "hc-built").stdout)[0]
        assert image["Config"]["Healthcheck"]["Test"] == ["CMD-SHELL",
                                                          "test -e /tmp/ready || exit 1"]
        box("run", "-d", "--name", "hc-built", "hc-built")
        assert box.inspect("hc-built")["Config"]["Healthcheck"] == {
            "Test": ["CMD-SHELL", "test -e /tmp/ready || exit 1"], "Interval": 10 ** 9,
            "Timeout": 0, "StartPeriod": 0, "StartInterval": 0, "Retries": 2}
        assert _wait_for(lambda: _health(box, "hc-built").get("Status") == "unhealthy")
        box("exec", "hc-built", "touch", "/tmp/ready")
        assert _wait_for(lambda: _health(box, "hc-built").get("Status") == "healthy")
    finally:
        box("rm", "-f", "hc-built", check=False)
        box("rmi", "hc-built", check=False)


def test_no_healthcheck_disables_the_image_check(box, checked_image):
    cid = box("run", "-d", "--name", "hc-none", "--no-healthcheck", checked_image).stdout.strip()
    try:
        time.sleep(2.5)  # the image's check would have run twice by now
        info = box.inspect("hc-none")
        assert "Health" not in info["State"]
        assert info["Config"]["Healthcheck"] == {"Test": ["NONE"]}
        status = _status(box, "hc-none")
        assert status.startswith("Up") and "(" not in status
        assert not _runners_by_name(cid)
        proc = box("healthcheck", "run", "hc-none", check=False)
        assert proc.returncode == 125
        assert proc.stderr == "Error: container hc-none has no healthcheck\n"
    finally:
        box("rm", "-f", "hc-none")


@pytest.mark.parametrize(("flags", "message"), [
    (["--health-interval", "abc"],
     'invalid argument "abc" for "--health-interval" flag: time: invalid duration "abc"'),
    (["--health-timeout", "1"], 'time: missing unit in duration "1"'),
    (["--health-retries", "-1"], "--health-retries cannot be negative"),
    (["--no-healthcheck", "--health-cmd", "true"],
     "--no-healthcheck conflicts with --health-* options"),
])
def test_bad_input_is_one_line_and_leaves_nothing(box, flags, message):
    before = box.rows()
    containers = box.base / "lib" / "containers"
    dirs = set(os.listdir(containers))
    for verb in ("run", "create"):
        proc = box(verb, "--name", "hc-bad", *flags, "busybox", "true", check=False)
        assert proc.returncode == 125, proc
        assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert box.rows() == before
    assert set(os.listdir(containers)) == dirs


def test_run_rm_imports_no_health_code(box):
    """A real `run --rm` (the CLI and, attached, the exit it finishes) loads nothing of it."""
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1")
    proc = subprocess.run(box.argv("run", "--rm", "busybox", "true"), capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "nsbox.engine.lifecycle" in proc.stderr  # the profile is there
    assert "nsbox.engine.health" not in proc.stderr


def test_a_container_without_check_has_no_runner_and_no_health(box):
    cid = _run(box, "hc-plain")
    try:
        assert "Health" not in box.inspect("hc-plain")["State"]
        assert "Healthcheck" not in box.inspect("hc-plain")["Config"]
        assert "(" not in _status(box, "hc-plain")
        assert not _runners_by_name(cid)
        assert not os.path.exists(box.base / "lib" / "containers" / cid / "userdata" /
                                  "health.json")
    finally:
        box("rm", "-f", "hc-plain")


def test_python_api(box):
    import nsbox
    from nsbox.engine.containers import Engine
    engine = Engine(root=str(box.base / "lib"), run_root=str(box.base / "run"))
    c = nsbox.run("busybox", "sleep 1000", engine=engine, name="hc-api",
                  health_cmd="true", health_interval="1s")
    plain = nsbox.run("busybox", "sleep 1000", engine=engine, name="hc-api-plain")
    try:
        assert plain.health is None
        assert _wait_for(lambda: c.health["Status"] == "healthy")
        assert c.health["FailingStreak"] == 0
        assert c.healthcheck() == "healthy"
        assert json.dumps(c.health)  # plain JSON data
    finally:
        c.remove(force=True)
        plain.remove(force=True)


def test_nsbox_binary_lists_the_flags():
    out = subprocess.run([NSBOX, "run", "--help"], capture_output=True, text=True).stdout
    for flag in hconfig.FLAGS:
        assert f"--{flag}" in out
    out = subprocess.run([NSBOX, "healthcheck", "--help"], capture_output=True, text=True).stdout
    assert "run" in out


def _health_sequence(run, inspect, flags: list[str], image: str) -> list[tuple]:  # noqa: ANN001
    """(exit code of `healthcheck run`, Status, FailingStreak, exit codes logged) after each of
    five runs of a check that passes once, then fails (the file it tests is removed)."""
    run("run", "-d", "--name", "hc-peer", *flags, "--health-cmd", "test -f /tmp/ok",
        "--health-interval", "1h", "--health-timeout", "5s", image,
        "sh", "-c", "touch /tmp/ok; sleep 600")
    out = []
    try:
        for n in range(5):
            code = run("healthcheck", "run", "hc-peer", check=False).returncode
            health = inspect("hc-peer")["State"]["Health"]
            out.append((code, health["Status"], health["FailingStreak"],
                        [e["ExitCode"] for e in health["Log"]]))
            if n == 0:
                run("exec", "hc-peer", "rm", "/tmp/ok")
    finally:
        run("rm", "-f", "hc-peer", check=False)
    return out


@pytest.mark.clients
@pytest.mark.slow
def test_status_rules_match_podman(box):
    """The same check, the same `healthcheck run` calls: nsbox and podman agree step by step."""
    import clients
    missing = clients.missing_binaries("podman", "conmon")
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")
    with clients.podman_world(clients.runtime_under_test()) as pm:
        theirs = _health_sequence(
            lambda *a, check=True: pm.run(*a, check=check, timeout=60),
            lambda ref: json.loads(pm.run("inspect", ref).stdout)[0],
            pm.container_args(), clients.IMAGE_REF)
    ours = _health_sequence(lambda *a, check=True: box(*a, check=check), box.inspect, [],
                            "busybox")
    assert ours == theirs
    assert theirs[-1][:3] == (1, "unhealthy", 4) and theirs[-1][3] == [0, 1, 1, 1, 1]
