"""Pulls that survive broken connections, and bad registry answers.

A relay in a thread stands between nsbox and the real docker-registry of
test_engine_pull: it cuts the first download of every blob in the middle
(the full Content-Length announced, half the bytes sent, the socket shut),
then relays the retry with its Range header (206, as the registry answers),
or, in "norange" mode, answers the retry with the whole blob (200).
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import threading
import urllib.error
import urllib.request

import pytest
from test_engine_pull import (  # noqa: F401 - fixtures
    REGISTRY,
    ImageStore,
    nsbox,
    one_line_error,
    pushed,
    registry,
)

from nsbox.engine.images.layout import oci_architecture

pytestmark = [pytest.mark.timeout(120)]


class CuttingRelay(http.server.ThreadingHTTPServer):
    daemon_threads = True
    def __init__(self, upstream: str, mode: str) -> None:
        super().__init__(("127.0.0.1", 0), _RelayHandler)
        self.upstream, self.mode = upstream, mode
        self.cut: set[str] = set()
        self.blob_requests: list[tuple[str, str | None]] = []
        self.host = f"127.0.0.1:{self.server_address[1]}"
        self.lock = threading.Lock()
        self.overrides: dict[str, tuple[bytes, str]] = {}  # path -> (body, content type)
        self.hanging = threading.Event()  # "hang" mode: a blob download is stuck half-way
        self.release = threading.Event()


class _RelayHandler(http.server.BaseHTTPRequestHandler):
    server: CuttingRelay
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass

    def do_GET(self) -> None:  # noqa: N802
        server = self.server
        if self.path in server.overrides:
            body, media_type = server.overrides[self.path]
            self.send_response(200)
            self.send_header("Content-Type", media_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        is_blob = "/blobs/" in self.path
        wanted_range = self.headers.get("Range")
        headers = {"Accept": self.headers.get("Accept", "*/*")}
        if wanted_range and server.mode == "range":
            headers["Range"] = wanted_range
        with server.lock:
            first = is_blob and self.path not in server.cut
            if is_blob:
                server.blob_requests.append((self.path, wanted_range))
                server.cut.add(self.path)
        request = urllib.request.Request(f"http://{server.upstream}{self.path}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, body, got = response.status, response.read(), response.headers
        except urllib.error.HTTPError as err:
            status, body, got = err.code, err.read(), err.headers
        self.send_response(status)
        for key in ("Content-Type", "Docker-Content-Digest", "Content-Range"):
            if got.get(key):
                self.send_header(key, got[key])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if first and len(body) > 10000 and server.mode == "hang":  # a layer, not the config
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            server.hanging.set()
            server.release.wait(60)
            return
        if first and len(body) > 100:
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def relay(pushed, request):  # noqa: F811
    server = CuttingRelay(pushed["host"], request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("relay", ["range", "norange"], indirect=True)
def test_broken_downloads_resume(nsbox, pushed, relay):  # noqa: F811
    name = f"{relay.host}/test/bb:1"
    out = nsbox("pull", "-q", "--tls-verify=false", name)
    assert out.stdout.strip() == pushed["id"].removeprefix("sha256:")
    assert nsbox("run", "--rm", name, "echo", "resumed").stdout == "resumed\n"
    layer = ImageStore(nsbox.root).resolve(name).layers[0].digest
    asked = [rng for path, rng in relay.blob_requests if path.endswith(layer)]
    assert len(asked) == 2, relay.blob_requests
    assert asked[0] is None
    assert asked[1] is not None and asked[1].startswith("bytes=") and asked[1] != "bytes=0-"
    assert nsbox.tmp_left() == []


MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.mark.parametrize("relay", ["range"], indirect=True)
def test_malformed_manifests_are_one_line_and_leave_nothing(nsbox, pushed, relay):  # noqa: F811
    good = json.loads(urllib.request.urlopen(urllib.request.Request(
        f"http://{pushed['host']}/v2/test/bb/manifests/zstd", headers={"Accept": MEDIA_MANIFEST}),
        timeout=10).read())
    cases = {
        "notjson": (b"{not json", MEDIA_MANIFEST, "not JSON"),
        "nolayers": (json.dumps({**good, "layers": "x"}).encode(), MEDIA_MANIFEST, "malformed"),
        "badsize": (json.dumps({**good, "layers": [{**good["layers"][0], "size": "big"}]}).encode(),
                    MEDIA_MANIFEST, "malformed"),
        "nodigest": (json.dumps({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [
            {"mediaType": MEDIA_MANIFEST, "size": 10,
             "platform": {"os": "linux", "architecture": oci_architecture()}}]}).encode(),
            MEDIA_INDEX, "malformed image index"),
        "schema1": (json.dumps({"schemaVersion": 1, "name": "x", "fsLayers": []}).encode(),
                    "application/vnd.docker.distribution.manifest.v1+prettyjws", "unsupported"),
    }
    for tag, (body, media_type, _) in cases.items():
        relay.overrides[f"/v2/test/bb/manifests/{tag}"] = (body, media_type)
    for tag, (_, _, expected) in cases.items():
        proc = nsbox("pull", "--tls-verify=false", f"{relay.host}/test/bb:{tag}", check=False)
        assert expected in one_line_error(proc), (tag, proc.stderr)
        assert nsbox.blobs() == {} and nsbox.tmp_left() == []


@pytest.mark.parametrize("relay", ["hang"], indirect=True)
def test_killed_pull_leaves_nothing_trusted(nsbox, pushed, relay):  # noqa: F811
    import os
    import signal
    import subprocess
    import time
    proc = subprocess.Popen([*nsbox.prefix, "pull", "-q", "--tls-verify=false",
                             f"{relay.host}/test/bb:1"], env=nsbox.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert relay.hanging.wait(60), "the pull never reached the blob"
        deadline = time.monotonic() + 30
        while not any(name.startswith("pull-") for name in nsbox.tmp_left()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert nsbox.blobs() == {}  # nothing was moved into the store
    assert not list((nsbox.root / "layers").glob("*.json")) if (nsbox.root / "layers").exists() else True
    name = f"{pushed['host']}/test/bb:1"
    nsbox("pull", "-q", "--tls-verify=false", name)
    assert nsbox.tmp_left() == []  # the dead pull's staging was swept
    assert nsbox("run", "--rm", name, "echo", "ok").stdout == "ok\n"


def _oci_layout(path, layers: list[bytes]) -> None:  # noqa: ANN001
    """An OCI layout at PATH (tag "t") with the plain-tar LAYERS, bottom first."""
    import hashlib
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}
    import gzip
    descriptors = [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    **put(gzip.compress(layer, mtime=0))} for layer in layers]
    config = {"architecture": oci_architecture(), "os": "linux", "config": {},
              "rootfs": {"type": "layers", "diff_ids": [
                  "sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers]}}
    manifest = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           **put(json.dumps(config).encode())}, "layers": descriptors}
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": MEDIA_MANIFEST, **put(json.dumps(manifest).encode()),
        "annotations": {"org.opencontainers.image.ref.name": "t"}}]}))


def _tar(entries: list) -> bytes:  # noqa: ANN001
    import io
    import tarfile
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _entry(name: str, kind: bytes, mode: int, data: bytes | None = None, link: str = ""):  # noqa: ANN202
    import tarfile
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.linkname = kind, mode, 1700000000, link
    if data is not None:
        info.size = len(data)
    return info, data


def test_layers_that_need_their_lowers_unpack_right(nsbox, registry, tmp_path):  # noqa: F811
    """A hard link into a lower layer, and a parent the tar does not list: such a layer is
    unpacked (again) with its lowers, even though the layers unpack in parallel."""
    import stat
    import tarfile
    bottom = _tar([_entry("a", tarfile.DIRTYPE, 0o755), _entry("a/file", tarfile.REGTYPE, 0o640, b"shared\n"),
                   _entry("tmp", tarfile.DIRTYPE, 0o1777)])
    top = _tar([_entry("b", tarfile.DIRTYPE, 0o755), _entry("b/link", tarfile.LNKTYPE, 0o640, link="a/file"),
                _entry("tmp/x", tarfile.REGTYPE, 0o644, b"x\n")])  # no "tmp" entry
    _oci_layout(tmp_path / "layout", [bottom, top])
    ref = f"{registry['host']}/test/lowers:1"
    from test_engine_pull import skopeo
    skopeo("copy", "--dest-tls-verify=false", "--quiet", f"oci:{tmp_path / 'layout'}:t", f"docker://{ref}")
    nsbox("pull", "-q", "--tls-verify=false", ref)
    image = ImageStore(nsbox.root).resolve(ref)
    upper = image.layers[1].path
    assert open(f"{upper}/b/link").read() == "shared\n"  # copied from the lower layer
    assert stat.S_IMODE(os.stat(f"{upper}/tmp").st_mode) == 0o1777  # the lower's mode, not 0755
    assert nsbox.tmp_left() == []


def test_known_layer_in_a_new_blob_is_checked_not_unpacked(nsbox, pushed):  # noqa: F811
    """:1 (gzip) and :zstd have the same layer in different blobs: the second pull fetches
    the zstd blob, checks it against the layer's diff_id (through zstd) and reuses the
    unpacked layer."""
    host = pushed["host"]
    nsbox("pull", "-q", "--tls-verify=false", f"{host}/test/bb:1")
    layers = sorted(p.name for p in (nsbox.root / "layers").iterdir() if p.is_dir() and p.name != "l")
    nsbox("pull", "-q", "--tls-verify=false", f"{host}/test/bb:zstd")
    assert sorted(p.name for p in (nsbox.root / "layers").iterdir()
                  if p.is_dir() and p.name != "l") == layers  # no second unpack
    # Same config, same image: the name joins it (the store keeps one manifest per image).
    assert ImageStore(nsbox.root).resolve(f"{host}/test/bb:zstd").id == pushed["id"]
    assert nsbox("run", "--rm", f"{host}/test/bb:zstd", "echo", "same").stdout == "same\n"
    assert nsbox.tmp_left() == []
