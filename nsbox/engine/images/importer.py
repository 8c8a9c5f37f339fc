"""Making images from files: a rootfs directory or tarball (`nsbox import`), and a
container's overlay upper directory on top of its image (`nsbox commit`, and the
build's layers through `blob_from_tree`).

Each runs as one store transaction (ImageStore._transaction): the tar blob is
written to the store, unpacked once as a layer (ImageStore._ensure_layer) and
the image recorded in index.json (ImageStore._commit).
"""

from __future__ import annotations

import os
import time

from nsbox import _json
from nsbox.errors import ImageError

from . import config as imgconfig
from .layout import (
    MEDIA_OCI_LAYER,
    canonical_json,
    detect_compression,
    layer_media_type,
    oci_architecture,
)
from .reference import parse_name
from .staging import Prepended, progress_counter

TYPE_CHECKING = False  # typing's own constant costs an import of typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import BinaryIO

    from .records import Image
    from .staging import Transaction
    from .store import ImageStore

    Progress = Callable[[str, int, int], None]


def import_rootfs(store: ImageStore, source: str | BinaryIO, ref: str | None,
                  config: dict | None = None, changes: list[str] | None = None, *,
                  progress: Progress | None = None, created: str | None = None,
                  author: str = "", comment: str = "", devices: str = "reject",
                  created_by: str | None = None) -> Image:
    """Make a one-layer image from a rootfs directory or a tarball (tar, tar.gz, tar.zst).

    SOURCE is a path, or a binary stream of the tarball read to its end
    (stdin for `nsbox import -`; it need not be seekable).
    CONFIG is the config section (Docker keys: Cmd, Env, ...); CHANGES are
    Dockerfile-style instructions applied on top (`CMD ["sh"]`, `ENV A=b`).
    REF names the image (None leaves it dangling).  A directory's device
    nodes are skipped; a tarball's follow DEVICES (see unpack.DEVICE_POLICIES).
    CREATED (RFC 3339) defaults to now; pass a fixed one for reproducible ids.
    """
    target = parse_name(ref) if ref else None
    section = imgconfig.clean_section(imgconfig.apply_changes(config or {}, changes or []))
    stream = None if isinstance(source, (str, os.PathLike)) else source
    if stream is None:
        source = os.fspath(source)
        if not os.path.exists(source):
            raise ImageError(f"{source}: no such file or directory")
    else:
        source = "-"
    created = created or imgconfig.format_time(time.time())
    with store._transaction() as txn:
        if stream is not None:
            head = stream.read(4)
            compression = detect_compression(head)
            blob_digest, blob_size = store.layout.put_blob_stream(
                Prepended(head, stream), created=txn.blobs,
                on_read=progress_counter(progress, "copying stdin", 0))
        elif os.path.isdir(source):
            blob_digest, blob_size = blob_from_tree(store, txn, source, progress)
            compression = ""
        else:
            with open(source, "rb") as stream:
                compression = detect_compression(stream.read(4))
                stream.seek(0)
                total = os.fstat(stream.fileno()).st_size
                label = f"copying {os.path.basename(source)}"
                blob_digest, blob_size = store.layout.put_blob_stream(
                    stream, created=txn.blobs, on_read=progress_counter(progress, label, total))
        # An uncompressed tar is its own diff: its digest is the diff id, so a
        # layer unpacked before is found without unpacking again.
        layer = store._ensure_layer(txn, blob_digest, layer_media_type(compression), blob_size,
                                    [], None if compression else blob_digest, devices, progress,
                                    verify_blob=False,
                                    label=f"layer {os.path.basename(source.rstrip('/'))}")
        history = {"created": created,
                   "created_by": created_by or f"nsbox import {os.path.basename(source.rstrip('/'))}"}
        if comment:
            history["comment"] = comment
        document = {
            "created": created,
            "architecture": oci_architecture(),
            "os": "linux",
            "config": section,
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
            "history": [history],
        }
        if author:
            document["author"] = author
        image = store._commit(txn, canonical_json(document), [layer],
                              [target.name] if target else [])
    store._event("import", image.id, name=target.name if target else "")
    return image


def commit_changes(store: ImageStore, upper: str, base: str, ref: str | None, *,
                   changes: list[str] | None = None, author: str = "", comment: str = "",
                   overlay: str = "trusted") -> Image:
    """A new image: BASE's layers plus one made from the overlay upper dir UPPER.

    Whiteouts (0:0 char devices) and opaque directories (the OVERLAY.overlay.opaque
    xattr) become OCI `.wh.` entries.  CHANGES apply to BASE's config section.
    """
    target = parse_name(ref) if ref else None
    image = store.resolve(base)
    created = imgconfig.format_time(time.time())
    with store._transaction() as txn:
        blob_digest, blob_size = blob_from_tree(store, txn, upper, None, overlay=overlay)
        layer = store._ensure_layer(txn, blob_digest, MEDIA_OCI_LAYER, blob_size, image.layers,
                                    blob_digest, "reject", None, verify_blob=False,
                                    label="container changes")
        document = _json.loads(_json.dumps(image.config))
        document["config"] = imgconfig.clean_section(
            imgconfig.apply_changes(document.get("config") or {}, changes or []))
        document["created"] = created
        document["rootfs"] = {"type": "layers",
                              "diff_ids": [*(x.diff_id for x in image.layers), layer.diff_id]}
        history = {"created": created, "created_by": "nsbox commit"}
        if comment:
            history["comment"] = comment
        document["history"] = [*(document.get("history") or []), history]
        if author:
            document["author"] = author
        new = store._commit(txn, canonical_json(document), [*image.layers, layer],
                            [target.name] if target else [])
    store._event("commit", new.id, name=target.name if target else "")
    return new


def blob_from_tree(store: ImageStore, txn: Transaction, source: str,
                   progress: Progress | None, overlay: str | None = None) -> tuple[str, int]:
    """Write the tree SOURCE as an uncompressed tar blob; its digest and size."""
    from .tarwrite import HashingWriter, write_tree_tar
    staging = txn.temp_file("tree-")
    with open(staging, "wb") as out:
        writer = HashingWriter(out)
        write_tree_tar(source, writer, devices="skip", progress=progress,  # type: ignore[arg-type]
                       label=f"archiving {source}", overlay=overlay)
    digest = writer.digest
    final = store.layout.blob_path(digest)
    if not os.path.exists(final):
        os.chmod(staging, 0o644)
        os.rename(staging, final)
        txn.blobs.append(final)
    return digest, writer.count
