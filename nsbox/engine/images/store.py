"""The image store: images in an OCI layout, each layer unpacked once and shared.

Image identity follows Docker: an image's id is the digest of its config
blob, so the same image loaded twice (or from another archive format) is
one image.  Names live in index.json (see layout.py).  Layers are unpacked
at import/load time into <root>/layers/<chain-id hex>/, next to a small
<hex>.json with their diff id, parent and size, and a short alias
<root>/layers/l/<20 hex> -> ../<hex> that keeps overlay's lowerdir option
short for tall images (see storage.py).

Every change takes the store lock (<root>/storage.lock) and runs as a
transaction: blobs and layer directories it created are removed again if it
fails, and nothing is staged anywhere but <root>/tmp.
"""

from __future__ import annotations

import os

from nsbox import _json
from nsbox._lazylog import get_logger
from nsbox._lite import suppress
from nsbox.engine import DEFAULT_ROOT
from nsbox.errors import ConfigError, ImageError, ImageNotFound

from . import config as imgconfig
from .layout import (
    CONTAINERS_DIR,
    LAYERS_DIR,
    MANIFEST_TYPES,
    MEDIA_OCI_CONFIG,
    MEDIA_OCI_LAYER,
    MEDIA_OCI_MANIFEST,
    SHORT_LINK_DIR,
    SHORT_LINK_LENGTH,
    IndexEntry,
    Layout,
    canonical_json,
    digest_hex,
    lazy_contextmanager,
    renamed_entries,
)
from .records import Image, ImageSummary, Layer, chain_ids  # noqa: F401 - also imported from here
from .reference import (
    Reference,
    familiar_name,
    looks_like_id,
    lookup_candidates,
    parse_name,
    parse_reference,
    path_matches_short_name,
)
from .staging import Transaction, uncompressed_digest

TYPE_CHECKING = False  # typing's own constant costs an import of typing
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any, BinaryIO

    Progress = Callable[[str, int, int], None]
    InUse = Callable[[str], bool]

log = get_logger(__name__)

# <root>/pushed-digests.json: what record_push learnt (not part of the OCI layout).
PUSHED_DIGESTS_FILE = "pushed-digests.json"


class ImageStore:
    """Images under ROOT (default /var/lib/nsbox): import, load, save, tag, remove, list, inspect."""

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_ROOT) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.layout = Layout(self.root)
        self.layers_dir = os.path.join(self.root, LAYERS_DIR)
        self.links_dir = os.path.join(self.layers_dir, SHORT_LINK_DIR)
        self.containers_dir = os.path.join(self.root, CONTAINERS_DIR)
        os.makedirs(self.root, mode=0o711, exist_ok=True)
        self.layout.ensure()
        os.makedirs(self.links_dir, mode=0o700, exist_ok=True)
        self._json_cache: dict[str, dict] = {}
        self._pushed_cache: tuple[tuple, dict] | None = None

    # ================================================================ reading
    def _blob_json(self, digest: str) -> dict:
        cached = self._json_cache.get(digest)
        if cached is None:
            cached = self.layout.read_json_blob(digest)
            self._json_cache[digest] = cached
        return cached

    def _names_by_manifest(self, entries: list[IndexEntry] | None = None) -> dict[str, list[str]]:
        """manifest digest -> its names (empty list for a dangling image)."""
        found: dict[str, list[str]] = {}
        for entry in self.layout.read_index() if entries is None else entries:
            names = found.setdefault(entry.digest, [])
            if entry.name and entry.name not in names:
                names.append(entry.name)
        return found

    def layer_path(self, chain_id: str) -> str:
        return os.path.join(self.layers_dir, digest_hex(chain_id))

    def short_link(self, chain_id: str) -> str:
        """The short alias of a layer directory, relative to the layers dir (`l/<20 hex>`)."""
        return f"{SHORT_LINK_DIR}/{digest_hex(chain_id)[:SHORT_LINK_LENGTH]}"

    def _layer_meta(self, chain_id: str) -> dict:
        try:
            with open(self.layer_path(chain_id) + ".json") as f:
                return _json.loads(f.read())
        except (FileNotFoundError, ValueError):
            return {}

    def _image(self, manifest_digest: str, names: list[str]) -> Image:
        manifest = self._blob_json(manifest_digest)
        config_digest = (manifest.get("config") or {}).get("digest", "")
        config = self._blob_json(config_digest)
        diff_ids = ((config.get("rootfs") or {}).get("diff_ids")) or []
        descriptors = manifest.get("layers") or []
        if len(diff_ids) != len(descriptors):
            raise ImageError(f"image {config_digest}: {len(descriptors)} layers but "
                             f"{len(diff_ids)} diff ids in its config")
        layers = []
        for descriptor, diff_id, chain_id in zip(descriptors, diff_ids, chain_ids(diff_ids), strict=True):
            meta = self._layer_meta(chain_id)
            layers.append(Layer(diff_id=diff_id, chain_id=chain_id, digest=descriptor["digest"],
                                media_type=descriptor.get("mediaType", MEDIA_OCI_LAYER),
                                blob_size=int(descriptor.get("size", 0)),
                                path=self.layer_path(chain_id), size=int(meta.get("size", 0))))
        return Image(id=config_digest, manifest_digest=manifest_digest, config=config,
                     names=sorted(names), layers=layers,
                     pushed=self._pushed_digests().get(manifest_digest) or {})

    def _pushed_digests(self) -> dict[str, dict[str, str]]:
        """stored manifest digest -> {repository: digest pushed there} (see record_push)."""
        path = os.path.join(self.root, PUSHED_DIGESTS_FILE)
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            return {}
        key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if self._pushed_cache is None or self._pushed_cache[0] != key:
            try:
                with open(path, "rb") as f:
                    data = _json.loads(f.read())
            except (OSError, ValueError):
                data = {}
            self._pushed_cache = (key, data if isinstance(data, dict) else {})
        return self._pushed_cache[1]

    def images(self) -> list[Image]:
        """Every image in the store (one whose blobs are damaged is left out, with a warning)."""
        found = []
        for digest, names in self._names_by_manifest().items():
            try:
                found.append(self._image(digest, names))
            except ImageError as err:
                log.warning("skipping damaged image %s: %s", digest, err)
        return found

    def _resolve(self, ref: str) -> tuple[Image, str | None]:
        """The image REF means, and the full name it matched (None when matched by id)."""
        if not isinstance(ref, str) or not ref.strip():
            raise ImageNotFound("no image given")
        ref = ref.strip()
        by_manifest = self._names_by_manifest()
        by_name = {name: digest for digest, names in by_manifest.items() for name in names}
        candidates: list[Reference] = []
        with suppress(ConfigError):
            candidates = lookup_candidates(ref)
        if candidates:
            parsed = candidates[-1]  # Docker's reading: the path any registry may have
            if parsed.digest:
                for digest, names in by_manifest.items():
                    if digest == parsed.digest:
                        return self._image(digest, names), None
            else:
                for candidate in candidates:
                    digest = by_name.get(candidate.name)
                    if digest is not None:
                        return self._image(digest, by_manifest[digest]), candidate.name
                if not parsed.explicit_domain:
                    matches = {}
                    for name, digest in by_name.items():
                        with suppress(ConfigError):
                            full = parse_reference(name)
                            if full.tag == parsed.tag and path_matches_short_name(full, parsed):
                                matches.setdefault(digest, name)
                    if len(matches) == 1:
                        digest, name = next(iter(matches.items()))
                        return self._image(digest, by_manifest[digest]), name
                    if len(matches) > 1:
                        raise ImageNotFound(f"short name {ref!r} matches several images "
                                            f"({', '.join(sorted(matches.values()))}); use a full name")
        if looks_like_id(ref):
            wanted = ref.removeprefix("sha256:")
            hits = []
            for digest, names in by_manifest.items():
                manifest = self._blob_json(digest)
                config_hex = (manifest.get("config") or {}).get("digest", "").removeprefix("sha256:")
                if config_hex.startswith(wanted):
                    hits.append((digest, names))
            if len(hits) == 1:
                return self._image(*hits[0]), None
            if len(hits) > 1:
                raise ImageNotFound(f"image id prefix {ref!r} is ambiguous ({len(hits)} images)")
        raise ImageNotFound(f"{ref}: image not known")

    def resolve(self, ref: str) -> Image:
        """The image REF names: a name (short or full), `name@digest`, or an id (prefix).

        `busybox` means localhost/busybox:latest, then docker.io/library/busybox:latest,
        then busybox:latest under any single registry (reference.lookup_candidates).
        Raises ImageNotFound.
        """
        return self._resolve(ref)[0]

    def exists(self, ref: str) -> bool:
        try:
            self._resolve(ref)
        except ImageNotFound:
            return False
        return True

    def list(self) -> list[ImageSummary]:
        """All images, newest first."""
        summaries = []
        for image in self.images():
            summaries.append(ImageSummary(
                id=image.id, repo_tags=image.repo_tags, repo_digests=image.repo_digests,
                created=int(imgconfig.parse_time(image.created)), size=image.size,
                labels=image.labels))
        summaries.sort(key=lambda s: (-s.created, s.id))
        return summaries

    def inspect(self, ref: str) -> dict:
        """`docker image inspect` for one image."""
        image = self.resolve(ref)
        config = image.config
        return {
            "Id": image.id,
            "RepoTags": image.repo_tags,
            "RepoDigests": image.repo_digests,
            "Parent": "",
            "Comment": _history_comment(config),
            "Created": image.created,
            "Container": "",
            "DockerVersion": "",
            "Author": config.get("author", ""),
            "Config": imgconfig.docker_config(image.section),
            "Architecture": config.get("architecture", ""),
            "Variant": config.get("variant", ""),
            "Os": config.get("os", ""),
            "Size": image.size,
            "VirtualSize": image.size,
            "GraphDriver": {"Name": "overlay",
                            "Data": {"LowerDir": ":".join(image.lower_dirs)}},
            "RootFS": {"Type": (config.get("rootfs") or {}).get("type", "layers"),
                       "Layers": [layer.diff_id for layer in image.layers]},
            "Metadata": {"LastTagTime": ""},
        }

    def history(self, ref: str) -> list[dict]:
        """`docker history`: one entry per history record, newest first."""
        image = self.resolve(ref)
        records = list(image.config.get("history") or [])
        layer_sizes = [layer.size for layer in image.layers]
        if not records:
            records = [{"created": image.created, "created_by": ""} for _ in image.layers]
        rows = []
        layer_index = 0
        for entry in records:
            size = 0
            if not entry.get("empty_layer"):
                if layer_index < len(layer_sizes):
                    size = layer_sizes[layer_index]
                layer_index += 1
            rows.append({"Id": "<missing>", "Created": int(imgconfig.parse_time(entry.get("created"))),
                         "CreatedBy": entry.get("created_by", ""), "Tags": None, "Size": size,
                         "Comment": entry.get("comment", "")})
        rows.reverse()
        rows[0]["Id"] = image.id
        rows[0]["Tags"] = image.repo_tags or None
        return rows

    # ================================================================ writing
    @lazy_contextmanager
    def _transaction(self) -> Iterator[Transaction]:
        """Hold the store lock; undo what was created if the body fails."""
        with self.layout.locked():
            txn = Transaction(self)
            try:
                yield txn
            except BaseException:
                txn.rollback()
                raise
            finally:
                txn.cleanup()

    def _write_layer_meta(self, chain_id: str, meta: dict) -> None:
        self.layout._write_atomic(self.layer_path(chain_id) + ".json", canonical_json(meta))

    def _delete_layer(self, chain_id: str) -> None:
        path = self.layer_path(chain_id)
        link = os.path.join(self.layers_dir, self.short_link(chain_id))
        with suppress(FileNotFoundError):
            os.unlink(link)
        with suppress(FileNotFoundError):
            os.unlink(path + ".json")
        if os.path.isdir(path):
            import shutil
            import tempfile
            # Rename first: a half-deleted directory must never look like a layer.
            doomed = tempfile.mkdtemp(prefix="gone-", dir=self.layout.tmp_dir)
            os.rename(path, os.path.join(doomed, "layer"))
            shutil.rmtree(doomed, ignore_errors=True)

    def _ensure_layer(self, txn: Transaction, blob_digest: str, media_type: str, blob_size: int,
                      parents: list[Layer], expected_diff_id: str | None,
                      devices: str, progress: Progress | None, verify_blob: bool,
                      label: str | None = None) -> Layer:
        """Make sure the layer in blob BLOB_DIGEST on top of PARENTS is unpacked; returns it.

        With EXPECTED_DIFF_ID (from an image config) an already unpacked layer
        is reused; VERIFY_BLOB then still checks a newly stored blob against it.
        """
        from .unpack import unpack_layer
        parent_chain = parents[-1].chain_id if parents else None

        def chain_of(diff_id: str) -> str:
            return chain_ids([parent_chain, diff_id])[1] if parent_chain else diff_id

        label = label or f"layer {digest_hex(blob_digest)[:12]}"
        if expected_diff_id is not None:
            chain_id = chain_of(expected_diff_id)
            if os.path.isdir(self.layer_path(chain_id)):
                if verify_blob:
                    actual = uncompressed_digest(self.layout.blob_path(blob_digest))
                    if actual != expected_diff_id:
                        raise ImageError(f"{label}: content digest {actual} does not match the "
                                         f"image config's {expected_diff_id}")
                if progress:
                    progress(label, blob_size, blob_size)
                return self._layer_from_disk(chain_id, expected_diff_id, blob_digest, media_type, blob_size)
        staging = txn.temp_dir("layer-")
        dest = os.path.join(staging, "diff")
        os.mkdir(dest, 0o755)
        lowers = [layer.path for layer in reversed(parents)]
        result = unpack_layer(self.layout.blob_path(blob_digest), dest, lowers=lowers,
                              devices=devices, progress=progress, label=label)
        if expected_diff_id is not None and result.diff_id != expected_diff_id:
            raise ImageError(f"{label}: content digest {result.diff_id} does not match the image "
                             f"config's {expected_diff_id} (corrupt or truncated layer)")
        chain_id = chain_of(result.diff_id)
        final = self.layer_path(chain_id)
        if not os.path.isdir(final):
            os.rename(dest, final)
            txn.layers.append(chain_id)
            self._write_layer_meta(chain_id, {"diff_id": result.diff_id, "chain_id": chain_id,
                                              "parent": parent_chain, "size": result.size,
                                              "entries": result.entries})
            link = os.path.join(self.layers_dir, self.short_link(chain_id))
            with suppress(FileExistsError):
                os.symlink(os.path.join("..", digest_hex(chain_id)), link)
        return self._layer_from_disk(chain_id, result.diff_id, blob_digest, media_type, blob_size)

    def _layer_from_disk(self, chain_id: str, diff_id: str, blob_digest: str, media_type: str,
                         blob_size: int) -> Layer:
        meta = self._layer_meta(chain_id)
        return Layer(diff_id=diff_id, chain_id=chain_id, digest=blob_digest, media_type=media_type,
                     blob_size=blob_size, path=self.layer_path(chain_id),
                     size=int(meta.get("size", 0)))

    def _commit(self, txn: Transaction, config_bytes: bytes, layers: list[Layer],
                names: list[str], manifest_bytes: bytes | None = None) -> Image:
        """Store config and manifest blobs and give the image NAMES in the index.

        An image whose config is already in the store (same id) keeps its
        existing manifest and just gains the names.
        """
        config_digest = self.layout.put_blob_bytes(config_bytes, txn.blobs)
        entries = self.layout.read_index()
        existing = None
        for digest in self._names_by_manifest(entries):
            if (self._blob_json(digest).get("config") or {}).get("digest") == config_digest:
                existing = digest
                break
        if existing is not None:
            manifest_digest = existing
        else:
            if manifest_bytes is None:
                manifest_bytes = canonical_json({
                    "schemaVersion": 2,
                    "mediaType": MEDIA_OCI_MANIFEST,
                    "config": {"mediaType": MEDIA_OCI_CONFIG, "digest": config_digest,
                               "size": len(config_bytes)},
                    "layers": [{"mediaType": layer.media_type, "digest": layer.digest,
                                "size": layer.blob_size} for layer in layers],
                })
            manifest_digest = self.layout.put_blob_bytes(manifest_bytes, txn.blobs)
            media_type = _json.loads(manifest_bytes).get("mediaType") or MEDIA_OCI_MANIFEST
            config = _json.loads(config_bytes)
            entries.append(IndexEntry(digest=manifest_digest, size=len(manifest_bytes),
                                      media_type=media_type,
                                      platform={"architecture": config.get("architecture", ""),
                                                "os": config.get("os", "")}))
        entries = renamed_entries(entries, manifest_digest, add=names)
        self.layout.write_index(entries)
        return self._image(manifest_digest, self._names_by_manifest(entries)[manifest_digest])

    # ------------------------------------------------------------ import
    def import_rootfs(self, source: str | BinaryIO, ref: str | None, config: dict | None = None,
                      changes: list[str] | None = None, *, progress: Progress | None = None,
                      created: str | None = None, author: str = "", comment: str = "",
                      devices: str = "reject", created_by: str | None = None) -> Image:
        """A one-layer image from a rootfs directory or a tarball (images/importer.py)."""
        from .importer import import_rootfs
        return import_rootfs(self, source, ref, config, changes, progress=progress,
                             created=created, author=author, comment=comment, devices=devices,
                             created_by=created_by)

    def commit(self, upper: str, base: str, ref: str | None, *, changes: list[str] | None = None,
               author: str = "", comment: str = "", overlay: str = "trusted") -> Image:
        """BASE's layers plus one made from the overlay upper dir UPPER (images/importer.py)."""
        from .importer import commit_changes
        return commit_changes(self, upper, base, ref, changes=changes, author=author,
                              comment=comment, overlay=overlay)

    # ------------------------------------------------------------ archives
    def load(self, archive: str, progress: Progress | None = None) -> list[str]:
        """Load a docker-archive or OCI archive (tar, tar.gz or tar.zst); returns what was loaded.

        Each loaded image is reported by its names (familiar form), or by its
        id when the archive gives it none.  Every blob is checked against its
        digest and every layer against the config's diff ids.
        """
        from .archive import load_archive
        loaded = load_archive(self, archive, progress)
        for name in loaded:
            self._event("load", name, name=name)
        return loaded

    def save(self, refs: list[str], dest: str, format: str = "docker-archive",  # noqa: A002
             compress: bool = False, progress: Progress | None = None) -> None:
        """Write the images REFS into one archive: "docker-archive" or "oci-archive" (gzip if COMPRESS)."""
        from .archive import save_archive
        save_archive(self, refs, dest, format, compress, progress)
        for ref in refs:
            self._event("save", ref, name=ref)

    def pull(self, ref: str, **options: Any) -> Image:
        """Pull REF from its registry (images/pull.py: platform, tls_verify, authfile, progress)."""
        from .pull import pull
        image = pull(self, ref, **options)
        self._event("pull", ref, name=ref)
        return image

    def push(self, ref: str, destination: str | None = None, **options: Any) -> str:
        """Push REF to DESTINATION (default: its name) (images/push.py); the manifest digest."""
        from .push import push
        digest = push(self, ref, destination, **options)
        self._event("push", destination or ref, name=destination or ref)
        return digest

    def record_push(self, manifest_digest: str, repository: str, digest: str) -> None:
        """Remember that REPOSITORY now holds the image MANIFEST_DIGEST as manifest DIGEST.

        `push --format` converts the manifest, so the registry's digest is not
        the store's; RepoDigests must name the one pulling REPOSITORY@DIGEST
        gets (as Docker shows what it pushed).  Entries of removed images are
        dropped on the next write; a lost file only means stored digests shown.
        """
        with self._transaction():
            present = {entry.digest for entry in self.layout.read_index()}
            data = {k: dict(v) for k, v in self._pushed_digests().items() if k in present}
            repos = data.setdefault(manifest_digest, {})
            if digest == manifest_digest:
                repos.pop(repository, None)
            else:
                repos[repository] = digest
            if not repos:
                del data[manifest_digest]
            self.layout._write_atomic(os.path.join(self.root, PUSHED_DIGESTS_FILE),
                                      canonical_json(data))

    # ------------------------------------------------------------ names
    def tag(self, src: str, new_ref: str) -> Image:
        """Give the image SRC the name NEW_REF (taken from any image that had it)."""
        target = parse_name(new_ref)
        if target.digest:
            raise ConfigError(f"cannot tag with a digest reference: {new_ref!r}")
        with self._transaction():
            image = self.resolve(src)
            entries = renamed_entries(self.layout.read_index(), image.manifest_digest, add=[target.name])
            self.layout.write_index(entries)
            tagged = self._image(image.manifest_digest,
                                 self._names_by_manifest(entries)[image.manifest_digest])
        self._event("tag", image.id, name=familiar_name(target.name))
        return tagged

    def untag(self, ref: str) -> None:
        """Remove one name; the image stays (dangling if that was its last name)."""
        with self._transaction():
            image, name = self._resolve(ref)
            if name is None:
                raise ConfigError(f"{ref!r} is an image id, not a name")
            self.layout.write_index(renamed_entries(self.layout.read_index(), image.manifest_digest,
                                             remove=[name]))
        self._event("untag", image.id, name=familiar_name(name))

    def _event(self, action: str, actor_id: str, **attributes: str) -> None:
        """An image event in the engine's journal (the store's root is the engine's)."""
        from nsbox.engine import events
        events.emit(self.root, "image", action, actor_id, attributes)

    def remove(self, ref: str, force: bool = False, in_use: InUse | None = None) -> list[dict]:
        """Remove an image, Docker-style (images/removal.py); [{"Untagged": name}, ..., {"Deleted": id}]."""
        from .removal import remove_image
        return remove_image(self, ref, force, in_use)

    def prune(self, in_use: InUse | None = None, all: bool = False) -> list[str]:  # noqa: A002
        """Remove dangling images (every unused one with ALL) and what only they used (images/removal.py)."""
        from .removal import prune_images
        return prune_images(self, in_use, all)

    def collect_garbage(self) -> dict[str, list[str]]:
        """Delete blobs and layer dirs no image or container refers to (images/removal.py)."""
        from .removal import collect_garbage
        return collect_garbage(self)



def _history_comment(config: dict) -> str:
    history = config.get("history") or []
    return (history[-1].get("comment") or "") if history else ""


def is_manifest_type(media_type: str | None) -> bool:
    return media_type in MANIFEST_TYPES
