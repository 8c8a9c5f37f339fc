"""Shared helpers for nsbox tests, the demo and the benchmarks.

Importable from tests (``from helpers import make_bundle``) because pytest puts
``tests/`` on sys.path, and runnable as a script so that the Makefile and
bench/ build bundles with exactly the same code the tests use::

    .venv/bin/python tests/helpers.py bundle DIR [--hostname H] [-- ARGS...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
BUSYBOX = os.environ.get("NSBOX_BUSYBOX", "/bin/busybox")

# Users the rootfs knows about: tests switch to uid 1000 / nobody to check
# privilege dropping, and busybox `id` / `whoami` resolve names from these.
PASSWD = """\
root:x:0:0:root:/root:/bin/sh
user:x:1000:1000:user:/home/user:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = """\
root:x:0:
user:x:1000:
nobody:x:65534:
"""

# Spec keys that a test may override with `make_bundle(..., process__cwd="/tmp")`.
NESTED_SEPARATOR = "__"

SpecMutator = Callable[[dict[str, Any]], "dict[str, Any] | None"]


# ------------------------------------------------------------------ CI / skips
def in_ci() -> bool:
    """True when running under CI, where every dependency must be installed."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def skip_or_fail(reason: str) -> None:
    """Skip the current test, except in CI where a missing dependency is a bug."""
    import pytest  # lazy: this module also runs as a plain script

    if in_ci():
        pytest.fail(f"{reason} (CI installs every dependency, so this must not skip)")
    pytest.skip(reason)


def require_binary(name: str) -> str:
    """Absolute path of NAME on PATH; skips the test (fails in CI) when absent."""
    found = shutil.which(name)
    if found is None:
        skip_or_fail(f"{name} is not installed (see scripts/apt-packages.txt)")
    return found  # type: ignore[return-value]  # skip_or_fail never returns


# ---------------------------------------------------------------- the rootfs
def busybox_applets(busybox: str = BUSYBOX) -> list[str]:
    """Applet names compiled into BUSYBOX, as `busybox --list` prints them."""
    out = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True)
    return [name for name in out.stdout.split() if name and "/" not in name]


def build_busybox_rootfs(dest: Path | str, busybox: str = BUSYBOX) -> Path:
    """Create a minimal root filesystem at DEST around a static busybox.

    Every applet is a symlink to /bin/busybox, so `sh`, `ls`, `id`... exist.
    """
    dest = Path(dest)
    bin_dir = dest / "bin"
    bin_dir.mkdir(parents=True, exist_ok=False)
    shutil.copy2(busybox, bin_dir / "busybox")
    for applet in busybox_applets(busybox):
        # `busybox --list` includes "busybox" itself; linking it would replace the binary.
        if applet != "busybox":
            (bin_dir / applet).symlink_to("busybox")
    for sub in ("proc", "sys", "dev", "etc", "root", "home/user", "usr", "var", "run"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(dest / "root", 0o700)
    os.chown(dest / "home/user", 1000, 1000)
    tmp = dest / "tmp"
    tmp.mkdir()
    os.chmod(tmp, 0o1777)  # mkdir's mode is filtered by umask; sticky bit needs chmod
    (dest / "etc/passwd").write_text(PASSWD)
    (dest / "etc/group").write_text(GROUP)
    (dest / "etc/hostname").write_text("nsbox\n")
    (dest / "etc/hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost\n")
    return dest


def copy_rootfs(template: Path | str, dest: Path | str) -> Path:
    """Copy a rootfs tree, keeping symlinks as symlinks (busybox is ~2 MB: fast)."""
    return Path(shutil.copytree(template, dest, symlinks=True))


# ------------------------------------------------------------------- configs
def set_in_spec(spec: dict[str, Any], dotted: str, value: Any) -> None:
    """Set spec["a"]["b"] = value for dotted="a.b", creating dicts on the way."""
    *parents, last = dotted.split(".")
    node = spec
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value


def read_config(bundle: Path | str) -> dict[str, Any]:
    """The bundle's config.json as a dict."""
    return json.loads((Path(bundle) / "config.json").read_text())


def write_config(bundle: Path | str, mutate_fn: SpecMutator | None = None,
                 spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rewrite BUNDLE/config.json.

    Starts from SPEC if given, else from the current file; MUTATE_FN may edit the
    dict in place or return a replacement. Returns what was written.
    """
    current = spec if spec is not None else read_config(bundle)
    if mutate_fn is not None:
        replaced = mutate_fn(current)
        if replaced is not None:
            current = replaced
    path = Path(bundle) / "config.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(current, indent=2) + "\n")
    os.replace(tmp, path)  # a runtime reading concurrently never sees half a file
    return current


def make_bundle(path: Path | str, args: Sequence[str] | None = None, *,
                rootfs_template: Path | str | None = None,
                mutate: SpecMutator | None = None, **overrides: Any) -> Path:
    """Create an OCI bundle at PATH: a busybox rootfs and a config.json.

    The config is `default_spec()` with terminal=false and ARGS as the process.
    OVERRIDES set spec keys; `__` separates nesting levels, so
    `make_bundle(p, ["id"], hostname="x", process__cwd="/tmp", root__readonly=False)`.
    ROOTFS_TEMPLATE is copied if given (tests pass the session cache), otherwise
    a rootfs is built from /bin/busybox. MUTATE runs last, on the whole dict.
    """
    from nsbox.runtime.spec import default_spec  # lazy: keep `helpers.py --help` light

    bundle = Path(path)
    bundle.mkdir(parents=True, exist_ok=True)
    rootfs = bundle / "rootfs"
    if rootfs_template is not None:
        copy_rootfs(rootfs_template, rootfs)
    else:
        build_busybox_rootfs(rootfs)
    spec = default_spec(args=list(args) if args is not None else None)
    spec["process"]["terminal"] = False
    for key, value in overrides.items():
        set_in_spec(spec, key.replace(NESTED_SEPARATOR, "."), value)
    write_config(bundle, mutate, spec=spec)
    return bundle


# ------------------------------------------------------------------- cgroups
def own_cgroup_path() -> str:
    """The deepest cgroup this process is in, valid as an absolute cgroupsPath.

    On a hybrid host the v1 controllers may place us at different depths (here
    memory is nested, the rest are at "/"). A path below the deepest one is
    below our own cgroup in every hierarchy, provided the others are its
    ancestors, which is checked. Runtimes that read a relative cgroupsPath from
    the root (crun does) then stay inside our cgroup, as machine hygiene asks.
    """
    paths: list[str] = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        paths.append(line.split(":", 2)[2])
    deepest = max(paths, key=lambda p: p.rstrip("/").count("/"))
    for path in paths:
        prefix = path.rstrip("/") + "/"
        if not (deepest + "/").startswith(prefix):
            raise RuntimeError(f"cgroup {path} is not an ancestor of {deepest}: no common parent")
    return deepest


def cgroups_path_under_own(name: str) -> str:
    """An absolute cgroupsPath NAME placed under this process's own cgroup."""
    return own_cgroup_path().rstrip("/") + "/" + name


def cgroup_hierarchies(cgroup_root: Path | str = "/sys/fs/cgroup") -> list[Path]:
    """Mounted cgroup hierarchies: each v1 controller dir and the v2 root."""
    root = Path(cgroup_root)
    if (root / "cgroup.procs").exists():  # pure cgroup2 host
        return [root]
    found: dict[str, Path] = {}
    for entry in sorted(root.iterdir()):
        # cpu,cpuacct style co-mounts appear as several symlinks to one dir.
        if entry.is_dir() and (entry / "cgroup.procs").exists():
            found.setdefault(os.path.realpath(entry), entry)
    return list(found.values())


def missing_cgroup_dirs(cgroups_path: str) -> list[Path]:
    """Directories a runtime would create for CGROUPS_PATH, deepest first."""
    parts = cgroups_path.strip("/").split("/")
    missing = [hierarchy.joinpath(*parts[:depth])
               for hierarchy in cgroup_hierarchies()
               for depth in range(1, len(parts) + 1)
               if not hierarchy.joinpath(*parts[:depth]).exists()]
    return sorted(missing, key=lambda p: len(p.parts), reverse=True)


@contextlib.contextmanager
def cgroup_under_own(name: str) -> Iterator[str]:
    """Yield an absolute cgroupsPath below our own cgroup; on exit remove the
    directories along it that did not exist before, in every hierarchy.

    Needed because on a hybrid host a runtime creates the whole path in each
    hierarchy, including parents that exist only in the deeper ones, and
    deleting the container removes just the last level.
    """
    path = cgroups_path_under_own(name)
    created = missing_cgroup_dirs(path)
    try:
        yield path
    finally:
        for directory in created:
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:  # still has tasks or children: report, do not hide
                log.warning("cgroup %s not removed: %s", directory, exc)


def without_cgroup2_unified(argv: Sequence[str]) -> list[str]:
    """Wrap ARGV to run in a private mount namespace without /sys/fs/cgroup/unified.

    Debian 12's crun refuses hybrid cgroup hosts ("drop all controllers from
    cgroupv2"); hiding the cgroup2 mount from it, and only from it, works.
    What the command then makes under /sys/fs/cgroup/unified (crun still makes
    its cgroup2 directories, and writes cgroup.procs into them) are plain
    directories of the host's /sys/fs/cgroup tmpfs, hidden under the cgroup2
    mount outside this namespace: removed afterwards (as bench/runtime_bench.sh
    does), deepest first, all but those that were there before.
    """
    script = ('if mountpoint -q /sys/fs/cgroup/unified; then'
              ' umount /sys/fs/cgroup/unified;'
              ' before=$(find /sys/fs/cgroup/unified -mindepth 1 -type d);'
              ' "$@"; rc=$?;'
              ' find /sys/fs/cgroup/unified -mindepth 1 -type d | sort -r | while read -r d; do'
              '  printf "%s\\n" "$before" | grep -qxF "$d" || rm -rf --one-file-system "$d";'
              ' done;'
              ' exit $rc;'
              ' fi;'
              ' exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv]


# ------------------------------------------------------------------- runtime
class RuntimeCommandError(AssertionError):
    """A runtime command exited non-zero; carries the output for the report."""

    def __init__(self, result: subprocess.CompletedProcess) -> None:
        self.result = result
        super().__init__(
            f"command {result.args!r} exited {result.returncode}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
        )


def nsbox_runtime_path() -> str:
    """The nsbox-runtime console script of the venv running us (never a pyenv shim)."""
    for bin_dir in (Path(sys.prefix) / "bin", REPO_ROOT / ".venv" / "bin"):
        candidate = bin_dir / "nsbox-runtime"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise FileNotFoundError("nsbox-runtime console script not found; run `make deps`")


def runtime_argv(root: Path | str, runtime: str | None = None) -> list[str]:
    """Argv prefix calling the runtime under test with a private --root.

    NSBOX_TEST_RUNTIME=runc (or a path) runs the same tests against another
    runtime, which is how a test's expectations are checked against runc.
    """
    chosen = runtime or os.environ.get("NSBOX_TEST_RUNTIME") or nsbox_runtime_path()
    return [chosen, "--root", str(root)]


def run_cli(prefix: Sequence[str], *args: str, check: bool = True,
            input: str | bytes | None = None, timeout: float = 30,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run PREFIX + ARGS, capturing output (text unless INPUT is bytes).

    Output goes to temporary files, not pipes: after `create` or `run -d` the
    container inherits the runtime's stdout/stderr and keeps them open, so
    reading a pipe to EOF would wait for the container to exit.
    """
    text = not isinstance(input, bytes)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        completed = subprocess.run(
            [*prefix, *args], input=input.encode() if isinstance(input, str) else input,
            stdout=out, stderr=err, timeout=timeout, env=env,
            stdin=subprocess.DEVNULL if input is None else None,
        )
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    result = subprocess.CompletedProcess(
        completed.args, completed.returncode,
        stdout.decode(errors="replace") if text else stdout,
        stderr.decode(errors="replace") if text else stderr,
    )
    if check and result.returncode != 0:
        raise RuntimeCommandError(result)
    return result


def new_container_id(prefix: str = "t") -> str:
    """A container id unlikely to collide with anything else on the machine."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def list_container_ids(root: Path | str) -> list[str]:
    """Containers a runtime keeps under ROOT: one directory per container id.

    runc, crun and nsbox-runtime all lay out their state that way, so this works
    even when the runtime's own `list` is broken.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(entry.name for entry in root.iterdir() if entry.is_dir())


def root_of(prefix: Sequence[str]) -> Path:
    """The --root value in a runtime argv prefix."""
    args = list(prefix)
    for i, arg in enumerate(args):
        if arg == "--root" and i + 1 < len(args):
            return Path(args[i + 1])
        if arg.startswith("--root="):
            return Path(arg.split("=", 1)[1])
    raise ValueError(f"no --root in {args!r}: refusing to touch the runtime's default state")


def force_delete_all(prefix: Sequence[str], timeout: float = 30) -> list[str]:
    """`delete --force` every container under PREFIX's --root; returns ids left over."""
    root = root_of(prefix)
    for cid in list_container_ids(root):
        result = run_cli(prefix, "delete", "--force", cid, check=False, timeout=timeout)
        if result.returncode != 0:
            log.warning("cleanup: delete --force %s failed: %s", cid, result.stderr.strip())
    return list_container_ids(root)


# -------------------------------------------------------------------- mounts
def _unescape_mountinfo(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as 3-digit octal escapes.
    out, i = [], 0
    while i < len(field):
        code = field[i + 1:i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_under(path: Path | str, mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Mount points in our mount namespace at or below PATH, deepest first."""
    base = os.path.realpath(path)
    found = []
    for line in Path(mountinfo).read_text().splitlines():
        mount_point = _unescape_mountinfo(line.split()[4])
        if mount_point == base or mount_point.startswith(base.rstrip("/") + "/"):
            found.append(mount_point)
    return sorted(found, key=lambda p: p.count("/"), reverse=True)


def unmount_all_under(path: Path | str) -> list[str]:
    """Lazily unmount everything at or below PATH; returns what was mounted."""
    leaked = mounts_under(path)
    for mount_point in leaked:
        subprocess.run(["umount", "-l", mount_point], check=False, capture_output=True)
    return leaked


# ----------------------------------------------------------------------- CLI
def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="nsbox test helpers")
    sub = parser.add_subparsers(dest="command", required=True)
    mk = sub.add_parser("bundle", help="create a busybox bundle")
    mk.add_argument("dir", help="bundle directory to create")
    mk.add_argument("--hostname", help="container hostname")
    mk.add_argument("--oci-version", help="ociVersion to write (Debian's crun wants 1.0.x)")
    mk.add_argument("--cgroups-path", help="linux.cgroupsPath to write")
    mk.add_argument("--cgroup-under-own", metavar="NAME",
                    help="set linux.cgroupsPath to NAME below this process's own cgroup")
    dirs = sub.add_parser("cgroup-dirs",
                          help="print the dirs along an absolute cgroupsPath that do not"
                               " exist yet in any hierarchy, deepest first")
    dirs.add_argument("path", nargs="?",
                      help="the cgroupsPath (default: print our own cgroup path instead)")
    argv = sys.argv[1:] if argv is None else argv
    # argparse mishandles `--` inside a subcommand, so the process args are split off here.
    process_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, process_args = argv[:cut], argv[cut + 1:]
    opts = parser.parse_args(argv)

    if opts.command == "cgroup-dirs":
        if opts.path is None:
            sys.stdout.write(own_cgroup_path() + "\n")
        for directory in missing_cgroup_dirs(opts.path) if opts.path else []:
            sys.stdout.write(f"{directory}\n")
        return 0
    overrides: dict[str, Any] = {}
    if opts.hostname:
        overrides["hostname"] = opts.hostname
    if opts.oci_version:
        overrides["ociVersion"] = opts.oci_version
    if opts.cgroups_path:
        overrides["linux__cgroupsPath"] = opts.cgroups_path
    if opts.cgroup_under_own:
        overrides["linux__cgroupsPath"] = cgroups_path_under_own(opts.cgroup_under_own)
    bundle = make_bundle(opts.dir, process_args or None, **overrides)
    sys.stdout.write(f"{bundle}\n")
    return 0



# ------------------------------------------------------------------ memory
# A container command (busybox sh -c) that holds ~64 MiB in one process and
# prints "survived" if it is not OOM-killed.  One process, not a pipeline
# (head | tr into a shell variable, as before): once the OOM killer took the
# shell, the pipe's other ends kept allocating, and a second OOM in the same
# cgroup could pick among the small processes left, the container's init
# included.
MEMORY_HOG = """awk 'BEGIN { s = sprintf("%67108864s", ""); print "survived", length(s) }'"""


# The exit status of a command that started Python under no_python_env().
PYTHON_RAN = 99


def no_python_env(directory: Path | str) -> dict[str, str]:
    """The environment plus a PYTHONPATH (in DIRECTORY) whose `nsbox` package exits
    PYTHON_RAN on import: a compiled nsbox-runtime command that succeeds under it
    never started Python (bin/runtime_fast.c)."""
    package = Path(directory) / "poison" / "nsbox"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(f"raise SystemExit({PYTHON_RAN})\n")
    return {**os.environ, "PYTHONPATH": str(package.parent)}


# ------------------------------------------------------------------ waiting
def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
    """Poll PREDICATE until it returns something truthy; that value, or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        time.sleep(interval)


def first_lines(argv: Sequence[str], count: int) -> list[str]:
    """The first COUNT lines a long-running (streaming) command prints; it is then killed."""
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        return [proc.stdout.readline() for _ in range(count)]
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def pid_is_dead(pid: int) -> bool:
    """True when PID no longer exists or is a zombie (killed, not yet reaped)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return data[data.rindex(b")") + 2:].split()[0] in (b"Z", b"X")


def with_mknod(spec: dict) -> None:
    """A spec mutator granting CAP_MKNOD, to try device nodes the cgroup forbids."""
    for kind in ("bounding", "effective", "permitted"):
        spec["process"]["capabilities"][kind].append("CAP_MKNOD")

if __name__ == "__main__":
    sys.exit(_main())
