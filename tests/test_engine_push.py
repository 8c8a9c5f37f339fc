"""`nsbox login`/`logout` and `nsbox push` against a real registry on 127.0.0.1.

The registry fixture (Debian's docker-registry in a temporary directory) and
the fake authenticating registry come from test_engine_pull.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from test_engine_pull import (  # noqa: F401 - fixtures
    REGISTRY,
    FakeRegistry,
    Nsbox,
    nsbox,
    one_line_error,
    registry,
    skopeo,
)

from nsbox.engine.images import ImageStore, ensure_busybox

pytestmark = [pytest.mark.timeout(90),
              pytest.mark.skipif(not os.path.exists(REGISTRY) or not __import__("shutil").which("skopeo"),
                                 reason="needs docker-registry and skopeo (scripts/apt-packages.txt)")]


@pytest.fixture
def auth_registry(registry, request):  # noqa: F811
    server = FakeRegistry(registry["host"], request.param, user="alice", password="s3cret")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _b64(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


# ------------------------------------------------------------ login / logout
@pytest.mark.parametrize("auth_registry", ["bearer", "basic"], indirect=True)
def test_login_checks_then_saves_and_logout_removes(nsbox, auth_registry):  # noqa: F811
    host = auth_registry.host
    auth = nsbox.tmp / "xdg" / "containers" / "auth.json"
    auth.parent.mkdir(parents=True)
    other = {"auths": {"quay.example": {"auth": _b64("bob", "x")}}, "credHelpers": {}}
    auth.write_text(json.dumps(other))
    before = auth.read_bytes()

    def login(password: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([*nsbox.prefix, "login", "--tls-verify=false", "--username", "alice",
                               "--password-stdin", *extra, host], input=password + "\n",
                              capture_output=True, text=True, timeout=60, env=nsbox.env)

    proc = login("wrong")
    assert "unauthorized" in one_line_error(proc)
    assert auth.read_bytes() == before  # nothing written
    assert [p.name for p in auth.parent.iterdir()] == ["auth.json"]  # no temporary left

    proc = login("s3cret")
    assert proc.returncode == 0, proc.stderr
    assert "Login Succeeded" in proc.stdout
    doc = json.loads(auth.read_text())
    assert doc["auths"] == {"quay.example": {"auth": _b64("bob", "x")},
                            host: {"auth": _b64("alice", "s3cret")}}
    assert doc["credHelpers"] == {}
    assert stat.S_IMODE(auth.stat().st_mode) == 0o600
    if auth_registry.mode == "bearer":  # the token was asked for with the credentials
        assert auth_registry.token_requests[-1][1] == auth_registry.basic

    out = nsbox("logout", host)
    assert f"Removed login credentials for {host}" in out.stdout
    assert json.loads(auth.read_text())["auths"] == {"quay.example": {"auth": _b64("bob", "x")}}
    assert "not logged into" in one_line_error(nsbox("logout", host, check=False))
    nsbox("logout", "--all")
    assert json.loads(auth.read_text())["auths"] == {}

    # -p and --authfile; no username and no terminal is an error, not a prompt.
    alt = nsbox.tmp / "alt" / "auth.json"
    nsbox("login", "--tls-verify=false", "-u", "alice", "-p", "s3cret", "--authfile", str(alt), host)
    assert json.loads(alt.read_text())["auths"][host] == {"auth": _b64("alice", "s3cret")}
    assert stat.S_IMODE(alt.stat().st_mode) == 0o600
    proc = nsbox("login", "--tls-verify=false", "-p", "x", "--authfile", str(alt), host, check=False)
    assert "username" in one_line_error(proc)


def test_login_needs_a_registry_that_answers(nsbox, registry):  # noqa: F811
    proc = nsbox("login", "-u", "a", "-p", "b", registry["host"], check=False)  # TLS by default
    assert "--tls-verify=false" in one_line_error(proc)
    assert not (nsbox.tmp / "xdg" / "containers" / "auth.json").exists()


# ------------------------------------------------------------ push
def _uploads(registry: dict, repo: str) -> int:  # noqa: F811
    return registry["log"].read_bytes().count(f'"POST /v2/{repo}/blobs/uploads/ '.encode())


def test_push_imported_image_and_pull_it_back(nsbox, registry, tmp_path):  # noqa: F811
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "hello").write_text("hello from push\n")
    nsbox("import", "--change", 'CMD ["/bin/true"]', str(rootfs), "app:1")
    local = ImageStore(nsbox.root).resolve("app:1")
    host = registry["host"]
    digestfile = tmp_path / "digest"
    out = nsbox("push", "--tls-verify=false", "--digestfile", str(digestfile), "app:1",
                f"docker://{host}/test/app:1")
    digest = out.stdout.strip()
    assert digest == local.manifest_digest  # the manifest went as stored
    assert digestfile.read_text() == digest
    assert "Copying blob" in out.stderr and "Copying config" in out.stderr
    assert _uploads(registry, "test/app") == 2  # one layer, one config

    seen = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{host}/test/app:1"))
    assert seen["Digest"] == digest

    (tmp_path / "fresh").mkdir()
    fresh = Nsbox(tmp_path / "fresh")
    pulled = fresh("pull", "-q", "--tls-verify=false", f"{host}/test/app:1").stdout.strip()
    assert "sha256:" + pulled == local.id
    image = ImageStore(fresh.root).resolve(f"{host}/test/app:1")
    assert image.manifest_digest == digest and image.cmd == ["/bin/true"]

    # Again: every blob is there, nothing is uploaded; the same digest.
    again = nsbox("push", "--tls-verify=false", "app:1", f"{host}/test/app:1")
    assert again.stdout.strip() == digest
    assert again.stderr.count("skipped: already exists") == 2
    assert _uploads(registry, "test/app") == 2


def test_push_busybox_by_its_name_quietly(nsbox, registry):  # noqa: F811
    store = ImageStore(nsbox.root)
    image = ensure_busybox(store)
    name = f"{registry['host']}/test/busybox:latest"
    nsbox("tag", "busybox", name)
    out = nsbox("push", "-q", "--tls-verify=false", name)
    assert out.stderr == ""
    assert out.stdout.strip() == image.manifest_digest
    manifest = store.layout.read_blob(image.manifest_digest)
    assert json.loads(manifest)["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    seen = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{name}").encode()
    assert hashlib.sha256(seen).hexdigest() == image.manifest_digest.removeprefix("sha256:")


def test_push_errors(nsbox, registry):  # noqa: F811
    host = registry["host"]
    proc = nsbox("push", "--tls-verify=false", "nosuch:1", f"{host}/test/x:1", check=False)
    assert "nosuch:1" in one_line_error(proc)
    ensure_busybox(ImageStore(nsbox.root))
    proc = nsbox("push", "busybox", f"{host}/test/x:1", check=False)  # TLS by default
    assert "--tls-verify=false" in one_line_error(proc)
    proc = nsbox("push", "busybox", "oci-archive:/tmp/x.tar", check=False)
    assert "docker://" in one_line_error(proc)
    assert _uploads(registry, "test/x") == 0


def test_push_to_an_authenticating_registry_needs_login(nsbox, registry):  # noqa: F811
    # The fake registry relays GETs only, so a push through it stops at the first
    # upload; what matters here is that the push scope is asked for.
    server = FakeRegistry(registry["host"], "bearer")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        ensure_busybox(ImageStore(nsbox.root))
        nsbox("login", "--tls-verify=false", "-u", "u", "-p", "p", server.host)
        nsbox("push", "--tls-verify=false", "busybox", f"{server.host}/test/bb:1", check=False)
        scopes = [path for path, _ in server.token_requests if "scope=" in path]
        assert scopes and "scope=repository%3Atest%2Fbb%3Apull%2Cpush" in scopes[0]
        assert all(auth == server.basic for _, auth in server.token_requests)
    finally:
        server.shutdown()
        server.server_close()


def test_help_lists_the_new_commands():
    out = subprocess.run([str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "nsbox"),
                          "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("push", "login", "logout"):
        assert f"  {command} " in out


# ------------------------------------------------------------ commit
def test_commit_keeps_changes_and_deletions(nsbox, registry):  # noqa: F811
    ensure_busybox(ImageStore(nsbox.root))
    nsbox("run", "--name", "c1", "busybox", "sh", "-c",
          "echo made > /root/new; rm /etc/group; mkdir -p /opt/d; echo x > /opt/d/f")
    out = nsbox("commit", "-m", "my change", "-a", "me", "-c", 'CMD ["cat", "/root/new"]',
                "-c", "ENV A=b", "-c", "WORKDIR /opt", "c1", "committed:1")
    image = ImageStore(nsbox.root).resolve("committed:1")
    assert out.stdout.strip() == image.id.removeprefix("sha256:")
    assert len(image.layers) == 2 and image.cmd == ["cat", "/root/new"]
    assert "A=b" in image.env and image.working_dir == "/opt"
    assert image.config["author"] == "me" and image.config["history"][-1]["comment"] == "my change"
    assert nsbox("run", "--rm", "committed:1").stdout == "made\n"  # -c CMD
    check = nsbox("run", "--rm", "committed:1", "sh", "-c",
                  "test -e /etc/group && echo still || echo gone; cat /opt/d/f; pwd")
    assert check.stdout == "gone\nx\n/opt\n"
    # The whiteout is an OCI `.wh.` entry in the layer blob, and the image pushes.
    import tarfile
    blob = ImageStore(nsbox.root).layout.blob_path(image.layers[-1].digest)
    with tarfile.open(blob) as tar:
        names = tar.getnames()
    assert "etc/.wh.group" in names and "root/new" in names
    nsbox("push", "-q", "--tls-verify=false", "committed:1", f"{registry['host']}/test/committed:1")


# ------------------------------------------------------------ upload kinds, formats
def _log_count(registry: dict, text: str) -> int:  # noqa: F811
    return registry["log"].read_bytes().count(text.encode())


def test_chunked_upload_and_cross_repository_mount(nsbox, registry, tmp_path):  # noqa: F811
    rootfs = tmp_path / "rootfs"
    (rootfs / "data").mkdir(parents=True)
    (rootfs / "data" / "blob").write_bytes(os.urandom(700_000))
    store = ImageStore(nsbox.root)
    store.import_rootfs(str(rootfs), "chunky:1")
    host = registry["host"]
    progress: list[str] = []
    digest = store.push("chunky:1", f"{host}/test/chunky:1", tls_verify=False, chunk_size=256 << 10,
                        progress=lambda label, done, total: progress.append(label))
    # The layer (>700 kB) went up in 3 PATCHes of at most 256 KiB, the config in one PUT.
    assert _log_count(registry, '"PATCH /v2/test/chunky/blobs/uploads/') == 3
    seen = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{host}/test/chunky:1"))
    assert seen["Digest"] == digest
    (tmp_path / "fresh").mkdir()
    fresh = Nsbox(tmp_path / "fresh")
    fresh("pull", "-q", "--tls-verify=false", f"{host}/test/chunky:1")
    pulled = ImageStore(fresh.root).resolve(f"{host}/test/chunky:1")
    assert (Path(pulled.layers[0].path) / "data" / "blob").read_bytes() == \
        (rootfs / "data" / "blob").read_bytes()

    # Named in test/chunky on this registry, the image's layer is mounted into another repo.
    store.tag("chunky:1", f"{host}/test/chunky:1")
    layer = store.resolve("chunky:1").layers[0].digest
    store.push("chunky:1", f"{host}/test/mounted:1", tls_verify=False,
               progress=lambda label, done, total: progress.append(label))
    assert any(label.endswith(" mounted") for label in progress)
    mount = f'"POST /v2/test/mounted/blobs/uploads/?mount={layer.replace(":", "%3A")}&from=test/chunky '
    assert _log_count(registry, mount) == 1
    assert _uploads(registry, "test/mounted") == 1  # an upload for the config only
    assert _log_count(registry, '"PUT /v2/test/mounted/blobs/uploads/') == 1  # the config only


def test_push_format_rewrites_media_types_only(nsbox, registry):  # noqa: F811
    store = ImageStore(nsbox.root)
    image = ensure_busybox(store)
    host = registry["host"]
    proc = nsbox("push", "--tls-verify=false", "--format", "v1", "busybox", f"{host}/test/fmt:1",
                 check=False)
    assert "oci or v2s2" in one_line_error(proc)
    v2 = nsbox("push", "-q", "--tls-verify=false", "--format", "v2s2", "busybox",
               f"{host}/test/fmt:v2").stdout.strip()
    oci = nsbox("push", "-q", "--tls-verify=false", "--format", "oci", "busybox",
                f"{host}/test/fmt:oci").stdout.strip()
    assert oci == image.manifest_digest  # stored as OCI: pushed as it is
    assert v2 != oci
    raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{host}/test/fmt:v2"))
    assert raw["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert raw["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    assert all(d["mediaType"].startswith("application/vnd.docker.image.rootfs.diff.tar")
               for d in raw["layers"])
    # Same config and layers: pulled back, it is the same image (same id).
    (nsbox.tmp / "fresh").mkdir()
    fresh = Nsbox(nsbox.tmp / "fresh")
    pulled = fresh("pull", "-q", "--tls-verify=false", f"{host}/test/fmt:v2").stdout.strip()
    assert "sha256:" + pulled == image.id
    assert ImageStore(fresh.root).resolve(f"{host}/test/fmt:v2").manifest_digest == v2


def test_repo_digests_name_the_manifest_pushed_there(nsbox, registry):  # noqa: F811
    """After `push --format v2s2` RepoDigests and `images --digests` show the registry's digest."""
    store = ImageStore(nsbox.root)
    image = ensure_busybox(store)
    host = registry["host"]
    converted, kept = f"{host}/test/rd-v2:1", f"{host}/test/rd-oci:1"
    nsbox("tag", "busybox", converted)
    nsbox("tag", "busybox", kept)
    v2 = nsbox("push", "-q", "--tls-verify=false", "--format", "v2s2", converted).stdout.strip()
    assert nsbox("push", "-q", "--tls-verify=false", kept).stdout.strip() == image.manifest_digest
    assert v2 != image.manifest_digest

    def repo_digests() -> set[str]:
        out = nsbox("inspect", "--type", "image", "--format", "{{json .RepoDigests}}", converted)
        return set(json.loads(out.stdout))

    assert {f"{host}/test/rd-v2@{v2}", f"{host}/test/rd-oci@{image.manifest_digest}"} \
        <= repo_digests()
    rows = nsbox("images", "--digests", "--format", "{{.Repository}} {{.Digest}}").stdout
    assert f"{host}/test/rd-v2 {v2}\n" in rows
    assert f"{host}/test/rd-oci {image.manifest_digest}\n" in rows
    # The digest shown is one the registry serves: pulling REPO@DIGEST gets these bytes.
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{host}/test/rd-v2@{v2}")
    assert "sha256:" + hashlib.sha256(raw.encode()).hexdigest() == v2

    # Pushed again as stored (OCI): the repository now serves the store's digest.
    nsbox("push", "-q", "--tls-verify=false", "--format", "oci", converted)
    assert f"{host}/test/rd-v2@{image.manifest_digest}" in repo_digests()


def test_python_api_push_and_pull_with_progress(registry, tmp_path):  # noqa: F811
    import nsbox as api
    engine = api.Engine(root=str(tmp_path / "a" / "lib"), run_root=str(tmp_path / "a" / "run"))
    image = ensure_busybox(engine.images)
    ref = f"{registry['host']}/test/api:1"
    pushed: list[dict] = []
    digest = api.push("busybox", ref, tls_verify=False, progress=pushed.append, engine=engine)
    assert digest == image.manifest_digest
    assert pushed[-1] == {"status": f"Digest: {digest}"}
    assert [e["status"] for e in pushed].count("Pushed") == 2  # the layer and the config
    other = api.Engine(root=str(tmp_path / "b" / "lib"), run_root=str(tmp_path / "b" / "run"))
    pulled: list[dict] = []
    got = api.pull(ref, tls_verify=False, progress=pulled.append, engine=other)
    assert got.id == image.id and got.manifest_digest == digest
    statuses = [e["status"] for e in pulled]
    assert "Download complete" in statuses and statuses[-1] == f"Digest: {digest}"
    layer_id = image.layers[0].digest.removeprefix("sha256:")[:12]
    assert any(e.get("id") == layer_id for e in pulled)
    again: list[dict] = []
    api.pull(ref, tls_verify=False, progress=again.append, engine=other)
    assert {"status": "Already exists", "id": layer_id} in again
