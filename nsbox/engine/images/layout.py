"""The on-disk OCI image layout: content-addressed blobs, index.json, and the store lock.

    <root>/images/oci-layout            {"imageLayoutVersion": "1.0.0"}
    <root>/images/index.json            one entry per (image manifest, name); an
                                        image without names has one entry and no
                                        ref.name annotation (a dangling image)
    <root>/images/blobs/sha256/<hex>    manifests, configs and layer blobs

Blobs are written to <root>/tmp first and renamed into place only once their
digest is known (and, when one was expected, checked), so a blob file is
always complete and named after its content.
"""

from __future__ import annotations

import _thread  # threading's locks themselves, without importing threading
import fcntl
import io
import os

from nsbox import _json
from nsbox._lite import suppress
from nsbox._record import record
from nsbox.errors import ImageError

TYPE_CHECKING = False  # typing's own constant costs an import of typing
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import IO, BinaryIO

OCI_LAYOUT_VERSION = "1.0.0"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
CONTAINERD_NAME_ANNOTATION = "io.containerd.image.name"
# On index.json itself: its names follow reference.py's rule (short names under
# localhost/).  An index without it may hold the docker.io/library/ twins older
# versions gave local images; read_index drops them.
NAMING_ANNOTATION = "io.nsbox.naming"
NAMING_VERSION = "localhost-short-names"

MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
MEDIA_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MANIFEST_TYPES = (MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST)
INDEX_TYPES = (MEDIA_OCI_INDEX, MEDIA_DOCKER_MANIFEST_LIST)

# The rest of the root, shared by the image store (store.py) and container
# storage (storage.py): both import these names from here.
LAYERS_DIR = "layers"
SHORT_LINK_DIR = "l"            # <root>/layers/l/<20 hex> -> ../<hex>, for short lowerdirs
SHORT_LINK_LENGTH = 20
CONTAINERS_DIR = "containers"
ROOTFS_RECORD = "rootfs.json"   # in each container dir; names the layers it mounts
SHIFTED_DIR = "shifted"         # layer copies with shifted owners (Storage.set_shifted)
SOURCE_SUFFIX = ".source"       # <shifted>/<name>.source: the layer dir it is a copy of

COPY_CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def lazy_contextmanager(func):  # noqa: ANN001, ANN201
    """contextlib.contextmanager, importing contextlib on the first call, not at import time.

    For generator-based context managers off the `run` path (writing, decompressing).
    """
    made = None

    def wrapper(*args, **kwargs):  # noqa: ANN202
        nonlocal made
        if made is None:
            from contextlib import contextmanager
            made = contextmanager(func)
        return made(*args, **kwargs)

    wrapper.__name__ = func.__name__
    wrapper.__qualname__ = func.__qualname__
    wrapper.__doc__ = func.__doc__
    wrapper.__wrapped__ = func
    return wrapper


def canonical_json(value: object) -> bytes:
    """The byte form of every JSON blob nsbox writes: sorted keys, no spaces, so digests are stable."""
    return _json.dumps(value, sort_keys=True).encode()


def sha256_digest(data: bytes) -> str:
    import hashlib
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_hex(digest: str) -> str:
    """The hex part of a `sha256:<hex>` digest; anything else is refused."""
    algorithm, _, value = digest.partition(":")
    if algorithm != "sha256" or len(value) != 64 or not all(c in "0123456789abcdef" for c in value):
        raise ImageError(f"unsupported or malformed digest {digest!r}")
    return value


class HashingReader(io.RawIOBase):
    """Reads through to a file object while hashing (and counting) what passes."""

    def __init__(self, inner: IO[bytes], on_read: Callable[[int], None] | None = None) -> None:
        import hashlib
        self.inner = inner
        self.hasher = hashlib.sha256()
        self.count = 0
        self._on_read = on_read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.inner.read(len(buffer))
        size = len(data)
        buffer[:size] = data
        self.hasher.update(data)
        self.count += size
        if self._on_read is not None and size:
            self._on_read(size)
        return size

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        self.hasher.update(data)
        self.count += len(data)
        if self._on_read is not None and data:
            self._on_read(len(data))
        return data

    def drain(self) -> None:
        """Read to the end so the digest covers the whole stream (tar padding included)."""
        while self.read(COPY_CHUNK):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hasher.hexdigest()


def oci_architecture() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(machine, machine)


def layer_media_type(compression: str) -> str:
    return {"gzip": MEDIA_OCI_LAYER_GZIP, "zstd": MEDIA_OCI_LAYER_ZSTD}.get(compression, MEDIA_OCI_LAYER)


def drop_orphan_shifted(root: str) -> None:
    """Delete the shifted layer copies under ROOT whose layer is gone (under the layout lock).

    Storage.set_shifted makes them; the image store's garbage collector calls this.
    """
    base = os.path.join(root, SHIFTED_DIR)
    with suppress(FileNotFoundError):
        for name in os.listdir(base):
            if not name.endswith(SOURCE_SUFFIX):
                continue
            with open(os.path.join(base, name)) as f:
                source = f.read()
            if not os.path.isdir(source):
                import shutil
                shutil.rmtree(os.path.join(base, name.removesuffix(SOURCE_SUFFIX)), ignore_errors=True)
                os.unlink(os.path.join(base, name))


def detect_compression(head: bytes) -> str:
    """'gzip', 'zstd' or '' (plain) from the first bytes of a stream."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return ""


@lazy_contextmanager
def open_decompressed(path: str) -> Iterator[BinaryIO]:
    """Open PATH for reading as the plain byte stream behind any gzip/zstd compression.

    zstd goes through the `zstd` program, since Python 3.11 has no zstd module.
    """
    with open(path, "rb") as raw:
        compression = detect_compression(raw.read(4))
        raw.seek(0)
        if compression == "gzip":
            import gzip
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                yield stream  # type: ignore[misc]
        elif compression == "zstd":
            with _zstd_reader(path) as stream:
                yield stream
        else:
            yield raw


@lazy_contextmanager
def _zstd_reader(path: str) -> Iterator[BinaryIO]:
    import shutil
    import subprocess
    program = shutil.which("zstd")
    if program is None:
        raise ImageError(f"{path}: zstd-compressed data needs the zstd program (apt-get install zstd)")
    proc = subprocess.Popen([program, "-dcq", path], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    try:
        yield proc.stdout  # type: ignore[misc]
        proc.stdout.close()
        if proc.wait() != 0:
            err = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace").strip()
            raise ImageError(f"{path}: corrupt zstd data: {err or 'zstd failed'}")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()


class _StoreLock:
    """flock across processes, re-entrant within one.

    A second open()+flock() of the same file by the same process would wait
    for itself, so every Layout of one root shares one of these.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.thread_lock = _thread.RLock()
        self.depth = 0
        self.fd = -1

    def __enter__(self) -> None:
        self.thread_lock.acquire()
        try:
            if self.depth == 0:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                self.fd = fd
            self.depth += 1
        except BaseException:
            self.thread_lock.release()
            raise

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1
        if self.depth == 0:
            os.close(self.fd)
            self.fd = -1
        self.thread_lock.release()


_store_locks: dict[str, _StoreLock] = {}
_store_locks_guard = _thread.allocate_lock()


def _forget_locks_after_fork() -> None:
    # A forked child holds none of its parent's locks: it must wait for them
    # like any other process.  Its copy of a held flock fd only shares the
    # parent's lock, so dropping that copy releases nothing.
    global _store_locks_guard
    _store_locks_guard = _thread.allocate_lock()
    for lock in _store_locks.values():
        if lock.fd >= 0:
            with suppress(OSError):
                os.close(lock.fd)
        lock.fd = -1
        lock.depth = 0
        lock.thread_lock = _thread.RLock()


os.register_at_fork(after_in_child=_forget_locks_after_fork)


def store_lock(path: str) -> _StoreLock:
    """The lock object for the lock file PATH (one per path per process)."""
    with _store_locks_guard:
        lock = _store_locks.get(path)
        if lock is None:
            lock = _store_locks[path] = _StoreLock(path)
        return lock


@record
class IndexEntry:
    """One manifests[] entry of index.json: an image manifest and at most one name."""

    digest: str
    size: int
    name: str | None = None
    media_type: str = MEDIA_OCI_MANIFEST
    platform: dict | None = None

    def to_json(self) -> dict:
        entry: dict = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform:
            entry["platform"] = self.platform
        if self.name:
            entry["annotations"] = {REF_NAME_ANNOTATION: self.name,
                                    CONTAINERD_NAME_ANNOTATION: self.name}
        return entry


class Layout:
    """The OCI layout directory of a store, plus its staging dir and lock file."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.dir = os.path.join(root, "images")
        self.blobs_dir = os.path.join(self.dir, "blobs", "sha256")
        self.index_path = os.path.join(self.dir, "index.json")
        self.tmp_dir = os.path.join(root, "tmp")
        self.lock_path = os.path.join(root, "storage.lock")

    def ensure(self) -> None:
        """Create the layout if missing (idempotent)."""
        os.makedirs(self.blobs_dir, mode=0o700, exist_ok=True)
        os.makedirs(self.tmp_dir, mode=0o700, exist_ok=True)
        layout_file = os.path.join(self.dir, "oci-layout")
        if not os.path.exists(layout_file):
            self._write_atomic(layout_file, canonical_json({"imageLayoutVersion": OCI_LAYOUT_VERSION}))
        if not os.path.exists(self.index_path):
            self.write_index([])

    # ----------------------------------------------------------------- lock
    def locked(self) -> _StoreLock:
        """Hold the store-wide lock (`with layout.locked():`).

        Every change to images, layers or their users takes it.
        """
        return store_lock(self.lock_path)

    # ---------------------------------------------------------------- blobs
    def blob_path(self, digest: str) -> str:
        return os.path.join(self.blobs_dir, digest_hex(digest))

    def has_blob(self, digest: str) -> bool:
        return os.path.exists(self.blob_path(digest))

    def read_blob(self, digest: str) -> bytes:
        try:
            with open(self.blob_path(digest), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise ImageError(f"blob {digest} is missing from the image store") from None

    def read_json_blob(self, digest: str) -> dict:
        data = self.read_blob(digest)
        try:
            value = _json.loads(data)
        except ValueError as err:
            raise ImageError(f"blob {digest} is not valid JSON: {err}") from None
        if not isinstance(value, dict):
            raise ImageError(f"blob {digest} is not a JSON object")
        return value

    def put_blob_bytes(self, data: bytes, created: list[str] | None = None) -> str:
        """Store DATA; returns its digest.  New blob paths are appended to CREATED."""
        digest = sha256_digest(data)
        path = self.blob_path(digest)
        if not os.path.exists(path):
            self._write_atomic(path, data)
            if created is not None:
                created.append(path)
        return digest

    def put_blob_stream(self, stream: IO[bytes], expected: str | None = None,
                        created: list[str] | None = None,
                        on_read: Callable[[int], None] | None = None) -> tuple[str, int]:
        """Copy STREAM into the store; returns (digest, size).

        With EXPECTED, a stream of other content raises ImageError and stores nothing.
        """
        import tempfile
        reader = HashingReader(stream, on_read)
        fd, tmp = tempfile.mkstemp(prefix="blob-", dir=self.tmp_dir)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := reader.read(COPY_CHUNK):
                    out.write(chunk)
            digest = reader.digest
            if expected is not None and digest != expected:
                raise ImageError(f"content does not match its digest: expected {expected}, got {digest}")
            path = self.blob_path(digest)
            if os.path.exists(path):
                os.unlink(tmp)
            else:
                os.chmod(tmp, 0o644)
                os.rename(tmp, path)
                if created is not None:
                    created.append(path)
            return digest, reader.count
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def blob_digests(self) -> list[str]:
        return ["sha256:" + name for name in os.listdir(self.blobs_dir) if len(name) == 64]

    def remove_blob(self, digest: str) -> None:
        with suppress(FileNotFoundError):
            os.unlink(self.blob_path(digest))

    # ---------------------------------------------------------------- index
    def read_index(self) -> list[IndexEntry]:
        try:
            with open(self.index_path, "rb") as f:
                index = _json.loads(f.read())
        except FileNotFoundError:
            return []
        except ValueError as err:
            raise ImageError(f"{self.index_path} is corrupt: {err}") from None
        entries = []
        for item in index.get("manifests") or []:
            annotations = item.get("annotations") or {}
            entries.append(IndexEntry(digest=item["digest"], size=int(item.get("size", 0)),
                                      name=annotations.get(REF_NAME_ANNOTATION),
                                      media_type=item.get("mediaType", MEDIA_OCI_MANIFEST),
                                      platform=item.get("platform")))
        if (index.get("annotations") or {}).get(NAMING_ANNOTATION) != NAMING_VERSION:
            entries = _without_legacy_twins(entries)
        return entries

    def write_index(self, entries: list[IndexEntry]) -> None:
        ordered = sorted(entries, key=lambda e: (e.name or "", e.digest))
        index = {"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX,
                 "annotations": {NAMING_ANNOTATION: NAMING_VERSION},
                 "manifests": [entry.to_json() for entry in ordered]}
        import json
        self._write_atomic(self.index_path, json.dumps(index, indent=2, sort_keys=True).encode())

    def _write_atomic(self, path: str, data: bytes) -> None:
        import tempfile
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def _without_legacy_twins(entries: list[IndexEntry]) -> list[IndexEntry]:
    """ENTRIES less the docker.io names that only repeat a localhost/ name of the same image.

    The index is rewritten so by the next change to it (write_index marks it).
    """
    from .reference import legacy_duplicate
    names: dict[str, set[str]] = {}
    for entry in entries:
        if entry.name:
            names.setdefault(entry.digest, set()).add(entry.name)
    return [entry for entry in entries
            if not (entry.name and legacy_duplicate(entry.name, names[entry.digest]))]


def renamed_entries(entries: list[IndexEntry], manifest_digest: str, add: list[str] = (),  # type: ignore[assignment]
             remove: list[str] = ()) -> list[IndexEntry]:  # type: ignore[assignment]
    """Index entries with ADD names moved onto MANIFEST_DIGEST and REMOVE names dropped.

    Keeps the invariant: a manifest with names has one entry per name; one
    without has exactly one unnamed entry (a dangling image).
    """
    moving = set(add) | set(remove)
    template: dict[str, IndexEntry] = {}
    names: dict[str, list[str]] = {}
    for entry in entries:
        template.setdefault(entry.digest, entry)
        names.setdefault(entry.digest, [])
        if entry.name and entry.name not in moving:
            names[entry.digest].append(entry.name)
    names.setdefault(manifest_digest, [])
    names[manifest_digest].extend(name for name in add if name not in names[manifest_digest])
    result = []
    for digest, image_names in names.items():
        base = template[digest]
        if not image_names:
            result.append(IndexEntry(base.digest, base.size, None, base.media_type, base.platform))
        for name in image_names:
            result.append(IndexEntry(base.digest, base.size, name, base.media_type, base.platform))
    return result
