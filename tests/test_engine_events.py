"""`nsbox events` and its journal (nsbox/engine/events.py).

Real containers, each test with its own --root/--runroot: the lifecycle gives
its events in order, also when two commands race; an OOM kill gives `oom`
then `die`; --since/--until and the filters select exactly; follow mode
delivers a new event soon; --format json parses.  Then the journal itself:
concurrent writers, rotation, a torn line, a journal that cannot be written.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from test_engine_cli import Nsbox, one_line_error

from nsbox.engine import events

LIFECYCLE = ["create", "start", "die", "destroy"]


def journal(tmp_path: Path, *flags: str) -> list[dict]:
    """Every recorded event (as `events --format json` prints them) matching FLAGS."""
    out = Nsbox(tmp_path)("events", "--since", "0", "--until", "0s", "--format", "json",
                          *flags).stdout
    return [json.loads(line) for line in out.splitlines()]


def actions(tmp_path: Path, cid: str) -> list[str]:
    return [e["Action"] for e in journal(tmp_path, "--filter", f"container={cid}")]


def in_order(seen: list[str], wanted: list[str]) -> bool:
    """WANTED is a subsequence of SEEN."""
    rest = iter(seen)
    return all(any(a == w for a in rest) for w in wanted)


# ================================================================ the lifecycle
def test_run_stop_rm_cycle(nsbox, tmp_path):
    cid = nsbox("run", "-d", "--name", "cyc", "--label", "team=a", "busybox",
                "sh", "-c", "trap 'exit 7' TERM; sleep 100 & wait").stdout.strip()
    deadline = time.monotonic() + 10
    while "start" not in actions(tmp_path, cid) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # the trap is set once sh runs
    nsbox("stop", "cyc")
    nsbox("rm", "cyc")
    evs = journal(tmp_path, "--filter", "container=cyc")
    seen = [e["Action"] for e in evs]
    assert in_order(seen, ["create", "start", "kill", "die", "stop", "destroy"]), seen
    assert seen.count("die") == 1 and seen.count("destroy") == 1 and seen[-1] == "destroy"
    die = next(e for e in evs if e["Action"] == "die")
    assert die["Actor"]["Attributes"]["exitCode"] == "7"
    kill = next(e for e in evs if e["Action"] == "kill")
    assert kill["Actor"]["Attributes"]["signal"] == "15"
    for e in evs:  # Docker's fields
        assert e["Type"] == "container" and e["id"] == cid and e["Actor"]["ID"] == cid
        assert e["status"] == e["Action"] and e["from"] == "busybox" and e["scope"] == "local"
        assert e["Actor"]["Attributes"]["name"] == "cyc"
        assert e["Actor"]["Attributes"]["team"] == "a"
        assert e["time"] == e["timeNano"] // 10**9
    nanos = [e["timeNano"] for e in evs]
    assert nanos == sorted(nanos)


def test_run_rm_gives_create_attach_start_die_destroy(nsbox, tmp_path):
    nsbox("run", "--rm", "--name", "once", "busybox", "sh", "-c", "exit 3", check=False)
    seen = [e["Action"] for e in journal(tmp_path, "--filter", "container=once")]
    assert seen == ["create", "attach", "start", "die", "destroy"], seen
    die = journal(tmp_path, "--filter", "container=once", "--filter", "event=die")
    assert die[0]["Actor"]["Attributes"]["exitCode"] == "3"


def test_racing_rm_f_and_stop_keep_the_order(nsbox, tmp_path):
    for i in range(3):
        cid = nsbox("run", "-d", "--name", f"r{i}", "busybox", "sleep", "100").stdout.strip()
        procs = [subprocess.Popen([*nsbox.prefix, *argv], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
                 for argv in (("stop", "-t", "1", f"r{i}"), ("rm", "-f", f"r{i}"))]
        for proc in procs:
            proc.wait(timeout=60)
        assert cid not in nsbox.ids()
        seen = actions(tmp_path, cid)
        assert in_order(seen, LIFECYCLE), seen
        assert seen.count("die") == 1 and seen.count("destroy") == 1, seen
        assert seen[-1] == "destroy", seen


def test_racing_stop_and_rm_of_a_run_rm_container(nsbox, tmp_path):
    for i in range(3):
        cid = nsbox("run", "-d", "--rm", "--name", f"q{i}", "busybox", "sleep", "100").stdout.strip()
        procs = [subprocess.Popen([*nsbox.prefix, *argv], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
                 for argv in (("rm", "-f", f"q{i}"), ("stop", "-t", "1", f"q{i}"))]
        for proc in procs:
            proc.wait(timeout=60)
        deadline = time.monotonic() + 10
        while "destroy" not in actions(tmp_path, cid) and time.monotonic() < deadline:
            time.sleep(0.05)
        seen = actions(tmp_path, cid)
        assert in_order(seen, LIFECYCLE), seen
        assert seen.count("die") == 1 and seen.count("destroy") == 1, seen
        assert seen[-1] == "destroy", seen


def test_pause_unpause_rename_restart_exec(nsbox, tmp_path):
    cid = nsbox("run", "-d", "--name", "p", "busybox", "sleep", "100").stdout.strip()
    paused = nsbox("pause", "p", check=False)
    if paused.returncode == 0:
        nsbox("unpause", "p")
    nsbox("exec", "p", "sh", "-c", "exit 4", check=False)
    nsbox("rename", "p", "p2")
    nsbox("restart", "-t", "0", "p2")
    nsbox("kill", "-s", "HUP", "p2", check=False)
    nsbox("rm", "-f", "p2")
    evs = journal(tmp_path, "--filter", f"container={cid}")
    seen = [e["Action"] for e in evs]
    if paused.returncode == 0:
        assert in_order(seen, ["pause", "unpause"]), seen
    assert in_order(seen, ["create", "start", "exec_create: sh -c exit 4", "exec_start: sh -c exit 4",
                           "exec_die", "rename", "kill", "die", "start", "restart", "kill",
                           "destroy"]), seen
    for once in ("create", "rename", "restart", "destroy", "pause", "unpause", "exec_die"):
        assert seen.count(once) <= 1, seen
    exec_die = next(e for e in evs if e["Action"] == "exec_die")["Actor"]["Attributes"]
    assert exec_die["exitCode"] == "4" and len(exec_die["execID"]) == 64
    rename = next(e for e in evs if e["Action"] == "rename")["Actor"]["Attributes"]
    assert (rename["oldName"], rename["name"]) == ("p", "p2")
    assert "1" in [e["Actor"]["Attributes"].get("signal") for e in evs if e["Action"] == "kill"]


def test_oom_kill_gives_oom_then_die(nsbox, tmp_path):
    proc = nsbox("run", "--rm", "--name", "hog", "--memory", "16m", "--memory-swap", "16m",
                 "busybox", "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1", check=False)
    if proc.returncode == 125 and "memory" in proc.stderr:
        pytest.skip(f"no memory controller here: {proc.stderr.strip()}")
    assert proc.returncode == 137, proc.stderr
    seen = [e["Action"] for e in journal(tmp_path, "--filter", "container=hog")]
    assert in_order(seen, ["create", "start", "oom", "die", "destroy"]), seen
    assert seen.index("oom") + 1 == seen.index("die")


def test_image_and_volume_events(nsbox, tmp_path):
    nsbox("run", "--rm", "busybox", "true")
    nsbox("tag", "busybox", "mine:1")
    nsbox("rmi", "mine:1")
    nsbox("volume", "create", "vol1")
    nsbox("volume", "rm", "vol1")
    images = journal(tmp_path, "--filter", "type=image")
    assert in_order([e["Action"] for e in images], ["tag", "untag"])
    tag = next(e for e in images if e["Action"] == "tag")
    assert tag["Actor"]["ID"].startswith("sha256:") and tag["Actor"]["Attributes"]["name"].endswith("mine:1")
    assert [e["Action"] for e in journal(tmp_path, "--filter", "image=mine:1")] == ["tag", "untag"]
    assert [(e["Action"], e["Actor"]["ID"]) for e in journal(tmp_path, "--filter", "volume=vol1")] \
        == [("create", "vol1"), ("destroy", "vol1")]


def test_network_events(net_host):
    """In the test's own network namespace (tests/nethost.py), never the host's."""
    net_host.nsbox("network", "create", "evnet")
    cid = net_host.nsbox("run", "-d", "--name", "n1", "busybox", "sleep", "100").stdout.strip()
    net_host.nsbox("network", "connect", "evnet", "n1")
    net_host.nsbox("network", "disconnect", "evnet", "n1")
    net_host.nsbox("rm", "-f", "n1")
    net_host.nsbox("network", "rm", "evnet")
    out = net_host.nsbox("events", "--since", "0", "--until", "0s", "--format", "json",
                         "--filter", "type=network").stdout
    evs = [json.loads(line) for line in out.splitlines()]
    mine = [(e["Action"], e["Actor"]["Attributes"].get("container", "")) for e in evs
            if e["Actor"]["Attributes"]["name"] == "evnet"]
    assert mine == [("create", ""), ("connect", cid), ("disconnect", cid), ("destroy", "")]
    bridge = [e["Action"] for e in evs if e["Actor"]["Attributes"]["name"] != "evnet"]
    assert bridge == ["connect", "disconnect"]  # n1 on the default bridge, from run to rm
    out = net_host.nsbox("events", "--since", "0", "--until", "0s", "--format", "json",
                         "--filter", "network=evnet", "--filter", f"container={cid[:12]}").stdout
    assert [json.loads(line)["Action"] for line in out.splitlines()] == ["connect", "disconnect"]


# ================================================================ selecting
def test_since_until_and_filters_select_exactly(nsbox, tmp_path):
    nsbox("run", "--rm", "--name", "a1", "--label", "k=v", "busybox", "true")
    nsbox("run", "--rm", "--name", "b1", "busybox", "true")
    every = journal(tmp_path, "--filter", "type=container")
    assert len(every) == 10
    middle = every[3:7]
    since = f"{middle[0]['timeNano'] // 10**9}.{middle[0]['timeNano'] % 10**9:09d}"
    until = f"{middle[-1]['timeNano'] // 10**9}.{middle[-1]['timeNano'] % 10**9:09d}"
    got = journal(tmp_path, "--since", since, "--until", until, "--filter", "type=container")
    assert got == middle
    # RFC 3339 with nanoseconds selects the same events.
    rfc = events.format_time_nano(middle[0]["timeNano"])
    assert journal(tmp_path, "--since", rfc, "--filter", "type=container") == every[3:]
    assert [e["Actor"]["Attributes"]["name"] for e in journal(tmp_path, "--filter", "label=k=v")] \
        == ["a1"] * 5
    assert len(journal(tmp_path, "--filter", "label=k")) == 5
    assert [e["Action"] for e in journal(tmp_path, "--filter", "container=b1",
                                         "--filter", "event=start", "--filter", "event=die")] \
        == ["start", "die"]
    short = every[0]["Actor"]["ID"][:12]
    assert len(journal(tmp_path, "--filter", f"container={short}")) == 5
    assert journal(tmp_path, "--filter", "container=nope") == []
    assert journal(tmp_path, "--since", "1h", "--until", "30m") == []


def test_default_and_template_formats(nsbox, tmp_path):
    nsbox("run", "--rm", "--name", "fmt", "busybox", "true")
    text = nsbox("events", "--since", "0", "--until", "0s", "--filter", "event=die").stdout
    cid = journal(tmp_path, "--filter", "event=die")[0]["id"]
    assert nsbox("system", "events", "--since", "0", "--until", "0s", "--filter",
                 "event=die").stdout == text
    stamp, rest = text.strip().split(" ", 1)
    assert rest == f"container die {cid} (execDuration=0, exitCode=0, image=busybox, name=fmt)"
    assert stamp.endswith("Z") and len(stamp) == len("2026-12-04T20:00:00.000000000Z")
    out = nsbox("events", "--since", "0", "--until", "0s", "--filter", "container=fmt",
                "--format", "{{.Status}} {{.ID}} {{.Actor.Attributes.exitCode}}").stdout
    assert out.splitlines()[0] == f"create {cid} <no value>"
    assert f"die {cid} 0" in out.splitlines()


def test_bad_input_is_one_line_and_125(nsbox, tmp_path):
    for argv in (("--since", "yesterday"), ("--until", "5x"), ("--filter", "colour=red"),
                 ("--filter", "nothing"), ("--format", "{{.Nope}}"), ("extra",)):
        proc = nsbox("events", *argv, check=False, timeout=10)
        assert proc.returncode == 125, (argv, proc.stderr)
        one_line_error(proc)
        assert proc.stdout == ""


# ================================================================ follow
def test_follow_delivers_a_new_event_soon(nsbox, tmp_path):
    nsbox("volume", "create", "warm")  # the root exists
    proc = subprocess.Popen([*nsbox.prefix, "events", "--format", "json", "--filter", "type=volume"],
                            stdout=subprocess.PIPE, text=True)
    try:
        got: list[dict] = []
        reader = threading.Thread(target=lambda: got.append(json.loads(proc.stdout.readline())),
                                  daemon=True)
        reader.start()
        # The follower only shows what comes after it started: emit until it is watching.
        deadline = time.monotonic() + 30
        sent = 0.0
        while not got and time.monotonic() < deadline:
            sent = time.time()
            nsbox("volume", "create", f"v{int(sent * 1000)}")
            reader.join(2.0)
        assert got, "no event within 30 s"
        assert got[0]["Type"] == "volume" and got[0]["Action"] == "create"
        assert got[0]["timeNano"] / 1e9 >= sent - 0.5
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_follow_with_since_replays_then_streams_and_until_ends_it(tmp_path):
    root = str(tmp_path)
    events.emit(root, "volume", "create", "old")
    t0 = time.time()
    received: list[tuple[str, float]] = []

    def consume() -> None:
        for e in events.follow(root, since=t0 - 60, until=time.time() + 3):
            received.append((e.Actor.ID, time.monotonic()))

    thread = threading.Thread(target=consume)
    thread.start()
    time.sleep(0.5)
    sent = time.monotonic()
    events.emit(root, "volume", "create", "new")
    thread.join(timeout=10)
    assert not thread.is_alive(), "follow did not end at --until"
    assert [name for name, _ in received] == ["old", "new"]
    assert received[1][1] - sent < 1.5  # inotify, not a slow poll


def test_ctrl_c_ends_follow_with_0(nsbox, tmp_path):
    nsbox("volume", "create", "x")
    proc = subprocess.Popen([*nsbox.prefix, "events"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 0
    assert proc.stderr.read() == ""


# ================================================================ the journal
def _writer(root: str, tag: str, count: int) -> None:
    for i in range(count):
        events.emit(root, "container", "start", f"{tag}-{i}", {"n": str(i)})


def test_concurrent_writers_and_rotation_lose_nothing(tmp_path, monkeypatch):
    root = str(tmp_path)
    monkeypatch.setattr(events, "MAX_BYTES", 16 << 10)
    monkeypatch.setattr(events, "KEEP", 50)  # keep everything: nothing may be lost
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(root, f"w{n}", 300)) for n in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    files = os.listdir(tmp_path / "events")
    assert len(files) > 5, files  # it rotated
    got = list(events.read(root))
    assert len(got) == 1200
    assert [e.timeNano for e in got] == sorted(e.timeNano for e in got)
    for n in range(4):  # each writer's own events in its order
        mine = [int(e.Actor.Attributes["n"]) for e in got if e.Actor.ID.startswith(f"w{n}-")]
        assert mine == list(range(300))


def test_follow_reads_across_rotations_while_writers_append(tmp_path, monkeypatch):
    root = str(tmp_path)
    monkeypatch.setattr(events, "MAX_BYTES", 8 << 10)  # a rotation every ~40 events
    monkeypatch.setattr(events, "KEEP", 50)
    events.emit(root, "volume", "create", "first")
    start = time.time_ns()
    got: list[events.Event] = []

    def consume() -> None:
        for e in events.follow(root, since=start, until=time.time() + 60):
            got.append(e)
            if len(got) == 800:
                return

    follower = threading.Thread(target=consume)
    follower.start()
    ctx = multiprocessing.get_context("fork")
    # Forked while the follower thread runs (and may hold the journal's shared
    # lock): the writers must not inherit a lock that blocks them.  Daemonic and
    # killed at the end, so a failure here cannot hang the interpreter's exit.
    procs = [ctx.Process(target=_writer, args=(root, f"w{n}", 200), daemon=True)
             for n in range(4)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        follower.join(60)
        assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    assert not follower.is_alive()
    assert [e.timeNano for e in got] == [e.timeNano for e in events.read(root, since=start)]
    assert len(got) == 800 and len(os.listdir(tmp_path / "events")) > 10


def test_rotation_keeps_keep_generations(tmp_path, monkeypatch):
    monkeypatch.setattr(events, "MAX_BYTES", 4096)
    for i in range(400):
        events.emit(str(tmp_path), "volume", "create", f"v{i}")
    names = sorted(os.listdir(tmp_path / "events"))
    assert names == ["journal", "journal.1", "journal.2", "journal.3"]
    got = [e.Actor.ID for e in events.read(str(tmp_path))]
    assert got[-1] == "v399" and got == [f"v{i}" for i in range(400 - len(got), 400)]


def test_torn_line_is_skipped_and_not_glued(tmp_path):
    root = str(tmp_path)
    events.emit(root, "volume", "create", "a")
    with open(tmp_path / "events" / "journal", "a") as f:
        f.write('{"Type":"volume","Action":"cre')  # a writer died mid-line
    assert [e.Actor.ID for e in events.read(root)] == ["a"]
    events.emit(root, "volume", "create", "b")
    assert [e.Actor.ID for e in events.read(root)] == ["a", "b"]


def test_emit_never_raises(tmp_path, caplog):
    blocker = tmp_path / "root"
    blocker.write_text("a file where the root's events/ would go")
    events.emit(str(blocker), "container", "start", "x" * 64)  # logged, not raised
    assert "not recorded" in caplog.text


def test_filters_and_times_unit():
    def ev(type_: str, action: str, actor: str, **attrs: str) -> events.Event:
        return events.Event(type_, action, events.Actor(actor, attrs), 0)

    c = ev("container", "die", "abcdef" * 10, name="web", image="busybox", team="a")
    assert events.matches(c, events.normalize_filters(["container=web"]))
    assert events.matches(c, events.normalize_filters(["container=abcdef"]))
    assert not events.matches(c, events.normalize_filters(["container=ab"]))  # too short a prefix
    assert events.matches(c, events.normalize_filters(["image=busybox:latest"]))
    assert events.matches(c, events.normalize_filters(["label=team", "label=zzz"]))  # ORed
    assert not events.matches(c, events.normalize_filters(["label=team=b"]))
    assert not events.matches(c, events.normalize_filters(["event=die", "type=image"]))  # ANDed
    health = ev("container", "health_status: healthy", "x" * 64)
    assert events.matches(health, events.normalize_filters({"event": "health_status"}))
    net = ev("network", "connect", "n" * 64, container="abcdef" * 10, name="front")
    assert events.matches(net, events.normalize_filters({"network": ["front"]}))
    assert events.matches(net, events.normalize_filters({"container": ["abcdef"]}))
    with pytest.raises(ValueError):
        events.normalize_filters(["colour=red"])
    assert events.parse_duration("1h30m") == 5400 and events.parse_duration("250ms") == 0.25
    assert events.parse_duration("10") is None and events.parse_duration("m") is None
    assert events.parse_time_ns("1700000000.000000001") == 1700000000000000001
    assert events.parse_time_ns("2023-11-14T22:13:20.5Z") == 1700000000500000000
    assert events.parse_time_ns("2023-11-14T23:13:20+01:00") == 1700000000000000000
    assert abs(events.parse_time("10m", now=1000.0) - 400.0) < 1e-6
    assert events.format_time_nano(1700000000000000001) == "2023-11-14T22:13:20.000000001Z"
