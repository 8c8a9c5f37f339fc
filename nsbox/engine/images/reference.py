"""Image references: `busybox`, `busybox:1`, `localhost/busybox:test`, `docker.io/library/busybox@sha256:...`.

Names are stored in their full, normalised form (`docker.io/library/busybox:latest`)
and shown in the short "familiar" form Docker users know (`busybox:latest`).
A name typed without a registry is a *short name*: it matches its Docker
normalisation first, then `localhost/<name>` the way podman names locally made
images, then the same repository path under any other registry if exactly one
image has it.
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
    """Parse and normalise TEXT; a reference without tag or digest gets DEFAULT_TAG.

    Raises ConfigError for anything Docker would call an invalid reference format.
    """
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
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_REPO_PREFIX + path
    if len(domain) + 1 + len(path) > MAX_NAME_LENGTH:
        raise ConfigError(f"invalid reference format: name longer than {MAX_NAME_LENGTH} characters")
    if tag is None and digest is None:
        tag = default_tag
    return Reference(domain, path, tag, digest, explicit)


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


def short_name_candidates(ref: Reference) -> list[Reference]:
    """The full names a reference may mean, most likely first.

    An explicit registry means exactly itself.  A short name means its Docker
    normalisation, then `localhost/<path>` (podman's name for local images).
    """
    if ref.explicit_domain:
        return [ref]
    candidates = [ref]
    local_path = ref.path.removeprefix(OFFICIAL_REPO_PREFIX) if ref.domain == DEFAULT_DOMAIN else ref.path
    candidates.append(Reference(LOCAL_DOMAIN, local_path, ref.tag, ref.digest, True))
    return candidates


def path_matches_short_name(full: Reference, short: Reference) -> bool:
    """True when FULL (any registry) has the repository path the short name SHORT asked for."""
    wanted = short.path.removeprefix(OFFICIAL_REPO_PREFIX)
    return full.path in (wanted, short.path) or full.path.endswith("/" + wanted)


def looks_like_id(text: str) -> bool:
    """`sha256:<hex>`, or a bare hex string that could be (a prefix of) an image id."""
    value = text.removeprefix("sha256:")
    return 0 < len(value) <= 64 and _is_hex(value)
