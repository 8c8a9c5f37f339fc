"""OCI `linux.resources` -> the cgroup file writes that enforce it, for v1, v2 or both.

`plan()` validates the whole section and turns it into an ordered list of
`Write`s, each aimed at one hierarchy (a v1 key like "memory" or "" for
cgroup2).  Nothing touches a file until `apply_writes()`, so the same plan
serves `create`'s early check (before any directory or process exists) and
the real write later.

Where a controller lives is decided per controller by a `Layout`: a v1
hierarchy if the host mounts one for it, otherwise cgroup2 if the controller
is available there (a hybrid host like Debian 12 with only hugetlb on
cgroup2), otherwise the value is refused with UnsupportedError.

This module plans the device rules and applies writes; the other sections
are planned by limits.py (loaded only when the section has them), and the
building blocks live in values.py.
"""

from __future__ import annotations

import errno
import os

from nsbox._lazylog import get_logger
from nsbox.errors import ConfigError, KernelError, UnsupportedError
from nsbox.runtime.cgroups import UNIFIED
from nsbox.runtime.cgroups.values import PREFIX, Layout, Plan, Write, _bool, _int, _str

__all__ = ["DEFAULT_DEVICE_RULES", "KNOWN_SECTIONS", "PREFIX", "Layout", "Plan", "Write",
           "apply_writes", "plan"]

log = get_logger(__name__)

KNOWN_SECTIONS = ("devices", "memory", "cpu", "pids", "blockIO", "hugepageLimits", "network",
                  "rdma", "unified")

# Devices every container needs, appended after the config's own rules when
# it has any (the init creates and opens these itself): mknod of anything,
# then the standard /dev nodes, ptys and the console.
DEFAULT_DEVICE_RULES = (
    {"allow": True, "type": "c", "access": "m"},
    {"allow": True, "type": "b", "access": "m"},
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},   # null
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},   # zero
    {"allow": True, "type": "c", "major": 1, "minor": 7, "access": "rwm"},   # full
    {"allow": True, "type": "c", "major": 1, "minor": 8, "access": "rwm"},   # random
    {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"},   # urandom
    {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"},   # tty
    {"allow": True, "type": "c", "major": 5, "minor": 1, "access": "rwm"},   # console
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},   # ptmx
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},             # /dev/pts/*
)


# ---------------------------------------------------------------- the planner
def plan(resources: dict | None, layout: Layout, updating: bool = False) -> Plan:
    """Validate RESOURCES and list the writes that enforce them on LAYOUT.

    UPDATING: the values replace live ones, so explicit defaults (false, 0)
    are written too.
    """
    out = Plan()
    if not resources:
        return out
    if not isinstance(resources, dict):
        raise ConfigError(f"linux.resources: expected an object, got {type(resources).__name__}")
    for name in resources:
        if name not in KNOWN_SECTIONS:
            log.warning("ignoring unknown field linux.resources.%s", name)
    _plan_devices(resources, layout, out)
    if any(name != "devices" and name in KNOWN_SECTIONS for name in resources):
        # Loaded only for limits: device rules alone are the common case.
        from nsbox.runtime.cgroups import limits

        limits.plan_limits(resources, layout, out, updating)
    for w in out.writes:
        if w.key == UNIFIED:
            controller = w.choices[0][0].split(".", 1)[0]
            if controller != "cgroup":
                out.v2_controllers.add(controller)
    return out


def _plan_devices(resources: dict, layout: Layout, out: Plan) -> None:
    rules = resources.get("devices")
    if rules is None:
        return
    if not isinstance(rules, list):
        raise ConfigError(f"{PREFIX}devices: expected an array, got {rules!r}")
    normalized = [_device_rule(rule, i) for i, rule in enumerate(rules)]
    if not normalized:
        return
    # Like runc, linux.devices adds no rule: a device the config creates is
    # usable only as far as its own rules (the engine's --device rule) allow.
    normalized.extend(dict(r) for r in DEFAULT_DEVICE_RULES)
    key = layout.v1_key("devices")
    if key is not None:
        for index, rule in enumerate(normalized):
            field = f"devices[{index}]" if index < len(rules) else "devices"
            for text in _v1_device_lines(rule):
                out.writes.append(Write(key, [("devices.allow" if rule["allow"] else "devices.deny",
                                               text)], field, group="devices"))
        return
    if layout.has_unified:
        out.bpf_devices = normalized
        return
    raise UnsupportedError(f"{PREFIX}devices: this host has neither the v1 devices controller "
                           "nor cgroup2 for a device program")


def _device_rule(rule: object, index: int) -> dict:
    where = f"devices[{index}]"
    if not isinstance(rule, dict):
        raise ConfigError(f"{PREFIX}{where}: expected an object, got {rule!r}")
    allow = _bool(rule, "allow", where)
    if allow is None:
        raise ConfigError(f"{PREFIX}{where}.allow: required (true or false)")
    dtype = _str(rule, "type", where) or "a"
    if dtype not in ("a", "c", "b", "u"):
        raise ConfigError(f"{PREFIX}{where}.type: expected a, c or b, got {dtype!r}")
    access = _str(rule, "access", where) or "rwm"
    if not set(access) <= set("rwm"):
        raise ConfigError(f"{PREFIX}{where}.access: expected letters from 'rwm', got {access!r}")
    out: dict = {"allow": allow, "type": "c" if dtype == "u" else dtype, "access": access}
    for num in ("major", "minor"):
        value = _int(rule, num, where, lo=-1, hi=0xFFFFFFFF)
        if value is not None and value != -1:
            out[num] = value
    return out


def _v1_device_lines(rule: dict) -> list[str]:
    """devices.allow/deny lines for one rule.

    In v1 a line of type "a" means every device with every access, whatever
    else it says, so a narrower "all types" rule becomes a char and a block line.
    """
    major = str(rule["major"]) if "major" in rule else "*"
    minor = str(rule["minor"]) if "minor" in rule else "*"
    access = "".join(ch for ch in "rwm" if ch in rule["access"])
    if rule["type"] == "a":
        if major == "*" and minor == "*" and access == "rwm":
            return ["a"]
        return [f"c {major}:{minor} {access}", f"b {major}:{minor} {access}"]
    return [f"{rule['type']} {major}:{minor} {access}"]


# ---------------------------------------------------------------- applying
# Writes a kernel may refuse only because of the current value of a sibling
# file (memory below memory+swap, cpu burst above quota, rt runtime above rt
# period): these groups are retried in another order.
_REORDERABLE = frozenset(("memory", "cpu"))


def apply_writes(writes: list[Write], paths: dict[str, str]) -> None:
    """Write every value, in order; raise UnsupportedError/KernelError naming the OCI field."""
    index = 0
    while index < len(writes):
        group = writes[index].group
        end = index + 1
        if group in _REORDERABLE:
            while end < len(writes) and writes[end].group == group:
                end += 1
            _write_reorderable(writes[index:end], paths)
        else:
            _write_one(writes[index], paths)
        index = end


def _write_reorderable(writes: list[Write], paths: dict[str, str]) -> None:
    pending = writes
    while pending:
        failed: list[tuple[Write, KernelError]] = []
        for w in pending:
            try:
                _write_one(w, paths)
            except KernelError as exc:
                if exc.errno not in (errno.EINVAL, errno.EBUSY):
                    raise
                failed.append((w, exc))
        if not failed:
            return
        if len(failed) == len(pending):
            raise failed[0][1]
        pending = [w for w, _exc in failed]



def _write_one(w: Write, paths: dict[str, str]) -> None:
    directory = paths[w.key]
    for position, (name, value) in enumerate(w.choices):
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if position + 1 < len(w.choices):
                continue
            if w.optional:
                return
            if not os.path.isdir(directory):
                raise KernelError(f"{PREFIX}{w.field}: cgroup {directory} does not exist",
                                  errno.ENOENT) from None
            names = " or ".join(c[0] for c in w.choices)
            raise UnsupportedError(f"{PREFIX}{w.field}: the kernel offers no {names} in "
                                   f"{directory}") from None
        except OSError as exc:
            raise KernelError(f"{PREFIX}{w.field}: open {path}: {exc.strerror}", exc.errno) from None
        try:
            os.write(fd, value.encode())
        except OSError as exc:
            if exc.errno == errno.EOPNOTSUPP:
                raise UnsupportedError(f"{PREFIX}{w.field}: the kernel does not support {value!r} "
                                       f"in {path} (Operation not supported)") from None
            raise KernelError(f"{PREFIX}{w.field}: write {value!r} to {path}: {exc.strerror}",
                              exc.errno) from None
        finally:
            os.close(fd)
        log.debug("cgroup %s <- %r", path, value)
        return


def __getattr__(name: str) -> object:
    # supported_page_sizes moved to limits.py with the hugepage section.
    if name == "supported_page_sizes":
        from nsbox.runtime.cgroups.limits import supported_page_sizes

        return supported_page_sizes
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
