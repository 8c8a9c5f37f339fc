"""docker-archive and oci-archive: `load` reads both, `save` writes both.

docker-archive (docker save, podman save --format docker-archive):
    manifest.json   [{"Config": "<hex>.json", "RepoTags": [...], "Layers": ["<hex>.tar", ...]}]
    <config>.json, one uncompressed tar per layer (any names; older writers put
    them in <v1 id>/layer.tar, sometimes as symlinks to each other)

oci-archive (podman save --format oci-archive, skopeo copy ... oci-archive:):
    oci-layout, index.json, blobs/sha256/<hex>; the name of each image is its
    index entry's org.opencontainers.image.ref.name annotation (podman writes
    the full name there; a bare tag there names nothing).

A compressed archive (gzip or zstd) is first decompressed into <root>/tmp so
that its members can be read in any order.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from typing import TYPE_CHECKING

from nsbox._lazylog import get_logger
from nsbox.errors import ConfigError, ImageError

from .layout import (
    CONTAINERD_NAME_ANNOTATION,
    COPY_CHUNK,
    INDEX_TYPES,
    MEDIA_DOCKER_LAYER,
    MEDIA_DOCKER_LAYER_GZIP,
    MEDIA_OCI_CONFIG,
    MEDIA_OCI_LAYER,
    MEDIA_OCI_LAYER_GZIP,
    MEDIA_OCI_LAYER_ZSTD,
    MEDIA_OCI_MANIFEST,
    REF_NAME_ANNOTATION,
    canonical_json,
    detect_compression,
    digest_hex,
    layer_media_type,
    oci_architecture,
    open_decompressed,
    sha256_digest,
)
from .reference import familiar_name, parse_reference
from .removal import sweep

if TYPE_CHECKING:
    import tarfile

    from .staging import Transaction
    from .store import Image, ImageStore, Layer, Progress

log = get_logger(__name__)

FORMATS = ("docker-archive", "oci-archive")
LAYER_TYPES = (MEDIA_OCI_LAYER, MEDIA_OCI_LAYER_GZIP, MEDIA_OCI_LAYER_ZSTD, MEDIA_DOCKER_LAYER,
               MEDIA_DOCKER_LAYER_GZIP)
# Refuse absurd JSON members before reading them into memory.
MAX_JSON_SIZE = 16 << 20


class _Archive:
    """Random access to the members of an (uncompressed) archive tar, by normalised name."""

    def __init__(self, tar: tarfile.TarFile, source: str) -> None:
        self.tar = tar
        self.source = source
        self.members: dict[str, tarfile.TarInfo] = {}
        for member in tar.getmembers():
            name = "/".join(part for part in member.name.split("/") if part not in ("", "."))
            if member.isfile() or member.issym() or member.islnk():
                self.members[name] = member

    def has(self, name: str) -> bool:
        return _norm(name) in self.members

    def open(self, name: str):  # noqa: ANN201
        member = self.members.get(_norm(name))
        if member is None:
            raise ImageError(f"{self.source}: {name!r} is missing from the archive")
        try:
            stream = self.tar.extractfile(member)
        except KeyError:
            stream = None
        if stream is None:
            raise ImageError(f"{self.source}: {name!r} is a link to nothing in the archive")
        return stream

    def size(self, name: str) -> int:
        member = self.members.get(_norm(name))
        if member is None:
            raise ImageError(f"{self.source}: {name!r} is missing from the archive")
        if member.issym() or member.islnk():
            return 0
        return member.size

    def read_json(self, name: str) -> object:
        member = self.members.get(_norm(name))
        if member is not None and member.size > MAX_JSON_SIZE:
            raise ImageError(f"{self.source}: {name!r} is too large for a JSON document")
        data = self.open(name).read(MAX_JSON_SIZE + 1)
        try:
            return json.loads(data)
        except ValueError as err:
            raise ImageError(f"{self.source}: {name!r} is not valid JSON: {err}") from None

    def read_bytes(self, name: str) -> bytes:
        data = self.open(name).read(MAX_JSON_SIZE + 1)
        if len(data) > MAX_JSON_SIZE:
            raise ImageError(f"{self.source}: {name!r} is too large")
        return data


def _norm(name: str) -> str:
    return "/".join(part for part in name.split("/") if part not in ("", "."))


def _plain_archive(txn: Transaction, path: str) -> str:
    """PATH itself if it is an uncompressed tar, else a decompressed copy in the store's tmp."""
    with open(path, "rb") as f:
        compression = detect_compression(f.read(4))
    if not compression:
        return path
    plain = txn.temp_file("archive-")
    with open_decompressed(path) as stream, open(plain, "wb") as out:
        while chunk := stream.read(COPY_CHUNK):
            out.write(chunk)
    return plain


def load_archive(store: ImageStore, archive: str, progress: Progress | None) -> list[str]:
    import gzip
    import tarfile
    import zlib
    if not os.path.isfile(archive):
        raise ImageError(f"{archive}: no such file")
    try:
        with store._transaction() as txn:
            plain = _plain_archive(txn, archive)
            with tarfile.open(plain, "r:") as tar:
                contents = _Archive(tar, archive)
                if contents.has("manifest.json"):
                    loaded = _load_docker(store, txn, contents, progress)
                elif contents.has("index.json"):
                    loaded = _load_oci(store, txn, contents, progress)
                else:
                    raise ImageError(f"{archive}: neither a docker-archive (manifest.json) "
                                     "nor an OCI archive (index.json)")
            sweep(store)
            return loaded
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise ImageError(f"{archive}: corrupt or truncated archive: {err}") from None


def _add_layer(store: ImageStore, txn: Transaction, contents: _Archive, member: str,
               expected_digest: str | None, media_type: str | None, diff_id: str,
               parents: list[Layer], progress: Progress | None) -> Layer:
    total = contents.size(member)
    label = f"copying {os.path.basename(member)[:24]}"
    reported = {"done": 0}

    def on_read(size: int) -> None:
        reported["done"] += size
        if progress:
            progress(label, reported["done"], total)
    created_before = len(txn.blobs)
    digest, size = store.layout.put_blob_stream(contents.open(member), expected=expected_digest,
                                                created=txn.blobs, on_read=on_read if progress else None)
    blob_is_new = len(txn.blobs) > created_before
    with open(store.layout.blob_path(digest), "rb") as f:
        compression = detect_compression(f.read(4))
    if media_type is None:
        media_type = layer_media_type(compression)
        if not compression and digest != diff_id:
            raise ImageError(f"{contents.source}: layer {member!r} has digest {digest}, "
                             f"but the image config says {diff_id} (corrupt archive?)")
    elif media_type not in LAYER_TYPES:
        raise ImageError(f"{contents.source}: unsupported layer media type {media_type!r}")
    return store._ensure_layer(txn, digest, media_type, size, parents, diff_id, devices="reject",
                               progress=progress, verify_blob=blob_is_new)


def _names(values: list[str] | None, source: str) -> list[str]:
    names = []
    for value in values or []:
        try:
            ref = parse_reference(value)
        except ConfigError:
            log.warning("%s: ignoring invalid image name %r", source, value)
            continue
        if ref.digest:
            # A digest is a property of the manifest, not a name one can tag.
            log.info("%s: not naming an image after the digest reference %r", source, value)
            continue
        names.append(ref.name)
    return names


def _config_diff_ids(config: object, source: str) -> list[str]:
    if not isinstance(config, dict):
        raise ImageError(f"{source}: image config is not a JSON object")
    diff_ids = (config.get("rootfs") or {}).get("diff_ids")
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise ImageError(f"{source}: image config has no rootfs.diff_ids")
    for diff_id in diff_ids:
        digest_hex(diff_id)
    return diff_ids


def _report(image: Image, names: list[str]) -> list[str]:
    return [familiar_name(name) for name in names] or [image.id]


def _load_docker(store: ImageStore, txn: Transaction, contents: _Archive,
                 progress: Progress | None) -> list[str]:
    manifest = contents.read_json("manifest.json")
    if not isinstance(manifest, list) or not manifest:
        raise ImageError(f"{contents.source}: manifest.json lists no images")
    loaded: list[str] = []
    for entry in manifest:
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str) \
                or not isinstance(entry.get("Layers"), list):
            raise ImageError(f"{contents.source}: malformed manifest.json entry")
        config_bytes = contents.read_bytes(entry["Config"])
        try:
            config = json.loads(config_bytes)
        except ValueError as err:
            raise ImageError(f"{contents.source}: image config is not valid JSON: {err}") from None
        diff_ids = _config_diff_ids(config, contents.source)
        if len(diff_ids) != len(entry["Layers"]):
            raise ImageError(f"{contents.source}: {len(entry['Layers'])} layers but "
                             f"{len(diff_ids)} diff ids in the image config")
        layers: list[Layer] = []
        for member, diff_id in zip(entry["Layers"], diff_ids, strict=True):
            layers.append(_add_layer(store, txn, contents, member, None, None, diff_id, layers, progress))
        names = _names(entry.get("RepoTags"), contents.source)
        image = store._commit(txn, config_bytes, layers, names)
        loaded.extend(_report(image, names))
    return loaded


def _oci_manifests(contents: _Archive) -> list[tuple[str, bytes, str | None]]:
    """(manifest digest, manifest bytes, name) for each image entry of index.json."""
    index = contents.read_json("index.json")
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise ImageError(f"{contents.source}: index.json has no manifests")
    found = []
    for descriptor in index["manifests"]:
        annotations = descriptor.get("annotations") or {}
        name = _oci_name(annotations)
        digest = descriptor.get("digest", "")
        data = _read_blob(contents, digest)
        try:
            document = json.loads(data)
        except ValueError:
            raise ImageError(f"{contents.source}: manifest {digest} is not valid JSON") from None
        media_type = descriptor.get("mediaType") or document.get("mediaType")
        if media_type in INDEX_TYPES or "manifests" in document:
            digest, data = _pick_platform(contents, document)
        found.append((digest, data, name))
    if not found:
        raise ImageError(f"{contents.source}: index.json lists no images")
    return found


def _oci_name(annotations: dict) -> str | None:
    """The image name of an index entry: a full reference in ref.name, else containerd's."""
    for key in (REF_NAME_ANNOTATION, CONTAINERD_NAME_ANNOTATION):
        value = annotations.get(key)
        # A bare "latest" in ref.name is a tag of nothing in particular.
        if value and ("/" in value or ":" in value or "@" in value):
            return value
    return None


def _pick_platform(contents: _Archive, index: dict) -> tuple[str, bytes]:
    wanted = oci_architecture()
    candidates = [m for m in index.get("manifests") or [] if isinstance(m, dict)]
    for descriptor in candidates:
        platform = descriptor.get("platform") or {}
        if platform.get("os", "linux") == "linux" and platform.get("architecture", wanted) == wanted:
            return descriptor["digest"], _read_blob(contents, descriptor["digest"])
    raise ImageError(f"{contents.source}: no image for linux/{wanted} in the archive's image index")


def _read_blob(contents: _Archive, digest: str) -> bytes:
    data = contents.read_bytes(f"blobs/sha256/{digest_hex(digest)}")
    if sha256_digest(data) != digest:
        raise ImageError(f"{contents.source}: blob {digest} does not match its digest")
    return data


def _load_oci(store: ImageStore, txn: Transaction, contents: _Archive,
              progress: Progress | None) -> list[str]:
    by_manifest: dict[str, tuple[bytes, list[str]]] = {}
    for digest, data, name in _oci_manifests(contents):
        _, names = by_manifest.setdefault(digest, (data, []))
        names.extend(_names([name] if name else [], contents.source))
    loaded: list[str] = []
    for manifest_bytes, names in by_manifest.values():
        try:
            manifest = json.loads(manifest_bytes)
            config_descriptor = manifest["config"]
            layer_descriptors = manifest["layers"]
        except (ValueError, KeyError, TypeError):
            raise ImageError(f"{contents.source}: malformed image manifest") from None
        config_bytes = _read_blob(contents, config_descriptor["digest"])
        try:
            config = json.loads(config_bytes)
        except ValueError:
            raise ImageError(f"{contents.source}: image config is not valid JSON") from None
        diff_ids = _config_diff_ids(config, contents.source)
        if len(diff_ids) != len(layer_descriptors):
            raise ImageError(f"{contents.source}: {len(layer_descriptors)} layers but "
                             f"{len(diff_ids)} diff ids in the image config")
        layers: list[Layer] = []
        for descriptor, diff_id in zip(layer_descriptors, diff_ids, strict=True):
            member = f"blobs/sha256/{digest_hex(descriptor['digest'])}"
            layers.append(_add_layer(store, txn, contents, member, descriptor["digest"],
                                     descriptor.get("mediaType", MEDIA_OCI_LAYER), diff_id,
                                     layers, progress))
        image = store._commit(txn, config_bytes, layers, names, manifest_bytes=manifest_bytes)
        loaded.extend(_report(image, names))
    return loaded


# ===================================================================== save
def save_archive(store: ImageStore, refs: list[str], dest: str, fmt: str, compress: bool,
                 progress: Progress | None) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown archive format {fmt!r} (one of {', '.join(FORMATS)})")
    if not refs:
        raise ConfigError("no images to save")
    with store.layout.locked():
        # Held throughout so no removal can take a blob away mid-write.
        chosen = [store._resolve(ref) for ref in refs]
        _write_archive(store, chosen, os.path.abspath(dest), fmt, compress, progress)


def _write_archive(store: ImageStore, chosen: list[tuple[Image, str | None]], dest: str, fmt: str,
                   compress: bool, progress: Progress | None) -> None:
    import gzip
    import tarfile
    try:
        fd, staging = tempfile.mkstemp(prefix=".nsbox-save-", dir=os.path.dirname(dest))
    except OSError as err:
        raise ImageError(f"cannot write {dest}: {err.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as raw, contextlib.ExitStack() as stack:
            out = raw
            if compress:
                out = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="wb", mtime=0,
                                                        filename=""))
            tar = stack.enter_context(tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT))
            writer = _Writer(store, tar, progress)
            if fmt == "docker-archive":
                writer.docker(chosen)
            else:
                writer.oci(chosen)
        os.chmod(staging, 0o644)
        os.replace(staging, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        raise


class _Writer:
    def __init__(self, store: ImageStore, tar: tarfile.TarFile, progress: Progress | None) -> None:
        self.store = store
        self.tar = tar
        self.progress = progress
        self.written: set[str] = set()

    def _add_bytes(self, name: str, data: bytes) -> None:
        import tarfile
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        self.tar.addfile(info, io.BytesIO(data))

    def _add_file(self, name: str, path: str, label: str) -> None:
        import tarfile
        with open(path, "rb") as source:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = os.fstat(source.fileno()).st_size, 0o644, 0
            if self.progress:
                self.progress(label, 0, info.size)
            self.tar.addfile(info, source)
            if self.progress:
                self.progress(label, info.size, info.size)

    def _add_dir(self, name: str) -> None:
        import tarfile
        if name in self.written:
            return
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
        self.tar.addfile(info)
        self.written.add(name)

    def docker(self, chosen: list[tuple[Image, str | None]]) -> None:
        manifest: list[dict] = []
        by_id: dict[str, dict] = {}
        for image, name in chosen:
            entry = by_id.get(image.id)
            if entry is None:
                config_name = f"{digest_hex(image.id)}.json"
                if config_name not in self.written:
                    self._add_bytes(config_name, self.store.layout.read_blob(image.id))
                    self.written.add(config_name)
                layer_names = []
                for layer in image.layers:
                    layer_name = f"{digest_hex(layer.diff_id)}.tar"
                    if layer_name not in self.written:
                        self._add_plain_layer(layer_name, layer)
                        self.written.add(layer_name)
                    layer_names.append(layer_name)
                entry = {"Config": config_name, "RepoTags": [], "Layers": layer_names}
                by_id[image.id] = entry
                manifest.append(entry)
            if name is not None and familiar_name(name) not in entry["RepoTags"]:
                entry["RepoTags"].append(familiar_name(name))
        for entry in manifest:
            if not entry["RepoTags"]:
                entry["RepoTags"] = None
        self._add_bytes("manifest.json", json.dumps(manifest).encode())

    def _add_plain_layer(self, name: str, layer: Layer) -> None:
        """docker-archive layers are uncompressed tars: decompress compressed blobs on the way."""
        blob = self.store.layout.blob_path(layer.digest)
        label = f"layer {digest_hex(layer.diff_id)[:12]}"
        with open(blob, "rb") as f:
            compression = detect_compression(f.read(4))
        if not compression:
            self._add_file(name, blob, label)
            return
        fd, plain = tempfile.mkstemp(prefix="save-", dir=self.store.layout.tmp_dir)
        try:
            with os.fdopen(fd, "wb") as out, open_decompressed(blob) as stream:
                while chunk := stream.read(COPY_CHUNK):
                    out.write(chunk)
            self._add_file(name, plain, label)
        finally:
            os.unlink(plain)

    def oci(self, chosen: list[tuple[Image, str | None]]) -> None:
        self._add_bytes("oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}))
        self._add_dir("blobs")
        self._add_dir("blobs/sha256")
        entries: list[dict] = []
        seen: set[tuple[str, str | None]] = set()
        for image, name in chosen:
            for digest in [image.manifest_digest, image.id] + [layer.digest for layer in image.layers]:
                member = f"blobs/sha256/{digest_hex(digest)}"
                if member not in self.written:
                    self._add_file(member, self.store.layout.blob_path(digest),
                                   f"blob {digest_hex(digest)[:12]}")
                    self.written.add(member)
            if (image.manifest_digest, name) in seen:
                continue
            seen.add((image.manifest_digest, name))
            manifest_bytes = self.store.layout.read_blob(image.manifest_digest)
            descriptor: dict = {
                "mediaType": json.loads(manifest_bytes).get("mediaType") or MEDIA_OCI_MANIFEST,
                "digest": image.manifest_digest,
                "size": len(manifest_bytes),
            }
            if name:
                descriptor["annotations"] = {REF_NAME_ANNOTATION: name,
                                             CONTAINERD_NAME_ANNOTATION: name}
            entries.append(descriptor)
        self._add_bytes("index.json", json.dumps({"schemaVersion": 2, "manifests": entries}).encode())


__all__ = ["FORMATS", "MEDIA_OCI_CONFIG", "load_archive", "save_archive"]
