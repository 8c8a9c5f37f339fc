"""`nsbox pull`: an image from a registry into the store.

1. The name: a full name is itself; a short name resolves through
   registries.conf (aliases, then unqualified-search registries, tried in
   order), never by guessing (registries.py).
2. The manifest (Docker schema 2 or OCI).  An index / manifest list gives the
   entry for the platform wanted (default linux/<this machine>).
3. The config and the layers are downloaded into a staging directory under
   <root>/tmp, without the store lock, 3 at a time; each is checked against
   its digest and size while it streams.  A layer whose blob the store already
   has is not downloaded.
4. Then, in one store transaction (the lock held), the blobs move into
   <root>/images/blobs, the layers are unpacked and checked against the
   config's diff_ids, and the manifest, exactly as the registry served it
   (so its digest stays the registry's), is committed with the name.  A
   failure anywhere takes back every blob and layer this pull created.
"""

from __future__ import annotations

import json
import os

from nsbox.errors import ImageError

from .archive import LAYER_TYPES
from .layout import INDEX_TYPES, MANIFEST_TYPES, digest_hex, oci_architecture
from .reference import Reference
from .registry import RegistryClient, RegistryError

PARALLEL_DOWNLOADS = 3

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from .records import Image
    from .store import ImageStore

    Progress = Callable[[str, int, int], None]


def parse_platform(text: str | None) -> tuple[str, str, str | None]:
    """`linux/arm64/v8` -> ("linux", "arm64", "v8"); None -> this machine."""
    if not text:
        return "linux", oci_architecture(), None
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ImageError(f"invalid platform {text!r}: want os/arch[/variant]")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def pick_platform(index: dict, platform: tuple[str, str, str | None], source: str) -> dict:
    """The descriptor of INDEX for PLATFORM (os, architecture, optional variant)."""
    want_os, want_arch, want_variant = platform
    fallback = None
    for descriptor in index.get("manifests") or []:
        if not isinstance(descriptor, dict):
            continue
        p = descriptor.get("platform") or {}
        if p.get("os") != want_os or p.get("architecture") != want_arch:
            continue
        if want_variant is None or p.get("variant") == want_variant:
            if want_variant is None and want_arch == "arm64" and p.get("variant") not in (None, "v8"):
                fallback = fallback or descriptor
                continue
            return descriptor
    if fallback is not None:
        return fallback
    wanted = "/".join(x for x in platform if x)
    have = sorted({"/".join(x for x in ((d.get("platform") or {}).get("os"),
                                        (d.get("platform") or {}).get("architecture"),
                                        (d.get("platform") or {}).get("variant")) if x)
                   for d in index.get("manifests") or [] if isinstance(d, dict)})
    raise ImageError(f"{source}: no image for {wanted} in the manifest list "
                     f"(it has: {', '.join(have) or 'nothing'})")


def pull(store: ImageStore, text: str, *, platform: str | None = None,
         tls_verify: bool | None = None, authfile: str | None = None,
         progress: Progress | None = None, registries_conf: str | None = None,
         announce: Callable[[str], None] | None = None, cert_dir: str | None = None) -> Image:
    """Pull TEXT (a name, `name:tag` or `name@digest`) into STORE; returns the image."""
    from .registries import load_registries_conf
    conf = load_registries_conf(registries_conf)
    candidates = conf.pull_candidates(text)
    platform_t = parse_platform(platform)
    tokens: dict = {}
    failures = []
    for ref in candidates:
        if announce:
            announce(f"Trying to pull {ref.name}...")
        try:
            return _pull_one(store, conf, ref, platform_t, tls_verify, authfile, progress, tokens,
                             cert_dir)
        except RegistryError as err:
            if len(candidates) == 1:
                raise
            failures.append(f"{ref.name}: {err}")
    raise ImageError(f"{text}: no unqualified-search registry has it ({'; '.join(failures)})")


def _pull_one(store: ImageStore, conf, ref: Reference, platform: tuple[str, str, str | None],  # noqa: ANN001
              tls_verify: bool | None, authfile: str | None, progress: Progress | None,
              tokens: dict, cert_dir: str | None = None) -> Image:
    from .registries import lookup_credentials
    host, path, insecure = conf.endpoint(ref)
    verify = (not insecure) if tls_verify is None else tls_verify
    client = RegistryClient(host, path, tls_verify=verify, tokens=tokens, cert_dir=cert_dir,
                            credentials=lookup_credentials(host, path, authfile))
    source = ref.name
    try:
        data, media_type, digest = client.manifest(ref.digest or ref.tag or "latest")
        if media_type in INDEX_TYPES:
            descriptor = pick_platform(json.loads(data), platform, source)
            data, media_type, digest = client.manifest(descriptor["digest"])
        if media_type not in MANIFEST_TYPES:
            raise ImageError(f"{source}: unsupported manifest type {media_type!r} "
                             "(Docker schema 2 and OCI manifests are supported)")
        manifest = json.loads(data)
        try:
            config_d = manifest["config"]
            layer_ds = list(manifest["layers"])
            config_digest, config_size = config_d["digest"], int(config_d["size"])
            for d in layer_ds:
                digest_hex(d["digest"])
                int(d["size"])
        except (KeyError, TypeError, ValueError):
            raise ImageError(f"{source}: malformed image manifest") from None
        for d in layer_ds:
            if d.get("mediaType", LAYER_TYPES[0]) not in LAYER_TYPES:
                raise ImageError(f"{source}: unsupported layer media type {d.get('mediaType')!r}")
        config_bytes = client.blob_bytes(config_digest, config_size)
        if progress:
            progress(f"Copying config {digest_hex(config_digest)[:12]}", config_size, config_size)
        config = json.loads(config_bytes)
        diff_ids = ((config.get("rootfs") or {}).get("diff_ids")) if isinstance(config, dict) else None
        if not isinstance(diff_ids, list) or len(diff_ids) != len(layer_ds):
            raise ImageError(f"{source}: the image config's diff_ids do not match the "
                             f"manifest's {len(layer_ds)} layers")
        names = [] if ref.digest else [ref.name]
        return _store(store, client, source, data, config_bytes, layer_ds, diff_ids, names, progress)
    finally:
        client.close()


def _download(store: ImageStore, client: RegistryClient, staging: str, layer_ds: list[dict],
              progress: Progress | None) -> set[str]:
    """Fetch the layers the store lacks into STAGING/<hex>; returns their digests."""
    from concurrent.futures import ThreadPoolExecutor
    wanted: dict[str, int] = {}
    for d in layer_ds:
        label = f"Copying blob {digest_hex(d['digest'])[:12]}"
        if store.layout.has_blob(d["digest"]):
            if progress:
                progress(label + " skipped: already exists", 0, 0)
        else:
            wanted[d["digest"]] = int(d["size"])

    def fetch(digest: str, size: int) -> None:
        label = f"Copying blob {digest_hex(digest)[:12]}"
        state = {"done": 0, "shown": 0}

        def on_read(n: int) -> None:
            state["done"] += n
            if progress and (state["done"] - state["shown"] >= (256 << 10) or state["done"] == size):
                state["shown"] = state["done"]
                progress(label, state["done"], size)
        if progress:
            progress(label, 0, size)
        client.blob_to_file(digest, size, os.path.join(staging, digest_hex(digest)), on_read)
        if progress and size == 0:
            progress(label, 0, 0)

    if wanted:
        with ThreadPoolExecutor(max_workers=PARALLEL_DOWNLOADS, thread_name_prefix="pull") as pool:
            futures = [pool.submit(fetch, digest, size) for digest, size in wanted.items()]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    return set(wanted)


def _store(store: ImageStore, client: RegistryClient, source: str, manifest_bytes: bytes,
           config_bytes: bytes, layer_ds: list[dict], diff_ids: list[str], names: list[str],
           progress: Progress | None) -> Image:
    import shutil
    import tempfile
    staging = tempfile.mkdtemp(prefix="pull-", dir=store.layout.tmp_dir)
    try:
        fetched = _download(store, client, staging, layer_ds, progress)
        with store._transaction() as txn:
            for digest in fetched:
                path = store.layout.blob_path(digest)
                if not os.path.exists(path):
                    os.chmod(os.path.join(staging, digest_hex(digest)), 0o644)
                    os.rename(os.path.join(staging, digest_hex(digest)), path)
                    txn.blobs.append(path)
            layers: list = []
            for d, diff_id in zip(layer_ds, diff_ids, strict=True):
                if not store.layout.has_blob(d["digest"]):
                    raise ImageError(f"{source}: blob {d['digest']} was removed from the store "
                                     "during the pull; pull again")
                layers.append(store._ensure_layer(
                    txn, d["digest"], d.get("mediaType") or LAYER_TYPES[0], int(d["size"]), layers,
                    diff_id, devices="reject", progress=None, verify_blob=d["digest"] in fetched))
            if progress:
                progress("Writing manifest to image destination", 0, 0)
            return store._commit(txn, config_bytes, layers, names, manifest_bytes=manifest_bytes)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
