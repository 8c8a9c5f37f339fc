"""End-to-end tests of the `nsbox` CLI: the real engine and runtime, driven by subprocess.

Every test gets its own engine --root/--runroot; containers left there are
force-removed afterwards.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

NSBOX = str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "nsbox")


class Nsbox:
    def __init__(self, root: Path) -> None:
        self.prefix = [NSBOX, "--root", str(root / "lib"), "--runroot", str(root / "run")]

    def __call__(self, *args: str, check: bool = True, timeout: float = 60,
                 input: str | None = None) -> subprocess.CompletedProcess:  # noqa: A002
        proc = subprocess.run([*self.prefix, *args], capture_output=True, text=True,
                              timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise AssertionError(f"nsbox {' '.join(args)} -> {proc.returncode}\n{proc.stderr}")
        return proc

    def ids(self) -> list[str]:
        return self("ps", "-a", "-q", "--no-trunc").stdout.split()


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_run_rm_echo(nsbox, tmp_path):
    out = nsbox("run", "--rm", "busybox", "echo", "hi")
    assert out.stdout == "hi\n"
    assert nsbox.ids() == []
    exits = tmp_path / "run" / "exits"
    assert not exits.exists() or list(exits.iterdir()) == []  # no state left behind


def test_container_exit_code_and_stderr(nsbox):
    proc = nsbox("run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3",
                 check=False)
    assert proc.returncode == 3
    assert proc.stdout == "out\n"
    assert "err" in proc.stderr


def test_command_not_found_is_127(nsbox):
    proc = nsbox("run", "--rm", "busybox", "no-such-command", check=False)
    assert proc.returncode == 127
    assert "no-such-command" in one_line_error(proc)
    assert nsbox.ids() == []  # --rm: nothing left behind


def test_command_not_executable_is_126(nsbox):
    proc = nsbox("run", "--rm", "busybox", "/etc/passwd", check=False)
    assert proc.returncode == 126
    one_line_error(proc)


@pytest.mark.parametrize("argv,needle", [
    (["--memory=12q"], "invalid size: '12q'"),
    (["--cpus=-1"], '"--cpus" flag'),
    (["--restart", "sometimes"], "invalid restart policy"),
    (["--bogus-flag"], "unknown flag: --bogus-flag"),
    (["-v", "/x:rel:ro"], "must be absolute"),
])
def test_bad_flag_values_exit_125_and_leave_nothing(nsbox, argv, needle):
    proc = nsbox("run", *argv, "busybox", "true", check=False)
    assert proc.returncode == 125
    assert needle in one_line_error(proc)
    assert proc.stdout == ""
    assert nsbox.ids() == []


def test_unknown_image(nsbox):
    proc = nsbox("run", "--rm", "no-such-image:1", "true", check=False)
    assert proc.returncode == 125
    assert "Unable to find image 'no-such-image:1' locally" in one_line_error(proc)
    assert nsbox.ids() == []


def test_name_in_use(nsbox):
    nsbox("create", "--name", "taken", "busybox", "true")
    proc = nsbox("create", "--name", "taken", "busybox", "true", check=False)
    assert proc.returncode == 125
    assert 'Conflict. The container name "/taken" is already in use' in one_line_error(proc)
    assert len(nsbox.ids()) == 1


def test_detached_lifecycle_ps_inspect_exec(nsbox):
    cid = nsbox("run", "-d", "--name", "sleeper", "-l", "tier=web", "busybox",
                "sleep", "60").stdout.strip()
    assert len(cid) == 64
    nsbox("create", "--name", "idle", "busybox", "true")
    assert nsbox("ps", "-q").stdout.split() == [cid[:12]]
    assert sorted(nsbox("ps", "-a", "--format", "{{.Names}}").stdout.split()) == ["idle", "sleeper"]
    assert nsbox("ps", "-a", "--filter", "name=idl", "--format", "{{.Names}} {{.Status}}"
                 ).stdout == "idle Created\n"
    assert nsbox("ps", "--filter", "label=tier=web", "-q").stdout.split() == [cid[:12]]
    assert nsbox("ps", "-a", "--filter", "status=created", "-q").stdout.split() != [cid[:12]]
    assert nsbox("ps", "--filter", f"id={cid[:6]}", "--format", "{{.ID}}").stdout == cid[:12] + "\n"
    table = nsbox("ps").stdout.splitlines()
    assert table[0].split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS",
                                "PORTS", "NAMES"]
    assert table[1].startswith(cid[:12]) and '"sleep 60"' in table[1] and "Up " in table[1]
    rows = [json.loads(line) for line in nsbox("ps", "--format", "json").stdout.splitlines()]
    assert rows[0]["Names"] == "sleeper" and rows[0]["State"] == "running"
    custom = nsbox("ps", "--format", "table {{.Names}}\\t{{.Image}}").stdout.splitlines()
    assert custom[0].split() == ["NAMES", "IMAGE"] and custom[1].split() == ["sleeper", "busybox"]

    pid = int(nsbox("inspect", "--format", "{{.State.Pid}}", "sleeper").stdout)
    assert Path(f"/proc/{pid}").exists()
    assert nsbox("inspect", "-f", "{{.Name}} {{.State.Status}}", cid[:8]).stdout == \
        "/sleeper running\n"
    config = json.loads(nsbox("inspect", "-f", "{{json .Config}}", "sleeper").stdout)
    assert config["Labels"] == {"tier": "web"}
    assert json.loads(nsbox("inspect", "sleeper").stdout)[0]["Id"] == cid

    assert nsbox("exec", "sleeper", "sh", "-c", "echo $X", check=False).stdout == "\n"
    assert nsbox("exec", "-e", "X=1", "sleeper", "sh", "-c", "echo $X").stdout == "1\n"
    assert nsbox("exec", "sleeper", "sh", "-c", "exit 7", check=False).returncode == 7

    nsbox("stop", "-t", "1", "sleeper")
    status = nsbox("ps", "-a", "--filter", "name=sleeper", "--format", "{{.Status}}").stdout
    assert status.startswith("Exited (")
    assert nsbox("rm", "sleeper", "idle").stdout.split() == ["sleeper", "idle"]
    assert nsbox.ids() == []


def test_exec_command_not_found_is_127(nsbox):
    nsbox("run", "-d", "--name", "sleeper", "busybox", "sleep", "60")
    assert nsbox("exec", "sleeper", "nope", check=False).returncode == 127
    assert nsbox("exec", "sleeper", "/etc/passwd", check=False).returncode == 126


def test_logs_wait_start_attach(nsbox):
    nsbox("run", "-d", "--name", "talker", "busybox", "sh", "-c", "echo one; echo two; exit 5")
    assert nsbox("wait", "talker").stdout == "5\n"
    assert nsbox("logs", "talker").stdout == "one\ntwo\n"
    assert nsbox("logs", "--tail", "1", "talker").stdout == "two\n"
    proc = nsbox("start", "-a", "talker", check=False)
    assert proc.returncode == 5
    assert "one" in proc.stdout


def test_attach_stdin_output_signals_and_refusals(nsbox):
    # A detached -i container reads what the attached client types, and its
    # output and exit code come back through attach; its stdin stays open.
    nsbox("run", "-d", "-i", "--name", "reader", "busybox", "sh")
    proc = nsbox("attach", "reader", check=False, input="echo got:$((6 * 7))\nexit 7\n")
    assert proc.returncode == 7, proc.stderr
    assert proc.stdout == "got:42\n"
    # A signal to attach reaches the container (sig-proxy).
    nsbox("run", "-d", "--name", "trapper", "busybox", "sh", "-c",
          "trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.1; done")
    attach = subprocess.Popen([*nsbox.prefix, "attach", "trapper"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    attach.send_signal(signal.SIGTERM)
    out, err = attach.communicate(timeout=30)
    assert attach.returncode == 3, err
    assert out == "got-term\n"
    # Clear refusals: a stopped container, a terminal, stdin without -i.
    nsbox("run", "-d", "--name", "done", "busybox", "true")
    nsbox("wait", "done")
    assert "start it first" in one_line_error(nsbox("attach", "done", check=False))
    nsbox("run", "-d", "-t", "--name", "tty", "busybox", "sleep", "30")
    proc = nsbox("attach", "tty", check=False)
    assert proc.returncode == 125 and "terminal" in one_line_error(proc)
    nsbox("run", "-d", "--name", "noin", "busybox", "sh", "-c", "echo bye; sleep 1; exit 4")
    assert nsbox("attach", "noin", check=False, input="ignored\n").returncode == 4


def test_kill_restart_rename(nsbox):
    nsbox("run", "-d", "--name", "victim", "busybox", "sleep", "60")
    nsbox("rename", "victim", "renamed")
    nsbox("kill", "renamed")
    assert nsbox("wait", "renamed").stdout.strip() == "137"
    nsbox("restart", "renamed")
    assert nsbox("inspect", "-f", "{{.State.Running}}", "renamed").stdout == "true\n"
    proc = nsbox("rm", "renamed", check=False)
    assert proc.returncode == 125  # running: needs -f
    nsbox("rm", "-f", "renamed")
    proc = nsbox("kill", "-s", "BOGUS", "x", check=False)
    assert proc.returncode == 125


def test_images_tag_rmi_inspect(nsbox):
    nsbox("run", "--rm", "busybox", "true")  # makes busybox on first use
    images = nsbox("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    assert images == ["localhost/busybox:latest"]  # a local image: one row, Podman's name
    nsbox("tag", "busybox", "mine:v1")
    assert "localhost/mine:v1" in nsbox("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    image_id = nsbox("image", "inspect", "-f", "{{.Id}}", "mine:v1").stdout.strip()
    assert nsbox("images", "-q").stdout.split() == [image_id.removeprefix("sha256:")[:12]]
    assert nsbox("inspect", "--type", "image", "-f", "{{json .RepoTags}}", "mine:v1"
                 ).stdout.count("mine:v1") == 1
    assert nsbox("rmi", "mine:v1").stdout == "Untagged: localhost/mine:v1\n"
    proc = nsbox("rmi", "mine:v1", check=False)
    assert proc.returncode == 125 and "No such image: mine:v1" in one_line_error(proc)
    proc = nsbox("inspect", "--type", "image", "nothing-here", check=False)
    assert proc.returncode == 125


def test_save_load_roundtrip(nsbox, tmp_path):
    nsbox("run", "--rm", "busybox", "true")
    archive = tmp_path / "bb.tar"
    nsbox("save", "-o", str(archive), "busybox")
    nsbox("rmi", "-f", "busybox")
    assert nsbox("images", "--format", "{{.Repository}}").stdout.split() == []
    assert "Loaded image: localhost/busybox:latest" in nsbox("load", "-i", str(archive)).stdout
    assert nsbox("run", "--rm", "busybox", "echo", "back").stdout == "back\n"


def test_volume_commands(nsbox):
    assert nsbox("volume", "create", "data").stdout == "data\n"
    assert "data" in nsbox("volume", "ls", "-q").stdout.split()
    nsbox("run", "--rm", "-v", "data:/data", "busybox", "sh", "-c", "echo kept > /data/f")
    assert nsbox("run", "--rm", "-v", "data:/data", "busybox", "cat", "/data/f").stdout == "kept\n"
    mountpoint = nsbox("volume", "inspect", "-f", "{{.Mountpoint}}", "data").stdout.strip()
    assert Path(mountpoint, "f").read_text() == "kept\n"
    nsbox("volume", "rm", "data")
    assert nsbox("volume", "ls", "-q").stdout == ""


def test_container_prune(nsbox):
    nsbox("run", "--name", "done", "busybox", "true")
    assert "done" in nsbox("ps", "-a", "--format", "{{.Names}}").stdout
    out = nsbox("container", "prune", "-f").stdout
    assert "Deleted Containers:" in out
    assert nsbox.ids() == []


def test_memory_limit_reaches_cgroup(nsbox):
    nsbox("run", "-d", "--name", "limited", "--memory", "64m", "--pids-limit", "50",
          "busybox", "sleep", "60")
    inspect = json.loads(nsbox("inspect", "limited").stdout)[0]
    assert inspect["HostConfig"]["Memory"] == 64 << 20


def test_version_info_and_usage(nsbox):
    assert nsbox("version").stdout.startswith("nsbox version ")
    info = nsbox("info").stdout
    assert "Cgroup Version:" in info and "Namespaces:" in info
    assert "Cgroup Driver: cgroupfs (containers at " in info
    proc = nsbox("frobnicate", check=False)
    assert proc.returncode == 125 and "unknown command" in one_line_error(proc)


def test_ps_startup_is_fast(nsbox):
    nsbox("ps")  # creates the root and caches bytecode
    start = time.monotonic()
    for _ in range(3):
        nsbox("ps")
    assert (time.monotonic() - start) / 3 < 1.0


def test_run_it_gets_a_terminal_and_the_exit_code(nsbox):
    import shlex
    import shutil

    if shutil.which("script") is None:
        pytest.skip("util-linux `script` is needed to give nsbox a terminal")
    command = shlex.join([*nsbox.prefix, "run", "-it", "--rm", "busybox", "sh", "-c",
                          "tty; exit 2"])
    proc = subprocess.run(["script", "-eqc", command, "/dev/null"], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert "/dev/pts/" in proc.stdout
    assert nsbox.ids() == []


def test_oom_killed_is_reported_by_inspect(nsbox):
    hog = 'x=$(head -c 67108864 /dev/zero | tr "\\0" a); echo survived'
    cid = nsbox("run", "-d", "--memory", "32m", "busybox", "sh", "-c", hog).stdout.strip()
    assert nsbox("wait", cid).stdout.strip() == "137"
    state = json.loads(nsbox("inspect", cid).stdout)[0]["State"]
    assert state["OOMKilled"] is True and state["ExitCode"] == 137
    # Attached, the CLI records the exit itself: the OOM kill too.
    proc = nsbox("run", "--name", "hog-attached", "--memory", "32m", "busybox", "sh", "-c", hog,
                 check=False)
    assert proc.returncode == 137 and "survived" not in proc.stdout
    state = json.loads(nsbox("inspect", "hog-attached").stdout)[0]["State"]
    assert state["OOMKilled"] is True and state["Status"] == "exited"
    fine = nsbox("run", "-d", "busybox", "true").stdout.strip()
    nsbox("wait", fine)
    assert json.loads(nsbox("inspect", fine).stdout)[0]["State"]["OOMKilled"] is False
    # A kill from outside is a 137 too, but no OOM kill.
    sleeper = nsbox("run", "-d", "busybox", "sleep", "60").stdout.strip()
    nsbox("kill", sleeper)
    assert nsbox("wait", sleeper).stdout.strip() == "137"
    assert json.loads(nsbox("inspect", sleeper).stdout)[0]["State"]["OOMKilled"] is False


def test_killed_attached_run_leaves_the_finish_to_the_monitor(nsbox):
    proc = subprocess.Popen([*nsbox.prefix, "run", "--name", "orphan", "busybox", "sh", "-c",
                             "echo started; sleep 1; exit 5"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "started\n"
    proc.kill()
    proc.wait()
    proc.stdout.close()
    assert nsbox("wait", "orphan").stdout.strip() == "5"
    state = json.loads(nsbox("inspect", "orphan").stdout)[0]["State"]
    assert (state["Status"], state["ExitCode"]) == ("exited", 5)
    assert nsbox("logs", "orphan").stdout == "started\n"


# ---------------------------------------------------------------- --help
def _engine_commands() -> list[tuple[list[str], str]]:
    """(argv prefix, module name) of every engine command and group sub-command."""
    from nsbox.engine import cli

    out = [([name], module) for name, module in cli.COMMANDS.items()]
    out += [([group, sub], module) for group, subs in cli.GROUPS.items()
            for sub, module in subs.items()]
    return out


def _cmd_module(module_name: str):  # noqa: ANN202
    import importlib

    return importlib.import_module(f"nsbox.engine.cli.cmd_{module_name}")


@pytest.mark.parametrize(("argv", "module_name"), _engine_commands(),
                         ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_help_lists_every_flag(argv, module_name, capsys) -> None:  # noqa: ANN001
    from nsbox.engine.cli import main

    module = _cmd_module(module_name)
    assert main([*argv, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage:")
    lines = out.split("\nOptions:\n", 1)[1].splitlines()
    listed = {line.split("--", 1)[1].split()[0]: line for line in lines}
    expected = set(module.FLAGS) | {"help"}
    assert set(listed) == expected
    shorts = {long: short for short, long in (getattr(module, "ALIASES", None) or {}).items()}
    for name, line in listed.items():
        if name in shorts:
            assert line.startswith(f"  -{shorts[name]}, --{name}"), line
        if name != "help" and module.FLAGS[name] != "bool":
            assert len(line.split("--", 1)[1].split()) >= 3, line  # a value name, a description


def test_every_engine_flag_has_a_description() -> None:
    missing = sorted(f"{module_name}: --{flag}" for _, module_name in _engine_commands()
                     for flag in _cmd_module(module_name).FLAGS
                     if not (getattr(_cmd_module(module_name), "HELP", None) or {}).get(flag))
    assert not missing


def test_help_spot_checks() -> None:
    out = subprocess.run([NSBOX, "run", "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "Usage:  nsbox run [OPTIONS] IMAGE [COMMAND] [ARG...]" in text
    assert "  -m, --memory bytes" in text
    assert "      --rm " in text
    assert "      --device list" in text
    assert "  -d, --detach " in text
    from nsbox.engine.run_flags import RUN_ALIASES

    assert ("-p, --publish" in text) == ("p" in RUN_ALIASES)
    top = subprocess.run([NSBOX, "--help"], capture_output=True, text=True, timeout=30)
    assert top.returncode == 0
    from nsbox.engine.cli import COMMANDS, GLOBAL_FLAGS, GROUPS

    commands = {line.split()[0] for line in top.stdout.split("Commands:\n")[1]
                .split("\n\n")[0].splitlines()}
    assert commands == set(COMMANDS) | set(GROUPS)
    for flag in GLOBAL_FLAGS:
        assert f"--{flag}" in top.stdout.split("Global options:")[1]
    group = subprocess.run([NSBOX, "volume", "--help"], capture_output=True, text=True,
                           timeout=30)
    assert group.returncode == 0 and "  prune " in group.stdout


def _runtime_commands() -> list[str]:
    from nsbox.runtime.cli import COMMANDS

    return list(COMMANDS)


@pytest.mark.parametrize("command", _runtime_commands())
def test_runtime_help_lists_every_flag(command, capsys) -> None:  # noqa: ANN001
    import importlib

    from nsbox.runtime.cli import main

    module = importlib.import_module(f"nsbox.runtime.cli.cmd_{command}")
    aliases = getattr(module, "ALIASES", None) or {}
    if getattr(module, "STOP_AFTER", None) == 0:
        pytest.skip(f"{command} takes no flags")
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: nsbox-runtime")
    lines = out.split("\nflags:\n", 1)[1].splitlines()
    listed = {line.split()[0].removeprefix("--").rstrip(","): line for line in lines}
    expected = {name for name in module.FLAGS if not (name in aliases and aliases[name] in module.FLAGS)}
    assert set(listed) == expected
    for name, line in listed.items():
        assert (getattr(module, "HELP", None) or {}).get(name), f"--{name} has no description"
        for alias, target in aliases.items():
            if target == name:
                assert ("-" if len(alias) == 1 else "--") + alias in line


def test_runtime_main_help_lists_global_flags() -> None:
    from nsbox.runtime.cli import _ALIASES, GLOBAL_FLAGS

    runtime = str(Path(NSBOX).with_name("nsbox-runtime"))
    out = subprocess.run([runtime, "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    flags_part = out.stdout.split("global flags:\n")[1]
    for flag in GLOBAL_FLAGS:
        if flag not in _ALIASES:
            assert f"  --{flag}" in flags_part


def test_a_name_that_is_an_id_prefix_of_another_container_is_free(nsbox, tmp_path, monkeypatch):
    """Docker checks names only: `--name c` is free while some id starts with c."""
    import nsbox as api
    from nsbox.engine import containers

    engine = containers.Engine(root=str(tmp_path / "lib"), run_root=str(tmp_path / "run"))
    monkeypatch.setattr(containers, "_new_id", lambda: "cafe" + "0" * 60)
    holder = api.create("busybox", "true", name="holder", engine=engine)
    monkeypatch.undo()
    assert holder.id.startswith("cafe")
    nsbox("run", "-d", "--name", "c", "busybox", "sleep", "60")
    assert api.create("busybox", "true", name="ca", engine=engine).name == "ca"
    proc = nsbox("run", "--name", "holder", "busybox", "true", check=False)
    assert proc.returncode == 125
    assert f'in use by container "{holder.id}"' in one_line_error(proc)


def test_ps_command_column_shows_the_image_cmd(nsbox):
    """A container created without a command runs the image's CMD: ps shows that, as Docker's."""
    nsbox("create", "--name", "imgcmd", "busybox")
    cmd = nsbox("inspect", "-f", "{{.Path}}", "imgcmd").stdout.strip()
    assert cmd  # the image's CMD, resolved at create
    shown = nsbox("ps", "-a", "--no-trunc", "--format", "{{.Command}}").stdout.strip()
    assert shown.strip('"').split()[0] == cmd, shown
