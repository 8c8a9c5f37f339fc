"""Guard rules: the YAML file, its validation, matching events, and the keys for the kernel.

A rules file is a YAML list of mappings (docs/guard.md has the reference):

    - rule: no-shadow
      event: open
      path: /etc/shadow
      action: alert

Conditions of one rule are ANDed; the values of a list are ORed.  Paths
are globs: `*` and `?` stay within one component, `**` spans any number
of them.  Which opens for reading the kernel reports is derived from the
`path` conditions of the open rules (reduce_glob): an exact path, a
directory (`DIR/**`), a file name anywhere (`**/NAME`) or an extension
anywhere (`**/*.EXT`) are hashed into the container's keys; any other glob
widens to its literal leading directory, and a glob with none makes the
kernel report every open of that container.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache

from nsbox.engine.guard import record
from nsbox.errors import ConfigError

EVENTS = ("exec", "open", "read", "write", "connect", "bind", "listen", "ptrace", "mount", "module",
          "bpf", "setuid", "capset")
ACTIONS = ("log", "alert", "deny", "kill")
KEYS = {"rule", "description", "event", "path", "paths", "proc", "exe", "argv", "addr",
        "not_addr", "port", "image", "labels", "network", "unless_entrypoint", "setuid",
        "action"}
DEFAULT_RULES = os.path.join(os.path.dirname(__file__), "default-rules.yaml")


def _glob_regex(glob: str) -> re.Pattern:
    """A path glob: `**` any run of characters, `*`/`?` within one component, [..] a class."""
    out, i = [], 0
    while i < len(glob):
        ch = glob[i]
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            end = glob.find("]", i + 1)
            if end < 0:
                out.append(re.escape(ch))
            else:
                body = glob[i + 1:end].replace("\\", "\\\\")
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out) + r"\Z")


@lru_cache(maxsize=1024)
def compiled_glob(glob: str) -> re.Pattern:
    return _glob_regex(glob)


def path_matches(globs: list[str], path: str) -> bool:
    return any(compiled_glob(g).match(path) for g in globs)


def _wild(text: str) -> bool:
    return any(c in text for c in "*?[")


def reduce_glob(glob: str) -> tuple[int, bytes] | None:
    """The kernel key (kind, hashed text) that reports at least what GLOB matches; None: all."""
    if not _wild(glob):
        return record.K_OPEN_EXACT, glob.encode()
    if glob.startswith("**/"):
        rest = glob[3:]
        if rest and "/" not in rest and not _wild(rest):
            return record.K_OPEN_NAME, rest.encode()
        if rest.startswith("*.") and "/" not in rest and not _wild(rest[2:]) and rest[2:]:
            return record.K_OPEN_EXT, rest[2:].encode()
    literal = []
    for part in glob.split("/")[1:-1] if glob.startswith("/") else []:
        if _wild(part):
            break
        literal.append(part)
    if not literal:
        return None
    return record.K_OPEN_PREFIX, ("/" + "/".join(literal) + "/").encode()


def _as_list(value: object, where: str) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, (str, int)):
        return [value]
    raise ConfigError(f"{where}: expected a value or a list, got {type(value).__name__}")


@dataclass
class Rule:
    name: str
    events: list[str]
    action: str
    description: str = ""
    paths: list[str] = field(default_factory=list)
    procs: list[str] = field(default_factory=list)
    exes: list[str] = field(default_factory=list)
    argv: list[str] = field(default_factory=list)
    addrs: list = field(default_factory=list)
    not_addrs: list = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    network: list[str] = field(default_factory=list)
    unless_entrypoint: bool = False
    setuid: bool | None = None
    source: dict = field(default_factory=dict)

    # ---------------------------------------------------------------- container level
    def applies_to(self, container: dict) -> bool:
        """Whether the rule concerns CONTAINER at all (image, labels, network)."""
        if self.images and not any(fnmatch.fnmatchcase(container.get("image", ""), g)
                                   for g in self.images):
            return False
        labels = container.get("labels") or {}
        for key, want in self.labels.items():
            if key not in labels or not fnmatch.fnmatchcase(str(labels[key]), want):
                return False
        if self.network:
            mode = (container.get("network") or "").split(":", 1)[0]
            if mode not in self.network:
                return False
        if self.unless_entrypoint and self.procs:
            # A container whose own command is one of PROCS (a shell) may start more.
            if os.path.basename(container.get("entrypoint") or "") in self.procs:
                return False
        return True

    # ---------------------------------------------------------------- event level
    def matches(self, ev: record.Event, container: dict, names: set[str] | None = None) -> bool:
        """Whether EV fires this rule; NAMES: the process's names (process_names)."""
        if ev.type not in self.events and not (
                ev.type == "open" and ("write" if ev.write else "read") in self.events):
            return False
        if self.paths and not path_matches(self.paths, ev.path):
            return False
        if self.procs and not (names or process_names(ev)) & set(self.procs):
            return False
        if self.exes and not (ev.type == "exec" and path_matches(self.exes, ev.path)):
            return False
        if self.argv and not any(fnmatch.fnmatchcase(" ".join(ev.argv), g) for g in self.argv):
            return False
        if self.addrs or self.not_addrs:
            if not ev.addr:
                return False
            ip = ipaddress.ip_address(ev.addr)
            if self.addrs and not any(ip in net for net in self.addrs):
                return False
            if any(ip in net for net in self.not_addrs):
                return False
        if self.ports and ev.port not in self.ports:
            return False
        if self.setuid is not None and ev.type == "exec":
            if bool(ev.details.get("setuid") or ev.details.get("setgid")) != self.setuid:
                return False
        return True


def process_names(ev: record.Event, exe: str = "", argv: list[str] | None = None) -> set[str]:
    """What a rule's `proc` is compared with: the command name, the executable's file name
    and argv[0]'s (busybox runs its applets through /proc/self/exe: then only argv[0] says
    which one)."""
    names = {ev.comm}
    exe = exe or (ev.path if ev.type == "exec" else "")
    argv = argv if argv is not None else ev.argv
    if exe:
        names.add(os.path.basename(exe))
    if argv:
        names.add(os.path.basename(argv[0]))
    names.discard("")
    return names


def parse_rule(item: object, where: str) -> Rule:
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: a rule is a mapping (rule:, event:, action: ...)")
    unknown = set(item) - KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    name = item.get("rule")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: every rule needs a name (rule: NAME)")
    where = f"{where} ({name})"
    events = [str(e) for e in _as_list(item.get("event"), where)]
    if not events:
        raise ConfigError(f"{where}: event: is required (one of {', '.join(EVENTS)})")
    for e in events:
        if e not in EVENTS:
            raise ConfigError(f"{where}: unknown event {e!r} (one of {', '.join(EVENTS)})")
    action = item.get("action", "alert")
    if action not in ACTIONS:
        raise ConfigError(f"{where}: unknown action {action!r} (one of {', '.join(ACTIONS)})")
    paths = [str(p) for p in _as_list(item.get("path"), where) + _as_list(item.get("paths"), where)]
    for p in paths:
        if not p.startswith("/") and not p.startswith("**"):
            raise ConfigError(f"{where}: path {p!r} must be absolute (or start with **)")
    rule = Rule(name=name, events=events, action=action,
                description=str(item.get("description") or ""), paths=paths,
                procs=[str(p) for p in _as_list(item.get("proc"), where)],
                exes=[str(p) for p in _as_list(item.get("exe"), where)],
                argv=[str(p) for p in _as_list(item.get("argv"), where)],
                images=[str(p) for p in _as_list(item.get("image"), where)],
                network=[str(p) for p in _as_list(item.get("network"), where)],
                unless_entrypoint=bool(item.get("unless_entrypoint", False)),
                setuid=item.get("setuid"), source=dict(item))
    for key, target in (("addr", rule.addrs), ("not_addr", rule.not_addrs)):
        for text in _as_list(item.get(key), where):
            try:
                target.append(ipaddress.ip_network(str(text), strict=False))
            except ValueError:
                raise ConfigError(f"{where}: {key}: {text!r} is not an address or CIDR") from None
    for port in _as_list(item.get("port"), where):
        try:
            number = int(port)
        except (TypeError, ValueError):
            number = -1
        if not 0 <= number <= 65535:
            raise ConfigError(f"{where}: port: {port!r} is not a port number")
        rule.ports.append(number)
    labels = item.get("labels") or {}
    if not isinstance(labels, dict):
        raise ConfigError(f"{where}: labels: expected a mapping of label: value")
    rule.labels = {str(k): str(v) for k, v in labels.items()}
    if rule.setuid is not None and not isinstance(rule.setuid, bool):
        raise ConfigError(f"{where}: setuid: expected true or false")
    return rule


def parse_rules(data: object, source: str) -> list[Rule]:
    if data is None:
        return []
    if isinstance(data, dict) and "rules" in data:
        data = data["rules"]
    if not isinstance(data, list):
        raise ConfigError(f"{source}: a rules file is a YAML list of rules")
    rules = [parse_rule(item, f"{source}: rule {i + 1}") for i, item in enumerate(data)]
    names = [r.name for r in rules]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{source}: rule names must be unique: {', '.join(dupes)}")
    return rules


def load_text(text: str, source: str) -> list[Rule]:
    import yaml
    try:
        # libyaml's parser when PyYAML has it: ~0.5 ms for the default rules against ~4 ms
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {str(exc).splitlines()[0]}") from None
    return parse_rules(data, source)


def read_rules_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"--security-opt guard: cannot read {path}: {exc.strerror}") from None


def default_rules_text() -> str:
    with open(DEFAULT_RULES, encoding="utf-8") as f:
        return f.read()


@dataclass
class KernelPlan:
    """What the kernel must report for one container: REPORT keys and flags."""

    keys: list[tuple[int, int]] = field(default_factory=list)  # (kind, hash)
    all_reads: bool = False


def kernel_plan(rules: list[Rule]) -> KernelPlan:
    plan = KernelPlan()
    seen = set()
    for rule in rules:
        if "open" not in rule.events and "read" not in rule.events:
            continue  # writes are always reported
        if not rule.paths:
            plan.all_reads = True
            continue
        for glob in rule.paths:
            reduced = reduce_glob(glob)
            if reduced is None:
                plan.all_reads = True
                continue
            key = (reduced[0], record.key_hash(*reduced))
            if key not in seen:
                seen.add(key)
                plan.keys.append(key)
    return plan
