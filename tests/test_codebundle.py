"""nsbox/_codebundle.py: the runtime's modules compiled into one file.

The loader is tried on a small package built here (checked and unchecked
bundles, an edited source, a bundle for another interpreter), then on the
real thing: the nsbox-runtime launcher imports nsbox's modules from the
bundle `make deps` built, and falls back to the sources when told to.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import write_config

from nsbox import _codebundle

REPO = Path(__file__).resolve().parent.parent

MODULES = {
    "pkg/__init__.py": "from __future__ import annotations\n\nfrom pkg.sub import VALUE\n\n"
                       "def typed(x: Undefined) -> int:\n    return x\n",
    "pkg/sub.py": "VALUE = 41\n\ndef fail():\n    raise ValueError('from sub')\n",
    "pkg/other.py": "import pkg.sub\nTWICE = pkg.sub.VALUE * 2\n",
}

# Imports pkg with the bundle installed and reports what it got.
PROBE = """
import json, sys, traceback
sys.path.insert(0, sys.argv[2])
from nsbox._codebundle import load
bundle = load(sys.argv[1], sys.argv[2])
if bundle is not None:
    sys.meta_path.insert(0, bundle)
import pkg, pkg.other
try:
    pkg.sub.fail()
except ValueError:
    line = traceback.format_exc().strip().splitlines()[-2].strip()
print(json.dumps({
    "annotations": pkg.typed.__annotations__, "future": "__future__" in sys.modules,
    "value": pkg.VALUE, "twice": pkg.other.TWICE, "file": pkg.sub.__file__,
    "path": pkg.__path__, "line": line,
    "loaders": {m: type(sys.modules[m].__spec__.loader).__name__
                for m in ("pkg", "pkg.sub", "pkg.other")},
}))
"""


def make_tree(root: Path) -> list[str]:
    for rel, text in MODULES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return sorted(MODULES)


def probe(bundle: Path, root: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE, str(bundle), str(root)],
                          capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd="/")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("checked", [True, False])
def test_modules_come_from_the_bundle_with_their_usual_attributes(tmp_path, checked):
    root = tmp_path / "src"
    names = make_tree(root)
    out = tmp_path / "test.codebundle"
    _codebundle.build(str(root), names, str(out), checked=checked)
    seen = probe(out, root)
    assert seen["loaders"] == {m: "CodeBundle" for m in ("pkg", "pkg.sub", "pkg.other")}
    assert (seen["value"], seen["twice"]) == (41, 82)
    assert seen["file"] == str(root / "pkg" / "sub.py")
    assert seen["path"] == [str(root / "pkg")]
    # A traceback shows the source line, whatever name the code object carries.
    assert seen["line"] == "raise ValueError('from sub')"
    # `from __future__ import annotations` holds, without importing __future__.
    assert seen["annotations"] == {"x": "Undefined", "return": "int"}
    assert seen["future"] is False


def test_an_edited_source_wins_over_a_checked_bundle_only(tmp_path):
    root = tmp_path / "src"
    names = make_tree(root)
    checked, unchecked = tmp_path / "checked.codebundle", tmp_path / "unchecked.codebundle"
    _codebundle.build(str(root), names, str(checked), checked=True)
    _codebundle.build(str(root), names, str(unchecked), checked=False)
    sub = root / "pkg" / "sub.py"
    time.sleep(0.01)
    sub.write_text(MODULES["pkg/sub.py"].replace("41", "42"))
    seen = probe(checked, root)
    assert seen["value"] == 42 and seen["loaders"]["pkg.sub"] == "SourceFileLoader"
    assert seen["loaders"]["pkg"] == "CodeBundle"  # unchanged modules still come from it
    # Same size, other content, new time: still noticed.
    os.utime(sub, ns=(time.time_ns(), time.time_ns()))
    assert probe(checked, root)["value"] == 42
    # An installed (unchecked) bundle is used as built, as frozen modules are.
    seen = probe(unchecked, root)
    assert seen["value"] == 41 and seen["loaders"]["pkg.sub"] == "CodeBundle"


def test_a_bundle_for_another_interpreter_or_damaged_is_not_used(tmp_path):
    root = tmp_path / "src"
    names = make_tree(root)
    out = tmp_path / "test.codebundle"
    _codebundle.build(str(root), names, str(out), checked=False)
    data = out.read_bytes()
    magic_end = len(_codebundle.MAGIC)
    other_python = data[:magic_end] + b"\x00\x00\r\n" + data[magic_end + 4:]
    for name, content in (("other-python", other_python), ("not-a-bundle", b"hello"),
                          ("truncated", data[:20]), ("empty", b"")):
        bad = tmp_path / name
        bad.write_bytes(content)
        assert _codebundle.load(str(bad), str(root)) is None, name
        assert probe(bad, root)["loaders"]["pkg.sub"] == "SourceFileLoader"
    assert _codebundle.load(str(tmp_path / "missing"), str(root)) is None


# Preloads pkg.other (which imports pkg.sub) and reports how each module came.
PRELOAD_PROBE = """
import json, sys
sys.path.insert(0, sys.argv[2])
from nsbox._codebundle import load
bundle = load(sys.argv[1], sys.argv[2])
sys.meta_path.insert(0, bundle)
bundle.preload(tuple(sys.argv[3].split(",")))
import pkg.other
out = {"preloaded": sorted(m for m in sys.modules if m.startswith("pkg")),
       "twice": pkg.other.TWICE, "attr": pkg.other is getattr(pkg, "other", None),
       "spec": pkg.other.__spec__.name, "file": pkg.other.__file__,
       "package": pkg.other.__package__, "path": getattr(pkg, "__path__", None)}
print(json.dumps(out))
"""


def preload_probe(bundle: Path, root: Path, names: str, verbose: bool = False
                  ) -> tuple[dict, str]:
    proc = subprocess.run([sys.executable, *(["-v"] if verbose else []), "-c", PRELOAD_PROBE,
                           str(bundle), str(root), names],
                          capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd="/")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def test_preload_imports_as_the_import_system_does(tmp_path):
    root = tmp_path / "src"
    names = make_tree(root)
    out = tmp_path / "test.codebundle"
    _codebundle.build(str(root), names, str(out), checked=True)
    # pkg.other's parent package comes first, and with it pkg.sub (pkg imports it).
    seen, log = preload_probe(out, root, "pkg.other", verbose=True)
    assert seen["preloaded"] == ["pkg", "pkg.other", "pkg.sub"]
    assert seen["twice"] == 82 and seen["attr"] is True
    assert (seen["spec"], seen["package"]) == ("pkg.other", "pkg")
    assert seen["file"] == str(root / "pkg" / "other.py")
    assert seen["path"] == [str(root / "pkg")]
    # python -v reports each module and where it came from, as for an import statement.
    assert "import 'pkg.other' # <nsbox._codebundle.CodeBundle" in log
    # Names outside the bundle are left to import statements; an edited source
    # is imported from its source, not preloaded from the stale code.
    time.sleep(0.01)
    (root / "pkg" / "sub.py").write_text(MODULES["pkg/sub.py"].replace("41", "42"))
    seen, _ = preload_probe(out, root, "json.decoder,pkg.sub,pkg.other")
    assert seen["twice"] == 84
    assert "json.decoder" not in seen["preloaded"]


def test_a_module_that_fails_is_not_left_half_imported(tmp_path):
    root = tmp_path / "src"
    make_tree(root)
    (root / "pkg" / "bad.py").write_text("import pkg.sub\nraise RuntimeError('bad module')\n")
    out = tmp_path / "test.codebundle"
    _codebundle.build(str(root), [*sorted(MODULES), "pkg/bad.py"], str(out), checked=False)
    code = PRELOAD_PROBE.replace("bundle.preload(tuple(sys.argv[3].split(\",\")))", """
try:
    bundle.preload(("pkg.bad",))
except RuntimeError as exc:
    print(json.dumps({"error": str(exc), "left": "pkg.bad" in sys.modules,
                      "attr": hasattr(sys.modules["pkg"], "bad")}))
    raise SystemExit(0)""")
    proc = subprocess.run([sys.executable, "-c", code, str(out), str(root), ""],
                          capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd="/")
    assert json.loads(proc.stdout) == {"error": "bad module", "left": False, "attr": False}


def runtime_imports(env: dict[str, str]) -> dict[str, str]:
    """Which loader imported each nsbox module in a `state` of a missing container;
    a module compiled from its source is under "compiled": its path."""
    runtime = REPO / ".venv" / "bin" / "nsbox-runtime"
    with open(runtime, "rb") as program:
        if program.read(4) != b"\x7fELF":
            pytest.skip("nsbox-runtime is the script launcher (no C compiler at install)")
    proc = subprocess.run([str(runtime), "--root", "/nonexistent-root", "state", "missing"],
                          capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PYTHONVERBOSE": "1", **env})
    assert "does not exist" in proc.stderr
    found = {}
    for line in proc.stderr.splitlines():
        if line.startswith("import 'nsbox"):
            name, _, loader = line[len("import '"):].partition("' # ")
            found[name] = loader
        elif line.startswith("# code object from ") and line.endswith(".py"):
            found.setdefault("compiled", []).append(line.rpartition(" ")[2])
    return found


def test_the_runtime_launcher_imports_from_the_bundle():
    bundle = REPO / "nsbox" / _codebundle.FILE_NAME
    if not bundle.exists():
        pytest.skip("no code bundle: the editable install predates it (make deps)")
    subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "code-bundle"],
                   check=True, capture_output=True, timeout=120)
    loaders = runtime_imports({})
    assert "SourceFileLoader" in loaders["nsbox"]  # the package, before the bundle
    assert "SourceFileLoader" in loaders["nsbox._codebundle"]
    bundled = {m for m, loader in loaders.items() if "CodeBundle" in loader}
    assert {"nsbox.runtime.cli", "nsbox.runtime.container", "nsbox.runtime.state"} <= bundled
    off = runtime_imports({"NSBOX_CODE_BUNDLE": "0"})
    assert not any("CodeBundle" in loader for loader in off.values())


def test_no_module_is_compiled_at_run_time():
    """`make` writes every module's .pyc even with PYTHONDONTWRITEBYTECODE=1 (which
    stops the interpreter from writing them): a command would otherwise compile
    each module whose .pyc is missing or stale, every time (~2.5 ms a runtime
    command for nsbox/_codebundle.py, imported before the bundle)."""
    subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "code-bundle"],
                   check=True, capture_output=True, timeout=300)
    for env in ({"PYTHONDONTWRITEBYTECODE": "1"}, {"PYTHONDONTWRITEBYTECODE": "1",
                                                   "NSBOX_CODE_BUNDLE": "0"}):
        assert runtime_imports(env).get("compiled", []) == [], env


# What main() and the launcher import before a command's preload.
IMPORTED_BEFORE_PRELOAD = {
    "nsbox", "nsbox._codebundle", "nsbox._exit", "nsbox.runtime", "nsbox.runtime.cli",
    "nsbox._json", "nsbox._lazylog", "nsbox.runtime.cli._log", "nsbox.runtime.cli.cmd_create",
    "nsbox.runtime.cli.cmd_run", "nsbox.runtime.cli.cmd_exec"}


@pytest.mark.parametrize("command", ["run", "create", "exec"])
def test_the_preload_lists_what_the_commands_import(command, bundle, run_runtime, container_id):
    """cli.PRELOAD names what the command imports for a plain container: nothing it
    does not (each costs ~0.1 ms to load), nothing missing (the saving would be lost)."""
    from nsbox.runtime.cli import PRELOAD

    profile = {**os.environ, "NSBOX_CODE_BUNDLE": "0", "PYTHONPROFILEIMPORTTIME": "1"}
    if command == "exec":
        write_config(bundle, lambda s: s["process"].update(args=["sleep", "60"]))
        run_runtime("run", "--detach", "--bundle", str(bundle), container_id)
        proc = run_runtime("exec", container_id, "/bin/true", env=profile)
        run_runtime("delete", "--force", container_id)
    else:
        proc = run_runtime(command, "--bundle", str(bundle), container_id, env=profile)
    if command == "create":
        run_runtime("delete", "--force", container_id)
    imported = {line.rpartition("|")[2].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    imported = {name for name in imported if name.startswith("nsbox")}
    assert imported - IMPORTED_BEFORE_PRELOAD == set(PRELOAD[command])
