"""`nsbox pull`: an image from a registry into the store.

1. The name: a full name is itself; a short name resolves through
   registries.conf (aliases, then unqualified-search registries, tried in
   order), never by guessing (registries.py).
2. The manifest (Docker schema 2 or OCI).  An index / manifest list gives the
   entry for the platform wanted (default linux/<this machine>).
3. The config, then the layers the store lacks, PARALLEL_DOWNLOADS at a
   time, into a staging directory under <root>/tmp, without the store lock;
   each blob is checked against its digest and size as it streams, and a
   broken connection resumes with a Range request (transfer.py).  A layer
   whose blob the store already has is not downloaded.
4. Each layer is unpacked into staging *while it downloads* (its reader
   follows the growing file and sees its end only once the digest is
   verified), UNPACK_WORKERS layers at once, each checked against the
   config's diff_id.  A layer needs its lowers only for a hard link into
   them or a parent directory its tar omits; such a layer waits for the
   layers below and is unpacked again with them.
5. Then, in one store transaction (the lock held), the blobs and the layer
   directories are renamed into place and the manifest, exactly as the
   registry served it (so its digest stays the registry's), is committed
   with the name.  A failure anywhere takes back every blob and layer this
   pull created; the staging directory is always removed.
"""

from __future__ import annotations

import json
import os

from nsbox.errors import ImageError

from .archive import LAYER_TYPES
from .layout import INDEX_TYPES, MANIFEST_TYPES, digest_hex, oci_architecture
from .reference import Reference
from .registry import RegistryClient, RegistryError

PARALLEL_DOWNLOADS = 6  # as containers/image
# Layers unpacked at once (threads: inflating, hashing and writing release the GIL): as many
# as download, so that every layer is unpacked while it arrives.
UNPACK_WORKERS = 6

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
            entry_digest = descriptor.get("digest")
            if not isinstance(entry_digest, str) or not entry_digest.startswith("sha256:"):
                raise ImageError(f"{source}: malformed image index (an entry without a sha256 digest)")
            data, media_type, digest = client.manifest(entry_digest)
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


class _Layer:
    """One manifest layer in a pull: where its blob and its unpacked directory come from."""

    def __init__(self, descriptor: dict, diff_id: str, chain_id: str) -> None:
        self.digest: str = descriptor["digest"]
        self.size = int(descriptor["size"])
        self.media_type: str = descriptor.get("mediaType") or LAYER_TYPES[0]
        self.diff_id, self.chain_id = diff_id, chain_id
        self.growing = None       # GrowingFile while this pull downloads the blob
        self.staged: str | None = None  # the directory this pull unpacked it into
        self.unpacked_size = 0
        self.entries = 0
        self.unpacking = False    # _unpack is reading it (the layer a failure is about)


def _plan(store: ImageStore, layer_ds: list[dict], diff_ids: list[str]) -> list[_Layer]:
    from .records import chain_ids
    chains = chain_ids(diff_ids)
    return [_Layer(d, diff_id, chain) for d, diff_id, chain in zip(layer_ds, diff_ids, chains, strict=True)]


def _start_downloads(store: ImageStore, client: RegistryClient, staging: str, plan: list[_Layer],
                     progress: Progress | None, pool) -> list:  # noqa: ANN001
    """Submit the blobs the store lacks to POOL; each layer's `growing` follows its file."""
    from .transfer import GrowingFile, download_blob
    futures, started = [], {}
    for layer in plan:
        label = f"Copying blob {digest_hex(layer.digest)[:12]}"
        if layer.digest in started:
            layer.growing = started[layer.digest]
            continue
        if store.layout.has_blob(layer.digest):
            if progress:
                progress(label + " skipped: already exists", 0, 0)
            continue
        layer.growing = started[layer.digest] = GrowingFile(os.path.join(staging, digest_hex(layer.digest)))

        def fetch(layer: _Layer = layer, label: str = label) -> None:
            done = {"n": 0, "shown": 0}

            def on_read(n: int) -> None:
                done["n"] += n
                if progress and (done["n"] - done["shown"] >= (256 << 10) or done["n"] == layer.size):
                    done["shown"] = done["n"]
                    progress(label, done["n"], layer.size)
            try:
                if progress:
                    progress(label, 0, layer.size)
                download_blob(client, layer.digest, layer.size, layer.growing.path, on_read,
                              layer.growing)
                if progress and layer.size == 0:
                    progress(label, 0, 0)
            except BaseException as err:
                layer.growing.finish(err)
                raise
            layer.growing.finish()
        futures.append(pool.submit(fetch))
    return futures


def _unpack(store: ImageStore, staging: str, plan: list[_Layer], source: str) -> None:
    """Unpack every layer the store lacks, reading downloads as they arrive, several at once.

    A layer needs the layers below it only for a hard link into one or a
    parent directory its tar does not list (unpack.NeedsLowers), which image
    layers seldom have.  So every layer starts at once (UNPACK_WORKERS at a
    time) without its lowers unless they are all in the store already; one
    that turns out to need them waits for the layers below and is unpacked
    again with them.
    """
    import threading
    from concurrent.futures import ThreadPoolExecutor

    finished = [threading.Event() for _ in plan]

    def one(i: int) -> None:
        layer = plan[i]
        try:
            _unpack_one(store, staging, plan, i, source, finished)
            layer.unpacking = False  # left set on failure: _download_failure looks for it
        finally:
            finished[i].set()

    with ThreadPoolExecutor(max_workers=UNPACK_WORKERS, thread_name_prefix="unpack") as pool:
        futures = [pool.submit(one, i) for i in range(len(plan))]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            for layer in plan:
                if layer.growing is not None:
                    layer.growing.cancel()
            raise


def _lowers(store: ImageStore, plan: list[_Layer], i: int) -> list[str]:
    """The directories of the layers below plan[i], top-most first (staged or in the store)."""
    return [layer.staged or store.layer_path(layer.chain_id) for layer in reversed(plan[:i])]


def _unpack_one(store: ImageStore, staging: str, plan: list[_Layer], i: int, source: str,
                finished: list) -> None:  # noqa: ANN001
    import shutil

    from .staging import uncompressed_digest
    from .unpack import NeedsLowers, unpack_layer
    layer = plan[i]
    label = f"layer {digest_hex(layer.digest)[:12]}"
    layer.unpacking = True
    if os.path.isdir(store.layer_path(layer.chain_id)):
        if layer.growing is not None:  # a new blob for a known layer: it must be that layer
            layer.growing.wait_readable(1 << 62)
            actual = uncompressed_digest(layer.growing.path)
            if actual != layer.diff_id:
                raise ImageError(f"{source}: {label}: content digest {actual} does not match "
                                 f"the image config's {layer.diff_id}")
        return
    in_store = all(os.path.isdir(store.layer_path(p.chain_id)) for p in plan[:i])
    lowers: list[str] | None = _lowers(store, plan, i) if in_store else None
    dest = os.path.join(staging, f"layer-{i}")
    while True:
        os.mkdir(dest, 0o755)
        try:
            if layer.growing is not None:
                with layer.growing.reader() as stream:
                    result = unpack_layer("", dest, lowers=lowers, devices="reject", label=label,
                                          source=stream)
            else:
                result = unpack_layer(store.layout.blob_path(layer.digest), dest, lowers=lowers,
                                      devices="reject", label=label)
            break
        except NeedsLowers:
            shutil.rmtree(dest)
            for event in finished[:i]:  # earlier layers started earlier: no deadlock
                event.wait()
            lowers = _lowers(store, plan, i)
    if result.diff_id != layer.diff_id:
        raise ImageError(f"{source}: {label}: content digest {result.diff_id} does not match "
                         f"the image config's {layer.diff_id} (corrupt or truncated layer)")
    layer.staged, layer.unpacked_size, layer.entries = dest, result.size, result.entries


def _store(store: ImageStore, client: RegistryClient, source: str, manifest_bytes: bytes,
           config_bytes: bytes, layer_ds: list[dict], diff_ids: list[str], names: list[str],
           progress: Progress | None) -> Image:
    """Download and unpack without the store lock, then move it all in under the lock."""
    import shutil
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    from .staging import owned_prefix, sweep_dead
    plan = _plan(store, layer_ds, diff_ids)
    sweep_dead(store.layout.tmp_dir)  # what a killed pull (or build) left in staging
    staging = tempfile.mkdtemp(prefix=owned_prefix("pull-"), dir=store.layout.tmp_dir)
    try:
        with ThreadPoolExecutor(max_workers=PARALLEL_DOWNLOADS, thread_name_prefix="pull") as pool:
            futures = _start_downloads(store, client, staging, plan, progress, pool)
            try:
                _unpack(store, staging, plan, source)
                for future in futures:
                    future.result()
            except BaseException as err:
                for future in futures:
                    future.cancel()
                cause = _download_failure(plan, err)
                for layer in plan:
                    if layer.growing is not None:
                        layer.growing.cancel()
                if cause is not None:
                    raise cause from None
                raise
        return _move_in(store, staging, plan, source, config_bytes, manifest_bytes, names, progress)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _download_failure(plan: list[_Layer], err: BaseException) -> BaseException | None:
    """The download error behind ERR, if a layer's unpack failed on a blob that turns out bad.

    A corrupt blob usually upsets the decompressor or the tar reader before
    its download ends with the digest mismatch; the mismatch is the cause to
    report.
    """
    from .transfer import GrowingFile
    if not isinstance(err, ImageError):
        return None
    for layer in plan:
        growing: GrowingFile | None = layer.growing
        if not layer.unpacking or growing is None:
            continue
        failure = growing.failure(timeout=30)
        return failure if isinstance(failure, ImageError) and failure is not err else None
    return None


def _move_in(store: ImageStore, staging: str, plan: list[_Layer], source: str, config_bytes: bytes,
             manifest_bytes: bytes, names: list[str], progress: Progress | None) -> Image:
    """One store transaction: blobs and layer directories renamed in, the image committed."""
    with store._transaction() as txn:
        for layer in plan:
            path = store.layout.blob_path(layer.digest)
            if layer.growing is not None and not os.path.exists(path):
                os.chmod(layer.growing.path, 0o644)
                os.rename(layer.growing.path, path)
                txn.blobs.append(path)
            if not store.layout.has_blob(layer.digest):
                raise ImageError(f"{source}: blob {layer.digest} was removed from the store "
                                 "during the pull; pull again")
        layers: list = []
        parent = None
        for layer in plan:
            final = store.layer_path(layer.chain_id)
            if not os.path.isdir(final):
                if layer.staged is None:  # removed by a prune since we looked: unpack it again
                    layers.append(store._ensure_layer(
                        txn, layer.digest, layer.media_type, layer.size, layers, layer.diff_id,
                        devices="reject", progress=None, verify_blob=False))
                    parent = layer.chain_id
                    continue
                os.rename(layer.staged, final)
                txn.layers.append(layer.chain_id)
                store._write_layer_meta(layer.chain_id, {
                    "diff_id": layer.diff_id, "chain_id": layer.chain_id, "parent": parent,
                    "size": layer.unpacked_size, "entries": layer.entries})
                link = os.path.join(store.layers_dir, store.short_link(layer.chain_id))
                if not os.path.lexists(link):
                    os.symlink(os.path.join("..", digest_hex(layer.chain_id)), link)
            layers.append(store._layer_from_disk(layer.chain_id, layer.diff_id, layer.digest,
                                                 layer.media_type, layer.size))
            parent = layer.chain_id
        if progress:
            progress("Writing manifest to image destination", 0, 0)
        return store._commit(txn, config_bytes, layers, names, manifest_bytes=manifest_bytes)
