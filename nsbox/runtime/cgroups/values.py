"""The building blocks of a resources plan: `Write`, `Plan`, `Layout` and the value checks.

resources.py (the devices rules, `plan()`, applying) and limits.py (every
other section) both build on these; this module imports neither.
"""

from __future__ import annotations

import os

from nsbox.errors import ConfigError, UnsupportedError
from nsbox.runtime.cgroups import UNIFIED, hierarchies

PREFIX = "linux.resources."

# v1 files that exist in a hierarchy's root cgroup as well as in children, so
# their absence from the root proves the kernel lacks them.  Others (pids.max,
# the blkio weights, ...) are missing from the root on purpose.
_ROOT_HAS = frozenset((
    "memory.memsw.limit_in_bytes", "memory.kmem.limit_in_bytes",
    "memory.kmem.tcp.limit_in_bytes", "memory.swappiness", "cpu.rt_runtime_us",
    "cpu.rt_period_us", "cpu.cfs_burst_us", "cpu.idle", "cpu.shares", "cpu.cfs_quota_us",
))


class Write:
    """One value for one cgroup file; CHOICES are (file, value) alternatives, first that exists wins."""

    __slots__ = ("key", "choices", "field", "group", "optional")

    def __init__(self, key: str, choices: list[tuple[str, str]], field: str, group: str = "",
                 optional: bool = False) -> None:
        self.key = key
        self.choices = choices
        self.field = field  # the OCI field, for error messages
        self.group = group  # writes of one group may need another order (see apply_writes)
        self.optional = optional  # a missing file is no error

    def __repr__(self) -> str:
        return f"Write({self.key!r}, {self.choices!r}, {self.field!r})"


class Plan:
    """Everything `apply` will do for one resources section."""

    __slots__ = ("writes", "bpf_devices", "v2_controllers", "memory_limit", "check_before_update")

    def __init__(self) -> None:
        self.writes: list[Write] = []
        self.bpf_devices: list[dict] | None = None  # rules for the cgroup2 device program
        self.v2_controllers: set[str] = set()  # to enable on the cgroup2 side
        self.memory_limit: int | None = None
        self.check_before_update = False


class Layout:
    """Which hierarchy holds each controller for one container's paths."""

    def __init__(self, paths: dict[str, str]) -> None:
        self.paths = paths
        self._v2_available: set[str] | None = None

    @property
    def has_unified(self) -> bool:
        return UNIFIED in self.paths

    @property
    def pure_v2(self) -> bool:
        return list(self.paths) == [UNIFIED]

    def v1_key(self, controller: str) -> str | None:
        for key in self.paths:
            if key != UNIFIED and controller in key.split(","):
                return key
        return None

    def v2_available(self) -> set[str]:
        """Controllers the container's cgroup2 directory can have (its parent offers them)."""
        if self._v2_available is None:
            self._v2_available = set()
            path = self.paths.get(UNIFIED)
            if path:
                from nsbox.runtime.cgroups import v2

                self._v2_available = v2.available_controllers(path)
        return self._v2_available

    def where(self, controller: str) -> str | None:
        """The key of the hierarchy that enforces CONTROLLER, or None."""
        key = self.v1_key(controller)
        if key is not None:
            return key
        if self.has_unified and controller in self.v2_available():
            return UNIFIED
        return None

    def probe(self, key: str, name: str) -> bool | None:
        """Does file NAME exist for the container in hierarchy KEY? None: cannot tell yet."""
        path = self.paths[key]
        probe = path
        while not os.path.isdir(probe):
            probe = os.path.dirname(probe)
        if key == UNIFIED:
            return os.path.exists(os.path.join(path, name)) if probe == path else None
        if os.path.exists(os.path.join(probe, name)):
            return True
        mountpoint = next((h.mountpoint for h in hierarchies() if h.key == key), None)
        if probe == mountpoint and name not in _ROOT_HAS:
            return None
        return False


def _section(resources: dict, name: str) -> dict | None:
    value = resources.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"{PREFIX}{name}: expected an object, got {type(value).__name__}")
    return value


def _int(obj: dict, key: str, where: str, lo: int | None = None, hi: int | None = None) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{PREFIX}{where}.{key}: expected an integer, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
        raise ConfigError(f"{PREFIX}{where}.{key}: {value} is out of range {bounds}")
    return value


def _bool(obj: dict, key: str, where: str) -> bool | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, bool):
        raise ConfigError(f"{PREFIX}{where}.{key}: expected true or false, got {value!r}")
    return value


def _str(obj: dict, key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{PREFIX}{where}.{key}: expected a string, got {value!r}")
    return value


def _list(obj: dict, key: str, where: str) -> list:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{PREFIX}{where}.{key}: expected an array, got {value!r}")
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise ConfigError(f"{PREFIX}{where}.{key}[{index}]: expected an object, got {item!r}")
    return value


def _need(layout: Layout, controller: str, field: str) -> str:
    key = layout.where(controller)
    if key is None:
        if layout.has_unified:
            from nsbox.runtime.cgroups import v2

            raise UnsupportedError(f"{PREFIX}{field}: no {controller} cgroup controller for this "
                                   f"container (mode {_mode_name(layout)}): "
                                   f"{v2.unavailable_reason(layout.paths[UNIFIED], controller)}")
        raise UnsupportedError(f"{PREFIX}{field}: this host has no {controller} cgroup controller "
                               f"(mode {_mode_name(layout)})")
    return key


def _mode_name(layout: Layout) -> str:
    if layout.pure_v2:
        return "cgroup v2"
    return "hybrid" if layout.has_unified else "cgroup v1"


def _require_file(layout: Layout, key: str, names: list[str], field: str) -> None:
    """Refuse now, not after mkdir, when the host certainly lacks every alternative."""
    results = [layout.probe(key, n) for n in names]
    if results and all(r is False for r in results):
        raise UnsupportedError(f"{PREFIX}{field}: the kernel offers no {' or '.join(names)} "
                               f"in {layout.paths[key]}")
