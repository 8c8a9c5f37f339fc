"""Linux capabilities of the container process.

The init process calls, in this order, while it is still uid 0 with every
capability:

1. drop_bounding(caps)         shrink the bounding set (needs CAP_SETPCAP)
2. prepare_identity_change()   keep the permitted set across setresuid
3. (the caller changes groups, gid and uid)
4. apply_sets(caps)            capset effective/permitted/inheritable, ambient

Decisions where the specs leave room:

* An absent ``process.capabilities`` object means an empty set for every set.
  The runtime-spec does not say; runc leaves the process untouched (full root),
  crun drops everything.  We follow crun: a config that lists nothing gets
  nothing.
* A name that is not a capability at all (``CAP_FOO``) is a ConfigError by
  default: it is almost always a typo.  runtime-spec >= 1.1 asks runtimes to
  warn instead; ``strict=False`` gives that behaviour.
* A known name the running kernel does not have (above cap_last_cap), or a
  capability the runtime itself lacks, is skipped with a warning, as the
  runtime-spec asks ("cannot be granted ... MUST be logged as a warning").
* An ambient capability that is not both permitted and inheritable cannot be
  raised (the kernel refuses with EPERM); like runc we warn and skip it.

Note the kernel's exec rules: a uid 0 process gets permitted = inheritable |
bounding after execve, so for root containers the bounding set is what counts.
"""

from __future__ import annotations

import os

from nsbox import _lazylog
from nsbox._lazylog import get_logger
from nsbox._lite import once
from nsbox._record import record
from nsbox.errors import ConfigError, KernelError

# nsbox.runtime.syscalls (ctypes, ~2 ms) is imported inside the functions that call
# the kernel: the engine only needs the names and numbers.

TYPE_CHECKING = False  # typing itself is slow to import
if TYPE_CHECKING:
    from collections.abc import Iterable

    from nsbox.runtime.spec import Capabilities

log = get_logger(__name__)

# Numbers from linux/capability.h; names as the OCI spec writes them.
CAPABILITIES: dict[str, int] = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14,
    "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16,
    "CAP_SYS_RAWIO": 17,
    "CAP_SYS_CHROOT": 18,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22,
    "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYS_TIME": 25,
    "CAP_SYS_TTY_CONFIG": 26,
    "CAP_MKNOD": 27,
    "CAP_LEASE": 28,
    "CAP_AUDIT_WRITE": 29,
    "CAP_AUDIT_CONTROL": 30,
    "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32,
    "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34,
    "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36,
    "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}

_NAMES_BY_NUMBER: dict[int, str] = {number: name for name, number in CAPABILITIES.items()}

_STATUS_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


@once
def last_cap() -> int:
    """Highest capability number the running kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        pass
    # /proc may be missing (e.g. inside init before it is mounted): probe the
    # bounding set, which answers EINVAL for numbers past the last capability.
    from nsbox.runtime import syscalls
    number = 0
    while number < 63:
        try:
            syscalls.prctl(syscalls.PR_CAPBSET_READ, number + 1)
        except OSError:
            break
        number += 1
    return number


def _mask(numbers: Iterable[int]) -> int:
    result = 0
    for number in numbers:
        result |= 1 << number
    return result


def _all_caps_mask() -> int:
    return (1 << (last_cap() + 1)) - 1


def names_from_mask(mask: int) -> list[str]:
    """Capability names of the bits set in mask, lowest first (unknown bits as CAP_<n>)."""
    names = []
    bit = 0
    while mask >> bit:
        if mask >> bit & 1:
            names.append(_NAMES_BY_NUMBER.get(bit, f"CAP_{bit}"))
        bit += 1
    return names


def parse_cap_names(names: Iterable[str], *, strict: bool = True,
                    log_level: int = _lazylog.WARNING) -> list[int]:
    """Capability numbers for names, skipping (with a warning) those the kernel lacks.

    A name that is no capability at all raises ConfigError, or is only
    logged and skipped if strict is false.
    """
    numbers: list[int] = []
    top = last_cap()
    for name in names:
        number = CAPABILITIES.get(name)
        if number is None:
            if strict:
                raise ConfigError(f"unknown capability {name!r}")
            log.log(log_level, "ignoring unknown capability %r", name)
            continue
        if number > top:
            log.log(log_level, "ignoring capability %s: the running kernel does not support it",
                    name)
            continue
        if number not in numbers:
            numbers.append(number)
    return numbers


@record
class CapSets:
    """The five capability sets of a process, as bit masks."""

    bounding: int = 0
    effective: int = 0
    permitted: int = 0
    inheritable: int = 0
    ambient: int = 0


def resolve(caps: Capabilities | None, *, strict: bool = True,
            log_level: int = _lazylog.WARNING) -> CapSets:
    """Turn a config's capability names into masks; None means all sets empty."""
    if caps is None:
        return CapSets()

    def mask_of(names: list[str]) -> int:
        return _mask(parse_cap_names(names, strict=strict, log_level=log_level))

    return CapSets(
        bounding=mask_of(caps.bounding),
        effective=mask_of(caps.effective),
        permitted=mask_of(caps.permitted),
        inheritable=mask_of(caps.inheritable),
        ambient=mask_of(caps.ambient),
    )


def _resolve_in_init(caps: Capabilities | None) -> CapSets:
    # validate() already judged the names at create time; by now a bad name
    # must not abort the container, nor be reported a second time.
    return resolve(caps, strict=False, log_level=_lazylog.DEBUG)


def _warn_missing(what: str, missing: int, why: str) -> None:
    if missing:
        log.warning("%s capabilities %s will not be granted: %s",
                    what, ", ".join(names_from_mask(missing)), why)


def validate(caps: Capabilities | None, *, strict: bool = True) -> CapSets:
    """Check a config's capabilities at create time, before any process exists.

    Raises ConfigError for names that are no capability; warns about sets the
    kernel will not allow together.  Returns the resolved masks.
    """
    sets = resolve(caps, strict=strict)
    _warn_missing("effective", sets.effective & ~sets.permitted, "not in the permitted set")
    _warn_missing("inheritable", sets.inheritable & ~sets.bounding, "not in the bounding set")
    _warn_missing("ambient", sets.ambient & ~(sets.permitted & sets.inheritable),
                  "an ambient capability must be both permitted and inheritable")
    return sets


def _bounding_now() -> int:
    """The bounding set this process holds: CapBnd in /proc/self/status, one
    read where 41 prctl calls would ask bit by bit (as they do where /proc is
    not mounted)."""
    try:
        return read_status_caps()["CapBnd"]
    except (OSError, KeyError, ValueError):
        pass
    from nsbox.runtime import syscalls
    mask = 0
    for number in range(last_cap() + 1):
        if syscalls.prctl(syscalls.PR_CAPBSET_READ, number) == 1:
            mask |= 1 << number
    return mask


def drop_bounding(caps: Capabilities | None) -> int:
    """Remove from the bounding set every capability the config does not list;
    returns the bounding set left (for apply_sets)."""
    from nsbox.runtime import syscalls
    keep = _resolve_in_init(caps).bounding
    held = _bounding_now()  # read once: what is kept is what was held
    for number in range(last_cap() + 1):
        if keep >> number & 1:
            continue
        if not held >> number & 1:
            continue  # already gone; dropping again would need CAP_SETPCAP for nothing
        try:
            syscalls.prctl(syscalls.PR_CAPBSET_DROP, number)
        except OSError as e:
            name = _NAMES_BY_NUMBER.get(number, f"CAP_{number}")
            raise KernelError(f"dropping {name} from the bounding set: {e.strerror}",
                              e.errno) from e
    missing = keep & ~held
    _warn_missing("bounding", missing, "not in the runtime's own bounding set")
    return held & keep


def prepare_identity_change() -> None:
    """Keep the permitted set when the caller next switches from uid 0 to another uid."""
    from nsbox.runtime import syscalls
    try:
        syscalls.prctl(syscalls.PR_SET_KEEPCAPS, 1)
    except OSError as e:
        raise KernelError(f"prctl(PR_SET_KEEPCAPS): {e.strerror}", e.errno) from e


def apply_sets(caps: Capabilities | None, bounding: int | None = None) -> None:
    """Set effective/permitted/inheritable, end keepcaps, then set the ambient set.

    Capabilities the process no longer holds cannot be granted; they are
    dropped from the request with a warning instead of failing.  BOUNDING:
    the bounding set drop_bounding left, read again when not given.
    """
    from nsbox.runtime import syscalls
    sets = _resolve_in_init(caps)
    _, held_permitted, held_inheritable = syscalls.capget()

    # Inconsistent requests (effective outside permitted, ...) were reported
    # by validate(); here only what the process itself cannot give is news.
    permitted = sets.permitted & held_permitted
    _warn_missing("permitted", sets.permitted & ~held_permitted, "the runtime does not hold them")
    effective = sets.effective & permitted

    # The kernel accepts a new inheritable set only within the old inheritable
    # set plus the bounding set, and (without CAP_SETPCAP in effective, the
    # normal case after a uid change) plus the old permitted set.
    if bounding is None:
        bounding = _bounding_now()
    inheritable_limit = held_inheritable | (held_permitted & bounding)
    inheritable = sets.inheritable & inheritable_limit
    _warn_missing("inheritable", sets.inheritable & sets.bounding & ~inheritable_limit,
                  "the runtime does not hold them")

    try:
        syscalls.capset(effective, permitted, inheritable)
    except OSError as e:
        raise KernelError(f"capset: {e.strerror}", e.errno) from e
    try:
        syscalls.prctl(syscalls.PR_SET_KEEPCAPS, 0)
    except OSError as e:
        raise KernelError(f"prctl(PR_SET_KEEPCAPS, 0): {e.strerror}", e.errno) from e
    _apply_ambient(sets.ambient, permitted & inheritable,
                   sets.permitted & sets.inheritable)


def _apply_ambient(wanted: int, raisable: int, consistent: int) -> None:
    from nsbox.runtime import syscalls
    try:
        syscalls.prctl(syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError as e:
        # Leftover ambient capabilities would leak into the container: fail.
        raise KernelError(f"clearing the ambient capability set: {e.strerror}", e.errno) from e
    _warn_missing("ambient", wanted & consistent & ~raisable, "the runtime does not hold them")
    for name in names_from_mask(wanted & raisable):
        try:
            syscalls.prctl(syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_RAISE,
                           CAPABILITIES[name])
        except OSError as e:
            # runc only warns here too; a missing ambient cap fails safe.
            log.warning("cannot raise ambient capability %s: %s", name, e.strerror)


def read_status_caps(pid: int | str = "self") -> dict[str, int]:
    """The CapInh/CapPrm/CapEff/CapBnd/CapAmb masks of a process from /proc/PID/status."""
    result: dict[str, int] = {}
    with open(os.path.join("/proc", str(pid), "status")) as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in _STATUS_FIELDS:
                result[key] = int(value.strip(), 16)
    return result


def features() -> list[str]:
    """Every capability name this runtime knows, for the OCI features document."""
    return sorted(CAPABILITIES, key=CAPABILITIES.__getitem__)
