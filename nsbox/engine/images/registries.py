"""What Podman keeps about registries, read the way Podman reads it.

* registries.conf (containers-registries.conf(5), TOML): where short names
  are looked up (`unqualified-search-registries`, `[aliases]`,
  `short-name-mode`), and per registry `[[registry]]` tables with `prefix`,
  `location` (a rewrite), `insecure` and `blocked`.  The v1 format
  (`[registries.search|insecure|block] registries = [...]`) is read too.
  `$CONTAINERS_REGISTRIES_CONF` names another file; drop-ins in
  `/etc/containers/registries.conf.d/*.conf` are read after the main file.
* auth.json (containers-auth.json(5)): `{"auths": {"HOST[/PATH]": {"auth":
  base64("user:password")}}}`, from `$REGISTRY_AUTH_FILE`,
  `$XDG_RUNTIME_DIR/containers/auth.json` (`/run/containers/<uid>/auth.json`
  without it), `~/.config/containers/auth.json`, then Docker's
  `~/.docker/config.json`.  `nsbox login`/`logout` write only the first of
  these (the primary file, as Podman does), atomically and mode 0600.

Only `nsbox pull`, `push`, `login`, `logout` (and `run --pull`) import this module.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import json
import os

from nsbox.errors import ConfigError

from .reference import DEFAULT_DOMAIN, Reference, _normalised, _parse, parse_reference

REGISTRIES_CONF = "/etc/containers/registries.conf"
DOCKER_HUB_AUTH_KEYS = ("docker.io", "index.docker.io", "registry-1.docker.io",
                        "https://index.docker.io/v1/")


class RegistriesConf:
    """The merged registries.conf settings."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.search: list[str] = []
        self.aliases: dict[str, str] = {}
        self.short_name_mode = "permissive"
        self.registries: list[dict] = []  # {"prefix", "location", "insecure", "blocked"}

    # ---------------------------------------------------------------- reading
    def merge(self, doc: dict, source: str) -> None:
        if "unqualified-search-registries" in doc:
            self.search = _strings(doc["unqualified-search-registries"], source,
                                   "unqualified-search-registries")
        if "short-name-mode" in doc:
            self.short_name_mode = str(doc["short-name-mode"])
        aliases = doc.get("aliases") or {}
        if not isinstance(aliases, dict):
            raise ConfigError(f"{source}: [aliases] must be a table")
        self.aliases.update({str(k): str(v) for k, v in aliases.items()})
        v1 = doc.get("registries")
        if isinstance(v1, dict):
            for kind in ("search", "insecure", "block"):
                hosts = _strings((v1.get(kind) or {}).get("registries", []), source,
                                 f"registries.{kind}")
                if kind == "search":
                    self.search = self.search or hosts
                for host in hosts:
                    if kind != "search":
                        self._add({"prefix": host, "insecure": kind == "insecure",
                                   "blocked": kind == "block"})
        for table in doc.get("registry") or []:
            if not isinstance(table, dict):
                raise ConfigError(f"{source}: [[registry]] entries must be tables")
            location = str(table.get("location", ""))
            prefix = str(table.get("prefix") or location)
            if not prefix:
                raise ConfigError(f"{source}: a [[registry]] needs a location or a prefix")
            self._add({"prefix": prefix, "location": location or prefix,
                       "insecure": bool(table.get("insecure", False)),
                       "blocked": bool(table.get("blocked", False))})

    def _add(self, entry: dict) -> None:
        entry.setdefault("location", entry["prefix"])
        self.registries = [e for e in self.registries if e["prefix"] != entry["prefix"]]
        self.registries.append(entry)

    # ---------------------------------------------------------------- lookups
    def registry_for(self, repository: str) -> dict | None:
        """The [[registry]] whose prefix matches REPOSITORY (`host/path`) longest, if any."""
        best = None
        for entry in self.registries:
            prefix = entry["prefix"]
            matches = repository == prefix or repository.startswith(prefix.rstrip("/") + "/")
            if prefix.startswith("*."):  # wildcard subdomains: *.example.com
                host = repository.split("/", 1)[0]
                matches = host.endswith(prefix[1:])
            if matches and (best is None or len(prefix) > len(best["prefix"])):
                best = entry
        return best

    def endpoint(self, ref: Reference) -> tuple[str, str, bool]:
        """(host, repository path on it, insecure) for REF after any location rewrite."""
        repository = ref.repository
        entry = self.registry_for(repository)
        if entry is None:
            return ref.domain, ref.path, False
        if entry["blocked"]:
            raise ConfigError(f"registry {ref.domain} is blocked in {self.path}")
        if entry["location"] != entry["prefix"] and not entry["prefix"].startswith("*."):
            repository = entry["location"] + repository[len(entry["prefix"]):]
        host, _, path = repository.partition("/")
        return host, path, entry["insecure"]

    def pull_candidates(self, text: str) -> list[Reference]:
        """The full names a pull of TEXT tries, in order (Podman's short-name resolution).

        A name with a registry is itself.  A short name goes through [aliases]
        (the name without tag or digest), then each unqualified-search
        registry.  Without either it is an error, never a guess.
        """
        domain, path, tag, digest, explicit = _parse(text)
        if explicit:
            return [parse_reference(text)]
        alias = self.aliases.get(path)
        if alias is not None:
            target = parse_reference(alias, default_tag=None)
            return [_normalised(target.domain, target.path, tag or target.tag, digest, True, "latest")]
        if not self.search:
            raise ConfigError(f'short-name "{text}" did not resolve to an alias and no '
                              f'unqualified-search registries are defined in "{self.path}"')
        if self.short_name_mode == "enforcing" and len(self.search) > 1:
            raise ConfigError(f'short-name "{text}" is ambiguous: short-name-mode is "enforcing" '
                              f'and {len(self.search)} unqualified-search registries are '
                              f'defined in "{self.path}"; use a full name or an alias')
        return [_normalised(registry, path, tag, digest, True, "latest") for registry in self.search]


def _strings(value: object, source: str, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{source}: {key} must be a list of strings")
    return list(value)


def load_registries_conf(path: str | None = None) -> RegistriesConf:
    """registries.conf (PATH, else $CONTAINERS_REGISTRIES_CONF, else the system file) and drop-ins."""
    import tomllib
    path = path or os.environ.get("CONTAINERS_REGISTRIES_CONF") or REGISTRIES_CONF
    conf = RegistriesConf(path)
    files = [path]
    if path == REGISTRIES_CONF:
        files += sorted(glob.glob(path + ".d/*.conf"))
    for name in files:
        try:
            with open(name, "rb") as f:
                doc = tomllib.load(f)
        except FileNotFoundError:
            continue
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"{name}: cannot read registries configuration: {err}") from None
        conf.merge(doc, name)
    return conf


# ===================================================================== auth.json
def auth_files(authfile: str | None = None) -> list[str]:
    """Where credentials are looked up, first match wins (Podman's order, then Docker's)."""
    if authfile or os.environ.get("REGISTRY_AUTH_FILE"):
        return [authfile or os.environ["REGISTRY_AUTH_FILE"]]
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR") or f"/run/containers/{os.getuid()}"
    home = os.path.expanduser("~")
    config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    return [os.path.join(runtime_dir, "containers", "auth.json"),
            os.path.join(config_home, "containers", "auth.json"),
            os.path.join(home, ".docker", "config.json")]


def lookup_credentials(host: str, path: str, authfile: str | None = None) -> tuple[str, str] | None:
    """(user, password) for HOST/PATH: the most specific key (`host/ns/repo`, ..., `host`)."""
    keys = []
    parts = path.split("/")
    for i in range(len(parts), 0, -1):
        keys.append(host + "/" + "/".join(parts[:i]))
    keys.append(host)
    if host in (DEFAULT_DOMAIN, "registry-1.docker.io"):
        keys += list(DOCKER_HUB_AUTH_KEYS)
    for name in auth_files(authfile):
        try:
            with open(name, "rb") as f:
                doc = json.load(f)
        except FileNotFoundError:
            if authfile:
                raise ConfigError(f"{name}: no such auth file") from None
            continue
        except (OSError, ValueError) as err:
            raise ConfigError(f"{name}: cannot read credentials: {err}") from None
        auths = doc.get("auths") if isinstance(doc, dict) else None
        if not isinstance(auths, dict):
            continue
        normalised = {_auth_key(k): v for k, v in auths.items()}
        for key in keys:
            entry = normalised.get(key)
            if isinstance(entry, dict) and entry.get("auth"):
                try:
                    user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
                except ValueError:
                    raise ConfigError(f"{name}: the credentials for {key} are not base64 "
                                      "user:password") from None
                if not sep:
                    raise ConfigError(f"{name}: the credentials for {key} have no password")
                return user, password
    return None


def _auth_key(key: str) -> str:
    """Docker's config.json keys may be URLs: `https://host/v1/` -> `host`."""
    if "://" in key:
        key = key.split("://", 1)[1].split("/", 1)[0]
    return key.rstrip("/")


# ===================================================================== login / logout
def primary_auth_file(authfile: str | None = None) -> str:
    """The file `login` writes: --authfile, $REGISTRY_AUTH_FILE, else Podman's per-user file."""
    return auth_files(authfile)[0]


def login_key(text: str) -> str:
    """`https://host/v1/` -> `host`; `host/ns/` -> `host/ns` (the auth.json key)."""
    key = text.strip().split("://", 1)[-1].rstrip("/")
    for suffix in ("/v1", "/v2"):
        key = key.removesuffix(suffix)
    if key in DOCKER_HUB_AUTH_KEYS or key == "index.docker.io":
        key = DEFAULT_DOMAIN
    path = key.partition("/")[2]
    if not key or "@" in key or ":" in path or " " in key:
        raise ConfigError(f"{text}: not a registry (want HOST[:PORT][/NAMESPACE], "
                          "without a tag or digest)")
    return key


def _read_auth_doc(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read credentials: {err}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("auths", {}), dict):
        raise ConfigError(f"{path}: not an auth.json file (no \"auths\" object)")
    return doc


def _write_auth_doc(path: str, doc: dict) -> None:
    """Replace PATH with DOC: a 0600 temporary file in the same directory, fsynced, renamed."""
    import tempfile
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".auth-", suffix=".json", dir=directory)  # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent="\t")
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_credentials(key: str, user: str, password: str, authfile: str | None = None) -> str:
    """Store USER:PASSWORD for KEY in the primary auth file, keeping its other entries."""
    path = primary_auth_file(authfile)
    doc = _read_auth_doc(path)
    auths = doc.setdefault("auths", {})
    auths[key] = {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
    _write_auth_doc(path, doc)
    return path


def remove_credentials(key: str | None, authfile: str | None = None) -> bool:
    """Drop KEY from the primary auth file (every entry with KEY None); False if it had none."""
    path = primary_auth_file(authfile)
    doc = _read_auth_doc(path)
    auths = doc.get("auths") or {}
    if key is None:
        if not os.path.exists(path):
            return False
        doc["auths"] = {}
        _write_auth_doc(path, doc)
        return True
    found = [k for k in auths if _auth_key(k) == key]
    if not found:
        return False
    for k in found:
        del auths[k]
    _write_auth_doc(path, doc)
    return True
