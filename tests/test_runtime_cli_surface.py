"""The `nsbox-runtime` CLI's surface beyond the container lifecycle: `spec` (runc-like,
rootless, compared with runc's), `features`, `version`, help and unknown
commands, `--log` in json and text, and Go-style flags.  The lifecycle commands are in test_runtime_lifecycle.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import host_features
import pytest
from helpers import write_config


# ------------------------------------------------------------------ spec
def test_spec_writes_a_runc_like_config_and_refuses_to_overwrite(tmp_path, run_runtime):
    bundle = tmp_path / "specbundle"
    bundle.mkdir()
    run_runtime("spec", "--bundle", str(bundle))
    config = json.loads((bundle / "config.json").read_text())
    assert config["process"]["args"] == ["sh"]
    assert config["process"]["terminal"] is True
    assert config["process"]["user"] == {"uid": 0, "gid": 0}
    assert config["root"] == {"path": "rootfs", "readonly": True}
    destinations = [m["destination"] for m in config["mounts"]]
    assert destinations[:7] == ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue",
                                "/sys", "/sys/fs/cgroup"]
    types = {ns["type"] for ns in config["linux"]["namespaces"]}
    assert {"pid", "network", "ipc", "uts", "mount"} <= types
    assert "user" not in types
    assert "/proc/kcore" in config["linux"]["maskedPaths"]
    assert "/proc/sys" in config["linux"]["readonlyPaths"]
    assert "CAP_NET_BIND_SERVICE" in config["process"]["capabilities"]["bounding"]
    assert "CAP_SYS_ADMIN" not in config["process"]["capabilities"]["bounding"]

    before = (bundle / "config.json").read_bytes()
    again = run_runtime("spec", "--bundle", str(bundle), check=False)
    assert again.returncode != 0
    assert "exists" in again.stderr
    assert (bundle / "config.json").read_bytes() == before


def test_spec_rootless_has_a_user_namespace_and_mappings(tmp_path, run_runtime):
    bundle = tmp_path / "rootless"
    bundle.mkdir()
    run_runtime("spec", "--rootless", "--bundle", str(bundle))
    config = json.loads((bundle / "config.json").read_text())
    types = {ns["type"] for ns in config["linux"]["namespaces"]}
    assert "user" in types
    assert "network" not in types  # a rootless container cannot set up networking itself
    assert config["linux"]["uidMappings"] == [
        {"containerID": 0, "hostID": os.geteuid(), "size": 1}]
    assert config["linux"]["gidMappings"] == [
        {"containerID": 0, "hostID": os.getegid(), "size": 1}]
    sys_mount = next(m for m in config["mounts"] if m["destination"] == "/sys")
    assert "rbind" in sys_mount["options"]


def test_spec_matches_runc_spec_mounts_and_namespaces(tmp_path, run_runtime, runc):
    # Our default spec follows runc 1.1 (Debian 12's); runc 1.2 masks more paths.
    version = host_features.runc_version(runc)
    if version[:2] != (1, 1):
        pytest.skip(f"the expected spec is runc 1.1's; this runc is "
                    f"{'.'.join(map(str, version)) or 'of unknown version'}")
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir()
    theirs.mkdir()
    run_runtime("spec", "--bundle", str(ours))
    subprocess.run([runc, "spec", "--bundle", str(theirs)], check=True, capture_output=True)
    a = json.loads((ours / "config.json").read_text())
    b = json.loads((theirs / "config.json").read_text())
    assert a["mounts"] == b["mounts"]
    assert a["root"] == b["root"]
    assert a["linux"]["maskedPaths"] == b["linux"]["maskedPaths"]
    assert a["linux"]["readonlyPaths"] == b["linux"]["readonlyPaths"]
    assert {n["type"] for n in b["linux"]["namespaces"]} <= {
        n["type"] for n in a["linux"]["namespaces"]}
    for key in ("bounding", "effective", "permitted"):
        assert a["process"]["capabilities"][key] == b["process"]["capabilities"][key]


# ------------------------------------------------------------------ features, version, log
def test_features_is_valid_json_with_the_oci_keys(run_runtime):
    features = json.loads(run_runtime("features").stdout)
    assert {"ociVersionMin", "ociVersionMax", "hooks", "mountOptions", "linux"} <= set(features)
    assert features["ociVersionMin"] == "1.0.0"
    assert set(features["hooks"]) == {"prestart", "createRuntime", "createContainer",
                                      "startContainer", "poststart", "poststop"}
    assert {"bind", "rbind", "ro", "nosuid"} <= set(features["mountOptions"])
    linux = features["linux"]
    assert set(linux["namespaces"]) == {"pid", "network", "mount", "ipc", "uts", "user",
                                        "cgroup", "time"}
    assert "CAP_SYS_ADMIN" in linux["capabilities"]
    assert {"v1", "v2", "systemd"} <= set(linux["cgroup"])
    assert "enabled" in linux["seccomp"]


def test_version(run_runtime):
    """runc's shape: `NAME version X`, then `key: value` lines, among them the spec
    version and the version of the libseccomp the runtime loads."""
    import ctypes
    import re

    from nsbox.runtime.security import seccomp_compile

    out = run_runtime("--version").stdout
    lines = out.splitlines()
    assert re.fullmatch(r"nsbox-runtime version \S+", lines[0]), out
    assert all(re.fullmatch(r"[a-z]+: \S+", line) for line in lines[1:]), out
    fields = dict(line.split(": ", 1) for line in lines[1:])
    assert re.fullmatch(r"1\.\d+\.\d+(-\S+)?", fields["spec"])
    # seccomp_version() of the library seccomp_compile.py loads, asked here independently.
    lib = ctypes.CDLL(seccomp_compile._library_path() or "libseccomp.so.2")
    lib.seccomp_version.restype = ctypes.POINTER(ctypes.c_uint * 3)
    assert fields["libseccomp"] == ".".join(map(str, lib.seccomp_version().contents))
    assert run_runtime("-v").stdout == out


def test_help_and_unknown_command(run_runtime):
    assert "create" in run_runtime("--help").stdout
    unknown = run_runtime("frobnicate", check=False)
    assert unknown.returncode != 0
    assert "frobnicate" in unknown.stderr
    bad_flag = run_runtime("list", "--no-such-flag", check=False)
    assert bad_flag.returncode != 0
    assert "no-such-flag" in bad_flag.stderr


def test_log_json_records_the_error(run_runtime, tmp_path):
    log_file = tmp_path / "runtime.log"
    result = run_runtime("--log", str(log_file), "--log-format", "json",
                         "delete", "no-such-container", check=False)
    assert result.returncode != 0
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    errors = [r for r in records if r["level"] == "error"]
    assert errors, records
    assert "no-such-container" in errors[-1]["msg"]
    assert "time" in errors[-1]


def test_log_text_records_the_error(run_runtime, tmp_path):
    log_file = tmp_path / "runtime.log"
    result = run_runtime("--log", str(log_file), "state", "no-such-container", check=False)
    assert result.returncode != 0
    text = log_file.read_text()
    assert "no-such-container" in text
    assert "error" in text.lower()


@pytest.mark.parametrize("log_format", ["none", "json", "text"])
def test_warnings_of_the_init_after_pivot_root_without_the_logging_package(
        log_format, bundle, runtime, container_id, tmp_path):
    """A warning the container's init gives once it is in the container's root (a
    capability the runtime itself lacks) goes to stderr or to the --log file in
    the format logging would use, and the container runs.  The logging package
    is never loaded for it: the init could not load it from the host any more
    (the container failed with "No module named 'logging'"), and loading it
    cost every command with --log ~9 ms."""
    write_config(bundle, lambda s: s["process"]["capabilities"].update(
        bounding=["CAP_KILL"], permitted=["CAP_KILL"], effective=["CAP_KILL"]))
    log = tmp_path / "runtime.log"
    flags = [] if log_format == "none" else ["--log", str(log), "--log-format", log_format]
    # setpriv: the runtime runs without CAP_KILL in its own bounding set.
    proc = subprocess.run(["setpriv", "--bounding-set", "-kill", runtime[0], *runtime[1:],
                           *flags, "run", "--bundle", str(bundle), container_id],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    assert proc.returncode == 0, proc.stderr
    assert not [line for line in proc.stderr.splitlines()
                if line.startswith("import time:") and line.rstrip().endswith(" logging")]
    warning = ("bounding capabilities CAP_KILL will not be granted: "
               "not in the runtime's own bounding set")
    if log_format == "none":
        assert warning in proc.stderr.splitlines()
        return
    assert warning not in proc.stderr
    line = next(line for line in log.read_text().splitlines() if warning in line)
    if log_format == "json":
        record = json.loads(line)
        assert record["level"] == "warning" and record["msg"] == warning
        assert record["time"].endswith("Z")
    else:
        stamp, rest = line.split(" WARNING ", 1)  # logging.Formatter's default asctime
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}", stamp), stamp
        assert rest == f"nsbox.runtime.security.capabilities: {warning}"


def test_go_style_flags(bundle, run_runtime, container_id):
    # runc's flag parser takes -flag, --flag and --flag=value alike.
    write_config(bundle, lambda s: s["process"].update(args=["sh", "-c", "exit 5"]))
    result = run_runtime("run", f"-bundle={bundle}", container_id, check=False)
    assert result.returncode == 5
    assert json.loads(run_runtime("list", "-format=json").stdout) in ([], None)


@pytest.mark.parametrize("flags", [[], ["--log", "LOG"], ["--debug"]])
def test_main_in_process_leaves_the_logging_as_it_found_it(flags, tmp_path, capsys):
    """main() is also called in-process (tests, programs): the warning sink or
    handler a command sets up is gone when it returns."""
    import logging

    from nsbox import _lazylog
    from nsbox.runtime import cli

    flags = [str(tmp_path / "log") if flag == "LOG" else flag for flag in flags]
    before = (_lazylog.sink, _lazylog.debug_enabled, list(logging.getLogger().handlers),
              logging.getLogger().level)
    assert cli.main(["--root", str(tmp_path / "root"), *flags, "state", "missing"]) == 1
    assert "missing" in capsys.readouterr().err
    assert (_lazylog.sink, _lazylog.debug_enabled, list(logging.getLogger().handlers),
            logging.getLogger().level) == before
