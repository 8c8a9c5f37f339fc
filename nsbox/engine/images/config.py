"""Image configuration: Docker-style `--change` instructions, timestamps, and Docker-shaped views.

The image config is the OCI one (https://github.com/opencontainers/image-spec
config.md), whose `config` section uses Docker's key names: User, ExposedPorts,
Env, Entrypoint, Cmd, Volumes, WorkingDir, Labels, StopSignal.
"""

from __future__ import annotations

import posixpath
import time

from nsbox import _json
from nsbox.errors import ConfigError

# Keys of the config section, in the order Docker prints them.
SECTION_KEYS = ("User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir",
                "Labels", "StopSignal", "OnBuild")
CHANGE_INSTRUCTIONS = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "ONBUILD", "STOPSIGNAL",
                       "USER", "VOLUME", "WORKDIR")

# Matched with re.IGNORECASE.  re is imported where they are used: this module is
# imported on every `run`, which needs none of them.
_PORT = r"([0-9]{1,5})(?:-([0-9]{1,5}))?(?:/(tcp|udp|sctp))?"
_SIGNAL = r"(?:SIG)?[A-Z0-9+-]+|[0-9]+"
# Matched case-sensitively.
_RFC3339 = r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})?"


def format_time(epoch: float) -> str:
    """RFC 3339 in UTC with nanoseconds, as Docker writes `created`."""
    whole = int(epoch)
    nanos = int(round((epoch - whole) * 1e9))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{stamp}.{nanos:09d}Z" if nanos else f"{stamp}Z"


def parse_time(text: str | None) -> float:
    """Seconds since the epoch of an RFC 3339 time (any fraction length); 0 when absent or bad."""
    if not text:
        return 0.0
    import re
    from datetime import datetime
    match = re.match(_RFC3339, text)
    if not match:
        return 0.0
    base, fraction, zone = match.groups()
    zone = "+00:00" if zone in (None, "Z") else zone
    try:
        stamp = datetime.fromisoformat(base + zone)
    except ValueError:
        return 0.0
    return stamp.timestamp() + (float(fraction) if fraction else 0.0)


def _json_or_shell(value: str, what: str) -> list[str]:
    """The exec form `["a", "b"]` as is; the shell form wrapped in /bin/sh -c, as a Dockerfile does."""
    text = value.strip()
    if text.startswith("["):
        try:
            parsed = _json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, list) and all(isinstance(item, str) for item in parsed):
            return parsed
    if not text:
        raise ConfigError(f"{what} needs a command")
    return ["/bin/sh", "-c", text]


def _pairs(value: str, what: str) -> list[tuple[str, str]]:
    """`K=V K2="v 2"` (or the legacy `K some value`) as (key, value) pairs."""
    import shlex
    try:
        words = shlex.split(value)
    except ValueError as err:
        raise ConfigError(f"{what}: {err}") from None
    if not words:
        raise ConfigError(f"{what} needs at least one key")
    if "=" not in words[0]:
        key, _, rest = value.strip().partition(" ")
        if not rest.strip():
            raise ConfigError(f"{what} {key}: missing value")
        return [(key, rest.strip())]
    pairs = []
    for word in words:
        key, sep, item = word.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what}: {word!r} is not KEY=VALUE")
        pairs.append((key, item))
    return pairs


def _set_env(env: list[str], key: str, value: str) -> list[str]:
    kept = [item for item in env if item.partition("=")[0] != key]
    return kept + [f"{key}={value}"]


def _ports(value: str) -> list[str]:
    import re
    ports = []
    for word in value.split():
        match = re.fullmatch(_PORT, word, re.IGNORECASE)
        if not match:
            raise ConfigError(f"EXPOSE: invalid port {word!r}")
        first, last, proto = int(match.group(1)), match.group(2), (match.group(3) or "tcp").lower()
        end = int(last) if last else first
        if not 0 < first <= end <= 65535:
            raise ConfigError(f"EXPOSE: invalid port range {word!r}")
        ports.extend(f"{port}/{proto}" for port in range(first, end + 1))
    if not ports:
        raise ConfigError("EXPOSE needs a port")
    return ports


def _volumes(value: str) -> list[str]:
    text = value.strip()
    if text.startswith("["):
        try:
            parsed = _json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, list) and all(isinstance(item, str) for item in parsed):
            return parsed
    paths = text.split()
    if not paths:
        raise ConfigError("VOLUME needs a path")
    return paths


def apply_changes(section: dict, changes: list[str]) -> dict:
    """Apply Dockerfile-style instructions (`CMD ["sh"]`, `ENV A=b`, ...) to a config section.

    Returns a new dict; SECTION is not modified.  Unknown instructions raise ConfigError.
    """
    result = _json.loads(_json.dumps(section or {}))  # a deep copy
    for change in changes or []:
        keyword, _, value = change.strip().partition(" ")
        if "\n" in change:
            raise ConfigError(f"--change {change!r}: one instruction per change")
        keyword = keyword.upper()
        value = value.strip()
        if keyword == "CMD":
            result["Cmd"] = _json_or_shell(value, "CMD")
        elif keyword == "ENTRYPOINT":
            result["Entrypoint"] = _json_or_shell(value, "ENTRYPOINT")
        elif keyword == "ENV":
            env = list(result.get("Env") or [])
            for key, item in _pairs(value, "ENV"):
                env = _set_env(env, key, item)
            result["Env"] = env
        elif keyword == "LABEL":
            labels = dict(result.get("Labels") or {})
            labels.update(_pairs(value, "LABEL"))
            result["Labels"] = labels
        elif keyword == "EXPOSE":
            exposed = dict(result.get("ExposedPorts") or {})
            exposed.update({port: {} for port in _ports(value)})
            result["ExposedPorts"] = exposed
        elif keyword == "VOLUME":
            volumes = dict(result.get("Volumes") or {})
            volumes.update({path: {} for path in _volumes(value)})
            result["Volumes"] = volumes
        elif keyword == "WORKDIR":
            if not value:
                raise ConfigError("WORKDIR needs a path")
            base = result.get("WorkingDir") or "/"
            result["WorkingDir"] = posixpath.normpath(posixpath.join(base, value))
        elif keyword == "USER":
            if not value:
                raise ConfigError("USER needs a user")
            result["User"] = value
        elif keyword == "STOPSIGNAL":
            import re
            if not re.fullmatch(_SIGNAL, value, re.IGNORECASE):
                raise ConfigError(f"STOPSIGNAL: invalid signal {value!r}")
            result["StopSignal"] = value
        elif keyword == "ONBUILD":
            if not value:
                raise ConfigError("ONBUILD needs an instruction")
            result["OnBuild"] = list(result.get("OnBuild") or []) + [value]
        else:
            raise ConfigError(f"--change: unsupported instruction {keyword!r} "
                              f"(one of {', '.join(CHANGE_INSTRUCTIONS)})")
    return result


def clean_section(section: dict) -> dict:
    """Drop empty values, so equal configs serialise (and hash) equally."""
    return {key: value for key, value in section.items() if value not in (None, "", [], {})}


def docker_config(section: dict) -> dict:
    """The `Config` object of `docker image inspect`."""
    return {
        "Hostname": "",
        "Domainname": "",
        "User": section.get("User") or "",
        "AttachStdin": False,
        "AttachStdout": False,
        "AttachStderr": False,
        "ExposedPorts": section.get("ExposedPorts") or None,
        "Tty": False,
        "OpenStdin": False,
        "StdinOnce": False,
        "Env": list(section.get("Env") or []),
        "Cmd": section.get("Cmd"),
        "Image": "",
        "Volumes": section.get("Volumes") or None,
        "WorkingDir": section.get("WorkingDir") or "",
        "Entrypoint": section.get("Entrypoint"),
        "OnBuild": section.get("OnBuild"),
        "Labels": section.get("Labels") or None,
        "StopSignal": section.get("StopSignal") or "",
        # Docker's omitempty ones: only when the image has them (HEALTHCHECK, SHELL)
        **{key: section[key] for key in ("Healthcheck", "Shell") if section.get(key)},
    }
