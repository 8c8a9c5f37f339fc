"""The image store of the nsbox engine.

    from nsbox.engine.images import ImageStore, ensure_busybox
    store = ImageStore("/var/lib/nsbox")
    image = ensure_busybox(store)           # busybox:latest, made offline
    store.load("app.tar")                   # docker-archive or oci-archive
    store.inspect("busybox")["Config"]["Cmd"]

See docs/engine-images.md for the on-disk layout and the formats.  Names are
imported from their modules on first use, so importing this package is cheap.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing's own constant costs an import of typing

_EXPORTS = {
    "Image": "store",
    "ImageStore": "store",
    "ImageSummary": "store",
    "Layer": "store",
    "chain_ids": "store",
    "Reference": "reference",
    "familiar_name": "reference",
    "parse_reference": "reference",
    "build_debian": "builders",
    "debian_mirror": "builders",
    "ensure_busybox": "builders",
}

__all__ = [
    "Image",
    "ImageStore",
    "ImageSummary",
    "Layer",
    "Reference",
    "build_debian",
    "chain_ids",
    "debian_mirror",
    "ensure_busybox",
    "familiar_name",
    "parse_reference",
]

if TYPE_CHECKING:
    from typing import Any

    from .builders import build_debian, debian_mirror, ensure_busybox
    from .reference import Reference, familiar_name, parse_reference
    from .store import Image, ImageStore, ImageSummary, Layer, chain_ids


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
