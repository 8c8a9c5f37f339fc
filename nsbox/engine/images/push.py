"""`nsbox push`: an image from the store to a registry (the OCI distribution push flow).

1. The image is resolved in the store; the destination is the DESTINATION
   argument (`[docker://]host/path[:tag]`) or the name the image was found
   by.  registries.conf applies as for a pull (`location` rewrite, `insecure`,
   `blocked`).
2. For each layer blob and then the config: `HEAD /v2/<path>/blobs/<digest>`;
   a blob the registry has is skipped, any other is uploaded monolithically
   (`POST .../blobs/uploads/`, then `PUT <location>?digest=` with the file).
3. The manifest is `PUT` exactly as the store keeps it (same bytes, so the
   digest is the local one, `name@digest` works on both sides), with the
   media type it declares.  Locally built images (import, load, busybox,
   build-debian) have OCI manifests; pulled images keep the registry's
   (Docker schema 2 or OCI).

Authentication is the pull's, with the scope `repository:<path>:pull,push`.
"""

from __future__ import annotations

import json
import os

from nsbox.errors import ConfigError, ImageError

from .layout import MANIFEST_TYPES, MEDIA_OCI_MANIFEST, digest_hex
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


def push(store: ImageStore, source: str, destination: str | None = None, *,
         tls_verify: bool | None = None, authfile: str | None = None,
         progress: Progress | None = None, registries_conf: str | None = None,
         cert_dir: str | None = None) -> str:
    """Push SOURCE (a name or id in STORE) to DESTINATION; returns the manifest digest."""
    from .registries import load_registries_conf, lookup_credentials
    image, ref = push_destination(store, source, destination)
    conf = load_registries_conf(registries_conf)
    host, path, insecure = conf.endpoint(ref)
    verify = (not insecure) if tls_verify is None else tls_verify
    manifest_bytes = store.layout.read_blob(image.manifest_digest)
    try:
        manifest = json.loads(manifest_bytes)
        config_d = manifest["config"]
        blobs = [(d["digest"], int(d["size"]), "blob") for d in manifest["layers"]]
        blobs.append((config_d["digest"], int(config_d["size"]), "config"))
    except (ValueError, KeyError, TypeError):
        raise ImageError(f"{source}: malformed manifest {image.manifest_digest} in the store") from None
    media_type = manifest.get("mediaType") or MEDIA_OCI_MANIFEST
    if media_type not in MANIFEST_TYPES:
        raise ImageError(f"{source}: cannot push a manifest of type {media_type!r}")
    for digest, _, _ in blobs:
        if not store.layout.has_blob(digest):
            raise ImageError(f"{source}: blob {digest} is missing from the store")
    client = RegistryClient(host, path, tls_verify=verify, actions="pull,push", cert_dir=cert_dir,
                            credentials=lookup_credentials(host, path, authfile))
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
            client.upload_blob(digest, blob_path, size)
            if progress:
                progress(label, size, size)
        if progress:
            progress("Writing manifest to image destination", 0, 0)
        return client.put_manifest(ref.tag or "latest", manifest_bytes, media_type)
    finally:
        client.close()
