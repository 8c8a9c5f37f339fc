"""The engine's image store moving images in and out: save/load archives (docker and
OCI, plain and gzip, zstd layers), hostile and corrupt layers refused with nothing
left behind, archives made by podman and skopeo, and the CLI's import/load from
stdin and URLs.

Helpers and fixtures are in tests/imagedata.py; the store's own behaviour
(references, rootfs import, layers, names) is in tests/test_engine_images.py.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import helpers
import imagedata
import pytest
from imagedata import (
    config_for,
    sha,
    store_state,
    tar_bytes,
    tree_snapshot,
    write_docker_archive,
    write_file,
)

from nsbox.engine.images import (
    ImageStore,
    ensure_busybox,
)
from nsbox.engine.storage import mount_points
from nsbox.errors import (
    ImageError,
    SecurityError,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the image store tests run as root")

# The shared fixtures (tests/imagedata.py), bound here so that pytest finds them.
store, busybox_tree = imagedata.store, imagedata.busybox_tree


# =========================================================================== hostile input
MALICIOUS = {
    "dotdot": lambda out: [("../../evil", "file", b"x")],
    "dotdot-deep": lambda out: [("../../../../../../evil", "file", b"x")],
    "dotdot-inside": lambda out: [("a", "dir"), ("a/../../evil", "file", b"x")],
    "absolute": lambda out: [(f"{out}/evil", "file", b"x")],
    "symlink-then-write": lambda out: [("link", "symlink", str(out)), ("link/evil", "file", b"x")],
    "relative-symlink-then-write": lambda out: [("d", "dir"), ("d/up", "symlink", "../../../.."),
                                                ("d/up/evil", "file", b"x")],
    "symlink-then-mkdir": lambda out: [("link", "symlink", str(out)), ("link/sub", "dir")],
    "symlink-then-whiteout": lambda out: [("link", "symlink", str(out)), ("link/.wh.victim", "file")],
    "symlink-then-opaque": lambda out: [("link", "symlink", str(out)), ("link/.wh..wh..opq", "file")],
    "hardlink-outside": lambda out: [("h", "hardlink", f"{out}/victim")],
    "hardlink-dotdot": lambda out: [("h", "hardlink", "../../victim")],
    "hardlink-through-symlink": lambda out: [("link", "symlink", str(out)), ("h", "hardlink", "link/victim")],
    "char-device": lambda out: [("dev", "dir"), ("dev/mem", "chr", (1, 1))],
    "block-device": lambda out: [("sda", "blk", (8, 0))],
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_malicious_layer_is_refused(store: ImageStore, tmp_path: Path, case: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("precious")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    tarball = write_file(inputs / "evil.tar", tar_bytes(MALICIOUS[case](outside)))
    archive = write_docker_archive(inputs / "evil-archive.tar",
                                   [([tarball.read_bytes()], ["evil:archive"], None)])
    state = store_state(store)
    around = tree_snapshot(tmp_path, skip=Path(store.root))
    with pytest.raises((SecurityError, ImageError)) as raised:
        store.import_rootfs(str(tarball), "evil:1")
    message = str(raised.value)
    assert "\n" not in message and len(message) < 300
    with pytest.raises((SecurityError, ImageError)):
        store.load(str(archive))
    assert store_state(store) == state
    assert tree_snapshot(tmp_path, skip=Path(store.root)) == around
    assert not os.path.lexists(tmp_path.parent / "evil") and not os.path.lexists("/evil")
    assert (outside / "victim").read_text() == "precious"
    assert not store.exists("evil:1") and not store.exists("evil:archive")


def test_devices_can_be_skipped_or_created_for_trusted_input(store: ImageStore, tmp_path: Path) -> None:
    tarball = write_file(tmp_path / "dev.tar", tar_bytes([("dev", "dir"), ("dev/null", "chr", (1, 3)),
                                                      ("dev/wh", "chr", (0, 0))]))
    skipped = store.import_rootfs(str(tarball), "dev:skip", devices="skip")
    assert not os.path.lexists(os.path.join(skipped.layers[0].path, "dev/null"))
    store.remove("dev:skip")
    created = store.import_rootfs(str(tarball), "dev:create", devices="create")
    null = os.lstat(os.path.join(created.layers[0].path, "dev/null"))
    assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1 and os.minor(null.st_rdev) == 3
    # A 0:0 character device is an overlay whiteout, allowed under any policy.
    wh = os.lstat(os.path.join(created.layers[0].path, "dev/wh"))
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0


def _corruptions(busybox_tree: Path, tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.tar"
    with tarfile.open(good, "w") as tar:
        tar.add(busybox_tree / "bin", arcname="bin")
    data = good.read_bytes()
    packed = gzip.compress(data, mtime=0)
    cases = {
        "truncated-tar": data[: len(data) // 2 + 100],
        "truncated-gzip": packed[: len(packed) // 2],
        "garbage": os.urandom(64 * 1024),
        "bad-gzip-crc": packed[:-8] + bytes(8),
        "bad-header-checksum": data[:148] + b"9999999\0" + data[156:],
    }
    paths = {}
    for name, blob in cases.items():
        paths[name] = write_file(tmp_path / f"{name}.tar", blob)
    return paths


@pytest.mark.parametrize("case", ["truncated-tar", "truncated-gzip", "garbage", "bad-gzip-crc",
                                  "bad-header-checksum"])
def test_corrupt_tarball_import_leaves_nothing(store: ImageStore, busybox_tree: Path, tmp_path: Path,
                                               case: str) -> None:
    source = _corruptions(busybox_tree, tmp_path)[case]
    state = store_state(store)
    with pytest.raises(ImageError) as raised:
        store.import_rootfs(str(source), "broken:1")
    assert "corrupt" in str(raised.value) or "truncated" in str(raised.value)
    assert store_state(store) == state


def test_corrupt_archives_load_leaves_nothing(store: ImageStore, busybox_tree: Path,
                                             tmp_path: Path) -> None:
    ensure_busybox(store)
    state = store_state(store)
    saved = tmp_path / "saved.tar"
    store.save(["busybox"], str(saved), "docker-archive")
    other = ImageStore(tmp_path / "other")
    other_state = store_state(other)
    data = saved.read_bytes()
    truncated = write_file(tmp_path / "cut.tar", data[: len(data) - 300_000])
    truncated_gz = write_file(tmp_path / "cut.tar.gz", gzip.compress(data)[:400_000])
    garbage = write_file(tmp_path / "garbage.tar", os.urandom(10_000))
    # A layer whose bytes do not match the config's diff id.
    layer = tar_bytes([("x", "file", b"real")])
    config = config_for([tar_bytes([("x", "file", b"fake")])])
    mismatch = write_docker_archive(tmp_path / "mismatch.tar", [([layer], ["mm:1"], config)])
    for path in (truncated, truncated_gz, garbage, mismatch):
        with pytest.raises(ImageError) as raised:
            other.load(str(path))
        assert "\n" not in str(raised.value)
        assert store_state(other) == other_state, path.name
    assert store_state(store) == state


# =========================================================================== archives
@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_save_load_round_trip(store: ImageStore, tmp_path: Path, fmt: str, compress: bool) -> None:
    base = ensure_busybox(store)
    extra = tar_bytes([("etc", "dir"), ("etc/motd", "file", b"hello\n")], gz=True)
    two = store.load(str(write_docker_archive(tmp_path / "x.tar", [
        ([Path(store.layout.blob_path(base.layers[0].digest)).read_bytes(), gzip.decompress(extra)],
         ["app:2"], None)])))
    assert two == ["app:2"]
    archive = tmp_path / f"out.{fmt}.tar"
    progress: list[tuple[str, int, int]] = []
    store.save(["busybox", "app:2"], str(archive), fmt, compress=compress,
               progress=lambda *a: progress.append(a))
    assert progress
    assert (archive.read_bytes()[:2] == b"\x1f\x8b") == compress
    other = ImageStore(tmp_path / "other")
    assert sorted(other.load(str(archive))) == ["app:2", "localhost/busybox:latest"]
    assert other.resolve("busybox").id == base.id
    loaded = other.resolve("app:2")
    assert loaded.id == store.resolve("app:2").id
    assert (Path(loaded.layers[1].path) / "etc/motd").read_bytes() == b"hello\n"
    if fmt == "oci-archive":
        assert loaded.manifest_digest == store.resolve("app:2").manifest_digest
    assert os.listdir(other.layout.tmp_dir) == []
    # Loading the same archive again changes nothing.
    before = store_state(other)
    other.load(str(archive))
    assert store_state(other) == before


def test_save_by_id_writes_no_name(store: ImageStore, tmp_path: Path) -> None:
    image = ensure_busybox(store)
    archive = tmp_path / "by-id.tar"
    store.save([image.short_id], str(archive), "oci-archive")
    other = ImageStore(tmp_path / "other")
    assert other.load(str(archive)) == [image.id]
    assert [s.dangling for s in other.list()] == [True]


def test_zstd_layer(store: ImageStore, tmp_path: Path) -> None:
    if shutil.which("zstd") is None:
        pytest.skip("zstd program not installed")
    plain = tar_bytes([("z", "file", b"zstd content")])
    packed = subprocess.run(["zstd", "-q", "-c"], input=plain, capture_output=True, check=True).stdout
    image = store.import_rootfs(str(write_file(tmp_path / "l.tar.zst", packed)), "zstd:1")
    assert image.layers[0].media_type.endswith("+zstd")
    assert image.layers[0].diff_id == sha(plain)
    assert (Path(image.layers[0].path) / "z").read_bytes() == b"zstd content"


NSBOX = str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "nsbox")


def _cli(root: Path, *args: str, input: bytes | None = None, check: bool = True  # noqa: A002
         ) -> subprocess.CompletedProcess:
    proc = subprocess.run([NSBOX, "--root", str(root / "lib"), "--runroot", str(root / "run"), *args],
                          input=input, capture_output=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"nsbox {' '.join(args)} -> {proc.returncode}\n{proc.stderr.decode()}")
    return proc


def test_cli_accepts_both_spellings_of_a_local_name(tmp_path: Path) -> None:
    _cli(tmp_path, "create", "--name", "made", "busybox", "true")
    _cli(tmp_path, "rm", "made")
    rows = _cli(tmp_path, "images", "--format", "{{.Repository}}:{{.Tag}}").stdout.decode().split()
    assert rows == ["localhost/busybox:latest"]
    image_id = _cli(tmp_path, "image", "inspect", "-f", "{{.Id}}", "busybox").stdout.decode().strip()
    spellings = ("busybox", "busybox:latest", "localhost/busybox", "localhost/busybox:latest")
    for number, ref in enumerate(spellings):
        assert _cli(tmp_path, "image", "inspect", "-f", "{{.Id}}", ref).stdout.decode().strip() == image_id
        assert image_id in _cli(tmp_path, "inspect", "--type", "image", ref).stdout.decode()
        _cli(tmp_path, "history", ref)
        for filtered in (("images", ref), ("images", "-f", f"reference={ref}")):
            out = _cli(tmp_path, *filtered, "--format", "{{.Repository}}:{{.Tag}}").stdout.decode()
            assert out.split() == ["localhost/busybox:latest"], (filtered, out)
        _cli(tmp_path, "save", "-o", str(tmp_path / f"{number}.tar"), ref)
        _cli(tmp_path, "tag", ref, f"copy{number}")
        assert _cli(tmp_path, "rmi", f"localhost/copy{number}:latest").stdout.decode() == \
            f"Untagged: localhost/copy{number}:latest\n"
        _cli(tmp_path, "create", "--name", f"c{number}", ref, "true")
        _cli(tmp_path, "rm", f"c{number}")
    assert _cli(tmp_path, "run", "--rm", "localhost/busybox:latest", "echo", "ran").stdout == b"ran\n"
    assert _cli(tmp_path, "images", "-q").stdout.decode().split() == [image_id[7:19]]
    assert _cli(tmp_path, "rmi", "busybox").stdout.decode().startswith(
        "Untagged: localhost/busybox:latest\nDeleted: ")


def test_cli_import_and_load_read_stdin(tmp_path: Path) -> None:
    data = tar_bytes([("etc", "dir"), ("etc/motd", "file", b"piped\n")])
    image_id = _cli(tmp_path, "import", "-c", 'CMD ["/bin/x"]', "-", "piped:1",
                    input=gzip.compress(data)).stdout.decode().strip()
    assert image_id.startswith("sha256:")
    rows = _cli(tmp_path, "images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}").stdout.decode()
    assert rows.split() == ["localhost/piped:1", image_id[7:19]]
    assert _cli(tmp_path, "image", "inspect", "-f", "{{json .Config.Cmd}}", "piped:1"
                ).stdout.decode().strip() == '["/bin/x"]'
    # No name: a dangling image, as docker import - makes it.
    dangling = _cli(tmp_path, "import", "-", input=data).stdout.decode().strip()
    assert dangling != image_id and dangling.startswith("sha256:")
    bad = _cli(tmp_path, "import", "-", "broken:1", input=b"not a tar" * 100, check=False)
    assert bad.returncode == 125 and b"broken" not in _cli(tmp_path, "images").stdout
    _cli(tmp_path, "save", "-o", str(tmp_path / "piped.tar"), "piped:1")
    _cli(tmp_path, "rmi", "piped:1")
    archive = (tmp_path / "piped.tar").read_bytes()
    assert _cli(tmp_path, "load", input=archive).stdout == b"Loaded image: localhost/piped:1\n"
    _cli(tmp_path, "rmi", "piped:1")
    assert _cli(tmp_path, "load", "-i", "-", input=archive).stdout == b"Loaded image: localhost/piped:1\n"


def test_cli_import_from_url(tmp_path: Path) -> None:
    import http.server
    import threading

    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "rootfs.tar.gz").write_bytes(gzip.compress(tar_bytes([("u", "file", b"url")])))
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(  # noqa: E731
        *a, directory=str(tmp_path / "www"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/rootfs.tar.gz"
        _cli(tmp_path, "import", url, "fromurl:1")
        assert _cli(tmp_path, "history", "--no-trunc", "fromurl:1").stdout.decode().count(url) == 1
        missing = _cli(tmp_path, "import", url + ".gone", "gone:1", check=False)
        assert missing.returncode == 125 and b"HTTP 404" in missing.stderr
    finally:
        server.shutdown()
        server.server_close()


# =========================================================================== podman
def _podman_available() -> list[str]:
    return [name for name in ("podman", "skopeo") if shutil.which(name) is None]


@pytest.mark.clients
@pytest.mark.slow
def test_load_archives_made_by_podman_and_skopeo(store: ImageStore, tmp_path: Path) -> None:
    missing = _podman_available()
    if missing:
        helpers.skip_or_fail(f"not installed: {', '.join(missing)}")
    import clients
    out = tmp_path / "archives"
    out.mkdir()
    with clients.podman_world(clients.runtime_under_test()) as podman:
        podman.run_with_private_var_lib("save", "--format", "docker-archive", "-o",
                                        str(out / "docker.tar"), clients.IMAGE_REF)
        podman.run_with_private_var_lib("save", "--format", "oci-archive", "-o",
                                        str(out / "oci.tar"), clients.IMAGE_REF)
        podman_id = json.loads(podman.run("image", "inspect", clients.IMAGE_REF).stdout)[0]["Id"]
        storage_ref = f"containers-storage:[overlay@{podman.tree}/graph+{podman.tree}/run]{clients.IMAGE_REF}"
        proc = subprocess.run(["skopeo", "copy", storage_ref, f"oci-archive:{out}/skopeo.tar:{clients.IMAGE_REF}"],
                              env=podman.env, capture_output=True, text=True, timeout=60,
                              preexec_fn=clients._enter_private_var_lib)
        assert proc.returncode == 0, proc.stderr

        # And the other way: podman loads what nsbox saves.
        ensure_busybox(store)
        store.save(["busybox"], str(out / "ours-docker.tar"), "docker-archive")
        store.save(["busybox"], str(out / "ours-oci.tar.gz"), "oci-archive", compress=True)
        for name in ("ours-docker.tar", "ours-oci.tar.gz"):
            podman.run_with_private_var_lib("load", "-i", str(out / name))
        listed = podman.run("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
        assert "localhost/busybox:latest" in listed  # the same name in both stores
        store.remove("busybox")

    for archive in ("docker.tar", "oci.tar", "skopeo.tar"):
        other = ImageStore(tmp_path / f"store-{archive}")
        assert other.load(str(out / archive)) == ["localhost/busybox:test"], archive
        image = other.resolve("localhost/busybox:test")
        assert image.id == "sha256:" + podman_id
        assert image.cmd == ["sh"]
        layer = Path(image.layers[0].path)
        assert (layer / "bin/busybox").read_bytes() == Path("/bin/busybox").read_bytes()
        assert os.readlink(layer / "bin/sh") == "busybox"
        assert other.resolve("busybox:test").id == image.id
    assert not [p for p in mount_points() if p.startswith(str(tmp_path))]
