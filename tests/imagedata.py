"""Image test data for the engine's image store tests: layer tars built in memory,
docker archives, configs, snapshots of a store's files, and the store fixtures
(tests/test_engine_images.py, tests/test_engine_images_io.py, tests/test_engine_storage.py).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import helpers
import pytest

from nsbox.engine.images import (
    ImageStore,
)
from nsbox.engine.storage import Storage, mount_points


def tar_bytes(entries: list[tuple], gz: bool = False) -> bytes:
    """A tar from (name, kind, payload, extra) tuples, built member by member.

    kind: "file" (payload bytes), "dir", "symlink"/"hardlink" (payload = target),
    "chr"/"blk" (payload = (major, minor)), "fifo".  extra: TarInfo attributes.
    """
    kinds = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
             "hardlink": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE,
             "fifo": tarfile.FIFOTYPE}
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            name, kind = entry[0], entry[1]
            payload = entry[2] if len(entry) > 2 else None
            extra = entry[3] if len(entry) > 3 else {}
            info = tarfile.TarInfo(name)
            info.type = kinds[kind]
            info.mode = 0o755 if kind == "dir" else 0o644
            info.mtime = 1_600_000_000
            data = None
            if kind == "file":
                data = payload or b""
                info.size = len(data)
            elif kind in ("symlink", "hardlink"):
                info.linkname = payload
            elif kind in ("chr", "blk"):
                info.devmajor, info.devminor = payload
            for key, value in extra.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    data = raw.getvalue()
    return gzip.compress(data, mtime=0) if gz else data


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def config_for(layers: list[bytes], cmd: list[str] | None = None, **section: object) -> dict:
    diff_ids = [sha(gzip.decompress(layer) if layer[:2] == b"\x1f\x8b" else layer) for layer in layers]
    return {"architecture": "amd64", "os": "linux", "created": "2024-01-02T03:04:05.123456789Z",
            "config": {"Cmd": cmd or ["sh"], **section},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": "2024-01-02T03:04:05Z", "created_by": f"layer {i}"}
                        for i in range(len(layers))]}


def write_docker_archive(path: Path, images: list[tuple[list[bytes], list[str], dict | None]]) -> Path:
    """A docker-archive; each image is (layer tars, repo tags, config or None for a default)."""
    with tarfile.open(path, "w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        manifest = []
        written = set()
        for layers, tags, config in images:
            config_bytes = json.dumps(config or config_for(layers)).encode()
            config_name = sha(config_bytes)[7:] + ".json"
            add(config_name, config_bytes)
            names = []
            for layer in layers:
                name = sha(layer)[7:] + "/layer.tar"
                if name not in written:
                    add(name, layer)
                    written.add(name)
                names.append(name)
            manifest.append({"Config": config_name, "RepoTags": tags, "Layers": names})
        add("manifest.json", json.dumps(manifest).encode())
    return path


def tree_snapshot(root: Path, skip: Path | None = None) -> dict[str, tuple]:
    """path -> (type, size, mode) for everything below root (except below skip)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if skip is not None and Path(dirpath) == skip:
            dirnames.clear()
            continue
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            found[os.path.relpath(path, root)] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mode)
    return found


def store_state(store: ImageStore) -> dict[str, list[str]]:
    """What a failed operation must leave unchanged: blobs, layers, staging, the index."""
    return {
        "blobs": sorted(os.listdir(store.layout.blobs_dir)),
        "layers": sorted(os.listdir(store.layers_dir)),
        "links": sorted(os.listdir(store.links_dir)),
        "tmp": sorted(os.listdir(store.layout.tmp_dir)),
        "index": [Path(store.layout.index_path).read_text()],
    }


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


@pytest.fixture
def storage(store: ImageStore) -> Iterator[Storage]:
    storage = Storage(store.root)
    yield storage
    for container_id in storage.list():
        storage.remove(container_id)
    # Removing every container must have unmounted every rootfs.
    assert not [p for p in mount_points() if p.startswith(store.root)]


@pytest.fixture(scope="session")
def busybox_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return helpers.build_busybox_rootfs(tmp_path_factory.mktemp("engine-bb") / "rootfs")


def write_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
