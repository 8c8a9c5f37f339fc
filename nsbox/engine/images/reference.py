"""Image references: `busybox`, `busybox:1`, `localhost/busybox:test`, `docker.io/library/busybox@sha256:...`.

The naming rule lives here, and only here (Podman's):

* A name whose first component has a `.` or `:` or is `localhost` starts with
  a registry host; any other name is a *short name*.
* A name given to an image made or tagged here (`import`, `tag`, the
  builders) is stored fully qualified by `parse_name`: a short name goes
  under `localhost/` (`busybox` -> `localhost/busybox:latest`), and a full
  one stays as it is (`docker.io/library/busybox:1`).
* A name read from a docker-archive is Docker's (`parse_reference`):
  `busybox:latest` there is `docker.io/library/busybox:latest`.
* A short name looked up (`lookup_candidates`) means `localhost/<name>` first,
  then its Docker normalisation, then the same repository path under any
  other registry if exactly one image has it (the store does that last step).
* Names are shown in the "familiar" form (`familiar_name`): only Docker's
  implicit `docker.io/library/` and `docker.io/` are dropped, so a local
  image shows as `localhost/busybox:latest` and Docker Hub's as `busybox:latest`.
"""

from __future__ import annotations

from nsbox._record import record
from nsbox.errors import ConfigError

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
LOCAL_DOMAIN = "localhost"
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 255

# The grammar, as regular expressions; the checks below implement them without
# importing re (slow to import, and parsing a reference is on every `run`).
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = (r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
           r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*"
           r"(?::[0-9]+)?")
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"sha256:[a-f0-9]{64}"
_HEX = r"[a-f0-9]+"

_DIGITS = frozenset("0123456789")
_HEX_CHARS = frozenset("0123456789abcdef")
_LOWER_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_ALNUM = _LOWER_ALNUM | frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_LABEL_CHARS = _ALNUM | {"-"}


def _is_hex(text: str) -> bool:
    """_HEX: one or more of [a-f0-9]."""
    return bool(text) and all(ch in _HEX_CHARS for ch in text)


def _is_digest(text: str) -> bool:
    """_DIGEST: sha256: and 64 of [a-f0-9]."""
    return text.startswith("sha256:") and len(text) == 71 and _is_hex(text[7:])


def _is_word_char(ch: str) -> bool:
    # re's \w on str patterns: Unicode alphanumerics (str.isalnum) and "_".
    return ch.isalnum() or ch == "_"


def _is_tag(text: str) -> bool:
    """_TAG: a word character, then up to 127 word characters, dots and dashes."""
    return (0 < len(text) <= 128 and _is_word_char(text[0])
            and all(ch in ".-" or _is_word_char(ch) for ch in text[1:]))


def _is_path_component(text: str) -> bool:
    """_PATH_COMPONENT: runs of [a-z0-9] joined by ".", "_", "__" or one or more "-"."""
    if not text or text[0] not in _LOWER_ALNUM or text[-1] not in _LOWER_ALNUM:
        return False
    separator = ""
    for ch in text:
        if ch in _LOWER_ALNUM:
            if separator and separator not in (".", "_", "__") and separator != "-" * len(separator):
                return False
            separator = ""
        elif ch in "._-":
            separator += ch
        else:
            return False
    return True


def _is_domain(text: str) -> bool:
    """_DOMAIN: dot-separated labels of [a-zA-Z0-9-] (no "-" at either end), then an optional :port."""
    host, colon, port = text.partition(":")
    if colon and not (port and all(ch in _DIGITS for ch in port)):
        return False
    for label in host.split("."):
        if not label or label[0] == "-" or label[-1] == "-":
            return False
        if not all(ch in _LABEL_CHARS for ch in label):
            return False
    return True


@record(frozen=True)
class Reference:
    """A parsed, normalised image reference."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None
    # False when the user typed no registry, so lookups may also try
    # localhost/ and other registries (see ImageStore.resolve).
    explicit_domain: bool = True

    @property
    def repository(self) -> str:
        """`docker.io/library/busybox`: the name without tag or digest."""
        return f"{self.domain}/{self.path}"

    @property
    def name(self) -> str:
        """The full reference: `docker.io/library/busybox:latest` (or `...@sha256:...`)."""
        text = self.repository
        if self.tag:
            text += ":" + self.tag
        if self.digest:
            text += "@" + self.digest
        return text

    @property
    def familiar(self) -> str:
        """The short form Docker prints: `busybox:latest`, `user/app:1`, `localhost/x:y`."""
        return familiar_name(self.name)

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.domain, self.path, tag, None, self.explicit_domain)

    def __str__(self) -> str:
        return self.name


def _split_domain(name: str) -> tuple[str, str, bool]:
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == LOCAL_DOMAIN or first != first.lower()):
        domain = DEFAULT_DOMAIN if first == LEGACY_DEFAULT_DOMAIN else first
        return domain, rest, True
    return DEFAULT_DOMAIN, name, False


def parse_reference(text: str, default_tag: str | None = DEFAULT_TAG) -> Reference:
    """Parse TEXT and normalise it as Docker does (`busybox` -> `docker.io/library/busybox:latest`).

    A reference without tag or digest gets DEFAULT_TAG.  For names in
    docker-archives and full names; a name for an image made here goes
    through parse_name.  Raises ConfigError for anything Docker would call an
    invalid reference format.
    """
    return _normalised(*_parse(text), default_tag)


def parse_name(text: str, default_tag: str | None = DEFAULT_TAG) -> Reference:
    """The full name an image made or tagged here gets for TEXT (Podman's rule).

    A short name goes under localhost/ as typed (`busybox` ->
    `localhost/busybox:latest`, `team/app:1` -> `localhost/team/app:1`); a
    name with a registry is normalised as Docker does (`docker.io/busybox`
    -> `docker.io/library/busybox:latest`).
    """
    domain, path, tag, digest, explicit = _parse(text)
    return _normalised(domain if explicit else LOCAL_DOMAIN, path, tag, digest, explicit, default_tag)


def lookup_candidates(text: str) -> list[Reference]:
    """The full names TEXT may mean, most likely first; ConfigError if it is no reference.

    A name with a registry means exactly itself.  A short name means
    `localhost/<name>` (what parse_name stores), then Docker's normalisation.
    """
    domain, path, tag, digest, explicit = _parse(text)
    docker = _normalised(domain, path, tag, digest, explicit, DEFAULT_TAG)
    if explicit:
        return [docker]
    return [_normalised(LOCAL_DOMAIN, path, tag, digest, False, DEFAULT_TAG), docker]


def _normalised(domain: str, path: str, tag: str | None, digest: str | None, explicit: bool,
                default_tag: str | None) -> Reference:
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_REPO_PREFIX + path
    if len(domain) + 1 + len(path) > MAX_NAME_LENGTH:
        raise ConfigError(f"invalid reference format: name longer than {MAX_NAME_LENGTH} characters")
    if tag is None and digest is None:
        tag = default_tag
    return Reference(domain, path, tag, digest, explicit)


def _parse(text: str) -> tuple[str, str, str | None, str | None, bool]:
    """(domain, path as typed, tag, digest, whether a registry was given): checked, not normalised."""
    if not isinstance(text, str) or not text:
        raise ConfigError("invalid reference format: empty image name")
    remainder, digest = text, None
    if "@" in remainder:
        remainder, _, digest = remainder.partition("@")
        if not _is_digest(digest):
            raise ConfigError(f"invalid reference format: bad digest in {text!r}")
    tag = None
    # A ':' after the last '/' separates the tag; one before it is a registry port.
    colon = remainder.rfind(":")
    if colon > remainder.rfind("/"):
        remainder, tag = remainder[:colon], remainder[colon + 1:]
        if not _is_tag(tag):
            raise ConfigError(f"invalid reference format: bad tag in {text!r}")
    domain, path, explicit = _split_domain(remainder)
    if explicit and not _is_domain(domain):
        raise ConfigError(f"invalid reference format: bad registry in {text!r}")
    if not path or not all(_is_path_component(part) for part in path.split("/")):
        if path.lower() != path:
            raise ConfigError(f"invalid reference format: repository name must be lowercase: {text!r}")
        raise ConfigError(f"invalid reference format: {text!r}")
    if not explicit and len(path) == 64 and _is_hex(path):
        raise ConfigError(f"invalid reference format: {text!r} looks like an image id, not a name")
    return domain, path, tag, digest, explicit


def familiar_name(full: str) -> str:
    """Strip what Docker leaves implicit: `docker.io/library/` and `docker.io/`."""
    for prefix in (f"{DEFAULT_DOMAIN}/{OFFICIAL_REPO_PREFIX}", f"{DEFAULT_DOMAIN}/"):
        if full.startswith(prefix):
            rest = full[len(prefix):]
            # docker.io/library/a/b stays qualified: "a/b" would mean docker.io/a/b.
            if prefix.endswith(OFFICIAL_REPO_PREFIX) and "/" in rest.split(":")[0].split("@")[0]:
                return full[len(DEFAULT_DOMAIN) + 1:]
            return rest
    return full


def short_name_spellings(full: str) -> list[str]:
    """Every way a user may write the stored name FULL, for matching `images` patterns.

    `localhost/busybox:latest` -> itself and `busybox:latest`;
    `docker.io/library/busybox:latest` -> itself, `library/busybox:latest`
    and `busybox:latest`; a name under another registry -> itself and its path.
    """
    ref = parse_reference(full)
    suffix = full[len(ref.repository):]
    spellings = [full, ref.path + suffix]
    if ref.domain == DEFAULT_DOMAIN and ref.path.startswith(OFFICIAL_REPO_PREFIX):
        spellings.append(ref.path.removeprefix(OFFICIAL_REPO_PREFIX) + suffix)
    return spellings


def legacy_duplicate(full: str, same_image: set[str] | list[str]) -> bool:
    """Whether FULL is the docker.io twin of a localhost/ name of the same image.

    Stores written before the naming rule above gave a local image both
    `docker.io/library/busybox:latest` and `localhost/busybox:latest`; the
    docker.io one goes (see layout.Layout.read_index).
    """
    prefix = f"{DEFAULT_DOMAIN}/"
    if not full.startswith(prefix):
        return False
    rest = full[len(prefix):]
    return (f"{LOCAL_DOMAIN}/{rest.removeprefix(OFFICIAL_REPO_PREFIX)}" in same_image
            or f"{LOCAL_DOMAIN}/{rest}" in same_image)


def path_matches_short_name(full: Reference, short: Reference) -> bool:
    """True when FULL (any registry) has the repository path the short name SHORT asked for."""
    wanted = short.path.removeprefix(OFFICIAL_REPO_PREFIX)
    return full.path in (wanted, short.path) or full.path.endswith("/" + wanted)


def looks_like_id(text: str) -> bool:
    """`sha256:<hex>`, or a bare hex string that could be (a prefix of) an image id."""
    value = text.removeprefix("sha256:")
    return 0 < len(value) <= 64 and _is_hex(value)
