"""Pure conversions between OCI resource values and cgroup v1/v2 file values.

No file access here, so every function is unit-testable on any host.  The
v1 -> v2 formulas follow what crun documents (and runc adopted), so a config
gives the same cgroup values under nsbox as under those runtimes.
"""

from __future__ import annotations

from nsbox.errors import ConfigError

# Kernel limits (kernel/sched/sched.h: MIN_SHARES/MAX_SHARES; cgroup v2
# CGROUP_WEIGHT_MIN/MAX; blk-cgroup CFQ/BFQ weight range).
CPU_SHARES_MIN, CPU_SHARES_MAX = 2, 262144
CPU_WEIGHT_MIN, CPU_WEIGHT_MAX = 1, 10000
BLKIO_WEIGHT_MIN, BLKIO_WEIGHT_MAX = 10, 1000
IO_WEIGHT_MIN, IO_WEIGHT_MAX = 1, 10000

# The biggest value cgroup v1 memory files accept (PAGE_COUNTER_MAX pages, as
# the kernel prints it back for "unlimited").
V1_UNLIMITED = 9223372036854771712


def cpu_shares_to_weight(shares: int) -> int:
    """cpu.shares (2..262144) -> cpu.weight (1..10000); 0 means unset and gives 0.

    A quadratic in log2(shares) that maps the ends of both ranges onto each
    other and the v1 default 1024 onto the v2 default 100 (the old linear
    formula turned 1024 into 39, starving default containers).
    """
    if shares == 0:
        return 0
    import math  # only here: create should not pay for it

    shares = min(max(shares, CPU_SHARES_MIN), CPU_SHARES_MAX)
    log2 = math.log2(shares)
    exponent = (log2 * log2 + 125 * log2) / 612.0 - 7.0 / 34.0
    return min(max(math.ceil(10 ** exponent), CPU_WEIGHT_MIN), CPU_WEIGHT_MAX)


def cpu_weight_to_shares(weight: int) -> int:
    """The inverse of cpu_shares_to_weight (for reading a v2 weight back as shares)."""
    if weight == 0:
        return 0
    import math

    weight = min(max(weight, CPU_WEIGHT_MIN), CPU_WEIGHT_MAX)
    # Solve l^2 + 125 l - 612 (log10(w) + 7/34) = 0 for l = log2(shares).
    rhs = 612.0 * (math.log10(weight) + 7.0 / 34.0)
    log2 = (-125.0 + math.sqrt(125.0 * 125.0 + 4.0 * rhs)) / 2.0
    # The largest shares value that still maps to WEIGHT (forward rounds up).
    return min(max(math.floor(2 ** log2 + 1e-9), CPU_SHARES_MIN), CPU_SHARES_MAX)


def blkio_weight_to_io_weight(weight: int) -> int:
    """blkio.weight (10..1000) -> io.weight (1..10000), linearly; 0 means unset."""
    if weight == 0:
        return 0
    return IO_WEIGHT_MIN + (weight - BLKIO_WEIGHT_MIN) * (IO_WEIGHT_MAX - IO_WEIGHT_MIN) // (
        BLKIO_WEIGHT_MAX - BLKIO_WEIGHT_MIN)


def swap_to_v2(swap: int | None, limit: int | None) -> int | None:
    """OCI memory.swap (memory+swap, as v1's memsw) -> memory.swap.max (swap alone).

    Returns None when nothing is to be written, -1 for "max", else bytes.
    """
    if swap is None or swap == 0:
        return None
    if swap == -1:
        return -1
    if limit is None or limit in (0, -1):
        raise ConfigError("linux.resources.memory.swap: a swap limit needs a memory limit "
                          "(on cgroup v2 swap is limited as swap - limit)")
    if swap < limit:
        raise ConfigError(f"linux.resources.memory.swap: {swap} is below the memory limit {limit} "
                          "(swap counts memory plus swap)")
    return swap - limit


def v2_swap_to_oci(swap_max: int | None, memory_max: int | None) -> int | None:
    """memory.swap.max back to OCI memory+swap (None: unknown, -1: unlimited)."""
    if swap_max is None:
        return None
    if swap_max == -1 or memory_max in (None, -1):
        return -1
    return swap_max + memory_max


def v2_limit(value: int) -> str:
    """A v2 limit file value: -1 (or any negative) is "max"."""
    return "max" if value < 0 else str(value)


def v1_limit(value: int) -> str:
    """A v1 memory limit value: -1 means unlimited, written as -1 (the kernel accepts it)."""
    return "-1" if value < 0 else str(value)


def parse_v2_value(text: str) -> int:
    """A v2 limit read back: "max" is -1."""
    text = text.strip()
    return -1 if text == "max" else int(text)


def parse_v1_value(text: str) -> int:
    """A v1 limit read back: the kernel's "unlimited" is -1."""
    value = int(text.strip())
    return -1 if value >= V1_UNLIMITED else value


# ---------------------------------------------------------------- hugepages
_UNITS = {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40, "PB": 1 << 50}


def page_size_bytes(name: str) -> int:
    """"2MB" -> 2097152 (base 1024, as the OCI spec asks); ConfigError if malformed."""
    number, unit = name[:-2], name[-2:].upper()
    if unit not in _UNITS or not number.isdigit() or int(number) == 0:
        raise ConfigError(f"linux.resources.hugepageLimits: invalid pageSize {name!r} "
                          "(expected like 2MB, 1GB, 64KB)")
    return int(number) * _UNITS[unit]


def page_size_name(size: int) -> str:
    """2097152 -> "2MB": the <hugepagesize> in hugetlb.<hugepagesize>.* file names."""
    for unit in ("GB", "MB", "KB"):
        if size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return f"{size}B"


# ---------------------------------------------------------------- cpu lists
def parse_cpu_list(text: str, field: str = "linux.resources.cpu.cpus") -> set[int]:
    """"0-3,5" -> {0, 1, 2, 3, 5}; ConfigError if malformed."""
    out: set[int] = set()
    text = text.strip()
    if not text:
        return out
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise ConfigError(f"{field}: invalid list {text!r} (expected like 0-3,5)")
        first, last = int(lo), int(hi) if dash else int(lo)
        if last < first:
            raise ConfigError(f"{field}: invalid range {part!r} in {text!r}")
        out.update(range(first, last + 1))
    return out


def format_cpu_list(values: set[int] | list[int]) -> str:
    """{0, 1, 2, 5} -> "0-2,5"."""
    items = sorted(set(values))
    parts = []
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[j] + 1:
            j += 1
        parts.append(str(items[i]) if i == j else f"{items[i]}-{items[j]}")
        i = j + 1
    return ",".join(parts)


# ---------------------------------------------------------------- CLI values
_SIZE_SUFFIX = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
                "g": 1 << 30, "gb": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "p": 1 << 50, "pb": 1 << 50}


def parse_memory_size(text: str, flag: str) -> int:
    """A runc `update` memory value: bytes, or a number with k/m/g/t/p (base 1024); -1 unlimited."""
    value = text.strip().lower()
    if value == "-1":
        return -1
    number = value.rstrip("kmgtpb")
    suffix = value[len(number):]
    try:
        amount = float(number)
    except ValueError:
        amount = -1.0
    if suffix not in _SIZE_SUFFIX or amount < 0:
        raise ConfigError(f"invalid value {text!r} for --{flag}: expected bytes like 512m or -1")
    return int(amount * _SIZE_SUFFIX[suffix])


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str, flag: str) -> float:
    """A Go duration ("5s", "1m30s", "250ms") in seconds; a bare number is seconds."""
    value = text.strip()
    try:
        return float(value)
    except ValueError:
        pass
    total, number, i = 0.0, "", 0
    while i < len(value):
        ch = value[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = next((u for u in ("ns", "us", "µs", "ms", "s", "m", "h") if value.startswith(u, i)), None)
        if unit is None or not number:
            raise ConfigError(f"invalid duration {text!r} for --{flag} (expected like 5s or 500ms)")
        total += float(number) * _DURATION_UNITS[unit]
        number = ""
        i += len(unit)
    if number:
        raise ConfigError(f"invalid duration {text!r} for --{flag}: missing unit")
    return total
