"""Removing images: `rmi` (untag, or delete with the in-use and several-names
checks), `image prune`, and the garbage collection that deletes blobs and
unpacked layers no image, container rootfs or build-cache record refers to.

Each runs under the store lock (ImageStore._transaction); `sweep` is the
collection itself, for callers that hold the lock already (archive loads).
"""

from __future__ import annotations

import os

from nsbox import _json
from nsbox._lite import suppress
from nsbox.errors import ImageInUse

from .gcroots import BUILD_CACHE_DIR, build_cache_refs
from .layout import ROOTFS_RECORD, drop_orphan_shifted, renamed_entries
from .reference import familiar_name

TYPE_CHECKING = False  # typing's own constant costs an import of typing
if TYPE_CHECKING:
    from collections.abc import Callable

    from .store import ImageStore

    InUse = Callable[[str], bool]


def remove_image(store: ImageStore, ref: str, force: bool = False,
                 in_use: InUse | None = None) -> list[dict]:
    """Remove an image, Docker-style; returns [{"Untagged": name}, ..., {"Deleted": id}].

    A name of an image that has other names is only untagged.  Otherwise
    the image is deleted, unless IN_USE(image_id) says a container uses it
    or (given by id) it still has several names: then ImageInUse, unless
    FORCE.  Layers a container still mounts survive a forced removal.
    """
    with store._transaction():
        image, name = store._resolve(ref)
        if name is not None and len(image.names) > 1:
            store.layout.write_index(renamed_entries(store.layout.read_index(),
                                                     image.manifest_digest, remove=[name]))
            return _removed(store, image.id, [{"Untagged": familiar_name(name)}])
        if not force:
            if in_use is not None and in_use(image.id):
                raise ImageInUse(f"image {image.short_id} is in use by a container; "
                                 "remove the container first or force")
            if name is None and len(image.names) > 1:
                raise ImageInUse(f"image {image.short_id} has several names "
                                 f"({', '.join(image.repo_tags)}); remove them one by one or force")
        entries = [e for e in store.layout.read_index() if e.digest != image.manifest_digest]
        store.layout.write_index(entries)
        sweep(store)
        return _removed(store, image.id, [{"Untagged": tag} for tag in image.repo_tags]
                        + [{"Deleted": image.id}])


def _removed(store: ImageStore, image_id: str, report: list[dict]) -> list[dict]:
    """REPORT, after its untag and delete events."""
    for item in report:
        if "Untagged" in item:
            store._event("untag", image_id, name=item["Untagged"])
        else:
            store._event("delete", image_id, name=image_id)
    return report


def prune_images(store: ImageStore, in_use: InUse | None = None,
                 all: bool = False) -> list[str]:  # noqa: A002
    """Remove dangling images (every unused image with ALL) not in use; returns their ids.

    Also removes blobs and unpacked layers nothing refers to any more; with
    ALL, the build cache's records first (nsbox has no `builder prune`).
    """
    with store._transaction():
        removed = []
        if all:
            import shutil
            shutil.rmtree(os.path.join(store.root, BUILD_CACHE_DIR), ignore_errors=True)
        entries = store.layout.read_index()
        keep = []
        for digest, names in store._names_by_manifest(entries).items():
            image = store._image(digest, names)
            unused = in_use is None or not in_use(image.id)
            if (all or not names) and unused:
                removed.append(image.id)
            else:
                keep.append(digest)
        store.layout.write_index([e for e in entries if e.digest in keep])
        sweep(store)
    for image_id in removed:
        store._event("delete", image_id, name=image_id)
    return removed


def collect_garbage(store: ImageStore) -> dict[str, list[str]]:
    """Delete blobs and layer dirs no image or container refers to; returns what went."""
    with store._transaction():
        return sweep(store)


def container_layers(store: ImageStore) -> set[str]:
    """Chain ids that containers' rootfs records (storage.py) still mount."""
    used: set[str] = set()
    with suppress(FileNotFoundError):
        for name in os.listdir(store.containers_dir):
            record = os.path.join(store.containers_dir, name, ROOTFS_RECORD)
            try:
                with open(record) as f:
                    used.update(_json.loads(f.read()).get("layers") or [])
            except (FileNotFoundError, NotADirectoryError, ValueError):
                continue
    return used


def sweep(store: ImageStore) -> dict[str, list[str]]:
    """The collection itself: the caller holds the store lock."""
    blobs, layers = build_cache_refs(store.root)  # the build cache's records keep theirs
    layers.update(container_layers(store))
    for digest, names in store._names_by_manifest().items():
        image = store._image(digest, names)
        blobs.update({digest, image.id})
        blobs.update(layer.digest for layer in image.layers)
        layers.update(layer.chain_id for layer in image.layers)
    removed_blobs = [d for d in store.layout.blob_digests() if d not in blobs]
    for digest in removed_blobs:
        store.layout.remove_blob(digest)
        store._json_cache.pop(digest, None)
    removed_layers = []
    for name in os.listdir(store.layers_dir):
        if len(name) == 64 and os.path.isdir(os.path.join(store.layers_dir, name)) \
                and "sha256:" + name not in layers:
            removed_layers.append("sha256:" + name)
            store._delete_layer("sha256:" + name)
    # Leftovers of a crash between steps: metadata and aliases without a layer.
    for name in os.listdir(store.layers_dir):
        if name.endswith(".json") and not os.path.isdir(os.path.join(store.layers_dir, name[:-5])):
            with suppress(FileNotFoundError):
                os.unlink(os.path.join(store.layers_dir, name))
    for name in os.listdir(store.links_dir):
        link = os.path.join(store.links_dir, name)
        if not os.path.exists(link):
            with suppress(FileNotFoundError):
                os.unlink(link)
    if removed_layers:
        drop_orphan_shifted(store.root)
    return {"blobs": removed_blobs, "layers": removed_layers}
