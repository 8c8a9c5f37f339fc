"""The engine's image store: references, import, layers, names, the store lock, debootstrap.

Archives, hostile input, podman interop and the CLI's import/load are in
tests/test_engine_images_io.py; the shared helpers and fixtures in tests/imagedata.py.

Everything runs against real files in a private store under tmp_path; overlay
mounts (for whiteout checks) go through nsbox.engine.storage and are undone.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import stat
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path

import helpers
import imagedata
import pytest
from imagedata import config_for, sha, tar_bytes, write_docker_archive, write_file

from nsbox.engine.images import (
    ImageStore,
    build_debian,
    chain_ids,
    debian_mirror,
    ensure_busybox,
    parse_reference,
)
from nsbox.engine.images.config import apply_changes, parse_time
from nsbox.engine.images.reference import parse_name
from nsbox.engine.storage import Storage
from nsbox.errors import (
    ConfigError,
    ImageInUse,
    ImageNotFound,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the image store tests run as root")

# The shared fixtures (tests/imagedata.py), bound here so that pytest finds them.
store, storage, busybox_tree = imagedata.store, imagedata.storage, imagedata.busybox_tree


# =========================================================================== references
@pytest.mark.parametrize("text, full, familiar", [
    ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("busybox:1", "docker.io/library/busybox:1", "busybox:1"),
    ("library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("docker.io/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("index.docker.io/library/busybox:latest", "docker.io/library/busybox:latest", "busybox:latest"),
    ("localhost/busybox:test", "localhost/busybox:test", "localhost/busybox:test"),
    ("user/app", "docker.io/user/app:latest", "user/app:latest"),
    ("registry.example:5000/team/app:v1.2", "registry.example:5000/team/app:v1.2",
     "registry.example:5000/team/app:v1.2"),
])
def test_reference_normalisation(text: str, full: str, familiar: str) -> None:
    ref = parse_reference(text)
    assert (ref.name, ref.familiar) == (full, familiar)


@pytest.mark.parametrize("text", ["", "BusyBox", "a:b:c", "/abs", "a//b", "x@sha256:12", "a:" + "t" * 200,
                                  "0123456789abcdef" * 4])
def test_reference_rejects_invalid(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_reference(text)


@pytest.mark.parametrize("text, stored", [
    ("busybox", "localhost/busybox:latest"),
    ("busybox:1", "localhost/busybox:1"),
    ("library/busybox", "localhost/library/busybox:latest"),
    ("team/app:2", "localhost/team/app:2"),
    ("localhost/busybox", "localhost/busybox:latest"),
    ("localhost:5000/busybox", "localhost:5000/busybox:latest"),
    ("docker.io/busybox", "docker.io/library/busybox:latest"),
    ("docker.io/library/busybox:1", "docker.io/library/busybox:1"),
    ("quay.io/team/app:v1", "quay.io/team/app:v1"),
])
def test_local_names_go_under_localhost(text: str, stored: str) -> None:
    """Podman's rule for a name given to an image made here: no registry means localhost/."""
    assert parse_name(text).name == stored


def test_changes_become_config() -> None:
    section = apply_changes({"Env": ["PATH=/bin"]}, [
        'CMD ["sh", "-c", "echo hi"]', "ENTRYPOINT /entry.sh", "ENV A=1 B=\"two words\"",
        "ENV PATH /usr/bin", "WORKDIR /srv", "WORKDIR app", "USER 1000:1000", "LABEL a=b c=d",
        "EXPOSE 80 53/udp 8000-8001", "VOLUME [\"/data\"]", "VOLUME /cache", "STOPSIGNAL SIGINT"])
    assert section == {
        "Cmd": ["sh", "-c", "echo hi"],
        "Entrypoint": ["/bin/sh", "-c", "/entry.sh"],
        "Env": ["A=1", "B=two words", "PATH=/usr/bin"],
        "WorkingDir": "/srv/app",
        "User": "1000:1000",
        "Labels": {"a": "b", "c": "d"},
        "ExposedPorts": {"80/tcp": {}, "53/udp": {}, "8000/tcp": {}, "8001/tcp": {}},
        "Volumes": {"/data": {}, "/cache": {}},
        "StopSignal": "SIGINT",
    }
    for bad in ("RUN make", "EXPOSE http", "ENV", "STOPSIGNAL not a signal", "WORKDIR"):
        with pytest.raises(ConfigError):
            apply_changes({}, [bad])


def test_parse_time_accepts_nanoseconds() -> None:
    assert parse_time("2024-01-02T03:04:05.123456789Z") == pytest.approx(1704164645.123456789)
    assert parse_time("1970-01-01T01:00:00+01:00") == 0
    assert parse_time("garbage") == 0


# =========================================================================== import
def test_import_rootfs_directory(store: ImageStore, busybox_tree: Path) -> None:
    image = store.import_rootfs(str(busybox_tree), "localhost/bb:dir",
                                changes=['CMD ["sh"]', "ENV HOME=/root", "WORKDIR /tmp"])
    layer = Path(image.layers[0].path)
    assert (layer / "bin/busybox").read_bytes() == Path("/bin/busybox").read_bytes()
    assert os.readlink(layer / "bin/sh") == "busybox"
    assert stat.S_IMODE((layer / "tmp").stat().st_mode) == 0o1777
    assert (image.cmd, image.env, image.working_dir) == (["sh"], ["HOME=/root"], "/tmp")
    # The layer blob is the tar the directory became, and its digest is the diff id.
    assert image.layers[0].digest == image.layers[0].diff_id
    assert store.resolve("localhost/bb:dir").id == image.id
    # Short name: localhost/ is tried first.
    assert store.resolve("bb:dir").id == image.id


@pytest.mark.parametrize("compressed", [False, True], ids=["tar", "tar.gz"])
def test_import_rootfs_tarball(store: ImageStore, busybox_tree: Path, tmp_path: Path,
                               compressed: bool) -> None:
    tarball = tmp_path / "rootfs.tar"
    with tarfile.open(tarball, "w:gz" if compressed else "w") as tar:
        for entry in sorted(busybox_tree.iterdir()):
            tar.add(entry, arcname=entry.name)
    image = store.import_rootfs(str(tarball), "myimage:1", config={"Cmd": ["/bin/sh"]})
    assert image.repo_tags == ["localhost/myimage:1"]
    assert image.layers[0].media_type.endswith("tar+gzip" if compressed else "tar")
    assert os.path.isfile(os.path.join(image.layers[0].path, "bin/busybox"))
    assert image.size >= Path("/bin/busybox").stat().st_size
    for ref in ("myimage:1", "localhost/myimage:1"):
        assert store.inspect(ref)["Config"]["Cmd"] == ["/bin/sh"]
    with pytest.raises(ImageNotFound):
        store.resolve("docker.io/library/myimage:1")


def test_import_reports_progress(store: ImageStore, busybox_tree: Path) -> None:
    calls: list[tuple[str, int, int]] = []
    store.import_rootfs(str(busybox_tree), "p:1", progress=lambda *args: calls.append(args))
    unpack = [c for c in calls if c[0].startswith("layer ")]
    assert unpack and unpack[-1][1] == unpack[-1][2] > 0
    assert all(done <= total for _, done, total in unpack)


def test_ensure_busybox_is_deterministic(tmp_path: Path) -> None:
    first_store = ImageStore(tmp_path / "one")
    started = time.monotonic()
    first = ensure_busybox(first_store)
    elapsed = time.monotonic() - started
    assert ensure_busybox(first_store).id == first.id
    second = ensure_busybox(ImageStore(tmp_path / "two"))
    assert second.id == first.id and second.manifest_digest == first.manifest_digest
    assert elapsed < 10
    assert first.repo_tags == ["localhost/busybox:latest"]
    assert first.cmd == ["sh"] and any(e.startswith("PATH=") for e in first.env)
    layer = Path(first.layers[0].path)
    applets = subprocess.run(["/bin/busybox", "--list-full"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        if applet != "bin/busybox":
            assert os.readlink(layer / applet) == "/bin/busybox", applet
    assert "user:x:1000:1000:" in (layer / "etc/passwd").read_text()
    assert "nobody:x:65534:" in (layer / "etc/group").read_text()
    assert stat.S_IMODE((layer / "tmp").stat().st_mode) == 0o1777
    assert (layer / "home/user").stat().st_uid == 1000
    for name in ("dev", "proc", "sys", "root", "home"):
        assert (layer / name).is_dir()
    # Removing it and building again gives the same image.
    assert first_store.remove("busybox:latest") == [{"Untagged": "localhost/busybox:latest"},
                                                    {"Deleted": first.id}]
    assert ensure_busybox(first_store).id == first.id


# =========================================================================== layers
def test_layers_are_unpacked_once_and_shared(store: ImageStore, tmp_path: Path) -> None:
    base = tar_bytes([("etc", "dir"), ("etc/base", "file", b"base")])
    top_a = tar_bytes([("a.txt", "file", b"a")])
    top_b = tar_bytes([("b.txt", "file", b"b")], gz=True)
    archive = write_docker_archive(tmp_path / "two.tar", [([base, top_a], ["two:a"], None),
                                                          ([base, gzip.decompress(top_b)], ["two:b"], None)])
    assert sorted(store.load(str(archive))) == ["two:a", "two:b"]
    image_a, image_b = store.resolve("two:a"), store.resolve("two:b")
    assert image_a.layers[0].path == image_b.layers[0].path
    assert image_a.layers[1].path != image_b.layers[1].path
    base_dir = Path(image_a.layers[0].path)
    assert base_dir.name == sha(base)[7:]  # the first chain id is the diff id
    assert image_a.layers[1].chain_id == chain_ids([sha(base), sha(top_a)])[1]
    layer_dirs = [name for name in os.listdir(store.layers_dir) if len(name) == 64]
    assert len(layer_dirs) == 3
    # A third image on the same base reuses the directory: same inode, untouched.
    inode = (base_dir / "etc/base").stat().st_ino
    store.import_rootfs(str(write_file(tmp_path / "base.tar", base)), "base:only")
    assert store.resolve("base:only").layers[0].path == str(base_dir)
    assert (base_dir / "etc/base").stat().st_ino == inode


def _two_layer_whiteout_image(store: ImageStore, tmp_path: Path) -> object:
    lower = tar_bytes([
        ("a", "dir"), ("a/file", "file", b"gone"), ("a/other", "file", b"stays"),
        ("keep", "file", b"kept"), ("opq", "dir"), ("opq/lower.txt", "file", b"hidden"),
        ("opq/sub", "dir"), ("opq/sub/deep", "file", b"hidden too"),
        ("redo", "dir"), ("redo/old", "file", b"old"),
    ])
    upper = tar_bytes([
        ("a", "dir"), ("a/.wh.file", "file"),
        ("opq", "dir"), ("opq/.wh..wh..opq", "file"), ("opq/upper.txt", "file", b"new"),
        # A whiteout, then the same directory again: deleted and re-created.
        (".wh.redo", "file"), ("redo", "dir"), ("redo/new", "file", b"new"),
    ])
    archive = write_docker_archive(tmp_path / "wh.tar", [([lower, upper], ["wh:test"], None)])
    store.load(str(archive))
    return store.resolve("wh:test")


def test_whiteouts_and_opaque_dirs(store: ImageStore, storage: Storage, tmp_path: Path) -> None:
    image = _two_layer_whiteout_image(store, tmp_path)
    top = Path(image.layers[1].path)
    whiteout = (top / "a/file").lstat()
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert not (top / "a/.wh.file").exists()
    assert os.getxattr(top / "opq", "trusted.overlay.opaque") == b"y"
    assert os.getxattr(top / "redo", "trusted.overlay.opaque") == b"y"
    with pytest.raises(OSError):
        os.getxattr(top / "a", "trusted.overlay.opaque")
    # Through a real overlay mount the lower content is hidden.
    storage.create_rootfs("wh", image)
    merged = Path(storage.mount("wh"))
    try:
        assert not os.path.lexists(merged / "a/file")
        assert (merged / "a/other").read_bytes() == b"stays"
        assert (merged / "keep").read_bytes() == b"kept"
        assert sorted(os.listdir(merged / "opq")) == ["upper.txt"]
        assert sorted(os.listdir(merged / "redo")) == ["new"]
    finally:
        storage.unmount("wh")


def test_hard_links(store: ImageStore, tmp_path: Path) -> None:
    lower = tar_bytes([("data", "dir"), ("data/original", "file", b"shared content")])
    upper = tar_bytes([("bin", "dir"), ("bin/tool", "file", b"#!/bin/sh\n", {"mode": 0o755}),
                       ("bin/alias", "hardlink", "bin/tool"),
                       ("data/copy", "hardlink", "data/original")])
    archive = write_docker_archive(tmp_path / "hl.tar", [([lower, upper], ["hl:test"], None)])
    store.load(str(archive))
    image = store.resolve("hl:test")
    top = Path(image.layers[1].path)
    tool, alias = (top / "bin/tool").stat(), (top / "bin/alias").stat()
    assert tool.st_ino == alias.st_ino and tool.st_nlink == 2
    assert stat.S_IMODE(tool.st_mode) == 0o755
    # A link to a file of a lower layer is copied: overlay layers cannot share inodes.
    assert (top / "data/copy").read_bytes() == b"shared content"
    assert (top / "data/copy").stat().st_ino != (Path(image.layers[0].path) / "data/original").stat().st_ino


def test_modes_owners_times_and_xattrs(store: ImageStore, tmp_path: Path) -> None:
    layer = tar_bytes([
        ("srv", "dir", None, {"uid": 123, "gid": 456, "mode": 0o2750}),
        ("srv/setuid", "file", b"x", {"mode": 0o4755, "uid": 7, "gid": 8}),
        ("srv/link", "symlink", "/etc/passwd", {"uid": 9, "gid": 10}),
        ("srv/fifo", "fifo"),
        ("srv/cap", "file", b"c", {"pax_headers": {
            "SCHILY.xattr.user.note": "hello",
            "SCHILY.xattr.trusted.overlay.redirect": "/evil",
            "SCHILY.xattr.user.overlay.opaque": "y",  # what rootless overlays read
        }}),
    ])
    image = store.import_rootfs(str(write_file(tmp_path / "m.tar", layer)), "modes:1")
    root = Path(image.layers[0].path)
    srv = (root / "srv").stat()
    assert (srv.st_uid, srv.st_gid, stat.S_IMODE(srv.st_mode)) == (123, 456, 0o2750)
    setuid = (root / "srv/setuid").stat()
    assert (setuid.st_uid, setuid.st_gid, stat.S_IMODE(setuid.st_mode)) == (7, 8, 0o4755)
    assert setuid.st_mtime == 1_600_000_000
    assert srv.st_mtime == 1_600_000_000  # set after its children were written
    link = (root / "srv/link").lstat()
    assert os.readlink(root / "srv/link") == "/etc/passwd" and (link.st_uid, link.st_gid) == (9, 10)
    assert stat.S_ISFIFO((root / "srv/fifo").lstat().st_mode)
    assert os.getxattr(root / "srv/cap", "user.note") == b"hello"
    # Overlay metadata never comes from an image.
    assert "trusted.overlay.redirect" not in os.listxattr(root / "srv/cap")
    assert "user.overlay.opaque" not in os.listxattr(root / "srv/cap")


# =========================================================================== names
def test_resolve_names_and_ids(store: ImageStore) -> None:
    image = ensure_busybox(store)
    for ref in ("busybox", "busybox:latest", "library/busybox:latest",
                "localhost/busybox", "localhost/busybox:latest", image.id, image.short_id,
                image.id[7:], image.id[:15], f"busybox@{image.manifest_digest}"):
        assert store.resolve(ref).id == image.id, ref
    # A full name means exactly itself: the local busybox is not docker.io's.
    for ref in ("busybox:2", "nothere", "quay.io/busybox", "docker.io/library/busybox", "abcdef123",
                "sha256:" + "0" * 64, ""):
        with pytest.raises(ImageNotFound):
            store.resolve(ref)


def test_short_name_under_another_registry(store: ImageStore, tmp_path: Path) -> None:
    image = ensure_busybox(store)
    store.tag("busybox", "quay.io/team/tool:3")
    assert store.resolve("tool:3").id == image.id
    store.tag("busybox", "ghcr.io/other/tool:3")
    assert store.resolve("tool:3").id == image.id  # two names, one image: not ambiguous
    other = store.import_rootfs(str(write_file(tmp_path / "t.tar", tar_bytes([("t", "file")]))),
                                "ghcr.io/other/tool:3")
    assert other.id != image.id
    with pytest.raises(ImageNotFound, match="several"):
        store.resolve("tool:3")


def test_inspect_shape(store: ImageStore, busybox_tree: Path) -> None:
    image = store.import_rootfs(
        str(busybox_tree), "shape:1", author="me", comment="made for a test",
        changes=['ENTRYPOINT ["/bin/sh", "-c"]', 'CMD ["echo hi"]', "ENV A=1", "WORKDIR /w",
                 "USER 1000", "LABEL k=v", "EXPOSE 8080", "VOLUME /data", "STOPSIGNAL SIGUSR1"])
    data = store.inspect("shape:1")
    assert data["Id"] == image.id and data["Id"].startswith("sha256:")
    assert data["RepoTags"] == ["localhost/shape:1"]
    assert data["RepoDigests"] == [f"localhost/shape@{image.manifest_digest}"]
    assert data["Author"] == "me" and data["Comment"] == "made for a test"
    assert (data["Os"], data["Architecture"]) == ("linux", "amd64")
    assert data["Size"] == image.size > 0
    assert data["RootFS"] == {"Type": "layers", "Layers": [image.layers[0].diff_id]}
    assert parse_time(data["Created"]) == pytest.approx(time.time(), abs=60)
    config = data["Config"]
    assert config["Entrypoint"] == ["/bin/sh", "-c"] and config["Cmd"] == ["echo hi"]
    assert config["Env"] == ["A=1"] and config["WorkingDir"] == "/w" and config["User"] == "1000"
    assert config["Labels"] == {"k": "v"} and config["ExposedPorts"] == {"8080/tcp": {}}
    assert config["Volumes"] == {"/data": {}} and config["StopSignal"] == "SIGUSR1"
    json.dumps(data)  # plain JSON all the way down
    history = store.history("shape:1")
    assert len(history) == 1 and history[0]["Id"] == image.id and history[0]["Tags"] == ["localhost/shape:1"]
    assert history[0]["Size"] == image.size and history[0]["CreatedBy"].startswith("nsbox import")
    [summary] = store.list()
    assert (summary.id, summary.repo_tags, summary.size) == (image.id, ["localhost/shape:1"], image.size)


def test_history_of_a_multi_layer_image(store: ImageStore, tmp_path: Path) -> None:
    layers = [tar_bytes([("one", "file", b"1")]), tar_bytes([("two", "file", b"22")])]
    config = config_for(layers)
    config["history"].insert(1, {"created": "2024-01-02T03:04:05Z", "created_by": "ENV x", "empty_layer": True})
    store.load(str(write_docker_archive(tmp_path / "h.tar", [(layers, ["hist:1"], config)])))
    history = store.history("hist:1")
    assert [row["CreatedBy"] for row in history] == ["layer 1", "ENV x", "layer 0"]
    assert [row["Size"] for row in history] == [2, 0, 1]
    assert history[0]["Id"].startswith("sha256:") and history[1]["Id"] == "<missing>"


def test_tag_remove_prune(store: ImageStore, busybox_tree: Path, tmp_path: Path) -> None:
    image = ensure_busybox(store)
    store.tag("busybox", "mine:1")
    store.tag("mine:1", "localhost/mine:2")
    assert store.resolve("mine:1").repo_tags == ["localhost/busybox:latest", "localhost/mine:1",
                                                 "localhost/mine:2"]
    # A name of an image with other names is only untagged.
    assert store.remove("mine:1") == [{"Untagged": "localhost/mine:1"}]
    assert store.exists("busybox")
    # By id while it has several names: refused unless forced.
    with pytest.raises(ImageInUse):
        store.remove(image.short_id)
    # In use by a container: refused unless forced.
    store.untag("mine:2")
    with pytest.raises(ImageInUse):
        store.remove("busybox", in_use=lambda image_id: image_id == image.id)
    assert store.exists("busybox")
    result = store.remove("busybox", force=True, in_use=lambda image_id: True)
    assert result == [{"Untagged": "localhost/busybox:latest"}, {"Deleted": image.id}]
    assert not store.exists(image.id)
    assert not os.path.exists(image.layers[0].path) and os.listdir(store.layout.blobs_dir) == []

    # Moving a name away leaves the old image dangling; prune removes it.
    old = store.import_rootfs(str(busybox_tree), "app:1")
    new = store.import_rootfs(str(busybox_tree), "app:1", changes=['CMD ["true"]'])
    assert old.id != new.id and old.layers[0].path == new.layers[0].path
    assert [s.dangling for s in store.list() if s.id == old.id] == [True]
    assert store.prune(in_use=lambda image_id: image_id == old.id) == []
    assert store.prune() == [old.id]
    assert not store.exists(old.id) and store.exists("app:1")
    assert os.path.isdir(new.layers[0].path)  # still used by app:1
    untagged = store.import_rootfs(str(busybox_tree), None, changes=["ENV DANGLING=1"])
    assert store.resolve(untagged.id).names == []
    assert sorted(store.prune(all=True)) == sorted([untagged.id, new.id])
    assert store.list() == [] and os.listdir(store.layout.blobs_dir) == []
    assert [n for n in os.listdir(store.layers_dir) if n != "l"] == []
    assert os.listdir(store.links_dir) == []


def test_local_name_comes_before_docker_hub(store: ImageStore, busybox_tree: Path,
                                             tmp_path: Path) -> None:
    # A docker-archive's RepoTags are Docker's names: app:1 there is docker.io/library/app:1.
    hub_layers = [tar_bytes([("hub", "file", b"hub")])]
    assert store.load(str(write_docker_archive(tmp_path / "hub.tar", [(hub_layers, ["app:1"], None)]))
                      ) == ["app:1"]
    hub = store.resolve("docker.io/library/app:1")
    local = store.import_rootfs(str(busybox_tree), "app:1")
    assert local.names == ["localhost/app:1"] and local.id != hub.id
    for ref in ("app:1", "localhost/app:1"):
        assert store.resolve(ref).id == local.id, ref
    assert store.resolve("docker.io/library/app:1").id == hub.id
    assert sorted(tag for s in store.list() for tag in s.repo_tags) == ["app:1", "localhost/app:1"]
    assert store.remove("app:1")[0] == {"Untagged": "localhost/app:1"}
    assert store.resolve("app:1").id == hub.id  # then Docker Hub's, as podman finds it
    # Tagging with a short name makes a local name, whatever the source image.
    assert store.tag("app:1", "app:2").names == ["docker.io/library/app:1", "localhost/app:2"]


def test_store_with_both_spellings_is_migrated(store: ImageStore) -> None:
    """Older versions named busybox both docker.io/library/busybox and localhost/busybox."""
    image = ensure_busybox(store)
    index = json.loads(Path(store.layout.index_path).read_text())
    [entry] = index["manifests"]
    old_entry = json.loads(json.dumps(entry))
    for key in entry["annotations"]:
        old_entry["annotations"][key] = "docker.io/library/busybox:latest"
    index["manifests"].append(old_entry)
    index.pop("annotations", None)  # written before the naming rule
    Path(store.layout.index_path).write_text(json.dumps(index))
    fresh = ImageStore(store.root)
    assert [s.repo_tags for s in fresh.list()] == [["localhost/busybox:latest"]]
    assert fresh.resolve("busybox").names == ["localhost/busybox:latest"]
    fresh.tag("busybox", "localhost/other:1")  # any write stores the migrated index
    names = [m["annotations"]["org.opencontainers.image.ref.name"]
             for m in json.loads(Path(store.layout.index_path).read_text())["manifests"]]
    assert sorted(names) == ["localhost/busybox:latest", "localhost/other:1"]
    # Once migrated, both names can be given on purpose.
    fresh.tag("busybox", "docker.io/library/busybox:latest")
    assert ImageStore(store.root).resolve(image.id).names == [
        "docker.io/library/busybox:latest", "localhost/busybox:latest", "localhost/other:1"]


def test_import_from_a_stream(store: ImageStore, tmp_path: Path) -> None:
    data = tar_bytes([("etc", "dir"), ("etc/motd", "file", b"streamed\n")])
    for name, payload in (("plain:1", data), ("gz:1", gzip.compress(data))):
        calls: list[tuple] = []
        reader, writer = os.pipe()
        with os.fdopen(writer, "wb") as out:
            out.write(payload)  # small enough for the pipe buffer
        with os.fdopen(reader, "rb") as stream:
            image = store.import_rootfs(stream, name, progress=lambda *a, calls=calls: calls.append(a))
        assert (Path(image.layers[0].path) / "etc/motd").read_bytes() == b"streamed\n"
        assert image.layers[0].diff_id == sha(data) and calls
        assert store.history(name)[0]["CreatedBy"] == "nsbox import -"
    assert os.listdir(store.layout.tmp_dir) == []


def test_forced_removal_keeps_layers_of_containers(store: ImageStore, storage: Storage) -> None:
    image = ensure_busybox(store)
    storage.create_rootfs("keeper", image)
    store.remove(image.id, force=True)
    assert os.path.isdir(image.layers[0].path)
    merged = Path(storage.mount("keeper"))
    try:
        assert (merged / "bin/busybox").is_file()
    finally:
        storage.unmount("keeper")
    storage.remove("keeper")
    assert store.collect_garbage()["layers"] == [image.layers[0].chain_id]
    assert not os.path.exists(image.layers[0].path)


# =========================================================================== debian
def _mirror_reachable(mirror: str, suite: str) -> bool:
    try:
        with urllib.request.urlopen(f"{mirror}/dists/{suite}/InRelease", timeout=10) as reply:
            return reply.status == 200
    except OSError:
        return False


@pytest.mark.slow
def test_build_debian_with_debootstrap(store: ImageStore, storage: Storage) -> None:
    if shutil.which("debootstrap") is None:
        helpers.skip_or_fail("debootstrap not installed (apt-get install debootstrap)")
    mirror = debian_mirror("bookworm")
    if not _mirror_reachable(mirror, "bookworm"):
        pytest.skip(f"Debian mirror {mirror} not reachable")
    messages: list[tuple[str, int, int]] = []
    started = time.monotonic()
    image = build_debian(store, "bookworm", progress=lambda *a: messages.append(a))
    elapsed = time.monotonic() - started
    print(f"build_debian took {elapsed:.1f}s, {image.size / 1e6:.0f} MB")
    assert image.repo_tags == ["localhost/debian:bookworm"] and image.cmd == ["bash"]
    assert any(total > 0 for _, _, total in messages)
    layer = Path(image.layers[0].path)
    assert "bookworm" in (layer / "etc/os-release").read_text()
    assert os.listdir(layer / "dev") == [] and os.listdir(store.layout.tmp_dir) == []
    # Cached: the second call does not run debootstrap.
    started = time.monotonic()
    assert build_debian(store, "bookworm").id == image.id
    assert time.monotonic() - started < 1
    storage.create_rootfs("deb", image)
    merged = storage.mount("deb")
    try:
        proc = subprocess.run(["chroot", merged, "/usr/bin/dpkg-query", "-W", "bash"],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0 and proc.stdout.startswith("bash")
    finally:
        storage.unmount("deb")


def test_store_lock_serialises_processes(store: ImageStore) -> None:
    image = ensure_busybox(store)
    read_end, write_end = os.pipe()
    with store.layout.locked():
        pid = os.fork()
        if pid == 0:  # child: a second process on the same store
            code = 1
            try:
                os.close(read_end)
                ImageStore(store.root).tag("busybox", "from-child:1")
                os.write(write_end, b"tagged")
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        time.sleep(0.5)
        # The child is stuck waiting for the lock: it has not tagged yet.
        assert not store.exists("from-child:1")
        assert os.waitpid(pid, os.WNOHANG) == (0, 0)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as pipe:
        assert pipe.read() == b"tagged"
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.resolve("from-child:1").id == image.id
