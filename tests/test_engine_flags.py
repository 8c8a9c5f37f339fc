"""Unit tests of nsbox.engine.flags: Docker flag values -> ContainerSpec / OCI resources."""

from __future__ import annotations

import os

import pytest

from nsbox.engine import hostcaps
from nsbox.engine.flags import build_resources, build_spec, parse_size
from nsbox.engine.run_flags import RUN_FLAGS
from nsbox.errors import ConfigError


def spec(**opts):
    return build_spec("busybox", None, {k.replace("_", "-"): v for k, v in opts.items()})


def error_of(**opts) -> str:
    with pytest.raises(ConfigError) as info:
        spec(**opts)
    return str(info.value)


@pytest.mark.parametrize("text,expected", [
    ("512m", 512 << 20), ("1g", 1 << 30), ("100k", 100 << 10), ("1024", 1024), ("10b", 10),
    ("1.5g", int(1.5 * (1 << 30))), ("2MB", 2 << 20), ("1t", 1 << 40), (4096, 4096)])
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["12q", "", "m", "-1m", "1.2.3g", "abc", "1gbb"])
def test_bad_sizes(text):
    with pytest.raises(ConfigError, match="invalid size"):
        parse_size(text)


def test_memory_error_names_flag_and_value():
    assert error_of(memory="12q") == 'invalid argument "12q" for "--memory" flag: invalid size: \'12q\''


def test_memory_options():
    res = spec(memory="512m", memory_reservation="256m", memory_swap="1g", memory_swappiness="10",
               oom_kill_disable=True).resources["memory"]
    assert res == {"limit": 512 << 20, "reservation": 256 << 20, "swap": 1 << 30,
                   "swappiness": 10, "disableOOMKiller": True}
    assert spec(memory="512m", memory_swap="-1").resources["memory"]["swap"] == -1


def test_memory_errors():
    assert "larger than memory" in error_of(memory="1g", memory_swap="512m")
    assert "always set the Memory limit" in error_of(memory_swap="1g")
    assert "--memory-swappiness" in error_of(memory_swappiness="101")
    assert "Minimum memory limit" in error_of(memory="1m")


def test_cpus():
    assert spec(cpus="1.5").resources["cpu"] == {"quota": 150000, "period": 100000}
    assert spec(cpus=0.5).resources["cpu"]["quota"] == 50000


@pytest.mark.parametrize("value", ["-1", "0", "abc", str((os.cpu_count() or 1) + 1)])
def test_bad_cpus(value):
    assert f'invalid argument "{value}" for "--cpus" flag' in error_of(cpus=value)


def test_cpu_shares_period_quota_cpuset():
    # (CPUs the host does not have online are refused: tests/test_engine_run_habits.py)
    cpu = spec(cpu_shares="512", cpu_period="50000", cpu_quota="25000", cpuset_cpus="0,0-0",
               cpuset_mems="0").resources["cpu"]
    assert cpu == {"shares": 512, "period": 50000, "quota": 25000, "cpus": "0,0-0", "mems": "0"}
    assert "Conflicting options" in error_of(cpus="1", cpu_quota="50000")
    assert "--cpu-shares" in error_of(cpu_shares="x")
    assert "--cpu-period" in error_of(cpu_period="10")
    for bad in ("a", "1-", "3-1", "1,,2", "-1"):
        assert '"--cpuset-cpus"' in error_of(cpuset_cpus=bad)


def test_blkio(monkeypatch):
    # A kernel without weights drops them (tests/test_engine_run_habits.py); here it has them.
    monkeypatch.setattr(hostcaps, "blkio_weight_supported", lambda *a: True)
    blk = spec(blkio_weight="300", blkio_weight_device=["/dev/null:200"],
               device_read_bps=["/dev/null:1mb"], device_write_iops=["/dev/null:100"]).resources
    st = os.stat("/dev/null")
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    assert blk["blockIO"] == {
        "weight": 300,
        "weightDevice": [{"major": major, "minor": minor, "weight": 200}],
        "throttleReadBpsDevice": [{"major": major, "minor": minor, "rate": 1 << 20}],
        "throttleWriteIOPSDevice": [{"major": major, "minor": minor, "rate": 100}]}
    assert "--blkio-weight" in error_of(blkio_weight="5")
    assert "--blkio-weight-device" in error_of(blkio_weight_device=["/dev/null:5"])
    assert "--device-read-bps" in error_of(device_read_bps=["/dev/nonexistent-dev:1mb"])
    assert "not a device" in error_of(device_write_bps=["/etc/passwd:1mb"])
    assert "--device-read-iops" in error_of(device_read_iops=["/dev/null:x"])
    assert "DEVICE:RATE" in error_of(device_write_bps=["1mb"])


def test_pids_and_oom_score():
    assert spec(pids_limit="100").resources["pids"] == {"limit": 100}
    assert spec(pids_limit="0").resources["pids"] == {"limit": -1}
    assert spec(oom_score_adj="-500").oom_score_adj == -500
    assert '"--oom-score-adj"' in error_of(oom_score_adj="1001")
    assert '"--pids-limit"' in error_of(pids_limit="lots")


def test_no_resources_when_no_flags():
    assert build_resources({}) == {}
    assert spec().resources == {}


def test_ulimits_shm_devices_sysctls():
    s = spec(ulimit=["nofile=1024:2048", "nproc=64"], shm_size="128m",
             device=["/dev/fuse", "/dev/null:/dev/mynull:r"], sysctl=["net.ipv4.ip_forward=1"])
    assert s.ulimits == {"nofile": (1024, 2048), "nproc": (64, 64)}
    assert s.shm_size == 128 << 20
    assert s.devices == ["/dev/fuse", "/dev/null:/dev/mynull:r"]
    assert s.sysctls == {"net.ipv4.ip_forward": "1"}
    assert "invalid ulimit type" in error_of(ulimit=["bogus=1"])
    assert "soft limit" in error_of(ulimit=["nofile=10:5"])
    assert '"--ulimit"' in error_of(ulimit=["nofile"])
    assert "invalid device mode" in error_of(device=["/dev/null:/dev/x:rwz"])
    assert '"--device"' in error_of(device=["dev/null"])
    assert '"--sysctl"' in error_of(sysctl=["=1"])
    assert '"--shm-size"' in error_of(shm_size="lots")


def test_volumes_and_mounts(tmp_path):
    s = spec(volume=[f"{tmp_path}:/data:ro", "cache:/cache", "/anon"],
             tmpfs=["/run:size=64m,mode=1777"],
             mount=["type=bind,source=/tmp,target=/host,readonly",
                    "type=tmpfs,target=/scratch,tmpfs-size=1m",
                    "type=volume,source=v1,target=/v1"])
    by_target = {m.target: m for m in s.mounts}
    assert by_target["/data"].type == "bind" and by_target["/data"].read_only
    assert by_target["/data"].source == str(tmp_path)
    assert by_target["/cache"].type == "volume" and by_target["/cache"].source == "cache"
    assert by_target["/anon"].type == "volume" and by_target["/anon"].source == ""
    assert by_target["/run"].type == "tmpfs" and by_target["/run"].options == ["size=64m", "mode=1777"]
    assert by_target["/host"].read_only and by_target["/host"].type == "bind"
    assert by_target["/scratch"].options == ["size=1048576"]
    assert by_target["/v1"].source == "v1"
    assert spec(volume=["/a:/b:Z"]).mounts[0].options == ["Z"]


def test_bad_mounts():
    assert "must be absolute" in error_of(volume=["/a:relative:ro"])
    assert "invalid mode: relative" in error_of(volume=["/a:relative"])
    assert "invalid mode" in error_of(volume=["/a:/b:bogus"])
    assert "invalid mount type" in error_of(mount=["type=nfs,target=/x"])
    assert "target is required" in error_of(mount=["type=bind,source=/tmp"])
    assert "unexpected key" in error_of(mount=["type=bind,source=/tmp,target=/x,colour=red"])
    assert "Duplicate mount point" in error_of(volume=["/a:/x", "/b:/x"])
    assert '"--tmpfs"' in error_of(tmpfs=["run"])


def test_env_labels(tmp_path, monkeypatch):
    env_file = tmp_path / "env"
    env_file.write_text("# comment\nA=from-file\n\nB=2\nFROM_HOST\n")
    monkeypatch.setenv("FROM_HOST", "yes")
    monkeypatch.delenv("UNSET_VAR", raising=False)
    s = spec(env_file=[str(env_file)], env=["A=flag", "FROM_HOST", "UNSET_VAR", "EMPTY="],
             label=["a=b", "flag"])
    assert s.env == {"A": "flag", "B": "2", "FROM_HOST": "yes", "EMPTY": ""}
    assert s.labels == {"a": "b", "flag": ""}
    assert "open" in error_of(env_file=[str(tmp_path / "missing")])
    assert '"--env"' in error_of(env=["=x"])


@pytest.mark.parametrize("value,name,retries", [
    ("no", "no", 0), ("always", "always", 0), ("unless-stopped", "unless-stopped", 0),
    ("on-failure", "on-failure", 0), ("on-failure:5", "on-failure", 5)])
def test_restart(value, name, retries):
    policy = spec(restart=value).restart
    assert (policy.name, policy.max_retries) == (name, retries)


def test_bad_restart():
    assert "invalid restart policy" in error_of(restart="sometimes")
    assert "maximum retry count" in error_of(restart="always:3")
    assert '"--restart"' in error_of(restart="on-failure:x")
    assert "Conflicting options: --restart and --rm" in error_of(restart="always", rm=True)


def test_namespace_modes():
    s = spec(pid="host", ipc="container:db", uts="host", network="none", userns="host",
             cgroupns="private")
    assert (s.pid_mode, s.ipc_mode, s.uts_mode, s.network_mode, s.userns_mode, s.cgroupns_mode) == (
        "host", "container:db", "host", "none", "host", "private")
    assert spec(network="bridge").network_mode == "bridge"
    assert spec(network="bridge", net="mynet").networks == ["bridge", "mynet"]
    assert spec(network="mynet").network_mode == "mynet"
    assert spec().network_mode == "none"  # NSBOX_DEFAULT_NETWORK, set by conftest.py
    assert "only bridge networks can be combined" in error_of(network=["none", "mynet"])
    assert "needs a bridge network" in error_of(network="none", ip="10.0.0.2")
    assert spec(net="host").network_mode == "host"
    assert '"--pid"' in error_of(pid="bogus")
    assert spec(network="container:x").network_mode == "container:x"
    assert '"--network"' in error_of(network="container:")
    assert '"--ipc"' in error_of(ipc="container:")


def test_process_options():
    s = spec(user="1000:1000", workdir="/srv", hostname="box", entrypoint="/bin/sh",
             name="web-1", read_only=True, init=True, rm=True, tty=True, interactive=True,
             stop_signal="term", stop_timeout="5", cap_add=["NET_ADMIN"], cap_drop=["ALL"],
             security_opt=["no-new-privileges"], privileged=True, log_driver="k8s-file",
             log_opt=["max-size=10m", "max-file=3"], runtime="runc")
    assert (s.user, s.workdir, s.hostname, s.entrypoint, s.name) == (
        "1000:1000", "/srv", "box", ["/bin/sh"], "web-1")
    assert s.read_only and s.init and s.auto_remove and s.tty and s.interactive and s.privileged
    assert (s.stop_signal, s.stop_timeout) == ("SIGTERM", 5)
    assert (s.cap_add, s.cap_drop, s.security_opt) == (["NET_ADMIN"], ["ALL"], ["no-new-privileges"])
    assert (s.log_driver, s.log_opts, s.runtime) == ("k8s-file", {"max-size": "10m", "max-file": "3"},
                                                      "runc")
    assert spec(entrypoint="").entrypoint == []
    assert spec().entrypoint is None


def test_bad_process_options():
    assert "Invalid container name" in error_of(name="-bad")
    assert '"--stop-signal"' in error_of(stop_signal="SIGBOGUS")
    assert '"--stop-timeout"' in error_of(stop_timeout="soon")
    assert "unknown log driver" in error_of(log_driver="syslog")
    assert "unknown log opt" in error_of(log_opt=["colour=red"])
    assert '"--workdir"' in error_of(workdir="relative")
    assert '"--security-opt"' in error_of(security_opt=["bogus"])
    assert "unknown option" in str(pytest.raises(ConfigError, build_spec, "b", None, {"nope": 1}).value)


def test_command_and_image():
    s = build_spec("busybox", ["echo", "hi"], {})
    assert (s.image, s.command) == ("busybox", ["echo", "hi"])
    assert build_spec("busybox", [], {}).command is None


def test_every_run_flag_is_accepted():
    # Each declared flag must be understood by build_spec (no "unknown option").
    for name, kind in RUN_FLAGS.items():
        value = {"bool": False, "list": [], "str": None}[kind]
        build_spec("busybox", None, {name: value})


def test_default_network_is_the_bridge_for_root_unless_configured(monkeypatch):
    from nsbox.engine import rootless
    monkeypatch.delenv("NSBOX_DEFAULT_NETWORK", raising=False)
    # Docker's: the default bridge as root; rootless keeps `private` (slirp4netns at create)
    expected = "private" if rootless.active() else "bridge"
    assert build_spec("busybox", None, {}).network_mode == expected
    monkeypatch.setattr(rootless, "active", lambda: True)
    assert build_spec("busybox", None, {}).network_mode == "private"
    monkeypatch.setenv("NSBOX_DEFAULT_NETWORK", "none")
    assert build_spec("busybox", None, {}).network_mode == "none"
