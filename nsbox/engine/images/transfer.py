"""Blob downloads that resume, and files that can be read while they are written.

`download_blob` streams a registry blob into a new file, hashing as it goes.
When the connection breaks in the middle (a reset, a timeout, a short body)
it asks again from where it stopped, `Range: bytes=N-`, after a short
backoff (0.2 s, 0.4 s, 0.8 s; RESUME_ATTEMPTS requests in all).  A registry
that answers 206 continues the file; one that ignores Range answers 200 with
the whole blob, and the first N bytes are read and dropped.  Either way the
digest is of the bytes in the file, checked at the end with the size; a
registry that sends more than the size is cut off.

`upload_blob` pushes a blob the registry lacks: first, when another
repository on the same registry is known to hold it, as a cross-repository
mount (`POST .../blobs/uploads/?mount=<digest>&from=<repository>`; 201 means
mounted, a 202 is an ordinary upload session the registry opened instead);
then monolithically (`PUT <location>?digest=` with the whole file) or, for
blobs over the chunk size, in chunks (`PATCH <location>` with
`Content-Range: <start>-<end>`, each answer giving the next location, then
an empty `PUT ?digest=`).

`GrowingFile` lets the unpacker read a layer while it is still arriving: its
reader blocks at the end of what has been written and sees end-of-file only
once the download finished *and* its digest was verified.  A failed download
(including a digest mismatch) makes the reader raise, so a layer made from a
bad blob never completes (it is unpacked into staging and thrown away).
"""

from __future__ import annotations

import hashlib
import io
import threading
import time

from urllib3.exceptions import HTTPError

from nsbox.errors import ImageError

from .layout import COPY_CHUNK
from .registry import RegistryClient, RegistryError, _error_message, _reason, check_blob

RESUME_ATTEMPTS = 4
BACKOFF = 0.2


class GrowingFile:
    """A file one thread writes (`wrote`, then `finish`) and others may follow (`reader`)."""

    def __init__(self, path: str) -> None:
        self.path = path
        # Made now, empty: a reader may open it before the download thread starts.
        open(path, "xb").close()  # noqa: SIM115
        self.cond = threading.Condition()
        self.written = 0
        self.done = False
        self.error: BaseException | None = None
        self.cancelled = False  # the pull failed elsewhere: the download stops at its next chunk

    def wrote(self, n: int) -> None:
        with self.cond:
            self.written += n
            self.cond.notify_all()

    def finish(self, error: BaseException | None = None) -> None:
        with self.cond:
            self.done, self.error = True, error
            self.cond.notify_all()

    def cancel(self) -> None:
        self.cancelled = True

    def failure(self, timeout: float) -> BaseException | None:
        """The download's error, waiting up to TIMEOUT seconds for it to end; None if it did not fail."""
        with self.cond:
            self.cond.wait_for(lambda: self.done, timeout)
            return self.error

    def wait_readable(self, position: int) -> bool:
        """Block until there are bytes past POSITION (True) or the download ended there (False)."""
        with self.cond:
            while self.written <= position and not self.done:
                self.cond.wait()
            if self.error is not None:
                if isinstance(self.error, ImageError):
                    raise type(self.error)(str(self.error))
                raise ImageError(f"download failed: {self.error}")
            return self.written > position

    def reader(self) -> _FollowReader:
        return _FollowReader(self)


class _FollowReader(io.RawIOBase):
    def __init__(self, growing: GrowingFile) -> None:
        self.growing = growing
        self.file = open(growing.path, "rb", buffering=0)  # noqa: SIM115 - closed in close()
        self.position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # noqa: ANN001
        while True:
            n = self.file.readinto(buffer)
            if n:
                self.position += n
                return n
            if not self.growing.wait_readable(self.position):
                return 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = COPY_CHUNK
        while True:
            data = self.file.read(size)
            if data:
                self.position += len(data)
                return data
            if not self.growing.wait_readable(self.position):
                return b""

    def close(self) -> None:
        self.file.close()
        super().close()


def download_blob(client: RegistryClient, digest: str, size: int, dest: str,
                  on_read=None, growing: GrowingFile | None = None) -> None:  # noqa: ANN001
    """Stream blob DIGEST into the new file DEST, resuming after broken connections."""
    hasher, count = hashlib.sha256(), 0
    failure = ""
    with open(dest, "r+b" if growing is not None else "xb", buffering=0) as out:
        for attempt in range(RESUME_ATTEMPTS):
            if attempt:
                time.sleep(BACKOFF * (2 ** (attempt - 1)))
            headers = {"Range": f"bytes={count}-"} if count else {}
            try:
                response = client.request("GET", f"blobs/{digest}", headers, preload=False)
            except RegistryError as err:
                failure = str(err)
                continue
            try:
                skip = 0
                if response.status == 206 and count:
                    if not (response.headers.get("Content-Range") or "").startswith(f"bytes {count}-"):
                        raise RegistryError(f"fetching blob {digest}: the registry resumed at the "
                                            f"wrong place ({response.headers.get('Content-Range')})")
                elif response.status == 200:
                    skip = count  # Range ignored: the whole blob again
                else:
                    response.read()
                    error = RegistryError(f"fetching blob {digest}: {_error_message(response)}")
                    if response.status < 500:
                        raise error
                    failure = str(error)
                    continue
                try:
                    # read1: what has arrived, so a broken connection loses no bytes read
                    while chunk := response.read1(COPY_CHUNK):
                        if growing is not None and growing.cancelled:
                            raise ImageError(f"fetching blob {digest}: cancelled")
                        if skip:
                            dropped = min(skip, len(chunk))
                            skip -= dropped
                            chunk = chunk[dropped:]
                            if not chunk:
                                continue
                        if count + len(chunk) > size:
                            count = size + 1
                            break
                        hasher.update(chunk)
                        _write_all(out, chunk)
                        count += len(chunk)
                        if growing is not None:
                            growing.wrote(len(chunk))
                        if on_read:
                            on_read(len(chunk))
                except (HTTPError, OSError) as err:
                    failure = f"fetching blob {digest}: {_reason(err)}"
                    if count < size:
                        continue
                if count < size:  # a body shorter than the blob, without an error
                    failure = f"fetching blob {digest}: the connection ended after {count} bytes"
                    continue
                break
            finally:
                response.release_conn()
        else:
            raise RegistryError(f"{failure} (gave up after {RESUME_ATTEMPTS} attempts)")
    check_blob(digest, size, hasher.hexdigest(), count)


# Blobs larger than this go up in chunks of CHUNK_SIZE (push's chunk_size overrides both).
CHUNKED_ABOVE = 64 << 20
CHUNK_SIZE = 16 << 20


def upload_blob(client: RegistryClient, digest: str, path: str, size: int,
                mount_from: list[str] = (), chunk_size: int | None = None) -> str:  # type: ignore[assignment]
    """Put blob DIGEST (the file PATH) in the registry; "mounted", "chunked" or "monolithic"."""
    from urllib.parse import quote
    response = None
    for source in mount_from:
        response = client.request("POST", f"blobs/uploads/?mount={quote(digest)}&from={quote(source)}",
                                  {"Content-Length": "0"})
        if response.status == 201:
            return "mounted"
        if response.status == 202:
            break  # the registry opened an upload session instead: use it
        response = None
    if response is None:
        response = client.request("POST", "blobs/uploads/", {"Content-Length": "0"})
    if response.status == 201:
        return "mounted"  # the registry had it after all
    if response.status != 202:
        raise RegistryError(f"starting the upload of blob {digest} to {client.host}/"
                            f"{client.repository}: {_error_message(response)}")
    location = _location(client, response, digest)
    step = chunk_size or (CHUNK_SIZE if size > CHUNKED_ABOVE else 0)
    if step and size > step:
        with open(path, "rb") as f:
            offset = 0
            while offset < size:
                data = f.read(step)
                if not data:
                    raise ImageError(f"blob {digest}: the file ended at {offset} of {size} bytes")
                response = client.request("PATCH", location, {
                    "Content-Type": "application/octet-stream", "Content-Length": str(len(data)),
                    "Content-Range": f"{offset}-{offset + len(data) - 1}"}, body=data)
                if response.status != 202:
                    raise RegistryError(f"uploading blob {digest} to {client.host}/"
                                        f"{client.repository} at byte {offset}: "
                                        f"{_error_message(response)}")
                offset += len(data)
                location = _location(client, response, digest)
        response = client.request("PUT", _with_digest(location, digest), {"Content-Length": "0"},
                                  body=b"")
        kind = "chunked"
    else:
        with open(path, "rb") as f:
            response = client.request("PUT", _with_digest(location, digest), {
                "Content-Type": "application/octet-stream", "Content-Length": str(size)}, body=f)
        kind = "monolithic"
    if response.status != 201:
        raise RegistryError(f"uploading blob {digest} to {client.host}/{client.repository}: "
                            f"{_error_message(response)}")
    return kind


def _location(client: RegistryClient, response, digest: str) -> str:  # noqa: ANN001
    from urllib.parse import urljoin
    location = response.headers.get("Location")
    if not location:
        raise RegistryError(f"{client.host}: the upload of blob {digest} has no Location")
    return urljoin(f"{client.base}/v2/{client.repository}/blobs/uploads/", location)


def _with_digest(location: str, digest: str) -> str:
    return location + ("&" if "?" in location else "?") + "digest=" + digest.replace(":", "%3A")


def _write_all(out, data: bytes) -> None:  # noqa: ANN001
    view = memoryview(data)
    while view:
        view = view[out.write(view):]


__all__ = ["GrowingFile", "download_blob", "upload_blob"]
