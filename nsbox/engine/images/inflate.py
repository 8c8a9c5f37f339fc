"""Decompressing readers for layer streams: gzip in-process, zstd through the `zstd` program.

gzip: `InflateReader` feeds 1 MiB of input at a time to a zlib-compatible
decompressor in gzip mode (which checks each member's CRC-32 and length),
and goes on through concatenated members as gzip(1) does.  The decompressor
is ISA-L's (the `isal` package) when it is installed, about 1.5-3x faster
than zlib at inflating; else the standard library's zlib.  Both release the
GIL while they work, so a download in another thread keeps going.
`gzip.GzipFile` is not used for layers: it reads its input 8 KiB at a time
through several Python layers, which costs more than the inflating itself
on large layers.

zstd: Python 3.11 has no zstd module; the `zstd -dcq` process reads the
compressed stream from a pipe that a thread fills, so a layer that is still
downloading can be decompressed too.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import threading
from collections.abc import Iterator
from typing import BinaryIO

from nsbox.errors import ImageError

from .layout import COPY_CHUNK

try:  # ISA-L's inflate when available (pyproject: isal); same API as zlib's
    from isal import isal_zlib as _zlib
except ImportError:  # pragma: no cover - the fallback
    import zlib as _zlib  # type: ignore[no-redef]

GZIP_WBITS = 31  # a gzip header and trailer around deflate data


class ForwardReader:
    """A read-once stream that tarfile's random-access mode ("r:") can read.

    tarfile's stream mode ("r|") passes every byte through its own buffer
    (joined and sliced per read: two more copies of the whole layer, and a
    call chain per 64 KiB).  Random-access mode reads members straight from
    the file object, seeking only forward, except `next()` stepping back one
    byte to check the archive goes on; so seek() skips forward by reading
    and goes back only within the last block read.  read(n) returns n bytes
    unless the stream ends, as tarfile expects of a file.
    """

    KEEP = 512

    def __init__(self, inner: BinaryIO) -> None:
        self.inner = inner
        self.pos = 0
        self.tail = b""      # the last bytes handed out, ending at pos
        self.pending = b""   # bytes to hand out again after a step back

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self.pos
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("a layer stream cannot seek from its end")
        if offset < self.pos:
            back = self.pos - offset
            if back > len(self.tail):
                raise io.UnsupportedOperation("a layer stream cannot seek back that far")
            self.pending = self.tail[len(self.tail) - back:] + self.pending
            self.tail = self.tail[:len(self.tail) - back]
            self.pos = offset
        while self.pos < offset:
            if not self.read(min(offset - self.pos, COPY_CHUNK)):
                break
        return self.pos

    def read(self, size: int = -1) -> bytes:
        parts = []
        if size is None or size < 0:
            size = 1 << 62
        if self.pending:
            parts.append(self.pending[:size])
            self.pending = self.pending[len(parts[0]):]
            size -= len(parts[0])
        while size > 0:
            data = self.inner.read(min(size, COPY_CHUNK << 4))
            if not data:
                break
            parts.append(data)
            size -= len(data)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.pos += len(data)
        self.tail = (self.tail + data)[-self.KEEP:] if len(data) < self.KEEP else data[-self.KEEP:]
        return data


class CountingReader:
    """Reads through to INNER, counting the bytes."""

    def __init__(self, inner: BinaryIO) -> None:
        self.inner, self.count = inner, 0

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        self.count += len(data)
        return data

    def drain(self) -> None:
        while self.read(COPY_CHUNK):
            pass


class InflateReader(io.RawIOBase):
    """The plain bytes of the gzip stream RAW (one or more members)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.inflater = _zlib.decompressobj(GZIP_WBITS)
        self.pending = b""          # input not given to the inflater yet
        self.output = b""           # inflated; output[offset:] not yet read
        self.offset = 0
        self.eof = False

    def readable(self) -> bool:
        return True

    def _fill(self, want: int) -> None:
        while self.offset >= len(self.output) and not self.eof:
            self.output, self.offset = b"", 0
            if self.inflater.eof:  # a member ended: another may follow
                rest = (self.inflater.unused_data + self.pending).lstrip(b"\0")
                self.pending = b""
                while not rest:  # zero padding after the last member is allowed, as in gzip(1)
                    rest = self.raw.read(COPY_CHUNK)
                    if not rest:
                        self.eof = True
                        return
                    rest = rest.lstrip(b"\0")
                self.inflater = _zlib.decompressobj(GZIP_WBITS)
                self.pending = rest
            data = self.pending or self.raw.read(COPY_CHUNK)
            self.pending = b""
            if not data:
                if not self.inflater.eof:
                    raise ImageError("corrupt gzip data: the stream ends in the middle of a member")
                continue
            try:
                self.output = self.inflater.decompress(data, max(want, COPY_CHUNK))
            except _zlib.error as err:
                raise ImageError(f"corrupt gzip data: {err}") from None
            self.pending = self.inflater.unconsumed_tail

    # The output is handed out from an offset: slicing off the rest each time would copy
    # up to a MiB per small read.
    def readinto(self, buffer) -> int:  # noqa: ANN001
        self._fill(len(buffer))
        n = min(len(buffer), len(self.output) - self.offset)
        buffer[:n] = memoryview(self.output)[self.offset:self.offset + n]
        self.offset += n
        return n

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = COPY_CHUNK
        self._fill(size)
        if self.offset == 0 and len(self.output) <= size:
            data, self.output = self.output, b""
            return data
        data = self.output[self.offset:self.offset + size]
        self.offset += len(data)
        return data


@contextlib.contextmanager
def zstd_pipe(raw: BinaryIO, label: str) -> Iterator[BinaryIO]:
    """`zstd -dcq` fed from RAW by a thread; yields its output."""
    program = shutil.which("zstd")
    if program is None:
        raise ImageError(f"{label}: zstd-compressed data needs the zstd program (apt-get install zstd)")
    proc = subprocess.Popen([program, "-dcq"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    failure: list[BaseException] = []

    def feed() -> None:
        try:
            while chunk := raw.read(COPY_CHUNK):
                proc.stdin.write(chunk)
        except BrokenPipeError:
            pass
        except BaseException as err:  # noqa: BLE001 - handed to the reading side
            failure.append(err)
        finally:
            with contextlib.suppress(OSError):
                proc.stdin.close()

    thread = threading.Thread(target=feed, name="zstd-feed", daemon=True)
    thread.start()
    try:
        yield proc.stdout  # type: ignore[misc]
        proc.stdout.read()
        thread.join()
        if failure:
            raise failure[0]
        if proc.wait() != 0:
            err = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace").strip()
            raise ImageError(f"{label}: corrupt zstd data: {err or 'zstd failed'}")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        thread.join(timeout=5)
        proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()


__all__ = ["CountingReader", "ForwardReader", "InflateReader", "zstd_pipe"]
