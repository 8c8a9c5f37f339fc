"""Container root filesystems: real overlay mounts over the image store's shared layers."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import tarfile
from pathlib import Path

import imagedata
import pytest
from imagedata import tar_bytes, write_docker_archive

from nsbox.engine.images import ImageStore, ensure_busybox
from nsbox.engine.storage import MOUNT_OPTIONS_LIMIT, Storage
from nsbox.errors import ConfigError, ContainerExists, ContainerNotFound, ImageError, KernelError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="overlay mounts need root")


# The shared fixtures (tests/imagedata.py), bound here so that pytest finds them.
store, storage = imagedata.store, imagedata.storage


def overlay_options(merged: str) -> str:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == merged:
                return fields[-1]
    raise AssertionError(f"{merged} not mounted")


def test_create_mount_write_unmount_remove(store: ImageStore, storage: Storage) -> None:
    image = ensure_busybox(store)
    info = storage.create_rootfs("c1", image)
    assert [Path(p).name for p in (info.upper, info.work, info.merged)] == ["upper", "work", "merged"]
    assert info.lower_dirs == image.lower_dirs and info.image_id == image.id
    record = json.loads((Path(info.dir) / "rootfs.json").read_text())
    assert record["layers"] == [layer.chain_id for layer in image.layers]
    assert not storage.is_mounted("c1")

    merged = storage.mount("c1")
    assert merged == info.merged and storage.is_mounted("c1")
    assert storage.mount("c1") == merged  # idempotent: still one mount
    assert sum(1 for p in _all_mount_points() if p == merged) == 1
    assert f"upperdir={info.upper}" in overlay_options(merged)
    proc = subprocess.run(["chroot", merged, "/bin/sh", "-c",
                           "echo hello > /root/note; rm /etc/group; id -un"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout == "root\n", proc.stderr
    # The change lands in the upper dir; the shared layer is untouched.
    assert (Path(info.upper) / "root/note").read_text() == "hello\n"
    assert (Path(image.layers[0].path) / "etc/group").exists()
    whiteout = os.lstat(Path(info.upper) / "etc/group")
    assert whiteout.st_rdev == 0 and (whiteout.st_mode & 0o170000) == 0o020000
    assert storage.diff_size("c1") == len("hello\n")

    storage.unmount("c1")
    assert not storage.is_mounted("c1") and merged not in _all_mount_points()
    storage.unmount("c1")  # idempotent
    assert (Path(info.upper) / "root/note").exists()  # survives an unmount
    storage.remove("c1")
    assert not os.path.exists(info.dir) and storage.list() == []
    storage.remove("c1")  # idempotent
    assert os.listdir(storage.containers_dir) == []


def _all_mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f]


def test_two_containers_share_layers(store: ImageStore, storage: Storage) -> None:
    image = ensure_busybox(store)
    one, two = storage.create_rootfs("one", image), storage.create_rootfs("two", image)
    first, second = Path(storage.mount("one")), Path(storage.mount("two"))
    (first / "tmp/mine").write_text("one")
    assert not (second / "tmp/mine").exists()
    assert (first / "bin/busybox").stat().st_ino == (second / "bin/busybox").stat().st_ino
    assert one.lower_dirs == two.lower_dirs
    storage.remove("one")
    storage.remove("two")
    assert not [p for p in _all_mount_points() if p.startswith(store.root)]


def test_remove_unmounts(store: ImageStore, storage: Storage) -> None:
    storage.create_rootfs("busy", ensure_busybox(store))
    merged = storage.mount("busy")
    storage.remove("busy")
    assert merged not in _all_mount_points() and not os.path.exists(merged)


def test_failed_mount_leaves_no_mount(store: ImageStore, storage: Storage) -> None:
    image = ensure_busybox(store)
    info = storage.create_rootfs("bad", image)
    # A work dir on another filesystem than upper: overlayfs refuses the mount.
    os.rmdir(info.work)
    os.symlink("/dev/shm", info.work)
    with pytest.raises(KernelError) as raised:
        storage.mount("bad")
    assert raised.value.errno in (errno.EINVAL, errno.EXDEV, errno.ENOTDIR, errno.ELOOP)
    assert not storage.is_mounted("bad")
    os.unlink(info.work)
    os.mkdir(info.work)
    # A layer directory that went missing: refused before mounting.
    storage.create_rootfs("gone", image)
    os.rename(image.layers[0].path, image.layers[0].path + ".away")
    try:
        with pytest.raises(ImageError):
            storage.mount("gone")
        assert not storage.is_mounted("gone")
    finally:
        os.rename(image.layers[0].path + ".away", image.layers[0].path)


def test_ids_and_duplicates(store: ImageStore, storage: Storage) -> None:
    image = ensure_busybox(store)
    storage.create_rootfs("dup", image)
    with pytest.raises(ContainerExists):
        storage.create_rootfs("dup", image)
    for bad in ("../escape", "a/b", "", ".hidden", "x" * 200):
        with pytest.raises(ConfigError):
            storage.create_rootfs(bad, image)
    with pytest.raises(ContainerNotFound):
        storage.mount("nosuch")
    with pytest.raises(ConfigError):
        Storage("/tmp/with,comma")


def test_tall_image_mounts_through_short_links(store: ImageStore, storage: Storage,
                                               tmp_path: Path) -> None:
    layers = [tar_bytes([(f"f{i:03d}", "file", f"layer {i}".encode())]) for i in range(60)]
    layers.append(tar_bytes([(".wh.f000", "file")]))
    archive = write_docker_archive(tmp_path / "tall.tar", [(layers, ["tall:1"], None)])
    store.load(str(archive))
    image = store.resolve("tall:1")
    info = storage.create_rootfs("tall", image)
    assert len(storage._options(info, relative=False)) > MOUNT_OPTIONS_LIMIT
    merged = Path(storage.mount("tall"))
    try:
        assert "lowerdir=l/" in overlay_options(str(merged))
        assert not (merged / "f000").exists()
        assert (merged / "f059").read_text() == "layer 59"
        assert len(os.listdir(merged)) == 59
        assert os.getcwd() != store.layers_dir
    finally:
        storage.unmount("tall")


@pytest.mark.parametrize("mounted", [True, False], ids=["mounted", "unmounted"])
def test_export(store: ImageStore, storage: Storage, tmp_path: Path, mounted: bool) -> None:
    image = ensure_busybox(store)
    info = storage.create_rootfs("exp", image)
    merged = Path(storage.mount("exp"))
    (merged / "root/new").write_text("exported")
    (merged / "etc/passwd").unlink()
    if not mounted:
        storage.unmount("exp")
    dest = tmp_path / "export.tar"
    storage.export("exp", str(dest))
    assert storage.is_mounted("exp") == mounted
    with tarfile.open(dest) as tar:
        names = set(tar.getnames())
        assert tar.extractfile("root/new").read() == b"exported"
        assert tar.getmember("bin/sh").issym()
        assert tar.getmember("tmp").mode == 0o1777
    assert "etc/passwd" not in names and "etc/group" in names
    assert not [n for n in names if ".wh." in n]
    assert [p for p in os.listdir(tmp_path) if p.startswith(".nsbox-export")] == []
    if mounted:
        storage.unmount("exp")
    assert not [p for p in _all_mount_points() if p.startswith(info.dir)]


def test_export_failure_leaves_nothing(store: ImageStore, storage: Storage, tmp_path: Path) -> None:
    image = ensure_busybox(store)
    info = storage.create_rootfs("ex2", image)
    os.rmdir(info.merged)  # nowhere to mount
    with pytest.raises(KernelError):
        storage.export("ex2", str(tmp_path / "never.tar"))
    assert not (tmp_path / "never.tar").exists()
    assert [p for p in os.listdir(tmp_path) if p.startswith(".nsbox-export")] == []
    os.mkdir(info.merged)
