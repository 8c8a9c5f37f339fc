"""Build steps of the nsbox package: the compiled pieces it ships.

Everything else is declared in pyproject.toml.  This file adds four build
sub-commands: `build_guard_bpf` (the guard's BPF object), `build_code_bundle`
(the runtime's modules compiled into one file, nsbox/_codebundle.py),
`build_launchers` (the `nsbox-runtime` and `nsbox` commands as programs
embedding the interpreter, in place of the bin/ scripts; see its docstring)
and `build_monitor_loop`, which compiles nsbox/engine/monitor_loop.c
with the C compiler (`$CC`, default `cc`; `$CFLAGS`, default `-O2`) into a
standalone executable, `nsbox/engine/nsbox-monitor-loop`, shipped as package
data.  It is not a Python extension: the monitor execs it (monitor.py,
`loop_binary`).

- `pip install .` (a wheel): the executable goes into build_lib, so into the
  wheel, which is then tagged for this platform (py3-none-linux_x86_64, or
  this CPython's tag when the launchers were built).
- `pip install -e .` (any editable mode): it is written next to monitor_loop.c
  in the source tree, which is where the package is imported from.

Without a compiler the build still succeeds, with a warning, and the engine
falls back to the Python monitor (`nsbox info` says which one it uses).  Set
NSBOX_REQUIRE_MONITOR_LOOP=1 to make a failed compile fail the build.
"""

from __future__ import annotations

import os
import shlex
import subprocess

from setuptools import Command, Distribution, setup
from setuptools.command.build import build

PACKAGE_DIR = os.path.join("nsbox", "engine")
SOURCE = os.path.join(PACKAGE_DIR, "monitor_loop.c")
BINARY = "nsbox-monitor-loop"  # the name monitor.loop_binary looks for


def compile_program(command: Command, target: str, args: list[str]) -> None:
    """`$CC $CFLAGS -o TARGET ARGS`, through a staging file: TARGET is the new
    program, executable, or (on any failure) whatever was there before."""
    staging = f"{target}.{os.getpid()}.tmp"
    cmd = [*shlex.split(os.environ.get("CC", "cc")),
           *shlex.split(os.environ.get("CFLAGS", "-O2")), "-o", staging, *args]
    command.announce(" ".join(cmd), level=2)
    try:
        subprocess.run(cmd, check=True)
        os.chmod(staging, 0o755)
    except BaseException:
        if os.path.exists(staging):
            os.unlink(staging)
        raise
    os.replace(staging, target)


class build_monitor_loop(Command):  # noqa: N801 (distutils command names are lower case)
    description = "compile nsbox/engine/monitor_loop.c into nsbox/engine/nsbox-monitor-loop"
    user_options: list = []

    def initialize_options(self) -> None:
        self.build_lib = None
        self.editable_mode = False  # set by setuptools' editable_wheel

    def finalize_options(self) -> None:
        self.set_undefined_options("build_py", ("build_lib", "build_lib"))

    # The file this step makes, relative to the package root (subclasses set theirs).
    OUTPUT = os.path.join(PACKAGE_DIR, BINARY)

    def _built(self) -> str:
        return os.path.join(self.build_lib, self.OUTPUT)

    def _target(self) -> str:
        """Where run() writes: build_lib, or the source tree for an editable install."""
        if self.editable_mode:
            return os.path.join(os.path.dirname(os.path.abspath(__file__)), self.OUTPUT)
        return self._built()

    def run(self) -> None:
        target = self._target()
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            compile_program(self, target, [SOURCE])
        except (OSError, subprocess.CalledProcessError) as err:
            if os.environ.get("NSBOX_REQUIRE_MONITOR_LOOP"):
                raise
            # An older build must not stay behind and pass for this one.
            if os.path.exists(target):
                os.unlink(target)
            self.warn(f"cannot compile {SOURCE} ({err}): detached containers will use the "
                      "Python monitor (several MiB per container instead of ~0.1 MiB); "
                      "install a C compiler (gcc, libc6-dev) and reinstall")

    # The SubCommand protocol setuptools' build, sdist and editable_wheel use.
    def get_source_files(self) -> list[str]:
        return [SOURCE]

    def get_outputs(self) -> list[str]:
        return [self._built()]

    def get_output_mapping(self) -> dict[str, str]:
        return {self._built(): self._target()} if self.editable_mode else {}


GUARD_DIR = os.path.join("nsbox", "engine", "guard", "bpf")
GUARD_SOURCE = os.path.join(GUARD_DIR, "guard.bpf.c")
GUARD_HEADERS = [os.path.join(GUARD_DIR, "guard_paths.h")]  # included by GUARD_SOURCE
GUARD_OBJECT = "guard.bpf.o"  # the name nsbox/engine/guard/client.py looks for
VMLINUX_BTF = "/sys/kernel/btf/vmlinux"


class build_guard_bpf(build_monitor_loop):  # noqa: N801
    """Compile the guard's CO-RE BPF program (nsbox/engine/guard/bpf/guard.bpf.c).

    vmlinux.h (the kernel's types) is generated from the build host's BTF
    with `bpftool btf dump file /sys/kernel/btf/vmlinux format c` into the
    build's temporary directory, then `clang -target bpf -O2 -g` compiles
    the object; libbpf relocates it to the running kernel when it is loaded,
    so the object runs on other kernels with BTF too.  Without clang,
    bpftool or BTF the build warns and the guard reports itself unavailable
    (`nsbox info`); NSBOX_REQUIRE_GUARD=1 makes that fail the build.
    """

    description = "compile nsbox/engine/guard/bpf/guard.bpf.c into guard.bpf.o"

    OUTPUT = os.path.join(GUARD_DIR, GUARD_OBJECT)

    def run(self) -> None:
        import tempfile

        target = self._target()
        os.makedirs(os.path.dirname(target), exist_ok=True)
        staging = f"{target}.{os.getpid()}.tmp"
        arch = {"x86_64": "x86", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
        with tempfile.TemporaryDirectory(prefix="nsbox-guard-build-") as tmp:
            header = os.path.join(tmp, "vmlinux.h")
            compile_cmd = [os.environ.get("BPF_CLANG", "clang"), "-target", "bpf", "-O2", "-g",
                           f"-D__TARGET_ARCH_{arch}", "-I", tmp, "-c", GUARD_SOURCE,
                           "-o", staging]
            try:
                with open(header, "wb") as out:
                    subprocess.run(["bpftool", "btf", "dump", "file", VMLINUX_BTF, "format",
                                    "c"], check=True, stdout=out)
                self.announce(" ".join(compile_cmd), level=2)
                subprocess.run(compile_cmd, check=True)
            except (OSError, subprocess.CalledProcessError) as err:
                if os.path.exists(staging):
                    os.unlink(staging)
                if os.environ.get("NSBOX_REQUIRE_GUARD"):
                    raise
                if os.path.exists(target):
                    os.unlink(target)
                self.warn(f"cannot compile {GUARD_SOURCE} ({err}): `--security-opt guard=` "
                          "will be unavailable; install clang, bpftool and libbpf-dev and "
                          "reinstall")
                return
        os.replace(staging, target)

    def get_source_files(self) -> list[str]:
        return [GUARD_SOURCE, *GUARD_HEADERS]


CODE_BUNDLE = os.path.join("nsbox", "_runtime.codebundle")  # nsbox/_codebundle.py's FILE_NAME


class build_code_bundle(build_monitor_loop):  # noqa: N801
    """Compile nsbox/runtime and nsbox's top-level modules into one file that the
    nsbox-runtime launcher imports them from (nsbox/_codebundle.py says why and how).

    An editable install's bundle stays in the source tree and is checked
    against each source's size and modification time when a module is
    imported; an installed one is used as it is, like CPython's frozen
    modules.
    """

    description = "compile the runtime's modules into nsbox/_runtime.codebundle"

    OUTPUT = CODE_BUNDLE

    @staticmethod
    def _codebundle():
        """nsbox/_codebundle.py, which reads the format and writes it (loaded by
        path: the package itself is not importable during a build)."""
        import importlib.util

        spec = importlib.util.spec_from_file_location("_nsbox_codebundle",
                                                      os.path.join("nsbox", "_codebundle.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    def run(self) -> None:
        codebundle = self._codebundle()
        root = os.path.dirname(os.path.abspath(__file__))
        target = self._target()
        os.makedirs(os.path.dirname(target), exist_ok=True)
        size = codebundle.build(root, codebundle.sources(root), target,
                                checked=self.editable_mode)
        self.announce(f"wrote {target} ({size} bytes)", level=2)

    def get_source_files(self) -> list[str]:
        return self._codebundle().sources(".")


LAUNCHER_SOURCE = os.path.join("bin", "launcher.c")
# nsbox-runtime's start and delete without Python (bin/runtime_fast.c says when).
RUNTIME_FAST_SOURCES = [os.path.join("bin", "runtime_fast.c"), os.path.join("bin", "runtime_fast.h")]
# nsbox/runtime/syscalls.py's system calls without ctypes, built into both (the file says why).
SYSCALL_MODULE_SOURCE = os.path.join("bin", "syscall_module.c")
_SYSCALL_MODULE = ["-DNSBOX_SYSCALL_MODULE=1", SYSCALL_MODULE_SOURCE]
# Script name -> (the CLI module it runs, 1 to run without the cyclic GC, more sources).
LAUNCHERS = {"nsbox-runtime": ("nsbox.runtime.cli", 1, ["-DNSBOX_RUNTIME_FAST=1",
                                                        "-DNSBOX_CODE_BUNDLE=1",
                                                        RUNTIME_FAST_SOURCES[0],
                                                        *_SYSCALL_MODULE]),
             "nsbox": ("nsbox.engine.cli", 0, [*_SYSCALL_MODULE])}


def _c_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# Standard-library modules every interpreter start imports, frozen into the
# launchers (CPython 3.11 freezes its own start-up modules, not these): the
# encodings package, its alias table and its UTF-8 codec, which the start-up
# looks up to decode file names.  From the program instead of the library
# directory they cost no listing of the library (200 entries) and of
# encodings/ (120), no stat, open or read: ~0.5 ms of every command (0.25
# for the two modules, 0.3 more for the package).  The
# package's __path__ is still its directory on disk (the launcher lets the
# interpreter find sys._stdlib_dir, from which frozen packages take it), so
# every other codec is found as before.
FROZEN_STDLIB = ("encodings", "encodings.aliases", "encodings.utf_8")


def write_frozen_stdlib(header: str) -> None:
    """HEADER: a C array of this interpreter's code for each FROZEN_STDLIB module,
    and the table `nsbox_frozen_stdlib` for PyImport_FrozenModules.  A module
    whose source is not installed is left out: it is imported as usual."""
    import marshal
    import sysconfig

    lines, frozen = [], []
    for name in FROZEN_STDLIB:
        base = os.path.join(sysconfig.get_path("stdlib"), *name.split("."))
        is_package = os.path.isdir(base)
        path = os.path.join(base, "__init__.py") if is_package else base + ".py"
        try:
            with open(path, "rb") as f:
                code = marshal.dumps(compile(f.read(), path, "exec", dont_inherit=True))
        except OSError:
            continue
        lines.append(f"static const unsigned char nsbox_frozen_{len(frozen)}[] = {{"
                     + ",".join(map(str, code)) + "};")
        frozen.append((name, is_package))
    lines.append("static const struct _frozen nsbox_frozen_stdlib[] = {")
    lines += [f"    {{{_c_string(name)}, nsbox_frozen_{index}, (int)sizeof nsbox_frozen_{index}, "
              f"{int(is_package)}, NULL}}," for index, (name, is_package) in enumerate(frozen)]
    lines.append("    {NULL, NULL, 0, 0, NULL},\n};")
    with open(header, "w") as f:
        f.write("\n".join(lines))


class build_launchers(Command):  # noqa: N801
    """Compile bin/launcher.c into the `nsbox-runtime` and `nsbox` commands.

    Each is a program embedding this interpreter (its static library, else its
    shared one) that runs the CLI without `site` (~1 ms of every command; bin/launcher.c
    says why).  It replaces the script of the same name in build_scripts'
    output, so pip installs it where the script would go (pip rewrites only
    files starting with `#!python`).  Without a compiler or the interpreter's
    library and headers, the build warns and the scripts stay: the same
    commands, slower.  NSBOX_REQUIRE_LAUNCHERS=1 makes that fail the build.
    """

    description = "compile bin/launcher.c into the nsbox-runtime and nsbox commands"
    user_options: list = []

    def initialize_options(self) -> None:
        self.build_scripts = None
        self.built: list[str] = []

    def finalize_options(self) -> None:
        self.set_undefined_options("build", ("build_scripts", "build_scripts"))

    def _embedding(self) -> list[str]:
        """Compiler and linker arguments for this interpreter, or OSError why not."""
        import json
        import sys
        import sysconfig

        config = sysconfig.get_config_var
        includes = {sysconfig.get_path("include"), sysconfig.get_path("platinclude")}
        if not any(os.path.exists(os.path.join(d, "Python.h")) for d in includes):
            raise OSError("Python.h is missing (the interpreter's development headers)")
        # The static library when there is one: ~0.4 ms faster a command than
        # the shared one (no relocation of libpython at each start, direct
        # calls inside it); its C API exported for the extension modules it loads.
        static = os.path.join(config("LIBPL") or "", config("LIBRARY") or "")
        system_libs = [*shlex.split(config("LIBS") or ""), *shlex.split(config("SYSLIBS") or ""),
                       *shlex.split(config("MODLIBS") or "")]
        if static.endswith(".a") and os.path.exists(static):
            # No run path: libpython is inside the program, and a run path to its
            # directory (pyenv's LIBS carry one) only makes the dynamic loader try
            # there first for libc and libm, ~36 failed lookups at every start.
            system_libs = [flag for flag in system_libs if not flag.startswith("-Wl,-rpath,")]
            link = [static, "-Wl,--export-dynamic", *system_libs, "-s"]
        elif config("Py_ENABLE_SHARED"):
            libdir = config("LIBDIR")
            link = [f"-L{libdir}", f"-Wl,-rpath,{libdir}", f"-lpython{config('LDVERSION')}",
                    *system_libs]
        else:
            raise OSError("neither a static nor a shared libpython is installed")
        # The base interpreter's own module path: no site, no PYTHONPATH, no cwd.
        base_path = json.loads(subprocess.run(
            [sys.executable, "-I", "-S", "-c", "import sys, json; print(json.dumps(sys.path))"],
            check=True, capture_output=True, text=True).stdout)
        relative = [os.path.relpath(sysconfig.get_path(k), sys.prefix)
                    for k in ("purelib", "platlib")]
        defines = {
            "NSBOX_BASE_PATH": ":".join(base_path),
            "NSBOX_SITE_REL": ":".join(dict.fromkeys(relative)),
            "NSBOX_PREFIX": sys.prefix,
            "NSBOX_BASE_EXECUTABLE": getattr(sys, "_base_executable", sys.executable),
            "NSBOX_BASE_PREFIX": sys.base_prefix,
            "NSBOX_BASE_EXEC_PREFIX": sys.base_exec_prefix,
        }
        return [*(f"-I{d}" for d in sorted(includes)),
                *(f"-D{k}={_c_string(v)}" for k, v in defines.items()), *link]

    def run(self) -> None:
        import tempfile

        os.makedirs(self.build_scripts, exist_ok=True)
        try:
            flags = self._embedding()
            with tempfile.TemporaryDirectory() as tmp:
                frozen = os.path.join(tmp, "frozen_stdlib.h")
                write_frozen_stdlib(frozen)
                for name, (module, gc_off, extra) in LAUNCHERS.items():
                    target = os.path.join(self.build_scripts, name)
                    compile_program(self, target, [f"-DNSBOX_CLI_MODULE={_c_string(module)}",
                                                   f"-DNSBOX_GC_OFF={gc_off}",
                                                   f"-DNSBOX_FROZEN_STDLIB={_c_string(frozen)}",
                                                   LAUNCHER_SOURCE, *extra, *flags])
                    self.built.append(target)
        except (OSError, subprocess.CalledProcessError) as err:
            if os.environ.get("NSBOX_REQUIRE_LAUNCHERS"):
                raise
            self._restore_scripts()
            self.warn(f"cannot compile {LAUNCHER_SOURCE} ({err}): the commands are the script "
                      "launchers (each ~1 ms slower); install a C compiler and the "
                      "interpreter's development files and reinstall")

    def _restore_scripts(self) -> None:
        """Put back the scripts where an earlier build left compiled launchers."""
        stale = False
        for name in LAUNCHERS:
            target = os.path.join(self.build_scripts, name)
            if os.path.exists(target):
                with open(target, "rb") as f:
                    if f.read(4) == b"\x7fELF":
                        os.unlink(target)
                        stale = True
        self.built = []
        if stale:
            scripts = self.get_finalized_command("build_scripts")
            scripts.force = True
            scripts.run()

    def get_source_files(self) -> list[str]:
        return [LAUNCHER_SOURCE, *RUNTIME_FAST_SOURCES, SYSCALL_MODULE_SOURCE]

    def get_outputs(self) -> list[str]:
        return []  # build_scripts' outputs, replaced in place


class Build(build):
    # After build_scripts (in build.sub_commands), whose outputs build_launchers replaces.
    sub_commands = [*build.sub_commands, ("build_monitor_loop", None),
                    ("build_guard_bpf", None), ("build_code_bundle", None),
                    ("build_launchers", None)]


cmdclass: dict[str, type] = {"build": Build, "build_monitor_loop": build_monitor_loop,
                             "build_guard_bpf": build_guard_bpf,
                             "build_code_bundle": build_code_bundle,
                             "build_launchers": build_launchers}

# The wheel holds a native executable: tag it for this platform, any Python 3.
try:
    from setuptools.command.bdist_wheel import bdist_wheel  # setuptools >= 70.1
except ImportError:
    try:
        from wheel.bdist_wheel import bdist_wheel
    except ImportError:  # no wheel package: nothing builds wheels here anyway
        bdist_wheel = None

class BinaryDistribution(Distribution):
    """Not pure Python: the wheel's files go to platlib, under a platform tag."""

    def has_ext_modules(self) -> bool:
        return True


if bdist_wheel is not None:
    class BdistWheel(bdist_wheel):
        def get_tag(self) -> tuple[str, str, str]:
            impl, abi, plat = super().get_tag()
            if self.get_finalized_command("build_launchers").built:
                # The commands link this interpreter's libpython: this CPython only.
                return impl, abi, plat
            return "py3", "none", plat

    cmdclass["bdist_wheel"] = BdistWheel

setup(cmdclass=cmdclass, distclass=BinaryDistribution)
