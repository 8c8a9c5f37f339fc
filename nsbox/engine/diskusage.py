"""`system df`: the disk the engine's images, containers, volumes and build cache take.

Sizes are bytes of file content, as Docker counts them: a layer shared by
several images is counted once, and RECLAIMABLE is what removing everything
unused (`image prune -a`, `container prune`, `volume prune`) would free.
The build cache's size is that of the layers only its records keep.
"""

from __future__ import annotations

import os

from nsbox import _json
from nsbox._lite import suppress
from nsbox.engine.images.gcroots import BUILD_CACHE_DIR, build_cache_refs
from nsbox.engine.model import RUNNING

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nsbox.engine.containers import Engine


def _tree_size(path: str) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            with suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _cache_records(root: str) -> int:
    with suppress(FileNotFoundError):
        return sum(1 for name in os.listdir(os.path.join(root, BUILD_CACHE_DIR))
                   if name.endswith(".json"))
    return 0


def disk_usage(engine: Engine) -> list[dict]:
    """Rows of Type, TotalCount, Active, Size, Reclaimable (bytes), as `docker system df`."""
    store = engine.images
    images = store.images()
    containers = engine.list(all=True)
    used_images = {c.image_id for c in containers}
    layer_size: dict[str, int] = {}
    active_layers: set[str] = set()
    for image in images:
        for layer in image.layers:
            layer_size[layer.chain_id] = layer.size
            if image.id in used_images:
                active_layers.add(layer.chain_id)
    images_size = sum(layer_size.values())
    rows = [{"Type": "Images", "TotalCount": len(images),
             "Active": sum(1 for image in images if image.id in used_images),
             "Size": images_size,
             "Reclaimable": images_size - sum(layer_size[c] for c in active_layers)}]
    sizes = {}
    for c in containers:
        with suppress(Exception):
            sizes[c.id] = engine.storage.diff_size(c.id)
    running = [c for c in containers if c.state == RUNNING]
    rows.append({"Type": "Containers", "TotalCount": len(containers), "Active": len(running),
                 "Size": sum(sizes.values()),
                 "Reclaimable": sum(size for cid, size in sizes.items()
                                    if cid not in {c.id for c in running})})
    volumes = engine.volumes.list()
    mounted = {m.source for c in containers for m in c.spec.mounts if m.type == "volume"}
    volume_sizes = {v["Name"]: _tree_size(v["Mountpoint"]) for v in volumes}
    rows.append({"Type": "Local Volumes", "TotalCount": len(volumes),
                 "Active": sum(1 for name in volume_sizes if name in mounted),
                 "Size": sum(volume_sizes.values()),
                 "Reclaimable": sum(size for name, size in volume_sizes.items()
                                    if name not in mounted)})
    records, (_, cached) = _cache_records(store.root), build_cache_refs(store.root)
    only_cached = 0
    for chain_id in cached - set(layer_size):
        with suppress(OSError, ValueError):
            with open(store.layer_path(chain_id) + ".json") as f:
                only_cached += int(_json.loads(f.read()).get("size", 0))
    rows.append({"Type": "Build Cache", "TotalCount": records, "Active": 0,
                 "Size": only_cached, "Reclaimable": only_cached})
    return rows
