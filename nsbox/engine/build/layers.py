"""What a build step does to the image store and the engine: layers and containers.

A RUN runs in a real nsbox container made by Engine.create from the state so far
(stored for the moment as a dangling image), so it has the isolation of any
container; the container's overlay upper dir then becomes the step's layer, as
in `nsbox commit` (whiteouts in OCI form).  A COPY mounts the state's layers
with an empty upper dir under <root>/containers/build-<pid>-<hex> (a rootfs
without a container, made by engine/storage.py), writes into it, and the
upper dir becomes the layer the same way.

A layer goes through the store's transaction: the tar is staged in
<root>/tmp, its digest computed, the blob and the unpacked directory renamed
into place, and the cache record that keeps it is written while the store
lock is still held, so no garbage collection can see the layer unowned.  A
crash leaves only staging files, a build rootfs whose owner is dead (swept
by the next build) or a build container (labelled, likewise swept).
"""

from __future__ import annotations

import os
import time

from nsbox._lazylog import get_logger
from nsbox._lite import suppress
from nsbox.engine.images import config as imgconfig
from nsbox.engine.images.importer import blob_from_tree
from nsbox.engine.images.layout import MEDIA_OCI_LAYER, canonical_json
from nsbox.engine.images.records import Image
from nsbox.engine.images.staging import sweep_dead
from nsbox.engine.procs import crashpoint
from nsbox.errors import ContainerNotFound, NsboxError

from .cache import BuildCache, State

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

log = get_logger(__name__)

BUILD_LABEL = "io.nsbox.build-pid"
ROOTFS_PREFIX = "build-"


class BuildRunError(NsboxError):
    """A RUN step whose command failed."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_leftovers(engine) -> None:  # noqa: ANN001
    """Remove build rootfs dirs, build containers and staging files whose process is gone."""
    sweep_dead(engine.images.layout.tmp_dir)
    with suppress(FileNotFoundError):
        for name in os.listdir(engine.storage.containers_dir):
            if not name.startswith(ROOTFS_PREFIX):
                continue
            pid = name[len(ROOTFS_PREFIX):].partition("-")[0]
            if pid.isdigit() and not _alive(int(pid)):
                with suppress(NsboxError, OSError):
                    engine.storage.remove(name)
    for container in engine.list(all=True):
        pid = (container.spec.labels or {}).get(BUILD_LABEL, "")
        if pid.isdigit() and not _alive(int(pid)):
            with suppress(NsboxError):
                engine.remove(container.id, force=True)


def overlay_kind() -> str:
    from nsbox.engine import rootless
    return "user" if rootless.active() else "trusted"


def pseudo_image(state: State) -> Image:
    """STATE as an Image record (not stored): what storage.create_rootfs needs."""
    return Image(id=state.id, manifest_digest="", config=state.config, names=[],
                 layers=list(state.layers))


class BuildRootfs:
    """STATE's layers mounted with a private upper dir, for COPY (a context manager)."""

    def __init__(self, engine, state: State) -> None:  # noqa: ANN001
        self.engine = engine
        self.state = state
        self.id = f"{ROOTFS_PREFIX}{os.getpid()}-{os.urandom(6).hex()}"
        self.merged = ""
        self.upper = ""

    def __enter__(self) -> BuildRootfs:
        info = self.engine.storage.create_rootfs(self.id, pseudo_image(self.state))
        try:
            self.merged = self.engine.storage.mount(self.id)
        except BaseException:
            with suppress(NsboxError, OSError):
                self.engine.storage.remove(self.id)
            raise
        self.upper = info.upper
        return self

    def unmount(self) -> None:
        self.engine.storage.unmount(self.id)

    def __exit__(self, *exc: object) -> None:
        with suppress(NsboxError, OSError):
            self.engine.storage.remove(self.id)


def commit_layer(store, cache: BuildCache, key: str, upper: str, state: State,  # noqa: ANN001
                 history: dict, overlay: str) -> State:
    """STATE plus the layer made of the overlay upper dir UPPER, recorded in CACHE under KEY."""
    with store._transaction() as txn:
        blob_digest, blob_size = blob_from_tree(store, txn, upper, None, overlay=overlay)
        crashpoint("build.layer.staged")
        # The blob is an uncompressed tar: its digest is the diff id.
        layer = store._ensure_layer(txn, blob_digest, MEDIA_OCI_LAYER, blob_size, state.layers,
                                    blob_digest, "reject", None, verify_blob=False,
                                    label="build step")
        crashpoint("build.layer.unpacked")
        result = state.copy()
        result.layers.append(layer)
        result.config["rootfs"] = {"type": "layers",
                                   "diff_ids": [x.diff_id for x in result.layers]}
        result.config["created"] = history["created"]
        result.config["history"] = [*(result.config.get("history") or []), history]
        cache.put(key, result)
        crashpoint("build.layer.recorded")
    return result


def store_image(store, state: State, names: list[str]) -> tuple[Image, bool]:  # noqa: ANN001
    """STATE as an image in the store, named NAMES; and whether that image is new."""
    existed = store.exists(state.id)
    with store._transaction() as txn:
        image = store._commit(txn, canonical_json(state.config), list(state.layers), names)
    return image, not existed


def forget_image(store, image: Image) -> None:  # noqa: ANN001
    """Drop a temporary (unnamed) image's index entry; its layers stay for the cache."""
    with store._transaction():
        entries = store.layout.read_index()
        kept = [e for e in entries if not (e.digest == image.manifest_digest and not e.name)]
        if len(kept) != len(entries):
            store.layout.write_index(kept)


def run_container(engine, state: State, argv: list[str], env: dict[str, str],  # noqa: ANN001
                  network: str | None, output: Callable[[str, bytes], None],
                  then: Callable[[str], State], what: str = "RUN") -> State:
    """Run ARGV in a container of STATE; THEN(upper dir) makes the step's result.

    OUTPUT gets (stream, data) as the command writes.  A command that exits
    non-zero raises BuildRunError; the container and the temporary image go
    either way.
    """
    from nsbox.engine import flags
    from nsbox.engine.logs import split_record

    store = engine.images
    image, made = store_image(store, state, [])
    cid = None
    try:
        crashpoint("build.run.image")
        section = state.section
        options = {"env": [f"{k}={v}" for k, v in env.items()], "entrypoint": "",
                   "label": [f"{BUILD_LABEL}={os.getpid()}"]}
        if network:
            options["network"] = [network]
        if section.get("User"):
            options["user"] = section["User"]
        if section.get("WorkingDir"):
            options["workdir"] = section["WorkingDir"]
        spec = flags.build_spec(image.id, argv, options)
        spec.entrypoint = []
        container = engine.create(spec, then_start=True)
        cid = container.id
        attached = engine.start_attached(cid)
        crashpoint("build.run.started")
        for record in attached.logs():
            stream, _, data = split_record(record)
            output(stream, data)
        code = attached.finish(remove=False)
        if code != 0:
            raise BuildRunError(f"{what}: the command exited with status {code}")
        return then(engine.storage.rootfs(cid).upper)
    finally:
        if cid is not None:
            with suppress(ContainerNotFound):
                engine.remove(cid, force=True)
        if made:
            forget_image(store, image)


def history_entry(created_by: str, empty: bool) -> dict:
    entry: dict = {"created": imgconfig.format_time(time.time()), "created_by": created_by}
    if empty:
        entry["empty_layer"] = True
    return entry
