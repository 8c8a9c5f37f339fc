"""The compiled launcher (bin/launcher.c): how it builds the module path.

The program finds its installation two levels above itself, adds the base
interpreter's path, the installation's site-packages and what its .pth files
name, as `site` would, and runs the CLI.  Each test copies the venv's own
`nsbox-runtime` program into a made-up installation whose `nsbox` package is
a probe: its `_exit` module (the first thing the launcher imports) prints
what the interpreter sees and exits.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROGRAM = REPO / ".venv" / "bin" / "nsbox-runtime"
SITE_REL = Path("lib") / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"

PROBE = """\
import codecs, json, os, sys
print(json.dumps({"path": sys.path, "prefix": sys.prefix, "executable": sys.executable,
                  "launcher": sys._nsbox_launcher, "argv": sys.argv,
                  "pth_ran": getattr(sys, "pth_ran", 0), "no_site": sys.flags.no_site,
                  "origins": {name: sys.modules[name].__spec__.origin for name in
                              ("encodings", "encodings.aliases", "encodings.utf_8")},
                  "stdout": sys.stdout.encoding, "cp1252": codecs.lookup("windows-1252").name,
                  "builtins": sys.builtin_module_names, "stdlib_dir": sys._stdlib_dir,
                  "encodings_path": sys.modules["encodings"].__path__,
                  "os_file": getattr(os, "__file__", None), "base_prefix": sys.base_prefix}))
sys.stdout.flush()
os._exit(0)
"""

pytestmark = pytest.mark.skipif(
    not PROGRAM.exists() or PROGRAM.read_bytes()[:4] != b"\x7fELF",
    reason="the venv's nsbox-runtime is the script launcher (the build could not compile "
           "bin/launcher.c)")


def probe_package(where: Path) -> Path:
    (where / "nsbox").mkdir(parents=True)
    (where / "nsbox" / "__init__.py").write_text("")
    (where / "nsbox" / "_exit.py").write_text(PROBE)
    return where


def install(prefix: Path) -> Path:
    """A copy of the program in PREFIX/bin, and an empty site-packages."""
    (prefix / "bin").mkdir(parents=True)
    program = prefix / "bin" / "nsbox-runtime"
    shutil.copy2(PROGRAM, program)
    (prefix / SITE_REL).mkdir(parents=True)
    return program


def launch(program: Path, *args: str, env: dict | None = None, cwd: Path | None = None) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run([str(program), *args], capture_output=True, text=True, timeout=30,
                          env={**base, **(env or {})}, cwd=cwd)
    assert proc.returncode == 0, proc
    return json.loads(proc.stdout)


def test_site_packages_and_pth_lines_as_site_adds_them(tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    program = install(prefix)
    site = prefix / SITE_REL
    probe_package(site)
    absolute = tmp_path / "absolute"
    absolute.mkdir()
    (site / "relative").mkdir()
    # In name order, as site reads them: b.pth's line comes after a.pth's.
    (site / "b.pth").write_text(f"{absolute}\n")
    (site / "a.pth").write_text("# a comment\n\nrelative\nmissing-dir\n"
                                "import sys; sys.pth_ran = 1\n")
    (site / ".hidden.pth").write_text(f"{tmp_path}\n")
    seen = launch(program, "arg1", "--flag")
    path = seen["path"]
    assert path.index(str(site)) < path.index(str(site / "relative")) < path.index(str(absolute))
    assert str(site / "missing-dir") not in path and str(tmp_path) not in path
    assert seen["pth_ran"] == 1  # an "import" line runs, as site runs it
    assert seen["no_site"] == 1
    # Every argument is the command's, none the interpreter's.
    assert seen["argv"] == [str(program), "arg1", "--flag"]
    assert seen["launcher"] == str(program)
    # No pyvenv.cfg: not a venv, so the base interpreter is sys.executable.
    assert seen["prefix"] != str(prefix)


def test_a_venv_prefix_and_its_python(tmp_path: Path) -> None:
    """sys.prefix is the venv's, and sys._stdlib_dir is still found (set after start-up,
    the prefix does not hide it), so the interpreter's frozen modules have a __file__."""
    prefix = tmp_path / "venv"
    program = install(prefix)
    probe_package(prefix / SITE_REL)
    (prefix / "pyvenv.cfg").write_text(f"home = {Path(sys.base_prefix) / 'bin'}\n")
    (prefix / "bin" / "python").symlink_to(os.path.realpath(sys.executable))
    seen = launch(program)
    assert seen["prefix"] == str(prefix) and seen["base_prefix"] == sys.base_prefix
    assert seen["executable"] == str(prefix / "bin" / "python")
    assert seen["stdlib_dir"] == sysconfig.get_path("stdlib") == sys._stdlib_dir
    assert seen["os_file"] == os.__file__


def test_the_syscall_module_is_built_in(tmp_path: Path) -> None:
    """nsbox/runtime/syscalls.py's entry points without ctypes (bin/syscall_module.c)."""
    program = install(tmp_path / "prefix")
    probe_package(tmp_path / "prefix" / SITE_REL)
    assert "_nsbox_syscall" in launch(program)["builtins"]


def test_found_through_a_symlink_and_never_from_the_working_directory(tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    program = install(prefix)
    probe_package(prefix / SITE_REL)
    link = tmp_path / "elsewhere" / "nsbox-runtime"
    link.parent.mkdir()
    link.symlink_to(program)
    decoy = tmp_path / "cwd"
    (decoy / "nsbox").mkdir(parents=True)
    (decoy / "nsbox" / "__init__.py").write_text("raise SystemExit('imported from the cwd')\n")
    seen = launch(link, cwd=decoy)
    assert seen["launcher"] == str(program)  # the real path, for exe_guard's re-exec
    assert str(decoy) not in seen["path"] and "" not in seen["path"]


def test_pythonpath_comes_first(tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    program = install(prefix)
    probe_package(prefix / SITE_REL)
    first = probe_package(tmp_path / "first")
    seen = launch(program, env={"PYTHONPATH": str(first)})
    assert seen["path"][0] == str(first)


def test_a_copy_put_elsewhere_runs_the_installation_it_was_built_for(tmp_path: Path) -> None:
    """No site-packages two levels above the program: the prefix it was built
    for (this venv), with its python, so the engine's `python -m` helpers work."""
    program = tmp_path / "elsewhere" / "bin" / "nsbox-runtime"
    program.parent.mkdir(parents=True)
    shutil.copy2(PROGRAM, program)
    probe = probe_package(tmp_path / "probe")
    venv = PROGRAM.parent.parent
    seen = launch(program, env={"PYTHONPATH": str(probe)})
    assert seen["prefix"] == str(venv)
    assert seen["executable"] == str(venv / "bin" / "python")
    assert str(venv / SITE_REL) in seen["path"]
    assert seen["launcher"] == str(program)
    # And the real command, from the copy.
    proc = subprocess.run([str(program), "--version"], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0 and "nsbox-runtime version" in proc.stdout, proc


def test_the_encodings_start_up_modules_are_frozen_in_and_every_codec_still_found(
        tmp_path: Path) -> None:
    """setup.py's FROZEN_STDLIB: the package, its alias table and the UTF-8 codec come
    from the program; the package's __path__ is its directory on disk, so other codecs
    are found there, at start-up (the standard streams in cp1252) as later."""
    prefix = tmp_path / "prefix"
    program = install(prefix)
    probe_package(prefix / SITE_REL)
    seen = launch(program, env={"PYTHONIOENCODING": "cp1252"})
    assert seen["origins"] == {"encodings": "frozen", "encodings.aliases": "frozen",
                               "encodings.utf_8": "frozen"}
    assert seen["encodings_path"] == [os.path.join(sysconfig.get_path("stdlib"), "encodings")]
    assert seen["stdout"] == "cp1252" and seen["cp1252"] == "cp1252"

