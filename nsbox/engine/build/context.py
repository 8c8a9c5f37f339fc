"""The build context: a directory (or a tar read from stdin), its ignore file, and COPY sources.

`.containerignore` (else `.dockerignore`) lists patterns in Go's filepath.Match
syntax plus `**` (any number of directories), one a line; `#` starts a comment
and `!` re-includes.  The last pattern that matches a path decides, and a
pattern that matches a directory also matches everything below it.

Sources are resolved inside the context with symlinks followed only inside it
(lifecycle/copy.View), so a context symlink cannot bring host files into an
image.  What a COPY takes is written to a tar (one entry per file, sorted) and
hashed for the layer cache: names, modes, link targets and content, never
mtimes, as Docker's cache checksum does.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import stat
import tarfile

from nsbox.errors import ConfigError

IGNORE_FILES = (".containerignore", ".dockerignore")
GLOB_CHARS = frozenset("*?[\\")


class BuildContextError(ConfigError):
    pass


# ------------------------------------------------------------------ patterns
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Go filepath.Match syntax, plus `**` for any number of path components."""
    out = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            if pattern[i:i + 2] == "**":
                i += 2
                if pattern[i:i + 1] == "/":
                    i += 1
                    out.append("(?:.*/)?")
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                raise BuildContextError(f"bad pattern {pattern!r}: unclosed '['")
            body = pattern[i + 1:end]
            if body.startswith("^"):
                body = "!" + body[1:]
            out.append("[" + ("^" + re.escape(body[1:]) if body.startswith("!") else re.escape(body))
                       .replace("\\-", "-") + "]")
            i = end
        elif ch == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out) + r"\Z")


class IgnoreRules:
    """The patterns of an ignore file, applied to context-relative paths (`a/b.txt`)."""

    def __init__(self, lines: list[str]) -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for line in lines:
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            keep = text.startswith("!")
            if keep:
                text = text[1:].strip()
            text = posixpath.normpath(text).lstrip("/")
            if text in ("", "."):
                continue
            self.rules.append((keep, _pattern_regex(text)))
        # With a `!` rule, something below an excluded directory may be included again.
        self.has_exceptions = any(keep for keep, _ in self.rules)

    def excluded(self, path: str) -> bool:
        if not self.rules:
            return False
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        result = False
        for keep, regex in self.rules:
            if any(regex.match(prefix) for prefix in prefixes):
                result = not keep
        return result


def load_ignore(context_dir: str) -> IgnoreRules:
    for name in IGNORE_FILES:
        path = os.path.join(context_dir, name)
        if os.path.isfile(path):
            with open(path, errors="replace") as f:
                return IgnoreRules(f.read().splitlines())
    return IgnoreRules([])


def has_glob(text: str) -> bool:
    return any(ch in GLOB_CHARS for ch in text)


# ------------------------------------------------------------------ context
def unpack_context(stream, dest: str) -> None:  # noqa: ANN001 - a binary stream
    """Extract a context tar (plain, gzip, bzip2 or xz) from STREAM into DEST, names kept below it."""
    from nsbox.engine.lifecycle.copy import CopyError, View, extract
    ids = (os.geteuid(), os.getegid())
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            # Names stay below DEST; symlinks are data (COPY resolves them inside the context).
            extract(tar, View(dest), "/", lambda uid, gid: ids, strict=False)
    except (tarfile.TarError, OSError, CopyError) as err:
        raise BuildContextError(f"reading the build context from stdin: {err}") from None


def find_containerfile(context_dir: str, name: str | None) -> str:
    """The Containerfile: NAME (relative to the context, or absolute), else Containerfile,
    else Dockerfile, in the context."""
    if name:
        path = name if os.path.isabs(name) else os.path.join(context_dir, name)
        if not os.path.isfile(path):
            raise BuildContextError(f"the Containerfile {name} does not exist")
        return path
    for candidate in ("Containerfile", "Dockerfile"):
        path = os.path.join(context_dir, candidate)
        if os.path.isfile(path):
            return path
    raise BuildContextError(f"no Containerfile or Dockerfile in {context_dir} (use -f)")


# ------------------------------------------------------------------ sources
class Source:
    """One COPY source: a path of VIEW (absolute in it) and the name it is known by."""

    __slots__ = ("path", "given", "is_dir")

    def __init__(self, path: str, given: str, is_dir: bool) -> None:
        self.path, self.given, self.is_dir = path, given, is_dir


def _walk_matches(view, regex: re.Pattern[str], ignore: IgnoreRules | None) -> list[str]:  # noqa: ANN001
    found = []
    root = view.host("/")
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        for name in sorted(dirnames + filenames):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if regex.match(rel) and not (ignore and ignore.excluded(rel)):
                found.append("/" + rel)
        dirnames.sort()
    return sorted(found)


def resolve_sources(view, patterns: list[str], ignore: IgnoreRules | None,  # noqa: ANN001
                    what: str) -> list[Source]:
    """The paths of VIEW that PATTERNS name (globs expanded; IGNORE-d paths left out)."""
    sources: list[Source] = []
    for given in patterns:
        clean = posixpath.normpath("/" + given)
        if has_glob(clean):
            matches = _walk_matches(view, _pattern_regex(clean.lstrip("/")), ignore)
            if not matches:
                raise BuildContextError(f"{what}: no source files were specified: "
                                        f"{given!r} matches nothing")
        else:
            rel = clean.lstrip("/")
            if rel and ignore and ignore.excluded(rel):
                raise BuildContextError(f"{what}: {given}: file not found in build context or "
                                        "excluded by .containerignore/.dockerignore")
            matches = [clean]
        for path in matches:
            resolved = view.resolve(path, True)
            host = view.host(resolved)
            if not os.path.lexists(host):
                raise BuildContextError(f"{what}: {given}: no such file or directory")
            sources.append(Source(resolved, path, os.path.isdir(host)))
    return sources


class SourceTar:
    """A tar of sources to extract at the destination, and a digest of what it holds."""

    def __init__(self, out, owner, chmod: int | None) -> None:  # noqa: ANN001
        self.tar = tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT)
        self.hasher = hashlib.sha256()
        self.owner = owner          # (uid, gid) -> (uid, gid); None keeps them
        self.chmod = chmod
        self.count = 0

    def close(self) -> str:
        self.tar.close()
        return "sha256:" + self.hasher.hexdigest()

    def add(self, host: str, arcname: str) -> None:
        info = self.tar.gettarinfo(host, arcname)
        if info is None:  # a socket
            return
        if self.owner is not None:
            info.uid, info.gid = self.owner(info.uid, info.gid)
        info.uname = info.gname = ""
        if self.chmod is not None and not info.issym():
            info.mode = self.chmod
        self.hasher.update(f"{info.type!r} {arcname} {info.mode:o} {info.uid} {info.gid} "
                           f"{info.linkname} {info.size}\n".encode())
        self.count += 1
        if info.isreg():
            fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                digest = hashlib.sha256()
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
                self.hasher.update(digest.digest())
                f.seek(0)
                self.tar.addfile(info, f)
        else:
            self.tar.addfile(info)

    def add_tree(self, view, path: str, arcname: str, ignore: IgnoreRules | None,  # noqa: ANN001
                 excluded: bool = False) -> None:
        """PATH of VIEW and what is below it as ARCNAME ("": the contents only).

        EXCLUDED: PATH itself is ignored, but a `!` rule may take back something below it.
        """
        host = view.host(path)
        st = os.lstat(host)
        if arcname and not excluded:
            self.add(host, arcname)
        if not stat.S_ISDIR(st.st_mode):
            return
        for name in sorted(os.listdir(host)):
            child = path.rstrip("/") + "/" + name
            child_excluded = bool(ignore and ignore.excluded(child.lstrip("/")))
            if child_excluded and not (ignore.has_exceptions  # type: ignore[union-attr]
                                       and stat.S_ISDIR(os.lstat(view.host(child)).st_mode)):
                continue
            self.add_tree(view, child, f"{arcname}/{name}" if arcname else name, ignore,
                          child_excluded)
