"""COPY and ADD: files from the context (or another stage, or an image) as a new layer.

Where a source lands follows Docker: a directory's contents go into the
destination, which is then a directory; a file goes into the destination if
it ends with `/`, already is a directory, or several sources are given, and
is otherwise written as the destination path itself.  A relative destination
is relative to WORKDIR.  Files from the context belong to 0:0 unless
--chown; files from a stage keep their owners.  ADD also unpacks a local tar
archive (plain, gzip, bzip2, xz) into the destination; ADD of a URL is
refused (the build has no network of its own to fetch with).

Writes go through lifecycle/copy.View, which resolves every path inside the
rootfs being built, so a symlink in a base image cannot redirect a COPY onto
the host.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
import tempfile

from nsbox._lite import suppress
from nsbox.engine.images.staging import owned_prefix
from nsbox.engine.lifecycle.copy import View, ensure_dir, extract
from nsbox.engine.procs import crashpoint

from .cache import State, step_key
from .context import SourceTar, resolve_sources
from .instructions import chown_ids
from .layers import BuildRootfs, commit_layer, history_entry, overlay_kind
from .parser import BuildSyntaxError, Instruction, expand, json_array

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .executor import Builder


def _is_archive(host: str) -> bool:
    if not os.path.isfile(host):
        return False
    try:
        with tarfile.open(host, "r:*") as tar:
            tar.next()
        return True
    except (tarfile.TarError, OSError, EOFError):
        return False


class _Sources:
    """Where a COPY reads from: the context or a mounted stage, as a View."""

    def __init__(self, builder: Builder, instruction: Instruction, where: str) -> None:
        self.builder = builder
        self.rootfs: BuildRootfs | None = None
        self.from_stage = instruction.flags.get("from")
        self.ignore = None
        if self.from_stage is None:
            self.view = View(builder.context_dir)
            self.ignore = builder.ignore
            return
        state = builder.source_state(self.from_stage, where)
        self.rootfs = BuildRootfs(builder.engine, state).__enter__()
        self.view = View(self.rootfs.merged)

    def close(self) -> None:
        if self.rootfs is not None:
            self.rootfs.__exit__()
            self.rootfs = None


def copy_step(builder: Builder, instruction: Instruction, state: State,
              variables: dict[str, str], where: str) -> tuple[State, bool]:
    """Run one COPY/ADD on STATE; the new state and whether it came from the cache."""
    keyword = instruction.keyword
    words = json_array(instruction.args)
    if words is not None:
        words = [str(expand(w, variables, builder.escape, where=where)) for w in words]
    else:
        words = expand(instruction.args, variables, builder.escape, words=True, where=where)
    assert isinstance(words, list)
    if len(words) < 2:
        raise BuildSyntaxError(f"{where}{keyword} requires at least two arguments (SOURCE... DEST)")
    patterns, dest = words[:-1], words[-1]
    if keyword == "ADD":
        for src in patterns:
            if "://" in src:
                raise BuildSyntaxError(f"{where}ADD {src}: fetching URLs is not supported; "
                                       "download it into the context and COPY it")
        if "from" in instruction.flags:
            raise BuildSyntaxError(f"{where}ADD has no --from; use COPY --from")
    chmod = None
    if "chmod" in instruction.flags:
        try:
            chmod = int(instruction.flags["chmod"], 8)
        except ValueError:
            raise BuildSyntaxError(f"{where}--chmod wants an octal mode, not "
                                   f"{instruction.flags['chmod']!r}") from None
        if not 0 <= chmod <= 0o7777:
            raise BuildSyntaxError(f"{where}--chmod {instruction.flags['chmod']}: out of range")
    chown = instruction.flags.get("chown")
    if chown is not None:
        chown = str(expand(chown, variables, builder.escape, where=where))
    sources = _Sources(builder, instruction, where)
    try:
        found = resolve_sources(sources.view, patterns, sources.ignore, f"{where}{keyword}")
        multiple = len(found) > 1 or any(_glob(p) for p in patterns)
        if multiple and not dest.endswith("/"):
            raise BuildSyntaxError(f"{where}{keyword} with more than one source file: the "
                                   f"destination must be a directory and end with a /")
        # Files from the context belong to root; from a stage they keep their owners (an
        # archive ADD unpacks keeps the owners its entries name).
        keep_ids = sources.from_stage is not None
        archives = set()
        with open(os.devnull, "wb") as sink:
            summary = SourceTar(sink, None if keep_ids else (lambda u, g: (0, 0)), chmod)
            try:
                for source in found:
                    host = sources.view.host(source.path)
                    if keyword == "ADD" and not source.is_dir and _is_archive(host):
                        archives.add(source.path)
                    summary.add_tree(sources.view, source.path,
                                     "" if source.is_dir else posixpath.basename(source.path),
                                     sources.ignore)
            finally:
                digest = summary.close()
        kind = "multi" if len(found) > 1 else "dir" if found[0].is_dir else "file"
        created_by = f"/bin/sh -c #(nop) {keyword} {kind}:{digest.removeprefix('sha256:')} in {dest} "
        key = step_key(state, f"{keyword} {patterns!r} {dest}",
                       {"content": digest, "chown": chown, "chmod": chmod,
                        "workdir": state.section.get("WorkingDir") or "/"})
        cached = builder.cached(key)
        if cached is not None:
            return cached, True
        result = _write(builder, state, sources, found, archives, dest, multiple, chown, chmod,
                        keep_ids, key, created_by, where)
        return result, False
    finally:
        sources.close()


def _glob(pattern: str) -> bool:
    from .context import has_glob
    return has_glob(pattern)


def _write(builder: Builder, state: State, sources: _Sources, found: list, archives: set,  # noqa: ANN001
           dest: str, multiple: bool, chown: str | None, chmod: int | None, keep_ids: bool,
           key: str, created_by: str, where: str) -> State:
    engine = builder.engine
    workdir = state.section.get("WorkingDir") or "/"
    target = posixpath.join(workdir, dest)
    into_dir = dest.endswith(("/", "/.")) or dest in (".", "./") or multiple
    with BuildRootfs(engine, state) as rootfs:
        view = View(rootfs.merged)
        ids = None
        if chown:
            passwd = view.host(view.resolve("/etc/passwd", True))
            group = view.host(view.resolve("/etc/group", True))
            ids = chown_ids(chown, passwd, group, where)

        def owner(uid: int, gid: int) -> tuple[int, int]:
            return ids if ids is not None else (uid, gid)

        resolved = view.resolve(target, True)
        if os.path.isdir(view.host(resolved)):
            into_dir = True
        staging = tempfile.mkdtemp(prefix=owned_prefix("build-copy-"),
                                   dir=engine.images.layout.tmp_dir)
        try:
            for index, source in enumerate(found):
                src_host = sources.view.host(source.path)
                if source.path in archives:
                    cdir = ensure_dir(view, target, owner)
                    with tarfile.open(src_host, "r:*") as tar:
                        extract(tar, view, cdir, owner, strict=False)
                    continue
                if source.is_dir:
                    cdir, arcname = ensure_dir(view, target, owner), ""
                elif into_dir:
                    cdir, arcname = ensure_dir(view, target, owner), posixpath.basename(source.path)
                else:
                    cdir = ensure_dir(view, posixpath.dirname(resolved) or "/", owner)
                    arcname = posixpath.basename(resolved)
                tar_path = os.path.join(staging, f"{index}.tar")
                with open(tar_path, "wb") as out:
                    writer = SourceTar(out, None if keep_ids else (lambda u, g: (0, 0)), chmod)
                    try:
                        writer.add_tree(sources.view, source.path, arcname, sources.ignore)
                    finally:
                        writer.close()
                with tarfile.open(tar_path, "r") as tar:
                    extract(tar, view, cdir, owner, strict=False)
                with suppress(FileNotFoundError):
                    os.unlink(tar_path)
        finally:
            import shutil
            shutil.rmtree(staging, ignore_errors=True)
        crashpoint("build.copy.written")
        rootfs.unmount()
        return commit_layer(engine.images, builder.cache, key, rootfs.upper, state,
                            history_entry(created_by, False), overlay_kind())
