"""Write the pull benchmark's image as an OCI layout: 5 gzip layers of about 20 MB each.

Each layer holds 14 MiB of random bytes (incompressible, like binaries that
are already compressed) and 8 MiB of base64 text (compresses about 4:3, like
text and code), so a pull moves about 100 MB and inflates about 110 MiB.
The layers are compressed with gzip level 6, as Docker and Podman write them.

usage: python bench/pull_image.py LAYOUT_DIR   (tag "bench" in LAYOUT_DIR/index.json)
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

LAYERS = 5
RANDOM_BYTES = 14 << 20
TEXT_BYTES = 8 << 20


def layer_tar(index: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directory = tarfile.TarInfo(f"data{index}")
        directory.type, directory.mode, directory.mtime = tarfile.DIRTYPE, 0o755, 1700000000
        tar.addfile(directory)
        text = base64.b64encode(os.urandom(TEXT_BYTES * 3 // 4))
        for name, data in (("random.bin", os.urandom(RANDOM_BYTES)), ("text.txt", text)):
            for part in range(4):  # a few files per layer, not one big one
                chunk = data[part * len(data) // 4:(part + 1) * len(data) // 4]
                info = tarfile.TarInfo(f"data{index}/{part}-{name}")
                info.size, info.mode, info.mtime = len(chunk), 0o644, 1700000000
                tar.addfile(info, io.BytesIO(chunk))
    return buffer.getvalue()


def put(blobs: str, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, digest), "wb") as f:
        f.write(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def main(layout: str) -> None:
    blobs = os.path.join(layout, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)
    layers, diff_ids = [], []
    for i in range(LAYERS):
        raw = layer_tar(i)
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                       **put(blobs, gzip.compress(raw, compresslevel=6, mtime=0))})
    config = {"architecture": "amd64" if os.uname().machine == "x86_64" else "arm64",
              "os": "linux", "config": {"Cmd": ["/bin/sh"]},
              "rootfs": {"type": "layers", "diff_ids": diff_ids},
              "history": [{"created_by": f"layer {i}"} for i in range(LAYERS)]}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           **put(blobs, json.dumps(config).encode())},
                "layers": layers}
    manifest_d = put(blobs, json.dumps(manifest).encode())
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest_d,
            "annotations": {"org.opencontainers.image.ref.name": "bench"}}]}, f)
    total = sum(d["size"] for d in layers)
    print(f"image: {LAYERS} layers, {total / 1e6:.1f} MB compressed", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1])
