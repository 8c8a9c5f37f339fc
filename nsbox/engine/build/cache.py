"""The build cache: what each build step made, found again by a key.

A step's key is the sha256 of the state it started from (the would-be image
id of the parent: its config, which names every layer by diff id), the
instruction as it reads once variables are expanded, the build arguments in
scope for RUN, and the digest of the files a COPY/ADD takes.  The record,
<root>/build-cache/<key hex>.json (written atomically), holds the resulting
state: its config document and its layers.  A record whose layers or blobs
are gone is ignored.

The image store's garbage collection keeps every blob and layer a record
names (images/gcroots.py reads the records' "blobs" and "layers" lists); `image
prune -a` and `system reset` drop the records with everything else.
"""

from __future__ import annotations

import hashlib
import os

from nsbox import _json
from nsbox._lite import suppress
from nsbox.engine.images.gcroots import BUILD_CACHE_DIR
from nsbox.engine.images.layout import canonical_json
from nsbox.engine.images.records import Layer
from nsbox.engine.images.store import ImageStore


class State:
    """What a build stage has so far: LAYERS (bottom first) and the config document."""

    __slots__ = ("layers", "config")

    def __init__(self, layers: list[Layer], config: dict) -> None:
        self.layers = layers
        self.config = config

    @property
    def id(self) -> str:
        """The id the image would have (the digest of its config)."""
        return "sha256:" + hashlib.sha256(canonical_json(self.config)).hexdigest()

    @property
    def section(self) -> dict:
        return self.config.setdefault("config", {})

    def copy(self) -> State:
        return State(list(self.layers), _json.loads(_json.dumps(self.config)))


def step_key(parent: State, instruction: str, extra: dict | None = None) -> str:
    document = {"parent": parent.id, "instruction": instruction, **(extra or {})}
    return hashlib.sha256(canonical_json(document)).hexdigest()


class BuildCache:
    """The records under <root>/build-cache."""

    def __init__(self, store: ImageStore) -> None:
        self.store = store
        self.dir = os.path.join(store.root, BUILD_CACHE_DIR)

    def _path(self, key: str) -> str:
        return os.path.join(self.dir, key + ".json")

    def get(self, key: str) -> State | None:
        try:
            with open(self._path(key)) as f:
                record = _json.loads(f.read())
        except (FileNotFoundError, ValueError):
            return None
        layers = []
        for item in record.get("layer_records") or []:
            layer = Layer(diff_id=item["diff_id"], chain_id=item["chain_id"], digest=item["digest"],
                          media_type=item["media_type"], blob_size=int(item["blob_size"]),
                          path=self.store.layer_path(item["chain_id"]), size=int(item.get("size", 0)))
            if not os.path.isdir(layer.path) or \
                    not os.path.exists(self.store.layout.blob_path(layer.digest)):
                return None  # collected, or never finished: rebuild the step
            layers.append(layer)
        return State(layers, record["config"])

    def put(self, key: str, state: State) -> None:
        """Record STATE for KEY; call with the store lock held when it names a new layer."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        record = {
            "config": state.config,
            "layer_records": [{"diff_id": x.diff_id, "chain_id": x.chain_id, "digest": x.digest,
                               "media_type": x.media_type, "blob_size": x.blob_size,
                               "size": x.size} for x in state.layers],
            # What the store's garbage collection keeps (images/gcroots.py).
            "blobs": [x.digest for x in state.layers],
            "layers": [x.chain_id for x in state.layers],
        }
        self.store.layout._write_atomic(self._path(key), canonical_json(record))

    def clear(self) -> int:
        """Drop every record; how many there were."""
        count = 0
        with suppress(FileNotFoundError):
            for name in os.listdir(self.dir):
                with suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.dir, name))
                    count += 1
        return count
