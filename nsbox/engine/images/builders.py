"""Images made on this machine, without a registry: busybox from /bin/busybox, Debian by debootstrap."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import tempfile
from collections.abc import Callable

from nsbox._lazylog import get_logger
from nsbox.errors import ImageError, ImageNotFound, UnsupportedError

from .config import format_time
from .reference import parse_name
from .store import Image, ImageStore

log = get_logger(__name__)

Progress = Callable[[str, int, int], None]

BUSYBOX = "/bin/busybox"
BUSYBOX_REF = "busybox:latest"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
SOURCES_LIST = "/etc/apt/sources.list"
SOURCES_DIR = "/etc/apt/sources.list.d"

_PASSWD = ("root:x:0:0:root:/root:/bin/sh\n"
           "user:x:1000:1000:user:/home/user:/bin/sh\n"
           "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
_GROUP = "root:x:0:\nuser:x:1000:\nnobody:x:65534:\n"
# (path, mode, uid): the directories of the busybox image besides the applet dirs.
_BUSYBOX_DIRS = (
    ("bin", 0o755, 0), ("dev", 0o755, 0), ("etc", 0o755, 0), ("home", 0o755, 0),
    ("home/user", 0o755, 1000), ("proc", 0o555, 0), ("root", 0o700, 0), ("run", 0o755, 0),
    ("sbin", 0o755, 0), ("sys", 0o555, 0), ("tmp", 0o1777, 0), ("usr", 0o755, 0),
    ("usr/bin", 0o755, 0), ("usr/sbin", 0o755, 0), ("var", 0o755, 0), ("var/tmp", 0o1777, 0),
)


def busybox_applets(busybox: str = BUSYBOX) -> list[str]:
    """Install paths of every applet (`bin/sh`, `usr/bin/env`, ...), from `busybox --list-full`."""
    import subprocess
    try:
        listing = subprocess.run([busybox, "--list-full"], check=True, capture_output=True,
                                 text=True, timeout=30).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        raise ImageError(f"{busybox}: cannot list applets ({err}); is it busybox-static?") from None
    return sorted({line.strip().lstrip("/") for line in listing.splitlines() if line.strip()})


def write_busybox_layer(out: io.BufferedIOBase, busybox: str = BUSYBOX) -> int:
    """Write the busybox rootfs tar to OUT; the same binary always gives the same bytes.

    Returns the timestamp used for every entry (the binary's mtime).
    """
    import tarfile
    st = os.stat(busybox)
    stamp = int(st.st_mtime)
    applets = [path for path in busybox_applets(busybox) if path != "bin/busybox"]
    dirs = {path: (mode, uid) for path, mode, uid in _BUSYBOX_DIRS}
    for path in applets:
        parent = os.path.dirname(path)
        while parent and parent not in dirs:
            dirs[parent] = (0o755, 0)
            parent = os.path.dirname(parent)

    def info(name: str, kind: bytes, mode: int, uid: int = 0, size: int = 0) -> tarfile.TarInfo:
        entry = tarfile.TarInfo(name)
        entry.type, entry.mode, entry.uid, entry.gid = kind, mode, uid, uid
        entry.uname = entry.gname = ""
        entry.mtime, entry.size = stamp, size
        return entry

    files = {"etc/passwd": _PASSWD.encode(), "etc/group": _GROUP.encode()}
    entries: list[tuple[str, tarfile.TarInfo, object]] = []
    for path, (mode, uid) in dirs.items():
        entries.append((path, info(path, tarfile.DIRTYPE, mode, uid), None))
    for path, data in files.items():
        entries.append((path, info(path, tarfile.REGTYPE, 0o644, size=len(data)), data))
    entries.append(("bin/busybox", info("bin/busybox", tarfile.REGTYPE, 0o755, size=st.st_size), busybox))
    for path in applets:
        link = info(path, tarfile.SYMTYPE, 0o777)
        link.linkname = "/bin/busybox"
        entries.append((path, link, None))
    entries.sort(key=lambda item: item[0])
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for _, entry, data in entries:
            if isinstance(data, bytes):
                tar.addfile(entry, io.BytesIO(data))
            elif isinstance(data, str):
                with open(data, "rb") as source:
                    tar.addfile(entry, source)
            else:
                tar.addfile(entry)
    return stamp


def ensure_busybox(store: ImageStore, busybox: str = BUSYBOX, ref: str = BUSYBOX_REF,
                   progress: Progress | None = None) -> Image:
    """The offline default image: localhost/busybox:latest (REF, named by reference.parse_name), built if missing.

    Static busybox with every applet symlinked, /etc/passwd and /etc/group
    (root, user 1000, nobody), /tmp 1777, CMD ["sh"].  Deterministic: the same
    busybox binary gives the same image id on any machine.
    """
    target = parse_name(ref)
    try:
        image = store.resolve(target.name)
    except ImageNotFound:
        image = None
    if image is None:
        if not os.path.isfile(busybox):
            raise UnsupportedError(f"{busybox} is missing: apt-get install busybox-static")
        fd, layer_path = tempfile.mkstemp(prefix="busybox-", suffix=".tar", dir=store.layout.tmp_dir)
        try:
            with os.fdopen(fd, "wb") as out:
                stamp = write_busybox_layer(out, busybox)
            image = store.import_rootfs(
                layer_path, target.name,
                config={"Cmd": ["sh"], "Env": [f"PATH={DEFAULT_PATH}"]},
                created=format_time(stamp), created_by=f"nsbox ensure_busybox {busybox}",
                progress=progress)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(layer_path)
    return image


# ===================================================================== debian
def _apt_sources() -> list[tuple[str, list[str]]]:
    """(URI, suites) of every `deb` source apt is configured with (one-line and deb822 formats)."""
    import glob
    found: list[tuple[str, list[str]]] = []
    one_line = [SOURCES_LIST] + sorted(glob.glob(os.path.join(SOURCES_DIR, "*.list")))
    for path in one_line:
        with contextlib.suppress(OSError), open(path) as f:
            for line in f:
                words = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    found.append((words[1], [words[2]]))
    for path in sorted(glob.glob(os.path.join(SOURCES_DIR, "*.sources"))):
        with contextlib.suppress(OSError), open(path) as f:
            text = f.read()
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
                for uri in fields.get("uris", "").split():
                    found.append((uri, fields.get("suites", "").split()))
    return found


def debian_mirror(suite: str = "bookworm") -> str:
    """The Debian mirror apt on this host uses (not the security archive), for debootstrap."""
    sources = _apt_sources()

    def is_main_archive(uri: str) -> bool:
        return "debian" in uri and "security" not in uri and "ports" not in uri

    for uri, suites in sources:
        if is_main_archive(uri) and suite in suites:
            return uri.rstrip("/")
    for uri, suites in sources:
        if is_main_archive(uri) and any(s.split("-")[0] in ("bookworm", "trixie", "bullseye", "sid",
                                                             "stable", "testing", "unstable")
                                        for s in suites):
            return uri.rstrip("/")
    return DEFAULT_MIRROR


class _DebootstrapProgress:
    """Reads debootstrap's --debian-installer messages (P:/I:/E: lines on fd 3)."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.args: list[str] = []
        self.errors: list[str] = []
        self.numbers: tuple[int, int] = (0, 0)

    def _format(self, fmt: str) -> str:
        text = fmt
        for arg in self.args:
            text = re.sub(r"%[sd]", lambda _m, a=arg: a, text, count=1)
        return text

    def feed(self, line: str) -> None:
        kind, _, rest = line.partition(": ")
        if kind in ("P", "I", "E", "W"):
            self.args = []
            if kind == "P":
                parts = rest.split()
                with contextlib.suppress(ValueError, IndexError):
                    self.numbers = (int(parts[0]), int(parts[1]))
        elif kind in ("PA", "IA", "EA", "WA"):
            self.args.append(rest)
        elif kind == "PF":
            if self.progress:
                self.progress(self._format(rest), *self.numbers)
        elif kind == "IF":
            log.info("debootstrap: %s", self._format(rest))
            if self.progress:
                self.progress(self._format(rest), 0, 0)
        elif kind == "WF":
            log.warning("debootstrap: %s", self._format(rest))
        elif kind == "EF":
            self.errors.append(self._format(rest))


def _debootstrap_child(message_fd: int) -> Callable[[], None]:
    """preexec for debootstrap: a private mount namespace, and its message pipe on fd 3.

    In the namespace, the /proc and /sys debootstrap mounts in the target die
    with it.  debootstrap --debian-installer writes its P:/I:/E: lines to fd 3.
    """
    def setup() -> None:
        from nsbox.runtime import syscalls
        syscalls.unshare(syscalls.CLONE_NEWNS)
        syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
        if message_fd == 3:
            os.set_inheritable(3, True)
        else:
            os.dup2(message_fd, 3)  # inheritable, so it survives the exec
    return setup


def run_debootstrap(target: str, suite: str, mirror: str, variant: str = "minbase",
                    include: list[str] | None = None, progress: Progress | None = None,
                    log_path: str | None = None) -> None:
    """debootstrap SUITE into TARGET in a private mount namespace; raises ImageError on failure."""
    import subprocess
    program = shutil.which("debootstrap")
    if program is None:
        raise UnsupportedError("debootstrap is not installed (apt-get install debootstrap)")
    if os.geteuid() != 0:
        raise UnsupportedError("building a Debian image with debootstrap needs root")
    argv = [program, "--debian-installer", f"--variant={variant}"]
    if include:
        argv.append("--include=" + ",".join(include))
    argv += [suite, target, mirror]
    reader, writer = os.pipe()
    parser = _DebootstrapProgress(progress)
    log_file = open(log_path or os.devnull, "wb")  # noqa: SIM115 - closed below
    try:
        # close_fds=False keeps the fd 3 made in preexec; every other fd Python
        # opened is close-on-exec anyway.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT, close_fds=False,
                                preexec_fn=_debootstrap_child(writer),
                                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                                     "DEBIAN_FRONTEND": "noninteractive"})
        os.close(writer)
        writer = -1
        with os.fdopen(reader, "r", errors="replace") as messages:
            reader = -1
            for line in messages:
                parser.feed(line.rstrip("\n"))
        status = proc.wait()
    finally:
        log_file.close()
        for fd in (reader, writer):
            if fd >= 0:
                os.close(fd)
    if status != 0:
        detail = "; ".join(parser.errors) or f"exit status {status}"
        tail = ""
        if log_path:
            with contextlib.suppress(OSError), open(log_path, errors="replace") as f:
                tail = " | ".join(f.read().strip().splitlines()[-3:])
        raise ImageError(f"debootstrap {suite} from {mirror} failed: {detail}"
                         + (f" (log: {tail})" if tail else ""))


def _clean_debian_rootfs(rootfs: str) -> None:
    """Drop what belongs to the build host or a package cache, not to an image."""
    import glob
    for pattern in ("dev/*", "var/cache/apt/archives/*.deb", "var/cache/apt/*.bin",
                    "var/lib/apt/lists/*_*", "var/log/bootstrap.log", "run/*", "tmp/*"):
        for path in glob.glob(os.path.join(rootfs, pattern)):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
    # Copied from the build host by debootstrap; the engine provides its own.
    for name, content in (("etc/resolv.conf", ""), ("etc/hostname", "localhost\n"),
                          ("etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")):
        path = os.path.join(rootfs, name)
        if os.path.lexists(path) and not os.path.isfile(path):
            continue
        with open(path, "w") as f:
            f.write(content)


def build_debian(store: ImageStore, suite: str = "bookworm", ref: str | None = None,
                 progress: Progress | None = None, *, mirror: str | None = None,
                 variant: str = "minbase", include: list[str] | None = None) -> Image:
    """A Debian image made by debootstrap from the host's apt mirror; kept, so built once.

    REF defaults to `debian:<suite>` (stored as localhost/debian:<suite>).  PROGRESS gets debootstrap's phases as
    (message, done, total) — total 0 for plain messages — then the import's bytes.
    """
    ref = ref or f"debian:{suite}"
    target = parse_name(ref)
    with contextlib.suppress(ImageNotFound):
        return store.resolve(ref)  # also one an older version named docker.io/library/debian
    mirror = mirror or debian_mirror(suite)
    work = tempfile.mkdtemp(prefix="debootstrap-", dir=store.layout.tmp_dir)
    try:
        rootfs = os.path.join(work, "rootfs")
        run_debootstrap(rootfs, suite, mirror, variant, include, progress,
                        log_path=os.path.join(work, "debootstrap.log"))
        _clean_debian_rootfs(rootfs)
        return store.import_rootfs(
            rootfs, target.name,
            config={"Cmd": ["bash"], "Env": [f"PATH={DEFAULT_PATH}"]},
            created_by=f"debootstrap --variant={variant} {suite} {mirror}", progress=progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
