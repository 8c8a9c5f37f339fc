#!/usr/bin/env python3
"""Run nsbox's cgroup v2 tests on a real cgroup v2 kernel, inside qemu.

The development host is a hybrid cgroup host whose v1 controllers cannot be
moved, so the cgroup v2 code paths are proved in a guest instead:

* Debian's own kernel (the package `linux-image-amd64` points at) is fetched
  with `apt-get download` and unpacked into `.cache/v2lane/` (never installed);
* an initramfs is written here from that kernel's virtio/9p/overlay modules,
  /bin/busybox and `init.sh` beside this file;
* qemu (TCG, 2 vCPUs, no network) boots it with `cgroup_no_v1=all`, the guest
  mounts the host's root read-only over 9p, a fresh cgroup2 on /sys/fs/cgroup,
  tmpfs on /tmp, /run and /var/tmp, and an overlay over the repository, then
  runs the tests marked `cgroupv2` with the repository's own .venv;
* the guest prints an exit marker on the serial console and powers off; this
  script prints the pytest output and exits with pytest's exit code.

Exit codes: pytest's own (0 passed, 1 failed, 5 nothing selected, ...),
77 when something the lane needs is missing (qemu, the venv, root, a kernel
apt cannot fetch), 124 when it timed out, 125 when the lane itself broke (qemu
failed, the guest's init failed); the console log is kept in .cache/v2lane/.

    tests/v2lane/lane.py                          # every test marked cgroupv2
    tests/v2lane/lane.py tests/test_cgroups_v2.py -k memory -x
    tests/v2lane/lane.py --build-only             # fetch the kernel, nothing else
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import io
import logging
import lzma
import os
import re
import secrets
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("v2lane")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
INIT_SCRIPT = HERE / "init.sh"
DEFAULT_CACHE = REPO / ".cache" / "v2lane"
BUSYBOX = os.environ.get("NSBOX_BUSYBOX", "/bin/busybox")
QEMU = "qemu-system-x86_64"
META_PACKAGE = "linux-image-amd64"

# What the guest needs as modules in Debian's kernel; their dependencies are
# found from each module's own .modinfo, so a new kernel needing netfs or
# fscache (or not) just works.
WANTED_MODULES = ("virtio_pci", "virtio_blk", "9pnet_virtio", "9p", "overlay")
KERNEL_ARGS = (
    "console=ttyS0",
    "cgroup_no_v1=all",  # every controller on cgroup2, as on a pure v2 host
    "panic=-1",          # a guest panic reboots, and -no-reboot turns that into qemu's exit
    "quiet",
    "mitigations=off",   # TCG pays for every mitigation and the guest runs only our tests
    "8250.nr_uarts=1",
)
STALE_KERNEL_SECONDS = 86400
MEMORY_MIB = 2048
VCPUS = 2
DISK_MIB = 64  # a virtio disk so io.max has a real major:minor
PER_TEST_TIMEOUT = 240  # TCG is 13 to 35 times slower than the host
# For a lane that hangs as a whole; a hung test is stopped by PER_TEST_TIMEOUT.
DEFAULT_TIMEOUT = 900

EXIT_MISSING = 77
EXIT_TIMEOUT = 124
EXIT_LANE_ERROR = 125


class LaneError(Exception):
    """The lane could not run the tests (as opposed to the tests failing)."""

    exit_code = EXIT_LANE_ERROR


class MissingPrerequisite(LaneError):
    """Something outside the repository is missing: a package, root, the network."""

    exit_code = EXIT_MISSING


# ----------------------------------------------------------------- the cache
@contextlib.contextmanager
def locked(cache: Path) -> Iterator[None]:
    """Serialise cache updates between lanes started concurrently."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@dataclass(frozen=True)
class Kernel:
    """An unpacked kernel in the cache: vmlinuz plus the modules the guest loads."""

    directory: Path

    @property
    def boot_image(self) -> Path:
        """The uncompressed vmlinux when it could be extracted, else the bzImage."""
        vmlinux = self.directory / "vmlinux"
        return vmlinux if vmlinux.exists() else self.directory / "vmlinuz"

    @property
    def release(self) -> str:
        return (self.directory / "release").read_text().strip()

    def used(self) -> Kernel:
        """Mark it recently used: pruning spares it, fallbacks prefer it."""
        os.utime(self.directory)
        return self

    def modules_in_load_order(self) -> list[Path]:
        names = (self.directory / "load-order").read_text().split()
        return [self.directory / "modules" / f"{name}.ko" for name in names]


def _run(argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, **kwargs)


def candidate_kernel_package() -> str | None:
    """The versioned package linux-image-amd64 depends on, from the local apt lists."""
    try:
        out = _run(["apt-cache", "depends", META_PACKAGE], timeout=60)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"^\s*Depends:\s*(linux-image-\S+)$", out.stdout, re.M)
    return match.group(1) if out.returncode == 0 and match else None


def apt_update() -> None:
    log.info("running apt-get update to find %s", META_PACKAGE)
    out = _run(["apt-get", "update"], timeout=600)
    if out.returncode != 0:
        raise MissingPrerequisite(f"apt-get update failed:\n{out.stderr.strip()}")


def cached_kernels(cache: Path) -> list[Kernel]:
    """Complete kernels in the cache, most recently used first."""
    found = [Kernel(d) for d in (cache / "kernels").glob("linux-image-*")
             if (d / "load-order").is_file()]
    return sorted(found, key=lambda k: k.directory.stat().st_mtime, reverse=True)


def ensure_kernel(cache: Path, package: str | None = None) -> Kernel:
    """The kernel to boot: cached if present, else downloaded and unpacked now.

    Offline reruns fall back to the newest cached kernel when apt cannot name
    or fetch the current one.
    """
    with locked(cache):
        updated = False
        if package is None:
            package = candidate_kernel_package()
            if package is None and os.geteuid() == 0:
                with contextlib.suppress(MissingPrerequisite):  # offline: the cache may do
                    apt_update()
                    updated = True
                    package = candidate_kernel_package()
        if package is not None:
            kernel = Kernel(cache / "kernels" / package)
            if (kernel.directory / "load-order").is_file():
                return kernel.used()
            try:
                return unpack_kernel(download(package, cache, may_update=not updated),
                                     kernel.directory)
            except LaneError as exc:
                shutil.rmtree(cache / "downloads", ignore_errors=True)
                fallback = cached_kernels(cache)
                if not fallback:
                    raise
                log.warning("%s; using cached %s", exc, fallback[0].directory.name)
                return fallback[0].used()
        fallback = cached_kernels(cache)
        if fallback:
            log.warning("apt names no %s dependency; using cached %s", META_PACKAGE,
                        fallback[0].directory.name)
            return fallback[0].used()
        raise MissingPrerequisite(
            f"cannot find the kernel package {META_PACKAGE} depends on "
            "(apt-cache depends found nothing; run apt-get update as root)")


def download(package: str, cache: Path, may_update: bool) -> Path:
    """apt-get download PACKAGE into the cache; returns the .deb."""
    downloads = cache / "downloads"
    shutil.rmtree(downloads, ignore_errors=True)
    downloads.mkdir(parents=True)
    argv = ["apt-get", "download", "-o", "APT::Sandbox::User=root", package]
    log.info("downloading %s (once; cached in %s)", package, cache)
    out = _run(argv, cwd=downloads, timeout=900)
    if out.returncode != 0 and may_update and os.geteuid() == 0:
        apt_update()  # the lists may name a version the mirror no longer has
        out = _run(argv, cwd=downloads, timeout=900)
    debs = list(downloads.glob(f"{package}_*.deb"))
    if out.returncode != 0 or len(debs) != 1:
        raise MissingPrerequisite(f"apt-get download {package} failed:\n{out.stderr.strip()}")
    return debs[0]


def unpack_kernel(deb: Path, dest: Path) -> Kernel:
    """Extract vmlinuz and the guest's modules (decompressed) from DEB into DEST."""
    work = dest.parent / f".unpack-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        out = _run(["dpkg-deb", "-x", str(deb), str(work / "pkg")], timeout=600)
        if out.returncode != 0:
            raise LaneError(f"dpkg-deb -x {deb.name} failed:\n{out.stderr.strip()}")
        vmlinuz = sorted((work / "pkg" / "boot").glob("vmlinuz-*"))
        moddirs = sorted(p for lib in ("lib", "usr/lib")
                         for p in (work / "pkg" / lib / "modules").glob("*") if p.is_dir())
        if len(vmlinuz) != 1 or len(moddirs) != 1:
            raise LaneError(f"{deb.name}: expected one boot/vmlinuz-* and one lib/modules/*,"
                            f" found {vmlinuz} and {moddirs}")
        order = module_load_order(moddirs[0], WANTED_MODULES)
        staged = work / "kernel"
        (staged / "modules").mkdir(parents=True)
        vmlinux = extract_pvh_vmlinux(vmlinuz[0].read_bytes())
        if vmlinux is not None:
            (staged / "vmlinux").write_bytes(vmlinux)
        else:
            log.warning("no PVH vmlinux inside %s; booting the bzImage (slower)", vmlinuz[0].name)
            shutil.copy2(vmlinuz[0], staged / "vmlinuz")
        for name, path in order:
            (staged / "modules" / f"{name}.ko").write_bytes(decompress_module(path))
        (staged / "load-order").write_text("".join(f"{name}\n" for name, _ in order))
        (staged / "release").write_text(moddirs[0].name + "\n")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(dest, ignore_errors=True)
        staged.rename(dest)  # complete or absent: load-order marks it usable
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(deb.parent, ignore_errors=True)  # the .deb's own download dir
    # Kernels of older package versions: removed once no lane has used them
    # for a day (one started just before this download may still be booting).
    for old in dest.parent.glob("linux-image-*"):
        if old != dest and time.time() - old.stat().st_mtime > STALE_KERNEL_SECONDS:
            shutil.rmtree(old, ignore_errors=True)
    log.info("kernel %s unpacked to %s", moddirs[0].name, dest)
    return Kernel(dest)


def extract_pvh_vmlinux(bzimage: bytes) -> bytes | None:
    """The ELF kernel inside a bzImage, if it can be booted directly (PVH entry).

    Under TCG the bzImage's own decompressor takes about 6 s before the kernel
    even starts; qemu loads an ELF vmlinux with a PVH entry note in no time.
    The payload is found by its compression magic, as scripts/extract-vmlinux
    does (xz, then gzip: what Debian's kernels use).
    """
    import zlib

    candidates = [(b"\xfd7zXZ\x00", lambda: lzma.LZMADecompressor(format=lzma.FORMAT_XZ)),
                  (b"\x1f\x8b\x08", lambda: zlib.decompressobj(wbits=31))]
    for magic, decompressor in candidates:
        start = bzimage.find(magic)
        while start != -1:
            try:
                elf = decompressor().decompress(bzimage[start:])
            except (lzma.LZMAError, zlib.error):
                elf = b""
            if elf.startswith(b"\x7fELF") and has_pvh_note(elf):
                return elf
            start = bzimage.find(magic, start + 1)
    return None


def has_pvh_note(elf: bytes) -> bool:
    """Does this 64-bit little-endian ELF carry Xen's PHYS32_ENTRY note (PVH boot)?"""
    if elf[4:6] != b"\x02\x01":  # ELFCLASS64, little endian
        return False
    phoff = int.from_bytes(elf[0x20:0x28], "little")
    phentsize = int.from_bytes(elf[0x36:0x38], "little")
    phnum = int.from_bytes(elf[0x38:0x3A], "little")
    for i in range(phnum):
        ph = elf[phoff + i * phentsize: phoff + (i + 1) * phentsize]
        if int.from_bytes(ph[0:4], "little") != 4:  # PT_NOTE
            continue
        offset = int.from_bytes(ph[8:16], "little")
        end = offset + int.from_bytes(ph[32:40], "little")
        while offset + 12 <= end:
            namesz, descsz, note_type = (int.from_bytes(elf[offset + k: offset + k + 4], "little")
                                         for k in (0, 4, 8))
            name = elf[offset + 12: offset + 12 + namesz]
            if name == b"Xen\0" and note_type == 18:  # XEN_ELFNOTE_PHYS32_ENTRY
                return True
            offset += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


def module_name(path: Path) -> str:
    name = path.name
    for suffix in MODULE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name.replace("-", "_")


def decompress_module(path: Path) -> bytes:
    """busybox insmod wants a plain ELF file."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        out = subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True)
        return out.stdout
    return data


def module_depends(data: bytes) -> list[str]:
    """The `depends=` field of a module's .modinfo section (NUL-separated key=value)."""
    match = re.search(rb"(?:^|\0)depends=([^\0]*)\0", data)
    if not match:
        return []
    return [d.decode().replace("-", "_") for d in match.group(1).split(b",") if d]


def module_load_order(moddir: Path, wanted: Iterable[str]) -> list[tuple[str, Path]]:
    """WANTED and everything they depend on, dependencies first.

    Built-in modules (modules.builtin) need no loading and are left out.
    """
    files = {module_name(p): p for suffix in MODULE_SUFFIXES
             for p in (moddir / "kernel").rglob(f"*{suffix}")}
    builtin_list = moddir / "modules.builtin"
    builtin = ({module_name(Path(line)) for line in builtin_list.read_text().split()}
               if builtin_list.exists() else set())
    order: list[tuple[str, Path]] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in builtin or any(name == done for done, _ in order):
            return
        if name in visiting:
            raise LaneError(f"module dependency cycle at {name}")
        if name not in files:
            raise LaneError(f"module {name} is neither built in nor in {moddir}")
        visiting.add(name)
        for dep in module_depends(decompress_module(files[name])):
            visit(dep)
        visiting.discard(name)
        order.append((name, files[name]))

    for name in wanted:
        visit(name)
    return order


# -------------------------------------------------------------- initramfs
class Cpio:
    """Writer for the "newc" cpio format the kernel unpacks as its initramfs.

    Written here rather than with a cpio tool so that /dev/console can be a
    device node in the archive without mknod on the host.
    """

    def __init__(self, first_inode: int = 1) -> None:
        self.buffer = io.BytesIO()
        self.inode = first_inode

    def _entry(self, name: str, mode: int, data: bytes = b"", nlink: int = 1,
               rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        fields = (self.inode, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(encoded), 0)
        self.inode += 1
        self.buffer.write(b"070701" + b"".join(b"%08x" % f for f in fields) + encoded)
        self._pad()
        self.buffer.write(data)
        self._pad()

    def _pad(self) -> None:
        self.buffer.write(b"\0" * (-self.buffer.tell() % 4))

    def directory(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, 0o040000 | mode, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, 0o020000 | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buffer.getvalue()


def base_initramfs(kernel: Kernel) -> bytes:
    """busybox, the modules and init.sh; the same for every run with this kernel.

    Rebuilt each run: it takes milliseconds, and so edits to init.sh can never
    meet a stale archive.
    """
    archive = Cpio()
    for directory in ("bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules", "job"):
        archive.directory(directory)
    archive.char_device("dev/console", 5, 1)
    archive.char_device("dev/null", 1, 3, 0o666)
    archive.file("bin/busybox", Path(BUSYBOX).read_bytes(), 0o755)
    archive.file("init", INIT_SCRIPT.read_bytes(), 0o755)
    modules = kernel.modules_in_load_order()
    for module in modules:
        archive.file(f"lib/modules/{module.name}", module.read_bytes())
    archive.file("lib/modules/load-order", "".join(f"{m.stem}\n" for m in modules).encode())
    return archive.finish()


def job_initramfs(env_script: str) -> bytes:
    """What this run does, appended as a second archive (the kernel unpacks both)."""
    archive = Cpio(first_inode=1_000_000)
    archive.file("job/env", env_script.encode())
    return archive.finish()


# ------------------------------------------------------------------- the job
def default_test_files(repo: Path) -> list[str]:
    """Test files that mention the cgroupv2 marker (or its helper module).

    Collecting only these keeps TCG from importing the whole suite to run a
    handful of tests; `-m cgroupv2` then picks the tests inside them.
    """
    found = []
    tests = repo / "tests"
    for path in sorted(tests.rglob("*.py")):
        if not (path.name.startswith("test_") or path.name.endswith("_test.py")):
            continue
        if path.name == "test_v2lane.py":  # the lane's own launcher, never in the guest
            continue
        if re.search(r"\bcgroupv2\b", path.read_text(errors="replace")):
            found.append(str(path.relative_to(repo)))
    return found


def guest_environment() -> dict[str, str]:
    """The environment pytest gets in the guest: fixed, plus CI and NSBOX_* from here."""
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "COLUMNS": "100",
        "PYTHONDONTWRITEBYTECODE": "1",
        "NSBOX_V2LANE": "1",
        "NSBOX_V2LANE_DISK": "/dev/vda",
    }
    for key, value in os.environ.items():
        if key == "CI" or (key.startswith("NSBOX_") and key not in env):
            env[key] = value
    return env


def job_script(token: str, repo: Path, python: str, pytest_args: Sequence[str],
               env: dict[str, str]) -> str:
    """Shell text init.sh sources: lane settings, exported env, pytest's argv."""
    q = shlex.quote
    lines = [f"LANE_TOKEN={q(token)}", f"LANE_REPO={q(str(repo))}", f"LANE_PYTHON={q(python)}"]
    lines += [f"export {key}={q(value)}" for key, value in sorted(env.items())]
    lines.append("set -- " + " ".join(q(arg) for arg in pytest_args))
    return "\n".join(lines) + "\n"


def names_test_paths(args: Sequence[str], repo: Path) -> bool:
    """Does this pytest argv name files or directories (tests/x.py, dir, x.py::test)?"""
    return any(not arg.startswith("-") and (repo / arg.split("::")[0]).exists()
               for arg in args)


def pytest_argv(user_args: Sequence[str], repo: Path) -> list[str]:
    fixed = ["-p", "no:cacheprovider", "--basetemp=/tmp/v2lane-pytest", "-v", "-ra",
             f"--timeout={PER_TEST_TIMEOUT}", "-m", "cgroupv2"]
    # User arguments come last so that e.g. `-m "cgroupv2 and not slow"` wins;
    # without paths among them (`-k memory`) the default files are still used.
    paths = [] if names_test_paths(user_args, repo) else default_test_files(repo)
    return fixed + list(user_args) + paths


def precompile(python: str, guest_pytest: Sequence[str], repo: Path) -> None:
    """Have pytest on the host write the .pyc files the guest would compile.

    Compiling (and assert-rewriting) the test modules takes a few seconds
    under TCG and well under one here; the guest sees the host's __pycache__
    through 9p. Collection only: nothing runs, and a failure is left for the
    guest to report.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with contextlib.suppress(subprocess.TimeoutExpired):
        _run([python, "-m", "pytest", "--collect-only", "-q", *guest_pytest], cwd=repo,
             env=env, timeout=120)


# ------------------------------------------------------------------ qemu
def qemu_command(kernel: Kernel, initrd: Path, disk: Path) -> list[str]:
    argv = [QEMU, "-accel", "tcg", "-machine", "pc", "-cpu", "max",
            "-smp", str(VCPUS), "-m", str(MEMORY_MIB)]
    argv += [
        "-kernel", str(kernel.boot_image), "-initrd", str(initrd),
        "-append", " ".join(KERNEL_ARGS),
        "-nographic", "-monitor", "none", "-no-reboot", "-nic", "none",
        # multidevs=remap: the host's /, /proc, /sys ... are different devices
        # whose inode numbers would otherwise collide in the guest.
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
                   "multidevs=remap",
        "-drive", f"file={disk},if=virtio,format=raw",
    ]
    return argv


# The BIOS clears the screen; those escapes are noise in a log.
TERMINAL_CONTROL = re.compile(r"\x1b(?:\[[0-9;?]*[A-Za-z]|c)")


@dataclass
class GuestResult:
    exit_code: int | None  # pytest's, from the marker; None when none was printed
    error: str | None      # what the guest init reported as broken
    timed_out: bool
    console: list[str]
    boot_seconds: float | None = None   # qemu start to pytest start
    tests_seconds: float | None = None  # pytest start to the exit marker


def run_guest(argv: Sequence[str], token: str, timeout: float, echo: bool,
              echo_boot: bool) -> GuestResult:
    """Boot, stream the console, stop at the exit marker or the deadline."""
    begin_marker = f"NSBOX-V2LANE-BEGIN-{token}"
    exit_re = re.compile(rf"NSBOX-V2LANE-EXIT-{token}=(\d+)")
    error_re = re.compile(r"NSBOX-V2LANE-ERROR: (.*)")
    console: list[str] = []
    exit_code: int | None = None
    error: str | None = None
    in_tests = False
    pending = b""
    started = time.monotonic()
    deadline = started + timeout
    began: float | None = None
    ended: float | None = None

    def result(timed_out: bool) -> GuestResult:
        return GuestResult(exit_code, error, timed_out, console,
                           began - started if began else None,
                           ended - began if began and ended else None)

    proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return result(timed_out=exit_code is None)
            if not selector.select(timeout=min(remaining, 1.0)):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break  # qemu exited
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                line = TERMINAL_CONTROL.sub("", raw.decode(errors="replace")).rstrip("\r")
                console.append(line)
                if begin_marker in line:
                    in_tests = True
                    began = time.monotonic()
                    continue
                if match := exit_re.search(line):
                    exit_code = int(match.group(1))
                    ended = time.monotonic()
                    in_tests = False
                    # The guest powers off right after; give it a moment, then stop it.
                    deadline = min(deadline, time.monotonic() + 15)
                    continue
                if match := error_re.search(line):
                    error = match.group(1)
                if echo and (in_tests or echo_boot or error is not None):
                    print(line, flush=True)
        if pending:
            console.append(pending.decode(errors="replace").rstrip("\r"))
        return result(timed_out=False)
    finally:
        selector.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)  # only the qemu this function started
        proc.wait()
        proc.stdout.close()


# ------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run the tests marked cgroupv2 in a qemu guest booted with a "
                    "pure cgroup v2 Debian kernel.",
        epilog="Arguments after the options go to pytest in the guest (default: every "
               "tests/ file that mentions cgroupv2); `-m cgroupv2` is always passed first.")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="hard limit for the whole guest run in seconds "
                             f"(default {DEFAULT_TIMEOUT})")
    parser.add_argument("--cache", type=Path,
                        default=Path(os.environ.get("NSBOX_V2LANE_CACHE", DEFAULT_CACHE)),
                        help="kernel cache directory (default .cache/v2lane in the repo)")
    parser.add_argument("--kernel-package",
                        help=f"Debian kernel package to boot (default: what {META_PACKAGE}"
                             " depends on)")
    parser.add_argument("--python", default=str(REPO / ".venv" / "bin" / "python"),
                        help="interpreter with pytest and nsbox, as seen by the guest")
    parser.add_argument("--build-only", action="store_true",
                        help="fetch and unpack the kernel, build the initramfs, then stop")
    parser.add_argument("--show-boot", action="store_true",
                        help="echo the whole console, not just the pytest output")
    parser.add_argument("--print-qemu-command", action="store_true",
                        help="print the qemu command line before running it")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.pytest_args[:1] == ["--"]:
        args.pytest_args = args.pytest_args[1:]
    return args


def check_host(python: str) -> None:
    if shutil.which(QEMU) is None:
        raise MissingPrerequisite(f"{QEMU} not found: apt-get install --no-install-recommends "
                        "qemu-system-x86 (make test-v2 does)")
    if not Path(BUSYBOX).is_file():
        raise MissingPrerequisite(f"{BUSYBOX} missing: apt-get install busybox-static")
    if not os.access(python, os.X_OK):
        raise MissingPrerequisite(f"{python} missing: run `make deps` to create the venv")
    if os.geteuid() != 0:
        raise MissingPrerequisite("run as root: the guest sees the host's files as root over 9p")


def lane(args: argparse.Namespace) -> int:
    started = time.monotonic()
    check_host(args.python)
    kernel = ensure_kernel(args.cache.resolve(), args.kernel_package)
    base = base_initramfs(kernel)
    if args.build_only:
        log.info("kernel %s ready in %s", kernel.release, kernel.directory)
        return 0
    token = secrets.token_hex(8)
    guest_pytest = pytest_argv(args.pytest_args, REPO)
    precompile(args.python, guest_pytest, REPO)
    script = job_script(token, REPO, args.python, guest_pytest, guest_environment())
    with tempfile.TemporaryDirectory(prefix="nsbox-v2lane.") as tmp:
        initrd = Path(tmp) / "initrd.cpio"
        initrd.write_bytes(base + job_initramfs(script))
        disk = Path(tmp) / "disk.raw"
        with open(disk, "wb") as f:
            f.truncate(DISK_MIB << 20)  # sparse: costs no space until the guest writes
        argv = qemu_command(kernel, initrd, disk)
        if args.print_qemu_command:
            print("+ " + shlex.join(argv), flush=True)
        print(f"v2lane: booting {kernel.release} under qemu TCG: pytest "
              f"{shlex.join(guest_pytest)}", flush=True)
        booted = time.monotonic()
        result = run_guest(argv, token, args.timeout, echo=True, echo_boot=args.show_boot)
    log_path = args.cache / "console.log"
    with contextlib.suppress(OSError):
        log_path.write_text("\n".join(result.console) + "\n")
    elapsed = time.monotonic() - started
    if result.exit_code is not None and result.error is None:
        print(f"v2lane: guest pytest exit code {result.exit_code}; {elapsed:.1f} s in all: "
              f"{booted - started:.1f} s setup, {result.boot_seconds or 0:.1f} s boot to pytest,"
              f" {result.tests_seconds or 0:.1f} s pytest, console log: {log_path}", flush=True)
        return result.exit_code
    tail = "\n".join(result.console[-40:])
    if not args.show_boot and result.error is None:  # the error's lines were echoed
        print(f"v2lane: last console lines:\n{tail}", file=sys.stderr)
    if result.timed_out:
        print(f"v2lane: TIMEOUT after {args.timeout:.0f} s; qemu killed; console log: "
              f"{log_path}", file=sys.stderr)
        return EXIT_TIMEOUT
    reason = result.error or "qemu exited without the guest's exit marker"
    print(f"v2lane: lane broken: {reason}; console log: {log_path}", file=sys.stderr)
    return result.exit_code if result.exit_code is not None else EXIT_LANE_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="v2lane: %(message)s")
    args = parse_args(argv)
    try:
        return lane(args)
    except LaneError as exc:
        print(f"v2lane: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
