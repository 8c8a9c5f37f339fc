"""`nsbox push`: an image from the store to a registry (the OCI distribution push flow).

1. The image is resolved in the store; the destination is the DESTINATION
   argument (`[docker://]host/path[:tag]`) or the name the image was found
   by.  registries.conf applies as for a pull (`location` rewrite, `insecure`,
   `blocked`).
2. For each layer blob and then the config: `HEAD /v2/<path>/blobs/<digest>`;
   a blob the registry has is skipped; one that another repository of the
   same registry holds (an image of this store named there has it) is
   mounted from it; any other is uploaded, monolithically or in chunks
   (transfer.upload_blob).
3. The manifest is `PUT` exactly as the store keeps it (same bytes, so the
   digest is the local one, `name@digest` works on both sides), with the
   media type it declares; with `--format oci|v2s2` in that format instead
   (only the media types change, so the digest is a new one: the store
   records it per repository, for RepoDigests and `images --digests`).  Locally built images (import, load, busybox,
   build-debian) have OCI manifests; pulled images keep the registry's
   (Docker schema 2 or OCI).

Authentication is the pull's, with the scope `repository:<path>:pull,push`.
"""

from __future__ import annotations

import json
import os

from nsbox.errors import ConfigError, ImageError

from .layout import (
    MANIFEST_TYPES,
    MEDIA_DOCKER_CONFIG,
    MEDIA_DOCKER_LAYER,
    MEDIA_DOCKER_LAYER_GZIP,
    MEDIA_DOCKER_MANIFEST,
    MEDIA_OCI_CONFIG,
    MEDIA_OCI_LAYER,
    MEDIA_OCI_LAYER_GZIP,
    MEDIA_OCI_LAYER_ZSTD,
    MEDIA_OCI_MANIFEST,
    digest_hex,
)
from .reference import parse_reference
from .registry import RegistryClient

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .pull import Progress
    from .store import ImageStore


def push_destination(store: ImageStore, source: str, destination: str | None):  # noqa: ANN201
    """(image, Reference of where it goes)."""
    image, matched = store._resolve(source)
    target = destination or matched
    if not target:
        raise ConfigError(f"{source}: an image given by id needs a destination "
                          "(nsbox push IMAGE HOST/NAME[:TAG])")
    if "://" in target or target.startswith(("docker:", "oci:", "oci-archive:", "docker-archive:",
                                             "dir:", "containers-storage:")):
        transport, _, rest = target.partition(":")
        if transport != "docker" or not rest.startswith("//"):
            raise ConfigError(f"{target}: only the docker:// transport (a registry) is supported; "
                              "use nsbox save for archives")
        target = rest[2:]
    ref = parse_reference(target)
    if ref.digest:
        raise ConfigError(f"{target}: push to a tag, not a digest")
    return image, ref


FORMATS = ("oci", "v2s2")
# Layer media types in each format, by compression.
_LAYER_TYPE = {
    "oci": {"": MEDIA_OCI_LAYER, "gzip": MEDIA_OCI_LAYER_GZIP, "zstd": MEDIA_OCI_LAYER_ZSTD},
    "v2s2": {"": MEDIA_DOCKER_LAYER, "gzip": MEDIA_DOCKER_LAYER_GZIP},
}
_COMPRESSION = {MEDIA_OCI_LAYER: "", MEDIA_OCI_LAYER_GZIP: "gzip", MEDIA_OCI_LAYER_ZSTD: "zstd",
                MEDIA_DOCKER_LAYER: "", MEDIA_DOCKER_LAYER_GZIP: "gzip"}


def convert_manifest(manifest_bytes: bytes, fmt: str | None, source: str) -> tuple[bytes, str]:
    """(bytes, media type) of the manifest in FMT ("oci", "v2s2"; None: as stored).

    Only the media types change (manifest, config, layers); the blobs are the
    same, so nothing is recompressed.  A zstd layer has no Docker schema 2
    type: such an image cannot be pushed as v2s2.
    """
    manifest = json.loads(manifest_bytes)
    media_type = manifest.get("mediaType") or MEDIA_OCI_MANIFEST
    if media_type not in MANIFEST_TYPES:
        raise ImageError(f"{source}: cannot push a manifest of type {media_type!r}")
    if fmt is None or media_type == {"oci": MEDIA_OCI_MANIFEST, "v2s2": MEDIA_DOCKER_MANIFEST}[fmt]:
        return manifest_bytes, media_type
    layers = []
    for d in manifest["layers"]:
        compression = _COMPRESSION.get(d.get("mediaType") or MEDIA_OCI_LAYER)
        layer_type = _LAYER_TYPE[fmt].get(compression) if compression is not None else None
        if layer_type is None:
            raise ImageError(f"{source}: layer {d['digest']} ({d.get('mediaType')}) has no "
                             f"{fmt} media type; push it with --format oci")
        layers.append({**d, "mediaType": layer_type})
    new_type = MEDIA_OCI_MANIFEST if fmt == "oci" else MEDIA_DOCKER_MANIFEST
    config_type = MEDIA_OCI_CONFIG if fmt == "oci" else MEDIA_DOCKER_CONFIG
    converted = {"schemaVersion": 2, "mediaType": new_type,
                 "config": {**manifest["config"], "mediaType": config_type}, "layers": layers}
    if fmt == "oci" and manifest.get("annotations"):
        converted["annotations"] = manifest["annotations"]
    return json.dumps(converted, indent=3).encode(), new_type


def mount_sources(store: ImageStore, host: str, path: str) -> dict[str, list[str]]:
    """Layer digest -> other repositories on HOST that hold it (this store's images named there)."""
    sources: dict[str, list[str]] = {}
    for image in store.images():
        repos = [parse_reference(name) for name in image.names]
        repos = [r.path for r in repos if r.domain == host and r.path != path]
        for layer in image.layers:
            known = sources.setdefault(layer.digest, [])
            known += [r for r in repos if r not in known]
    return sources


def push(store: ImageStore, source: str, destination: str | None = None, *,
         tls_verify: bool | None = None, authfile: str | None = None,
         progress: Progress | None = None, registries_conf: str | None = None,
         cert_dir: str | None = None, format: str | None = None,  # noqa: A002 - the flag's name
         chunk_size: int | None = None) -> str:
    """Push SOURCE (a name or id in STORE) to DESTINATION; returns the manifest digest.

    FORMAT "oci" or "v2s2" rewrites the manifest's media types (default: as
    stored); CHUNK_SIZE makes every blob larger than it go up in chunks.
    """
    from .registries import load_registries_conf, lookup_credentials
    from .transfer import upload_blob
    if format is not None and format not in FORMATS:
        raise ConfigError(f"unknown manifest format {format!r}: want oci or v2s2")
    image, ref = push_destination(store, source, destination)
    conf = load_registries_conf(registries_conf)
    host, path, insecure = conf.endpoint(ref)
    verify = (not insecure) if tls_verify is None else tls_verify
    stored = store.layout.read_blob(image.manifest_digest)
    try:
        manifest_bytes, media_type = convert_manifest(stored, format, source)
        manifest = json.loads(manifest_bytes)
        config_d = manifest["config"]
        blobs = [(d["digest"], int(d["size"]), "blob") for d in manifest["layers"]]
        blobs.append((config_d["digest"], int(config_d["size"]), "config"))
    except (ValueError, KeyError, TypeError):
        raise ImageError(f"{source}: malformed manifest {image.manifest_digest} in the store") from None
    for digest, _, _ in blobs:
        if not store.layout.has_blob(digest):
            raise ImageError(f"{source}: blob {digest} is missing from the store")
    client = RegistryClient(host, path, tls_verify=verify, actions="pull,push", cert_dir=cert_dir,
                            credentials=lookup_credentials(host, path, authfile))
    sources = mount_sources(store, host, path)
    try:
        for digest, size, kind in blobs:
            label = f"Copying {kind} {digest_hex(digest)[:12]}"
            if client.has_blob(digest):
                if progress:
                    progress(label + " skipped: already exists", 0, 0)
                continue
            if progress:
                progress(label, 0, size)
            blob_path = store.layout.blob_path(digest)
            if os.path.getsize(blob_path) != size:
                raise ImageError(f"{source}: blob {digest} in the store is not {size} bytes")
            how = upload_blob(client, digest, blob_path, size,
                              mount_from=sources.get(digest, [])[:3],
                              chunk_size=chunk_size)
            if progress:
                progress(label + (" mounted" if how == "mounted" else ""), size, size)
        if progress:
            progress("Writing manifest to image destination", 0, 0)
        digest = client.put_manifest(ref.tag or "latest", manifest_bytes, media_type)
    finally:
        client.close()
    store.record_push(image.manifest_digest, ref.repository, digest)
    return digest
