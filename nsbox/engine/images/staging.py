"""What one store operation stages: the transaction that takes back what a
failed import created, and the stream helpers an import reads through.
"""

from __future__ import annotations

import os

from nsbox._lite import suppress

TYPE_CHECKING = False  # typing's own constant costs an import of typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import BinaryIO

    from .store import ImageStore, Progress


class Transaction:
    """What one store operation created, so a failure can take it all back."""

    def __init__(self, store: ImageStore) -> None:
        self.store = store
        self.blobs: list[str] = []      # blob paths
        self.layers: list[str] = []     # chain ids
        self.tmp_paths: list[str] = []  # staging files/dirs, always removed

    def temp_dir(self, prefix: str) -> str:
        import tempfile
        path = tempfile.mkdtemp(prefix=owned_prefix(prefix), dir=self.store.layout.tmp_dir)
        self.tmp_paths.append(path)
        return path

    def temp_file(self, prefix: str) -> str:
        import tempfile
        fd, path = tempfile.mkstemp(prefix=owned_prefix(prefix), dir=self.store.layout.tmp_dir)
        os.close(fd)
        self.tmp_paths.append(path)
        return path

    def rollback(self) -> None:
        for chain_id in self.layers:
            self.store._delete_layer(chain_id)
        for path in self.blobs:
            with suppress(FileNotFoundError):
                os.unlink(path)

    def cleanup(self) -> None:
        for path in self.tmp_paths:
            if os.path.isdir(path) and not os.path.islink(path):
                import shutil
                shutil.rmtree(path, ignore_errors=True)
            else:
                with suppress(FileNotFoundError):
                    os.unlink(path)


def owned_prefix(prefix: str) -> str:
    """PREFIX with this process's pid: `layer-` -> `layer-1234-`, so that what a killed
    process staged can be told from what a live one is writing (sweep_dead)."""
    return f"{prefix}{os.getpid()}-"


def sweep_dead(tmp_dir: str) -> list[str]:
    """Remove the staging entries (named by owned_prefix) of processes that are gone."""
    import re
    import shutil
    removed = []
    try:
        names = os.listdir(tmp_dir)
    except FileNotFoundError:
        return removed
    for name in names:
        match = re.match(r"[a-z]+(?:-[a-z]+)*-(\d+)-", name)
        if not match:
            continue
        try:
            os.kill(int(match.group(1)), 0)
            continue  # alive (or not ours to signal): in use
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):
            continue
        path = os.path.join(tmp_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with suppress(FileNotFoundError):
                os.unlink(path)
        removed.append(name)
    return removed


def uncompressed_digest(blob_path: str) -> str:
    import hashlib

    from .layout import COPY_CHUNK, open_decompressed
    hasher = hashlib.sha256()
    with open_decompressed(blob_path) as stream:
        while chunk := stream.read(COPY_CHUNK):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


class Prepended:
    """A stream read as HEAD (already read from it) followed by the rest of STREAM."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self.head, self.stream = head, stream

    def read(self, size: int = -1) -> bytes:
        if not self.head:
            return self.stream.read(size)
        if size < 0:
            data, self.head = self.head + self.stream.read(), b""
            return data
        data, self.head = self.head[:size], self.head[size:]
        return data


def progress_counter(progress: Progress | None, label: str, total: int) -> Callable[[int], None] | None:
    if progress is None:
        return None
    state = {"done": 0, "reported": -1}

    def on_read(size: int) -> None:
        state["done"] += size
        if state["done"] - state["reported"] >= (1 << 20) or state["done"] >= total:
            state["reported"] = state["done"]
            progress(label, state["done"], total)
    return on_read
