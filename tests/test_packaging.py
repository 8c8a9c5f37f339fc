"""Packaging: the monitor's C loop is compiled when the package is built and
shipped inside it; `make install` / `make uninstall`; the engine half of
`make demo`.

The install tests run `make install` from a copy of the source tree (so the
build never touches this clone's build/ directory, which other runs may use)
into INSTALL_DIR/BIN_DIR under a temporary directory: a real, non-editable
`pip install .` into a fresh venv, the way /opt/nsbox is made.  pip builds
with build isolation, so it fetches setuptools from PyPI (or its cache).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
from helpers import PYTHON_RAN, no_python_env, run_cli, wait_for, write_config
from test_launcher import launch, probe_package

REPO = Path(__file__).resolve().parent.parent
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
NSBOX = REPO / ".venv" / "bin" / "nsbox"
# .venv/bin/python is a symlink to the interpreter the venv was made from.
REAL_PYTHON = os.path.realpath(VENV_PYTHON)
LOOP = "nsbox-monitor-loop"
COMMANDS = ("nsbox", "nsbox-runtime")

SOURCE_FILES = ("Makefile", "pyproject.toml", "setup.py", "README.md", "bin", "nsbox")


def embedding_missing() -> str:
    """Why setup.py's build_launchers cannot embed this interpreter, or ''."""
    import sysconfig

    config = sysconfig.get_config_var
    static = Path(config("LIBPL") or "", config("LIBRARY") or "")
    if not (static.suffix == ".a" and static.exists()) and not config("Py_ENABLE_SHARED"):
        return "the interpreter has neither a static nor a shared libpython"
    if not Path(sysconfig.get_path("include"), "Python.h").exists():
        return "the interpreter's headers (Python.h) are missing"
    if shutil.which("cc") is None:
        return "no C compiler"
    return ""


def copy_source(dest: Path) -> Path:
    """The files a build needs, without caches or an editable build's loop binary."""
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", LOOP,
                                    "_runtime.codebundle")
    for name in SOURCE_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    return dest


def run(argv: list, check: bool = True, env: dict | None = None, timeout: float = 120,
        **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


class Install:
    def __init__(self, base: Path) -> None:
        self.src = copy_source(base / "src")
        self.dir = base / "opt" / "nsbox"
        self.bin = base / "bin"
        self.data = base / "data"

    def make(self, target: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(["make", "--no-print-directory", "-C", self.src, target,
                    f"INSTALL_DIR={self.dir}", f"BIN_DIR={self.bin}", f"REAL_PYTHON={REAL_PYTHON}"],
                   check=check)

    def nsbox(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return run([self.bin / "nsbox", "--root", self.data / "root", "--runroot",
                    self.data / "run", *args], env=env)

    def python(self, code: str) -> str:
        # -I: not this clone (the working directory) nor PYTHONPATH, only the install.
        return run([self.dir / "bin" / "python", "-I", "-c", code]).stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory):
    inst = Install(tmp_path_factory.mktemp("install"))
    proc = inst.make("install")
    assert "monitor: C loop" in proc.stdout, proc.stdout + proc.stderr
    yield inst
    inst.make("uninstall", check=False)


def test_install_ships_the_compiled_loop_in_the_package(installed: Install) -> None:
    out = installed.python("import nsbox.engine.monitor as m; print(m.__file__); "
                           "print(m.loop_binary())").splitlines()
    module, loop = Path(out[0]), Path(out[1])
    site = next((installed.dir / "lib").glob("python3*/site-packages"))
    # Installed for real, not pointing back into a source tree.
    assert module.is_relative_to(site), module
    assert loop == site / "nsbox" / "engine" / LOOP
    assert loop.read_bytes()[:4] == b"\x7fELF"
    # Every user may run it: the venv is world-readable, the loop executable by all.
    assert loop.stat().st_mode & 0o755 == 0o755
    for part in (installed.dir, site, loop.parent):
        assert part.stat().st_mode & 0o005 == 0o005, part
    assert not list(site.glob("__editable__*")), "an editable install"
    wheel_meta = next(site.glob("nsbox-*.dist-info")) / "WHEEL"
    text = wheel_meta.read_text()
    assert "Root-Is-Purelib: false" in text
    if embedding_missing():
        assert re.search(r"^Tag: py3-none-linux_\w+$", text, re.M), text
    else:
        # The compiled launchers link this interpreter's libpython.
        assert re.search(r"^Tag: cp3\d+-cp3\d+-linux_\w+$", text, re.M), text


def test_installed_commands_are_compiled_and_start_without_site(installed: Install,
                                                                tmp_path: Path) -> None:
    """bin/launcher.c, built by pip: the commands embed the interpreter and skip `site`
    (~1 ms of each command), find the installation through a symlink in another
    directory, and never import from the working directory."""
    if reason := embedding_missing():
        pytest.skip(reason)
    # A decoy package where the command runs: importing it would fail the command.
    (tmp_path / "nsbox").mkdir()
    (tmp_path / "nsbox" / "__init__.py").write_text("raise SystemExit('imported from the cwd')\n")
    for cmd in COMMANDS:
        program = installed.dir / "bin" / cmd
        assert program.read_bytes()[:4] == b"\x7fELF", program
        proc = run([installed.bin / cmd, "--version"], cwd=tmp_path,
                   env={"PYTHONPROFILEIMPORTTIME": "1"})
        assert "version 0.1.0" in proc.stdout, proc
        imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                    if line.startswith("import time:")}
        assert "nsbox" in imported, proc.stderr
        assert not imported & {"site", "sitecustomize", "usercustomize"}, imported
    # A closed standard output is held with /dev/null, so no file the command
    # opens becomes its fd 1: the output is discarded, the command succeeds.
    closed = run(["bash", "-c", f"exec 1>&-; {installed.bin / 'nsbox-runtime'} --version"],
                 check=False)
    assert closed.returncode == 0 and "Traceback" not in closed.stderr, closed
    # What the program, as pip built it, looks like to Python: the venv's prefix
    # and interpreter (test_launcher's probe, here on the installed program).
    probe = probe_package(tmp_path / "probe")
    seen = launch(installed.bin / "nsbox-runtime", env={"PYTHONPATH": str(probe)})
    assert seen["prefix"] == str(installed.dir)
    assert seen["executable"] == str(installed.dir / "bin" / "python")
    assert seen["launcher"] == str(installed.dir / "bin" / "nsbox-runtime")
    site = next((installed.dir / "lib").glob("python3*/site-packages"))
    path = seen["path"]
    assert path[0] == str(probe) and str(site) in path and str(tmp_path) not in path, path


def test_installed_runtime_starts_and_deletes_without_python(installed: Install, bundle: Path,
                                                             cg_path: str, tmp_path: Path,
                                                             register_runtime) -> None:
    """bin/runtime_fast.c is in the installed nsbox-runtime: `start` and `delete`
    of a plain container work with a PYTHONPATH whose nsbox cannot be imported."""
    if reason := embedding_missing():
        pytest.skip(reason)
    runtime = register_runtime([str(installed.bin / "nsbox-runtime"), "--root",
                                str(tmp_path / "state")])

    def plain(spec: dict) -> None:
        spec["process"]["args"] = ["true"]
        spec["linux"]["cgroupsPath"] = cg_path

    write_config(bundle, plain)
    # run_cli: output to files, as the container holds the runtime's stdout and stderr.
    run_cli(runtime, "create", "--bundle", str(bundle), "plain")
    no_python = no_python_env(tmp_path)
    run_cli(runtime, "start", "plain", env=no_python)
    assert run_cli(runtime, "state", "plain", env=no_python, check=False).returncode == PYTHON_RAN
    wait_for(lambda: '"stopped"' in run_cli(runtime, "state", "plain").stdout, timeout=10)
    run_cli(runtime, "delete", "plain", env=no_python)
    assert not (tmp_path / "state" / "plain").exists()


def test_installed_runtime_imports_from_its_code_bundle(installed: Install) -> None:
    """The wheel ships nsbox/_runtime.codebundle, unchecked (the sources were
    installed with it), and the installed nsbox-runtime imports from it."""
    if reason := embedding_missing():
        pytest.skip(reason)
    info = json.loads(installed.python(
        "import json, os, nsbox._codebundle as b\n"
        "d = os.path.dirname(b.__file__)\n"
        "x = b.load(os.path.join(d, b.FILE_NAME), os.path.dirname(d))\n"
        "print(json.dumps(x and {'checked': x.checked, 'modules': sorted(x.modules)}))"))
    assert info is not None and info["checked"] is False
    assert {"nsbox.runtime.cli", "nsbox.runtime.create", "nsbox.errors"} <= set(info["modules"])
    proc = run([installed.bin / "nsbox-runtime", "--root", installed.data / "none", "state", "x"],
               check=False, env={"PYTHONVERBOSE": "1"})
    assert "import 'nsbox.runtime.cli' # <nsbox._codebundle.CodeBundle" in proc.stderr


def test_install_ships_the_guard_object_and_rules(installed: Install) -> None:
    """The guard's BPF object is compiled at install time (clang) and shipped with its rules."""
    if shutil.which("clang") is None or shutil.which("bpftool") is None:
        pytest.skip("clang or bpftool is missing: the guard's object is not built")
    site = next((installed.dir / "lib").glob("python3*/site-packages"))
    guard = site / "nsbox" / "engine" / "guard"
    obj = guard / "bpf" / "guard.bpf.o"
    assert obj.read_bytes()[:4] == b"\x7fELF"
    assert (guard / "default-rules.yaml").is_file() and (guard / "bpf" / "guard.bpf.c").is_file()
    out = installed.python("from nsbox.engine.guard import config, rules; "
                           "print(config.OBJECT); "
                           "print(len(rules.load_text(rules.default_rules_text(), 'd')))")
    assert out.splitlines()[0] == str(obj) and int(out.splitlines()[1]) > 5


def test_installed_commands_are_linked_and_info_reports_the_c_loop(installed: Install) -> None:
    for cmd in ("nsbox", "nsbox-runtime"):
        link = installed.bin / cmd
        assert link.is_symlink() and os.readlink(link) == str(installed.dir / "bin" / cmd)
    assert "nsbox-runtime version" in run([installed.bin / "nsbox-runtime", "--version"]).stdout
    loop = installed.python("import nsbox.engine.monitor as m; print(m.loop_binary())").strip()
    info = installed.nsbox("info").stdout
    assert f"Monitor: C loop ({loop})\n" in info, info
    assert installed.nsbox("info", "--format", "{{.Monitor.Loop}}").stdout.strip() == "c"
    python = installed.nsbox("info", env={"NSBOX_MONITOR_PYTHON": "1"}).stdout
    assert "Monitor: Python (NSBOX_MONITOR_PYTHON is set)" in python, python


def test_info_reports_the_python_fallback_without_the_loop(installed: Install) -> None:
    loop = Path(installed.python("import nsbox.engine.monitor as m; print(m.loop_binary())").strip())
    aside = loop.with_name(LOOP + ".aside")
    loop.rename(aside)
    try:
        assert installed.python("import nsbox.engine.monitor as m; print(repr(m.loop_binary()))"
                                ).strip() == "''"
        info = installed.nsbox("info").stdout
        assert f"Monitor: Python (no compiled loop shipped: {loop} is missing" in info, info
        assert installed.nsbox("info", "--format", "{{.Monitor.Loop}}").stdout.strip() == "python"
    finally:
        aside.rename(loop)


def test_installed_venv_starts_without_setuptools_hooks(installed: Install) -> None:
    """`make install` drops setuptools from the venv: its distutils-precedence.pth made
    every interpreter start import _distutils_hack (~0.5 ms of each nsbox command)."""
    assert not list(installed.dir.glob("lib/python*/site-packages/distutils-precedence.pth"))
    out = installed.python("import sys; print('_distutils_hack' in sys.modules)")
    assert out.strip() == "False"


def test_uninstall_removes_the_venv_and_its_links_only(installed: Install) -> None:
    foreign = installed.bin / "other"
    foreign.symlink_to("/bin/true")
    installed.make("uninstall")
    assert not installed.dir.exists()
    assert sorted(p.name for p in installed.bin.iterdir()) == ["other"]
    installed.make("uninstall")  # again: nothing to do, no error


def test_install_refuses_a_directory_that_is_not_a_venv(tmp_path: Path) -> None:
    inst = Install(tmp_path)
    inst.dir.mkdir(parents=True)
    (inst.dir / "precious").write_text("keep me")
    proc = inst.make("install", check=False)
    assert proc.returncode != 0
    assert "is not a venv; not touching it" in proc.stderr
    assert (inst.dir / "precious").read_text() == "keep me"
    assert not inst.bin.exists()


def test_wheel_without_a_compiler_builds_without_the_loop(tmp_path: Path) -> None:
    src = copy_source(tmp_path / "src")
    proc = run([VENV_PYTHON, "-m", "pip", "wheel", "-v", "--no-deps", "--disable-pip-version-check",
                "-w", tmp_path / "dist", src], env={"CC": "false"})
    assert "cannot compile" in proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "dist").glob("nsbox-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "nsbox/engine/monitor.py" in names
    assert not [n for n in names if n.endswith(LOOP)], names
    # The commands fall back to the script launchers, for any CPython 3.
    archive = zipfile.ZipFile(wheel)
    for cmd in COMMANDS:
        (script,) = [n for n in names if n.endswith(f".data/scripts/{cmd}")]
        assert archive.read(script).startswith(b"#!python"), script
    assert re.search(r"^Tag: py3-none-linux_\w+$",
                     archive.read(next(n for n in names if n.endswith("/WHEEL"))).decode(), re.M)


def test_editable_install_has_the_loop_and_detached_containers_use_it(tmp_path: Path) -> None:
    loop = run([VENV_PYTHON, "-c", "import nsbox.engine.monitor as m; print(m.loop_binary())"],
               cwd="/").stdout.strip()
    assert loop == str(REPO / "nsbox" / "engine" / LOOP)
    box = [NSBOX, "--root", tmp_path / "root", "--runroot", tmp_path / "run"]
    cid = run([*box, "run", "-d", "busybox", "sleep", "60"]).stdout.strip()
    try:
        # The monitor answers `run -d` before it execs the loop: wait for the exec.
        deadline = time.monotonic() + 10
        while loop not in (exes := _exes_naming(cid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert loop in exes, exes
    finally:
        run([*box, "rm", "-f", cid], check=False)


def _exes_naming(cid: str) -> set[str]:
    """The executables of the processes whose command line holds CID."""
    exes = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if cid.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                exes.add(os.readlink(f"/proc/{pid}/exe"))
        except OSError:
            continue
    return exes


def test_engine_demo_shows_namespaces_and_limits() -> None:
    proc = run([REPO / "scripts" / "demo-engine.sh", NSBOX])
    out = proc.stdout
    root = re.search(r"^\+ nsbox --root (\S+)/root ", out, re.M)
    assert root, out
    assert not Path(root.group(1)).exists(), "the demo left its directory behind"
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if re.match(r"^(cgroup|ipc|mnt|net|pid|uts)\s", line)}
    for ns in ("ipc", "mnt", "pid", "uts"):
        assert rows[ns][-1] == "new", out
    assert re.search(r"^  memory\s+67108864 bytes \(64 MiB\)\s+/sys/fs/cgroup/\S+$", out, re.M), out
    assert re.search(r"^  pids\s+64\s+/sys/fs/cgroup/\S+$", out, re.M), out

