"""Healthchecks, the pure logic: Go durations and the --health-* flags turned into
Docker's Healthcheck config (merged over an image's), the status rules, the
output cut, and the run path not importing the health code.

The checks on real containers are in test_engine_health.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nsbox.engine.health import config as hconfig
from nsbox.engine.health import state as hstate
from nsbox.errors import ConfigError


# ------------------------------------------------------------------ pure logic
@pytest.mark.parametrize(("text", "ns"), [
    ("1s", 10 ** 9), ("500ms", 5 * 10 ** 8), ("1m30s", 90 * 10 ** 9), ("1.5s", 15 * 10 ** 8),
    ("2h", 7200 * 10 ** 9), ("0", 0), ("10us", 10_000), ("3ns", 3), ("-1s", -(10 ** 9)),
])
def test_go_durations(text, ns):
    assert hconfig.parse_go_duration(text) == ns


@pytest.mark.parametrize(("text", "why"), [
    ("abc", 'time: invalid duration "abc"'), ("1", 'time: missing unit in duration "1"'),
    ("5x", 'time: unknown unit "x" in duration "5x"'), ("", 'time: invalid duration ""'),
    ("1..2s", 'time: invalid duration "1..2s"'),
])
def test_bad_go_durations(text, why):
    with pytest.raises(ValueError, match=why):
        hconfig.parse_go_duration(text)


def test_flags_make_docker_health_config():
    cfg = hconfig.parse_health_flags({"health-cmd": "curl -f x", "health-interval": "2s",
                                      "health-retries": "5"})
    assert cfg == {"Test": ["CMD-SHELL", "curl -f x"], "Interval": 2 * 10 ** 9, "Timeout": 0,
                   "StartPeriod": 0, "StartInterval": 0, "Retries": 5}
    assert hconfig.parse_health_flags({}) is None
    assert hconfig.parse_health_flags({"no-healthcheck": True}) == {"Test": ["NONE"]}
    # The Python API: a list is an exec form, numbers are seconds.
    assert hconfig.parse_health_flags({"health-cmd": ["cat", "/x"], "health-timeout": 0.5}) \
        == {"Test": ["CMD", "cat", "/x"], "Interval": 0, "Timeout": 5 * 10 ** 8,
            "StartPeriod": 0, "StartInterval": 0, "Retries": 0}


@pytest.mark.parametrize(("opts", "message"), [
    ({"no-healthcheck": True, "health-cmd": "true"}, "--no-healthcheck conflicts"),
    ({"health-interval": "-1s"}, "--health-interval cannot be negative"),
    ({"health-timeout": "10us"}, "--health-timeout cannot be less than 1ms"),
    ({"health-retries": "-2"}, "--health-retries cannot be negative"),
    ({"health-retries": "x"}, 'invalid argument "x" for "--health-retries"'),
    ({"health-start-period": "soon"}, 'invalid argument "soon" for "--health-start-period" '
                                      'flag: time: invalid duration "soon"'),
])
def test_bad_flags(opts, message):
    with pytest.raises(ConfigError, match=message):
        hconfig.parse_health_flags(opts)


def test_flags_merge_over_the_image_check():
    image = {"Test": ["CMD", "check"], "Interval": 7 * 10 ** 9, "Retries": 2}
    assert hconfig.merge(None, image)["Test"] == ["CMD", "check"]
    merged = hconfig.merge(hconfig.parse_health_flags({"health-interval": "1s"}), image)
    assert merged["Test"] == ["CMD", "check"] and merged["Interval"] == 10 ** 9
    assert merged["Retries"] == 2
    assert hconfig.effective(hconfig.merge({"Test": ["NONE"]}, image)) is None
    full = hconfig.effective(merged)
    assert full["Timeout"] == 30 * 10 ** 9 and full["StartPeriod"] == 0
    with pytest.raises(ConfigError):
        hconfig.effective({"Test": ["SOMETHING", "x"]})
    assert hconfig.probe_command({"Test": ["CMD-SHELL", "a && b"]}) == ["/bin/sh", "-c", "a && b"]
    assert hconfig.probe_command({"Test": ["CMD-SHELL", "a"]}, ["/bin/bash", "-ec"]) == \
        ["/bin/bash", "-ec", "a"]


def _result(start: float, code: int) -> hstate.Result:
    return hstate.Result(start, start + 0.1, code, "")


def test_status_rules():
    started = 1000.0
    h = {"Status": "starting", "FailingStreak": 0, "Log": []}
    # Failures within the start period do not count while starting.
    h = hstate.apply(h, _result(started + 1, 1), 3, 10.0, started)
    assert (h["Status"], h["FailingStreak"]) == ("starting", 0)
    # After it, they do; `retries` in a row make it unhealthy.
    for n in (1, 2):
        h = hstate.apply(h, _result(started + 10 + n, 1), 3, 10.0, started)
        assert (h["Status"], h["FailingStreak"]) == ("starting", n)
    h = hstate.apply(h, _result(started + 20, 1), 3, 10.0, started)
    assert (h["Status"], h["FailingStreak"]) == ("unhealthy", 3)
    h = hstate.apply(h, _result(started + 21, 0), 3, 10.0, started)
    assert (h["Status"], h["FailingStreak"]) == ("healthy", 0)
    # A healthy container's failure counts even within the start period.
    h = hstate.apply(h, _result(started + 2, 1), 3, 10.0, started)
    assert (h["Status"], h["FailingStreak"]) == ("healthy", 1)
    assert len(h["Log"]) == 5 and h["Log"][-1]["ExitCode"] == 1


def test_output_is_cut_like_docker():
    assert hstate.truncate_output(b"x" * 5000) == "x" * 4096 + "..."
    assert hstate.truncate_output(b"ok\n") == "ok\n"


def test_run_path_does_not_import_the_health_code():
    code = ("import sys\n"
            "from nsbox.engine import flags\n"
            "import nsbox.engine.cli.cmd_run, nsbox.engine.containers, nsbox.engine.monitor\n"
            "import nsbox.engine.lifecycle.monitor_helpers, nsbox.engine.lifecycle.create\n"
            "flags.build_spec('busybox', ['true'], {'rm': True})\n"
            "print('nsbox.engine.health' in sys.modules)\n"
            "flags.build_spec('busybox', ['true'], {'health-cmd': 'true'})\n"
            "print('nsbox.engine.health' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parent.parent).stdout
    assert out == "False\nTrue\n"
