"""`cp` between the host and a container, seeing the container's mounts as Docker does.

A container path is resolved against the mount list of the container's
config.json: the longest mount destination containing the path wins; a bind
mount (volumes, binds, /etc/hosts, hostname, resolv.conf) maps into its host
source, the rest is the overlay rootfs.  Other mounts (tmpfs, ...) of a
running container are reached through /proc/PID/root, which sees its mount
namespace; a stopped container's have no content.  Symlinks are resolved one
component at a time inside the container's view, the mount table consulted
after each hop, so no path leaves the container's root or a bind's source.

Everything travels as a tar stream (`-` on either side is one): the source
tree is archived with the mounts below it, and the stream is extracted entry
by entry, each entry's parent resolved in the destination's view.
"""

from __future__ import annotations

import os
import stat
import tarfile

from nsbox import _json
from nsbox.engine.lifecycle.record import ACTIVE
from nsbox.errors import ConfigError, NsboxError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nsbox.engine.lifecycle.record import Container
    from nsbox.engine.lifecycle.state import EngineBase

PSEUDO = {"proc", "sysfs", "cgroup", "cgroup2", "devpts", "mqueue"}  # not archived below


class CopyError(NsboxError):
    exit_code = 1


class _Mount:
    __slots__ = ("dest", "kind", "source", "ro", "type")

    def __init__(self, dest: str, kind: str, source: str | None, ro: bool, type_: str) -> None:
        self.dest, self.kind, self.source, self.ro, self.type = dest, kind, source, ro, type_


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def _under(path: str, dest: str) -> bool:
    return dest == "/" or path == dest or path.startswith(dest + "/")


class View:
    """A filesystem as some process sees it: mounts over a root, paths absolute in it."""

    def __init__(self, root: str, ro: bool = False, name: str = "", proc_root: str | None = None,
                 uid_map: list | None = None, gid_map: list | None = None) -> None:
        self.mounts = [_Mount("/", "bind", root, ro, "rootfs")]
        self.name, self.proc_root = name, proc_root
        self.uid_map, self.gid_map = uid_map or [], gid_map or []

    def add_mount(self, m: dict) -> None:
        options = m.get("options") or []
        kind = "bind" if m.get("type") == "bind" or "bind" in options or "rbind" in options \
            else "other"
        try:
            dest = self.resolve(m.get("destination", "/"), True)  # as the runtime mounted it
        except NsboxError:
            dest = os.path.normpath("/" + m.get("destination", "/"))
        source = m.get("source") if kind == "bind" else self.proc_root
        self.mounts.append(_Mount(dest, kind, source, "ro" in options, m.get("type") or kind))

    def mount_for(self, cpath: str, below: bool = False) -> _Mount:
        best = None
        for m in self.mounts:  # later mounts shadow earlier ones at the same place
            if _under(cpath, m.dest) and not (below and m.dest == cpath and m.dest != "/") \
                    and (best is None or len(m.dest) >= len(best.dest)):
                best = m
        return best

    def host(self, cpath: str, below: bool = False) -> str:
        """The host path of CPATH (symlink-free), through its mount; CopyError if none."""
        m = self.mount_for(cpath, below)
        if m.source is None:
            raise CopyError(f"{cpath} is on a {m.type} mount ({m.dest}) of container {self.name}: "
                            "it has no content while the container is stopped")
        rel = (cpath if m.kind == "other" or m.dest == "/" else cpath[len(m.dest):]).strip("/")
        return os.path.join(m.source, rel) if rel else m.source

    def resolve(self, path: str, follow_last: bool) -> str:
        """PATH with its symlinks resolved inside this view (the last one only if FOLLOW_LAST)."""
        parts, resolved, hops = _parts(path), [], 0
        while parts:
            part = parts.pop(0)
            if part == "..":
                if resolved:
                    resolved.pop()
                continue
            cand = "/" + "/".join([*resolved, part])
            if (parts or follow_last) and not any(m.dest == cand for m in self.mounts):
                host = self.host(cand)
                if os.path.islink(host):
                    hops += 1
                    if hops > 40:
                        raise CopyError(f"too many levels of symbolic links in {path}")
                    target = os.readlink(host)
                    if target.startswith("/"):
                        resolved = []
                    parts = _parts(target) + parts
                    continue
            resolved.append(part)
        return "/" + "/".join(resolved)

    def check_writable(self, cpath: str) -> None:
        m = self.mount_for(cpath)
        if m.ro:
            what = "container rootfs" if m.dest == "/" else "mounted volume"
            raise CopyError(f"{what} is marked read-only: cannot copy into {cpath}")

    def to_host(self, uid: int, gid: int) -> tuple[int, int]:
        return _map(uid, self.uid_map, "containerID", "hostID", uid), \
            _map(gid, self.gid_map, "containerID", "hostID", gid)

    def to_container(self, uid: int, gid: int) -> tuple[int, int]:
        if not self.uid_map:
            return uid, gid
        return _map(uid, self.uid_map, "hostID", "containerID", 65534), \
            _map(gid, self.gid_map, "hostID", "containerID", 65534)


def _map(ident: int, mapping: list, frm: str, to: str, default: int) -> int:
    for r in mapping:
        if r[frm] <= ident < r[frm] + r["size"]:
            return r[to] + ident - r[frm]
    return default


def container_view(c: Container, merged: str) -> View:
    try:
        with open(os.path.join(c.bundle, "config.json")) as f:
            config = _json.loads(f.read())
    except (OSError, ValueError):
        config = {}
    linux = config.get("linux") or {}
    running = c.state in ACTIVE and c.pid and os.path.exists(f"/proc/{c.pid}/root")
    view = View(merged, bool((config.get("root") or {}).get("readonly")), c.name,
                f"/proc/{c.pid}/root" if running else None,
                linux.get("uidMappings"), linux.get("gidMappings"))
    for m in config.get("mounts") or []:
        view.add_mount(m)
    return view


# -- archiving ----------------------------------------------------------------

def archive(tar: tarfile.TarFile, view: View, cpath: str, arcname: str, ids, top: bool = True) -> None:  # noqa: ANN001
    """Add CPATH of VIEW (and what is below it, mounts included) as ARCNAME ("": its contents)."""
    try:
        host = view.host(cpath)
    except CopyError:  # a stopped container's tmpfs...: below the top, its mount point
        if top or view.mount_for(cpath).dest != cpath:
            raise
        host = view.host(cpath, below=True)
    if arcname:
        info = tar.gettarinfo(host, arcname)
        if info is None:  # a socket
            return
        info.uid, info.gid = ids(info.uid, info.gid)
        info.uname = info.gname = ""
        if info.isreg():
            fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                tar.addfile(info, f)
        else:
            tar.addfile(info)
        if not info.isdir():
            return
    elif not os.path.isdir(host):
        return
    m = view.mount_for(cpath)
    if not top and m.dest == cpath and m.kind == "other" and (m.source is None or m.type in PSEUDO):
        return  # a stopped container's tmpfs, or /proc, /sys...: its mount point only
    try:
        host = view.host(cpath)
    except CopyError:
        return
    for name in sorted(os.listdir(host)):
        archive(tar, view, cpath.rstrip("/") + "/" + name, f"{arcname}/{name}" if arcname else name,
                ids, top=False)


# -- extracting ---------------------------------------------------------------

class EntryRefused(tarfile.TarError):
    """A tar entry extraction refuses (Python's own tarfile.FilterError is 3.11.4+: Debian
    12's python3 is 3.11.2)."""

    def __init__(self, tarinfo: tarfile.TarInfo, message: str) -> None:
        super().__init__(message)
        self.tarinfo = tarinfo


def entry_filter(member: tarfile.TarInfo, dest: str, strict: bool = True) -> tarfile.TarInfo | None:
    """The tarfile filter of extraction: names must stay below DEST (None: the "." entry).

    STRICT (a stream from outside) also refuses links pointing out of DEST.
    """
    name = member.name
    if name.startswith("/") or ".." in name.split("/"):
        raise EntryRefused(member, f"{name!r} would be extracted outside {dest!r}")
    parts = _parts(name)
    if not parts:
        return None
    if member.islnk() or (strict and member.issym()):
        link = member.linkname if member.islnk() else os.path.join(*parts[:-1], member.linkname) \
            if parts[:-1] else member.linkname
        if member.linkname.startswith("/"):
            raise EntryRefused(member, f"{name!r} is a link to an absolute path")
        if os.path.normpath(link).split("/")[0] == "..":
            raise EntryRefused(member, f"{name!r} would link outside {dest!r}")
    import copy
    renamed = copy.copy(member)  # TarInfo.replace() is 3.11.4+ too
    renamed.name = "/".join(parts)
    return renamed


def extract(tar: tarfile.TarFile, view: View, cdir: str, owner, strict: bool) -> None:  # noqa: ANN001
    """Extract TAR below CDIR of VIEW; OWNER maps each entry's (uid, gid)."""
    dirs = []
    for member in tar:
        try:
            member = entry_filter(member, cdir, strict)
        except EntryRefused as exc:
            raise CopyError(f"invalid tar entry {exc.tarinfo.name!r}: {exc}") from None
        if member is None:
            continue
        head, _, base = member.name.rpartition("/")
        parent = ensure_dir(view, cdir.rstrip("/") + "/" + head if head else cdir, owner)
        target = parent.rstrip("/") + "/" + base
        view.check_writable(target)
        host = view.host(target)
        uid, gid = owner(member.uid, member.gid)
        old = os.lstat(host) if os.path.lexists(host) else None
        if member.isdir():
            if old is None or not stat.S_ISDIR(old.st_mode):
                if old is not None:
                    os.unlink(host)
                os.mkdir(host, 0o700)
            dirs.append((host, member, uid, gid))
            continue
        if old is not None and stat.S_ISDIR(old.st_mode):
            raise CopyError(f"cannot overwrite directory {target} with non-directory")
        if old is not None and not (member.isreg() and stat.S_ISREG(old.st_mode)):
            os.unlink(host)  # a regular file is rewritten in place (it may be a bind mount)
        if member.isreg():
            fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
            with os.fdopen(fd, "wb") as out:
                src = tar.extractfile(member)
                while chunk := src.read(1 << 20):
                    out.write(chunk)
        elif member.issym():
            os.symlink(member.linkname, host)
        elif member.islnk():
            link = view.host(view.resolve(cdir.rstrip("/") + "/" + member.linkname, False))
            try:
                os.link(link, host, follow_symlinks=False)
            except OSError:  # across mounts
                import shutil
                shutil.copy2(link, host, follow_symlinks=False)
            continue
        elif member.ischr() or member.isblk() or member.isfifo():
            kind = stat.S_IFIFO if member.isfifo() else stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(host, 0o600 | kind, os.makedev(member.devmajor, member.devminor))
        else:
            continue
        _attrs(host, member, uid, gid)
    for host, member, uid, gid in reversed(dirs):
        _attrs(host, member, uid, gid)


def _attrs(host: str, member: tarfile.TarInfo, uid: int, gid: int) -> None:
    os.chown(host, uid, gid, follow_symlinks=False)
    if not member.issym():
        os.chmod(host, member.mode & 0o7777)
    os.utime(host, (member.mtime, member.mtime), follow_symlinks=False)


def ensure_dir(view: View, cpath: str, owner) -> str:  # noqa: ANN001
    """CPATH resolved in VIEW, made a directory (and its parents) if it does not exist."""
    resolved = view.resolve(cpath, True)
    host = view.host(resolved)
    if os.path.isdir(host) and not os.path.islink(host):
        return resolved
    if os.path.lexists(host):
        raise CopyError(f"cannot copy into {resolved}: not a directory")
    parent = ensure_dir(view, os.path.dirname(resolved), owner)
    resolved = parent.rstrip("/") + "/" + os.path.basename(resolved)
    view.check_writable(resolved)
    host = view.host(resolved)
    os.mkdir(host, 0o755)
    os.chown(host, *owner(0, 0))
    return resolved


# -- cp -----------------------------------------------------------------------

def cp(engine: EngineBase, src: str, dst: str, archive_ids: bool = False, follow_link: bool = False,
       stdin=None, stdout=None) -> None:  # noqa: ANN001
    """Copy between the host and a container; "CTR:/path" on one side, "-" (a tar stream
    on STDIN/STDOUT) possibly on the other.  ARCHIVE_IDS (-a) keeps the source's owners,
    FOLLOW_LINK (-L) follows a symlink SRC."""
    src_ctr, src_path = split(src)
    dst_ctr, dst_path = split(dst)
    if (src_ctr is None) == (dst_ctr is None):
        raise ConfigError("cp: exactly one of SRC and DST must be CONTAINER:PATH")
    c = engine.get(src_ctr or dst_ctr)
    was_mounted = engine.storage.is_mounted(c.id)
    merged = engine.storage.mount(c.id)
    try:
        view = container_view(c, merged)
        if src_ctr is not None:
            _copy_out(view, src_path, dst_path, archive_ids, follow_link, stdout)
        else:
            _copy_in(view, src_path, dst_path, archive_ids, follow_link, stdin)
    finally:
        if not was_mounted and engine.get(c.id).state not in ACTIVE:
            engine.storage.unmount(c.id)


def split(text: str) -> tuple[str | None, str]:
    head, sep, tail = text.partition(":")
    if sep and head and "/" not in head and not head.startswith("."):
        return head, tail or "/"
    return None, text


def _not_found(view: View, path: str) -> CopyError:
    return CopyError(f"Could not find the file {path} in container {view.name}")


def _destination(view: View, path: str, src_is_dir: bool, contents: bool, src_name: str,
                 missing) -> tuple[str, str]:  # noqa: ANN001
    """Docker's rules for where SRC lands at PATH of VIEW: (directory, name; "" = contents)."""
    target = view.resolve(path, True)
    host = view.host(target)
    if os.path.isdir(host):
        return target, "" if contents else src_name
    if os.path.lexists(host):
        if src_is_dir:
            raise CopyError(f"cannot copy a directory to a file: {path}")
    elif path.endswith(("/", "/.")):
        raise missing(path)
    elif not os.path.isdir(view.host(os.path.dirname(target))):
        raise missing(os.path.dirname(path.rstrip("/")) or "/")
    return os.path.dirname(target), os.path.basename(target)


def _copy_out(view: View, src_path: str, dst: str, archive_ids: bool, follow: bool, stdout) -> None:  # noqa: ANN001
    cpath = view.resolve(src_path, follow)
    host = view.host(cpath)
    if not os.path.lexists(host):
        raise _not_found(view, src_path)
    is_dir = stat.S_ISDIR(os.lstat(host).st_mode)
    contents = is_dir and (cpath == "/" or src_path.endswith("/."))
    name = os.path.basename(cpath)
    if dst == "-":
        with tarfile.open(fileobj=stdout, mode="w|") as tar:
            archive(tar, view, cpath, "" if contents else name, view.to_container)
        return
    local = View("/")
    def missing(p: str) -> CopyError:
        return CopyError(f"destination directory {p} does not exist")
    into, arcname = _destination(local, os.path.abspath(dst) + ("/" if dst.endswith("/") else ""),
                                 is_dir, contents, name, missing)
    euid, egid = os.geteuid(), os.getegid()
    owner = (lambda u, g: (u, g)) if archive_ids else (lambda u, g: (euid, egid))
    _pipe(lambda tar: archive(tar, view, cpath, arcname, view.to_container),
          lambda tar: extract(tar, View(local.host(into)), "/", owner, strict=False))


def _copy_in(view: View, src: str, dst_path: str, archive_ids: bool, follow: bool, stdin) -> None:  # noqa: ANN001
    root = view.to_host(0, 0)
    owner = view.to_host if archive_ids else (lambda u, g: root)
    if src == "-":
        target = view.resolve(dst_path, True)
        host = view.host(target)
        if not os.path.lexists(host):
            raise _not_found(view, dst_path)
        if not os.path.isdir(host):
            raise CopyError(f'destination "{view.name}:{dst_path}" must be a directory')
        view.check_writable(target)
        with tarfile.open(fileobj=stdin, mode="r|*") as tar:
            extract(tar, view, target, owner, strict=True)
        return
    source = os.path.realpath(src) if follow else os.path.abspath(src)
    if not os.path.lexists(source):
        raise CopyError(f"lstat {source}: no such file or directory")
    is_dir = stat.S_ISDIR(os.lstat(source).st_mode)
    contents = is_dir and (source == "/" or src.endswith("/."))
    into, arcname = _destination(view, dst_path, is_dir, contents, os.path.basename(source),
                                 lambda p: _not_found(view, p))
    view.check_writable(os.path.join(into, arcname))
    _pipe(lambda tar: archive(tar, View("/"), source, arcname, lambda u, g: (u, g)),
          lambda tar: extract(tar, view, into, owner, strict=False))


def _pipe(write, read) -> None:  # noqa: ANN001
    """WRITE a tar stream in a thread while READ extracts it."""
    import threading
    r, w = os.pipe()
    failure: list[BaseException] = []

    def writer() -> None:
        try:
            with os.fdopen(w, "wb") as out, tarfile.open(fileobj=out, mode="w|") as tar:
                write(tar)
        except BaseException as exc:  # noqa: BLE001 - handed to the reader's thread
            failure.append(exc)

    thread = threading.Thread(target=writer, name="cp-archive", daemon=True)
    thread.start()
    try:
        with os.fdopen(r, "rb") as src, tarfile.open(fileobj=src, mode="r|") as tar:
            read(tar)
            while src.read(1 << 16):  # let the writer finish
                pass
    except BaseException:
        thread.join()
        if failure and not isinstance(failure[0], BrokenPipeError):
            raise failure[0] from None
        raise
    thread.join()
    if failure:
        raise failure[0]
