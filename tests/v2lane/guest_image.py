"""What the v2 lane's qemu guest boots: Debian's kernel (fetched with apt-get
download, unpacked into the cache, never installed), the modules the guest
needs in load order, and the initramfs (busybox, those modules, init.sh) as
newc cpio archives.  Standard library only; lane.py runs the guest.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import io
import logging
import lzma
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("v2lane")


HERE = Path(__file__).resolve().parent
INIT_SCRIPT = HERE / "init.sh"
BUSYBOX = os.environ.get("NSBOX_BUSYBOX", "/bin/busybox")
META_PACKAGE = "linux-image-amd64"

# What the guest needs as modules in Debian's kernel; their dependencies are
# found from each module's own .modinfo, so a new kernel needing netfs or
# fscache (or not) just works.
WANTED_MODULES = ("virtio_pci", "virtio_blk", "9pnet_virtio", "9p", "overlay")
STALE_KERNEL_SECONDS = 86400

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


def run_captured(argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, **kwargs)


def candidate_kernel_package() -> str | None:
    """The versioned package linux-image-amd64 depends on, from the local apt lists."""
    try:
        out = run_captured(["apt-cache", "depends", META_PACKAGE], timeout=60)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"^\s*Depends:\s*(linux-image-\S+)$", out.stdout, re.M)
    return match.group(1) if out.returncode == 0 and match else None


def apt_update() -> None:
    log.info("running apt-get update to find %s", META_PACKAGE)
    out = run_captured(["apt-get", "update"], timeout=600)
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
    out = run_captured(argv, cwd=downloads, timeout=900)
    if out.returncode != 0 and may_update and os.geteuid() == 0:
        apt_update()  # the lists may name a version the mirror no longer has
        out = run_captured(argv, cwd=downloads, timeout=900)
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
        out = run_captured(["dpkg-deb", "-x", str(deb), str(work / "pkg")], timeout=600)
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
