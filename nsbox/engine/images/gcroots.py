"""What, besides images and containers, keeps blobs and layers from garbage collection.

The build cache (nsbox/engine/build/cache.py) records each build step's result
in <root>/build-cache/<key>.json; a record's "blobs" and "layers" lists (blob
digests, chain ids) stay until the record goes (`image prune -a`).  Read here
so the store needs nothing from the build package above it.
"""

from __future__ import annotations

import os

from nsbox import _json
from nsbox._lite import suppress

BUILD_CACHE_DIR = "build-cache"


def build_cache_refs(root: str) -> tuple[set[str], set[str]]:
    """The blob digests and chain ids the build cache's records under ROOT keep."""
    blobs: set[str] = set()
    layers: set[str] = set()
    cache_dir = os.path.join(root, BUILD_CACHE_DIR)
    with suppress(FileNotFoundError):
        for name in os.listdir(cache_dir):
            if not name.endswith(".json"):
                continue  # a record being written (.tmp-*)
            try:
                with open(os.path.join(cache_dir, name)) as f:
                    record = _json.loads(f.read())
            except (FileNotFoundError, IsADirectoryError, ValueError):
                continue
            blobs.update(record.get("blobs") or [])
            layers.update(record.get("layers") or [])
    return blobs, layers
