"""`nsbox pull` and `run --pull` against a real registry on 127.0.0.1.

The module starts Debian's docker-registry (the CNCF distribution registry)
on a free port with its storage in a temporary directory, pushes nsbox-built
images to it with skopeo, and kills it at the end.  Authentication is tested
against a small fake registry in a thread that demands a bearer token or
basic credentials and relays the real registry's answers.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from registry_server import REGISTRY, free_port, running_registry

from nsbox.engine.images import ImageStore, ensure_busybox
from nsbox.engine.images.layout import oci_architecture

NSBOX = str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "nsbox")
pytestmark = [pytest.mark.timeout(90),
              pytest.mark.skipif(not os.path.exists(REGISTRY) or not shutil.which("skopeo"),
                                 reason="needs docker-registry and skopeo (scripts/apt-packages.txt)")]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("registry")
    port = free_port()

    def answers() -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).close()
        except OSError:
            return False
        return True

    with running_registry(tmp, f"  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                          answers):
        yield {"host": f"127.0.0.1:{port}", "data": tmp / "data", "log": tmp / "registry.log",
               "tmp": tmp}


def skopeo(*args: str) -> str:
    return subprocess.run(["skopeo", *args], check=True, capture_output=True, text=True,
                          timeout=60).stdout


@pytest.fixture(scope="module")
def pushed(registry, tmp_path_factory: pytest.TempPathFactory):
    """busybox as test/bb:1 (Docker schema 2, gzip), :zstd (OCI, zstd) and :plain (OCI, tar)."""
    tmp = tmp_path_factory.mktemp("push")
    store = ImageStore(tmp / "root")
    image = ensure_busybox(store)
    archive = tmp / "bb.tar"
    store.save(["busybox"], str(archive), format="oci-archive")
    host = registry["host"]
    push = ["copy", "--dest-tls-verify=false", "--quiet"]
    skopeo(*push, "--format", "v2s2", "--dest-compress", f"oci-archive:{archive}",
           f"docker://{host}/test/bb:1")
    skopeo(*push, "--format", "oci", "--dest-compress-format", "zstd", f"oci-archive:{archive}",
           f"docker://{host}/test/bb:zstd")
    skopeo(*push, "--format", "oci", "--dest-decompress", f"oci-archive:{archive}",
           f"docker://{host}/test/bb:plain")
    digests = {tag: _manifest_digest(host, "test/bb", tag) for tag in ("1", "zstd", "plain")}
    return {"id": image.id, "digests": digests, "host": host}


def _manifest_digest(host: str, repo: str, tag: str) -> str:
    request = urllib.request.Request(f"http://{host}/v2/{repo}/manifests/{tag}", headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json, "
                  "application/vnd.docker.distribution.manifest.v2+json, "
                  "application/vnd.oci.image.index.v1+json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return "sha256:" + hashlib.sha256(response.read()).hexdigest()


class Nsbox:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.root = tmp / "lib"
        self.prefix = [NSBOX, "--root", str(self.root), "--runroot", str(tmp / "run")]
        (tmp / "home").mkdir(exist_ok=True)
        (tmp / "xdg").mkdir(exist_ok=True)
        self.conf = tmp / "registries.conf"
        self.conf.write_text("")
        self.env = {**os.environ, "HOME": str(tmp / "home"), "XDG_RUNTIME_DIR": str(tmp / "xdg"),
                    "CONTAINERS_REGISTRIES_CONF": str(self.conf)}
        self.env.pop("REGISTRY_AUTH_FILE", None)

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self.prefix, *args], capture_output=True, text=True, timeout=60,
                              env=self.env)
        if check and proc.returncode != 0:
            raise AssertionError(f"nsbox {' '.join(args)} -> {proc.returncode}\n{proc.stderr}")
        return proc

    def remove_containers(self) -> None:
        """Remove every container (what a test left), without checking."""
        if self.root.exists():
            ids = self("ps", "-a", "-q", "--no-trunc", check=False).stdout.split()
            if ids:
                self("rm", "-f", *ids, check=False)

    def blobs(self) -> dict[str, int]:
        blob_dir = self.root / "images" / "blobs" / "sha256"
        return {p.name: p.stat().st_ino for p in blob_dir.iterdir()} if blob_dir.exists() else {}

    def tmp_left(self) -> list[str]:
        tmp = self.root / "tmp"
        return sorted(os.listdir(tmp)) if tmp.exists() else []


@pytest.fixture
def nsbox(tmp_path: Path):
    box = Nsbox(tmp_path)
    yield box
    box.remove_containers()


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 125, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize("tag", ["1", "zstd", "plain"])
def test_pull_by_tag_and_run(nsbox, pushed, tag):
    name = f"{pushed['host']}/test/bb:{tag}"
    out = nsbox("pull", "--tls-verify=false", name)
    assert out.stdout.strip() == pushed["id"].removeprefix("sha256:")
    assert "Copying blob" in out.stderr
    store = ImageStore(nsbox.root)
    assert store.resolve(name).manifest_digest == pushed["digests"][tag]
    assert nsbox("run", "--rm", name, "echo", "ok").stdout == "ok\n"
    assert nsbox.tmp_left() == []


def test_second_pull_fetches_no_layer(nsbox, pushed, registry):
    name = f"{pushed['host']}/test/bb:1"
    nsbox("pull", "-q", "--tls-verify=false", name)
    before = nsbox.blobs()
    layer = ImageStore(nsbox.root).resolve(name).layers[0].digest

    def gets() -> int:
        return registry["log"].read_bytes().count(f'"GET /v2/test/bb/blobs/{layer} '.encode())
    layer_gets = gets()
    assert layer_gets >= 1
    second = nsbox("pull", "--tls-verify=false", name)
    assert "skipped: already exists" in second.stderr
    assert nsbox.blobs() == before  # same files, same inodes: nothing rewritten
    assert gets() == layer_gets  # the registry was not asked for the layer again


def test_quiet_prints_only_the_id(nsbox, pushed):
    out = nsbox("pull", "-q", "--tls-verify=false", f"{pushed['host']}/test/bb:1")
    assert out.stdout == pushed["id"].removeprefix("sha256:") + "\n"
    assert out.stderr == ""


def test_pull_by_digest(nsbox, pushed):
    name = f"{pushed['host']}/test/bb@{pushed['digests']['1']}"
    out = nsbox("pull", "-q", "--tls-verify=false", name)
    assert out.stdout.strip() == pushed["id"].removeprefix("sha256:")
    assert nsbox("run", "--rm", name, "echo", "ok").stdout == "ok\n"


def _put(host: str, repo: str, data: bytes, media_type: str, ref: str) -> None:
    request = urllib.request.Request(f"http://{host}/v2/{repo}/manifests/{ref}", data=data,
                                     method="PUT", headers={"Content-Type": media_type})
    urllib.request.urlopen(request, timeout=10).close()


def test_index_picks_the_host_platform(nsbox, pushed):
    host, digests = pushed["host"], pushed["digests"]
    other = "arm64" if oci_architecture() != "arm64" else "amd64"

    def entry(tag: str, arch: str) -> dict:
        manifest = urllib.request.urlopen(urllib.request.Request(
            f"http://{host}/v2/test/bb/manifests/{digests[tag]}",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}), timeout=10).read()
        return {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digests[tag],
                "size": len(manifest), "platform": {"os": "linux", "architecture": arch}}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [entry("zstd", other), entry("plain", oci_architecture())]}
    _put(host, "test/bb", json.dumps(index).encode(), index["mediaType"], "multi")
    nsbox("pull", "-q", "--tls-verify=false", f"{host}/test/bb:multi")
    store = ImageStore(nsbox.root)
    assert store.resolve(f"{host}/test/bb:multi").manifest_digest == digests["plain"]
    nsbox("pull", "-q", "--tls-verify=false", "--platform", f"linux/{other}", f"{host}/test/bb:multi")
    assert ImageStore(nsbox.root).resolve(f"{host}/test/bb:multi").manifest_digest == digests["zstd"]
    proc = nsbox("pull", "--tls-verify=false", "--platform", "linux/s390x", f"{host}/test/bb:multi",
                 check=False)
    assert "no image for linux/s390x" in one_line_error(proc)


def test_corrupt_blob_fails_and_leaves_nothing(nsbox, registry, tmp_path):
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "corrupt").write_text("x" * 1000)
    store = ImageStore(tmp_path / "build")
    store.import_rootfs(str(rootfs), "corrupt:1")
    store.save(["corrupt:1"], str(tmp_path / "c.tar"), format="oci-archive")
    host = registry["host"]
    skopeo("copy", "--dest-tls-verify=false", "--quiet", f"oci-archive:{tmp_path / 'c.tar'}",
           f"docker://{host}/test/corrupt:1")
    request = urllib.request.Request(f"http://{host}/v2/test/corrupt/manifests/1", headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        layer = json.loads(response.read())["layers"][0]["digest"].removeprefix("sha256:")
    data = registry["data"] / "docker/registry/v2/blobs/sha256" / layer[:2] / layer / "data"
    content = bytearray(data.read_bytes())
    content[len(content) // 2] ^= 0xFF
    data.write_bytes(bytes(content))
    proc = nsbox("pull", "--tls-verify=false", f"{host}/test/corrupt:1", check=False)
    assert "digest mismatch" in one_line_error(proc)
    assert nsbox.blobs() == {}
    assert nsbox.tmp_left() == []
    assert not list((nsbox.root / "layers").glob("*.json"))


def test_unknown_tag_and_unreachable_registry(nsbox, pushed):
    proc = nsbox("pull", "--tls-verify=false", f"{pushed['host']}/test/bb:nope", check=False)
    assert "manifest unknown" in one_line_error(proc)
    proc = nsbox("pull", "--tls-verify=false", f"127.0.0.1:{free_port()}/test/bb:1", check=False)
    assert "connection refused" in one_line_error(proc)
    proc = nsbox("pull", f"{pushed['host']}/test/bb:1", check=False)  # TLS required by default
    assert "--tls-verify=false" in one_line_error(proc)
    assert nsbox.blobs() == {} and nsbox.tmp_left() == []


def test_short_names_follow_registries_conf(nsbox, pushed):
    proc = nsbox("pull", "test/bb:1", check=False)
    assert 'short-name "test/bb:1" did not resolve to an alias' in one_line_error(proc)
    nsbox.conf.write_text(f'unqualified-search-registries = ["{pushed["host"]}"]\n'
                          f'[[registry]]\nlocation = "{pushed["host"]}"\ninsecure = true\n')
    assert nsbox("pull", "-q", "test/bb:1").stdout.strip() == pushed["id"].removeprefix("sha256:")
    nsbox.conf.write_text(f'[aliases]\n"bbalias" = "{pushed["host"]}/test/bb"\n'
                          f'[[registry]]\nlocation = "{pushed["host"]}"\ninsecure = true\n')
    nsbox("pull", "-q", "bbalias:plain")
    assert ImageStore(nsbox.root).exists(f"{pushed['host']}/test/bb:plain")


def test_run_pull_policies(nsbox, pushed):
    name = f"{pushed['host']}/test/bb:1"
    proc = nsbox("run", "--rm", "--pull", "never", name, "true", check=False)
    assert "Unable to find image" in one_line_error(proc)
    proc = nsbox("run", "--rm", "--pull", "sometimes", name, "true", check=False)
    assert "invalid pull policy" in one_line_error(proc)
    out = nsbox("run", "--rm", "--tls-verify=false", name, "echo", "ok")  # --pull missing
    assert out.stdout == "ok\n" and "Copying blob" in out.stderr
    out = nsbox("run", "--rm", "--pull", "never", name, "echo", "ok")
    assert out.stdout == "ok\n" and "Copying" not in out.stderr
    out = nsbox("run", "--rm", "--pull", "always", "--tls-verify=false", name, "echo", "ok")
    assert out.stdout == "ok\n" and "skipped: already exists" in out.stderr
    # busybox is still built locally, never pulled.
    assert nsbox("run", "--rm", "--pull", "never", "busybox", "echo", "bb").stdout == "bb\n"


# ------------------------------------------------------------ authentication
class FakeRegistry(http.server.ThreadingHTTPServer):
    """Demands auth (bearer or basic), then relays GETs to the real registry."""

    def __init__(self, upstream: str, mode: str, user: str = "u", password: str = "p") -> None:
        super().__init__(("127.0.0.1", 0), _FakeHandler)
        self.upstream, self.mode = upstream, mode
        self.basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.token_requests: list[tuple[str, str]] = []
        self.host = f"127.0.0.1:{self.server_address[1]}"


class _FakeHandler(http.server.BaseHTTPRequestHandler):
    server: FakeRegistry

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        server, auth = self.server, self.headers.get("Authorization", "")
        if self.path.startswith("/token"):
            server.token_requests.append((self.path, auth))
            if auth != server.basic:
                return self._send(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"bad creds"}]}')
            return self._send(200, json.dumps({"token": "tok-123"}).encode())
        wanted = "Bearer tok-123" if server.mode == "bearer" else server.basic
        if auth != wanted:
            challenge = (f'Bearer realm="http://{server.host}/token",service="fake"'
                         if server.mode == "bearer" else 'Basic realm="fake"')
            body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
            return self._send(401, body, {"WWW-Authenticate": challenge})
        if self.path == "/v2/":
            return self._send(200, b"{}")
        request = urllib.request.Request(f"http://{server.upstream}{self.path}",
                                         headers={"Accept": self.headers.get("Accept", "*/*")})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                headers = {k: v for k, v in response.headers.items()
                           if k in ("Content-Type", "Docker-Content-Digest")}
                return self._send(200, response.read(), headers)
        except urllib.error.HTTPError as err:
            return self._send(err.code, err.read())


@pytest.fixture
def fake_registry(pushed, request):
    server = FakeRegistry(pushed["host"], request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _write_auth(path: Path, host: str, user: str = "u", password: str = "p") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": auth}}}))


@pytest.mark.parametrize("fake_registry", ["bearer"], indirect=True)
def test_bearer_token_dance(nsbox, pushed, fake_registry):
    name = f"{fake_registry.host}/test/bb:1"
    proc = nsbox("pull", "--tls-verify=false", name, check=False)
    assert "bad creds" in one_line_error(proc)  # anonymous: the token server says no
    _write_auth(nsbox.tmp / "xdg" / "containers" / "auth.json", fake_registry.host)
    fake_registry.token_requests.clear()
    out = nsbox("pull", "-q", "--tls-verify=false", name)
    assert out.stdout.strip() == pushed["id"].removeprefix("sha256:")
    # One token for the whole command, asked for with the auth.json credentials.
    assert len(fake_registry.token_requests) == 1
    path, auth = fake_registry.token_requests[0]
    assert "scope=repository%3Atest%2Fbb%3Apull" in path and "service=fake" in path
    assert auth == fake_registry.basic


@pytest.mark.parametrize("fake_registry", ["basic"], indirect=True)
def test_basic_auth_from_auth_json(nsbox, pushed, fake_registry):
    name = f"{fake_registry.host}/test/bb:1"
    proc = nsbox("pull", "--tls-verify=false", name, check=False)
    assert "authentication required" in one_line_error(proc)
    _write_auth(nsbox.tmp / "home" / ".docker" / "config.json", fake_registry.host, password="no")
    proc = nsbox("pull", "--tls-verify=false", name, check=False)
    assert "authentication required" in one_line_error(proc)
    _write_auth(nsbox.tmp / "home" / ".config" / "containers" / "auth.json", fake_registry.host)
    out = nsbox("pull", "-q", "--tls-verify=false", name)
    assert out.stdout.strip() == pushed["id"].removeprefix("sha256:")
    other = nsbox.tmp / "other.json"
    _write_auth(other, fake_registry.host)
    nsbox("rmi", name)
    nsbox("pull", "-q", "--tls-verify=false", "--authfile", str(other), name)


def test_run_path_does_not_import_the_http_stack():
    from test_engine_imports import RUN_PATH_MODULES
    code = (f"import sys\nfor name in {RUN_PATH_MODULES!r}:\n    __import__(name)\n"
            "print(' '.join(sorted(sys.modules)))\n")
    out = subprocess.run([str(Path(NSBOX).parent / "python"), "-c", code], check=True,
                         capture_output=True, text=True, cwd=Path(__file__).parent.parent).stdout
    loaded = set(out.split())
    assert not {"urllib3", "nsbox.engine.images.registry", "nsbox.engine.images.pull"} & loaded
