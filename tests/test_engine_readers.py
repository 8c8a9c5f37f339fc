"""Unit tests of the pull path's readers: gzip inflating, the forward-only tar reader,
a file followed while it is written, and the push format conversion."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
import threading
import time

import pytest

from nsbox.engine.images.inflate import ForwardReader, InflateReader
from nsbox.engine.images.push import convert_manifest
from nsbox.engine.images.transfer import GrowingFile
from nsbox.errors import ImageError


def _read_all(reader, size: int) -> bytes:  # noqa: ANN001
    parts = []
    while chunk := reader.read(size):
        parts.append(chunk)
    return b"".join(parts)


@pytest.mark.parametrize("size", [1, 512, 65536, 1 << 22])
def test_inflate_members_and_padding(size):
    a, b = os.urandom(300_000) + b"x" * 700_000, b"second member\n" * 5000
    data = gzip.compress(a) + gzip.compress(b) + b"\0" * 1024  # two members, zero padding
    assert _read_all(InflateReader(io.BytesIO(data)), size) == a + b


def test_inflate_refuses_corrupt_and_truncated_data():
    good = gzip.compress(b"hello world\n" * 10000)
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    with pytest.raises(ImageError, match="corrupt gzip data"):
        _read_all(InflateReader(io.BytesIO(bytes(bad))), 65536)
    with pytest.raises(ImageError, match="corrupt gzip data"):
        _read_all(InflateReader(io.BytesIO(good[:-20])), 65536)
    with pytest.raises(ImageError, match="corrupt gzip data"):
        _read_all(InflateReader(io.BytesIO(good + b"garbage")), 65536)


def test_forward_reader_feeds_tarfile_random_access_mode():
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, size in (("a", 512), ("b", 0), ("c", 1000), ("d", 1 << 20)):
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(bytes([len(name)]) * size))
    with tarfile.open(fileobj=ForwardReader(io.BytesIO(buffer.getvalue())), mode="r:") as tar:
        seen = {m.name: tar.extractfile(m).read() for m in tar}  # in order, as the unpacker does
    assert {k: len(v) for k, v in seen.items()} == {"a": 512, "b": 0, "c": 1000, "d": 1 << 20}
    assert seen["d"] == b"\x01" * (1 << 20)


def test_forward_reader_seeks_back_only_within_the_last_block():
    reader = ForwardReader(io.BytesIO(bytes(range(256)) * 40))
    assert reader.read(1000)[-1] == 999 % 256
    reader.seek(999)
    assert reader.read(2) == bytes([999 % 256, 1000 % 256])
    reader.seek(5000)  # forward: read and dropped
    assert reader.tell() == 5000 and reader.read(1) == bytes([5000 % 256])
    with pytest.raises(io.UnsupportedOperation):
        reader.seek(100)


def test_growing_file_reader_follows_and_sees_errors(tmp_path):
    growing = GrowingFile(str(tmp_path / "blob"))
    with growing.reader() as early:  # the file exists before anything is written
        assert early.position == 0
    out = open(growing.path, "r+b", buffering=0)  # noqa: SIM115

    def writer() -> None:
        for i in range(5):
            out.write(bytes([i]) * 1000)
            growing.wrote(1000)
            time.sleep(0.01)
        growing.finish()
    thread = threading.Thread(target=writer)
    thread.start()
    with growing.reader() as reader:
        data = _read_all(reader, 300)
    thread.join()
    out.close()
    assert data == b"".join(bytes([i]) * 1000 for i in range(5))

    failing = GrowingFile(str(tmp_path / "bad"))
    failing.finish(ImageError("blob x: digest mismatch"))
    with failing.reader() as reader, pytest.raises(ImageError, match="digest mismatch"):
        reader.read(10)


def test_convert_manifest_rewrites_media_types_only():
    oci = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + "a" * 64,
                      "size": 10},
           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                       "digest": "sha256:" + "b" * 64, "size": 20}]}
    raw = json.dumps(oci).encode()
    assert convert_manifest(raw, None, "x") == (raw, oci["mediaType"])
    assert convert_manifest(raw, "oci", "x") == (raw, oci["mediaType"])
    data, media_type = convert_manifest(raw, "v2s2", "x")
    v2 = json.loads(data)
    assert media_type == v2["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert v2["config"] == {**oci["config"], "mediaType": "application/vnd.docker.container.image.v1+json"}
    assert v2["layers"] == [{**oci["layers"][0],
                             "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip"}]
    back, _ = convert_manifest(data, "oci", "x")
    assert json.loads(back)["layers"] == oci["layers"]
    zstd = {**oci, "layers": [{**oci["layers"][0], "mediaType": "application/vnd.oci.image.layer.v1.tar+zstd"}]}
    with pytest.raises(ImageError, match="--format oci"):
        convert_manifest(json.dumps(zstd).encode(), "v2s2", "x")
