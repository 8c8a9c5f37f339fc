"""The instructions that only change the image config (ENV, LABEL, CMD, HEALTHCHECK, ...).

Each takes the stage's config section and returns nothing: it edits it in
place.  Key names are Docker's (the `config` section of an OCI image config
as Docker and buildah write it, Healthcheck and Shell included, durations in
nanoseconds).
"""

from __future__ import annotations

import posixpath
import re

from nsbox.engine.images import config as imgconfig
from nsbox.errors import ConfigError

from .parser import BuildSyntaxError, Instruction, expand, json_array, key_values

DEFAULT_SHELL = ["/bin/sh", "-c"]
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
            "m": 60_000_000_000, "h": 3_600_000_000_000}


def env_dict(section: dict) -> dict[str, str]:
    found = {}
    for item in section.get("Env") or []:
        key, _, value = item.partition("=")
        found[key] = value
    return found


def set_env(section: dict, key: str, value: str) -> None:
    """Set KEY in Env; a key set again keeps its place, as Docker does."""
    env = list(section.get("Env") or [])
    for index, item in enumerate(env):
        if item.partition("=")[0] == key:
            env[index] = f"{key}={value}"
            break
    else:
        env.append(f"{key}={value}")
    section["Env"] = env


def command_form(instruction: Instruction, section: dict) -> list[str]:
    """The argv of a RUN/CMD/ENTRYPOINT: the exec form as is, else the shell form in SHELL."""
    argv = instruction.json_form()
    if argv is not None:
        return argv
    shell = section.get("Shell") or DEFAULT_SHELL
    return [*shell, instruction.args]


def parse_duration(text: str, where: str) -> int:
    """A Go duration (`30s`, `1m30s`, `500ms`) in nanoseconds."""
    total, pos = 0.0, 0
    if text == "0":
        return 0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_NS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise BuildSyntaxError(f"{where}invalid duration {text!r} (want e.g. 30s, 1m30s)")
    return int(total)


def healthcheck(instruction: Instruction, where: str) -> dict:
    body = instruction.args.strip()
    word, _, rest = body.partition(" ")
    if word.upper() == "NONE":
        if rest.strip():
            raise BuildSyntaxError(f"{where}HEALTHCHECK NONE takes no arguments")
        return {"Test": ["NONE"]}
    if word.upper() != "CMD" or not rest.strip():
        raise BuildSyntaxError(f"{where}HEALTHCHECK wants NONE or CMD <command>")
    argv = json_array(rest)
    check: dict = {"Test": ["CMD", *argv] if argv is not None else ["CMD-SHELL", rest.strip()]}
    for flag, key in (("interval", "Interval"), ("timeout", "Timeout"),
                      ("start-period", "StartPeriod"), ("start-interval", "StartInterval")):
        if flag in instruction.flags:
            value = parse_duration(instruction.flags[flag], where)
            if value:
                check[key] = value
    if "retries" in instruction.flags:
        try:
            retries = int(instruction.flags["retries"])
        except ValueError:
            raise BuildSyntaxError(f"{where}HEALTHCHECK --retries wants a number") from None
        if retries:
            check["Retries"] = retries
    return check


class ConfigStep:
    """Applies one config-only instruction to a stage's config document."""

    def __init__(self, escape: str, where: str) -> None:
        self.escape = escape
        self.where = where

    def apply(self, instruction: Instruction, document: dict, variables: dict[str, str],
              cmd_set: bool) -> None:
        section = document.setdefault("config", {})
        keyword = instruction.keyword
        where = self.where
        try:
            if keyword == "ENV":
                for key, value in key_values(instruction.args, variables, self.escape, "ENV", where):
                    set_env(section, key, value)
                    variables[key] = value
            elif keyword == "LABEL":
                labels = dict(section.get("Labels") or {})
                labels.update(key_values(instruction.args, variables, self.escape, "LABEL", where))
                section["Labels"] = labels
            elif keyword == "MAINTAINER":
                document["author"] = instruction.args.strip()
            elif keyword == "WORKDIR":
                path = str(expand(instruction.args, variables, self.escape, where=where))
                base = section.get("WorkingDir") or "/"
                section["WorkingDir"] = posixpath.normpath(posixpath.join(base, path))
            elif keyword == "CMD":
                section["Cmd"] = command_form(instruction, section)
            elif keyword == "ENTRYPOINT":
                section["Entrypoint"] = command_form(instruction, section)
                if not cmd_set:
                    section.pop("Cmd", None)  # an inherited CMD does not survive a new ENTRYPOINT
            elif keyword == "SHELL":
                section["Shell"] = json_array(instruction.args)
            elif keyword == "HEALTHCHECK":
                section["Healthcheck"] = healthcheck(instruction, where)
            elif keyword in ("USER", "STOPSIGNAL", "EXPOSE", "ONBUILD", "VOLUME"):
                value = instruction.args
                if keyword != "ONBUILD" and not (keyword == "VOLUME" and json_array(value)):
                    value = str(expand(value, variables, self.escape, where=where))
                changed = imgconfig.apply_changes(section, [f"{keyword} {value}"])
                section.clear()
                section.update(changed)
            else:
                raise BuildSyntaxError(f"{where}{keyword} is not a config instruction")
        except BuildSyntaxError:
            raise
        except ConfigError as err:
            raise BuildSyntaxError(f"{where}{err}") from None


# ------------------------------------------------------------------ users
def _lookup_id(path: str, name: str, field: int) -> int | None:
    """Field FIELD (2: the id, 3: passwd's primary gid) of NAME's line in PATH."""
    try:
        with open(path, errors="replace") as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if len(fields) > field and fields[0] == name:
                    return int(fields[field])
    except (OSError, ValueError):
        return None
    return None


def chown_ids(spec: str, passwd: str, group: str, where: str) -> tuple[int, int]:
    """`user[:group]` (names or numbers, names from the image's files) -> (uid, gid)."""
    user, _, grp = spec.partition(":")
    if user.isdigit():
        uid, gid = int(user), int(user)
    else:
        found_uid, found_gid = _lookup_id(passwd, user, 2), _lookup_id(passwd, user, 3)
        if found_uid is None or found_gid is None:
            raise ConfigError(f"{where}--chown: no user {user!r} in the image's /etc/passwd")
        uid, gid = found_uid, found_gid
    if grp:
        if grp.isdigit():
            gid = int(grp)
        else:
            found = _lookup_id(group, grp, 2)
            if found is None:
                raise ConfigError(f"{where}--chown: no group {grp!r} in the image's /etc/group")
            gid = found
    return uid, gid
