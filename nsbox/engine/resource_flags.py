"""Docker's resource flag values -> OCI linux.resources, and the value parsers
every flag shares (sizes, integers, booleans, Docker's error wording).

flags.py builds the whole ContainerSpec on top of this; `nsbox update`
uses build_resources alone.
"""

from __future__ import annotations

import os
import sys

from nsbox.errors import ConfigError

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
CPU_PERIOD = 100_000  # microseconds: the kernel's default CFS period


def bad(flag: str, value: object, why: str) -> ConfigError:
    """The Docker wording for a flag value that does not parse."""
    return ConfigError(f'invalid argument "{value}" for "--{flag}" flag: {why}')


def warn(text: str) -> None:
    """A warning on stderr (Docker prints these and goes on)."""
    sys.stderr.write(f"WARNING: {text}\n")


def _host():  # noqa: ANN202 - the hostcaps module, imported when a flag needs it
    from nsbox.engine import hostcaps
    return hostcaps


def _as_list(value: object) -> list:
    if value is None or value is False:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


# ================================================================ numbers
def parse_size(value: object, flag: str = "memory") -> int:
    """Bytes from `512m`, `1g`, `100k`, `1024`, `1.5g` (binary units) or an int."""
    if isinstance(value, bool):
        raise bad(flag, value, f"invalid size: '{value}'")
    if isinstance(value, int):
        if value < 0:
            raise bad(flag, value, f"invalid size: '{value}'")
        return value
    text = str(value).strip().lower()
    number = text.rstrip("bkmgt")
    suffix = text[len(number):]
    # "mb" and "kib"-less Docker forms: one unit letter, optionally followed by "b".
    if suffix.endswith("b") and len(suffix) == 2:
        suffix = suffix[0]
    if suffix not in _UNITS or not number:
        raise bad(flag, value, f"invalid size: '{value}'")
    try:
        amount = float(number)
    except ValueError:
        raise bad(flag, value, f"invalid size: '{value}'") from None
    if amount < 0 or amount != amount:
        raise bad(flag, value, f"invalid size: '{value}'")
    return int(amount * _UNITS[suffix])


def parse_int(value: object, flag: str, low: int | None = None, high: int | None = None) -> int:
    """An integer flag, optionally within [LOW, HIGH]."""
    if isinstance(value, bool):
        raise bad(flag, value, "invalid syntax")
    try:
        number = int(value) if isinstance(value, int) else int(str(value).strip(), 10)
    except ValueError:
        raise bad(flag, value, "invalid syntax") from None
    if (low is not None and number < low) or (high is not None and number > high):
        raise bad(flag, value, f"must be in the range {low} to {high}" if high is not None
                  else f"must be at least {low}")
    return number


def parse_bool(value: object, flag: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("1", "true", "yes", "on", ""):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise bad(flag, value, "invalid syntax")


def parse_cpus(value: object) -> tuple[int, int]:
    """--cpus N -> (quota, period) in microseconds: 1.5 -> (150000, 100000)."""
    ncpu = os.cpu_count() or 1
    try:
        amount = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise bad("cpus", value, "invalid syntax") from None
    if not 0.01 <= amount <= ncpu:
        raise bad("cpus", value, f"range of CPUs is from 0.01 to {ncpu}.00, as per the number "
                  "of CPUs available")
    return round(amount * CPU_PERIOD), CPU_PERIOD


def parse_cpuset(value: object, flag: str) -> str:
    """Validate a cpuset list like `0-3,5`; returns it normalised (no spaces)."""
    text = str(value).replace(" ", "")
    if not text:
        raise bad(flag, value, "empty cpuset")
    for part in text.split(","):
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise bad(flag, value, f"invalid format: {part!r}")
        if dash and int(high) < int(low):
            raise bad(flag, value, f"invalid range: {part!r}")
    return text


def _check_online(cpuset: str, flag: str) -> None:
    """Refuse CPUs or memory nodes the host does not have online (Docker's create-time check)."""
    host = _host()
    cpus = flag == "cpuset-cpus"
    missing, have = host.unavailable(cpuset, host.CPU_ONLINE if cpus else host.NODE_ONLINE)
    if missing:
        what = ("CPU" if cpus else "memory node") + ("s" if len(missing) > 1 else "")
        raise bad(flag, cpuset, f"{what} {host.format_list(missing)} not available on this host "
                  f"(online: {have})")


def device_numbers(path: str, flag: str) -> tuple[int, int]:
    """(major, minor) of the device node PATH."""
    import stat

    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(f'invalid argument "{path}" for "--{flag}" flag: '
                          f"{exc.strerror.lower() if exc.strerror else exc}") from None
    if not (stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode)):
        raise ConfigError(f'invalid argument "{path}" for "--{flag}" flag: '
                          f"{path} is not a device")
    return os.major(st.st_rdev), os.minor(st.st_rdev)


def _device_rate(entry: object, flag: str, iops: bool) -> dict:
    path, colon, amount = str(entry).rpartition(":")
    if not colon or not path.startswith("/"):
        raise bad(flag, entry, "bad format, expected DEVICE:RATE")
    if iops:
        rate = parse_int(amount, flag, 0)
    else:
        try:
            rate = parse_size(amount, flag)
        except ConfigError:
            raise bad(flag, entry, f"invalid rate: '{amount}'") from None
    major, minor = device_numbers(path, flag)
    return {"major": major, "minor": minor, "rate": rate}


# ================================================================ resources
def build_resources(opts: dict) -> dict:
    """OCI linux.resources from the resource flags in OPTS (long names); {} if none."""
    res: dict = {}
    memory: dict = {}
    if opts.get("memory") not in (None, ""):
        memory["limit"] = parse_size(opts["memory"], "memory")
        if memory["limit"] and memory["limit"] < 6 * (1 << 20):
            raise ConfigError("Minimum memory limit allowed is 6MB")
    if opts.get("memory-reservation") not in (None, ""):
        memory["reservation"] = parse_size(opts["memory-reservation"], "memory-reservation")
    if opts.get("memory-swap") not in (None, ""):
        raw = opts["memory-swap"]
        if str(raw).strip() == "-1":
            memory["swap"] = -1
        else:
            memory["swap"] = parse_size(raw, "memory-swap")
            if "limit" not in memory:
                raise ConfigError("You should always set the Memory limit when using "
                                  "Memoryswap limit, see usage")
            if memory["swap"] < memory["limit"]:
                raise ConfigError("Minimum memoryswap limit should be larger than memory "
                                  "limit, see usage")
        if memory["swap"] > 0 and not _host().swap_limit_supported():
            warn(_host().SWAP_LIMIT_WARNING)
            memory["swap"] = -1  # as Docker: unlimited (the bundle leaves it out)
    if opts.get("memory-swappiness") not in (None, ""):
        value = opts["memory-swappiness"]
        number = parse_int(value, "memory-swappiness")
        if number != -1:  # Docker's "unset"
            if not 0 <= number <= 100:
                raise bad("memory-swappiness", value, "must be in the range 0 to 100")
            memory["swappiness"] = number
    if opts.get("oom-kill-disable"):
        memory["disableOOMKiller"] = parse_bool(opts["oom-kill-disable"], "oom-kill-disable")
    if memory:
        res["memory"] = memory

    cpu: dict = {}
    if opts.get("cpus") not in (None, ""):
        if opts.get("cpu-period") not in (None, "") or opts.get("cpu-quota") not in (None, ""):
            raise ConfigError("Conflicting options: --cpus and --cpu-period/--cpu-quota")
        cpu["quota"], cpu["period"] = parse_cpus(opts["cpus"])
    if opts.get("cpu-shares") not in (None, ""):
        cpu["shares"] = parse_int(opts["cpu-shares"], "cpu-shares", 2, 262144)
    if opts.get("cpu-period") not in (None, ""):
        cpu["period"] = parse_int(opts["cpu-period"], "cpu-period", 1000, 1_000_000)
    if opts.get("cpu-quota") not in (None, ""):
        quota = parse_int(opts["cpu-quota"], "cpu-quota")
        if quota != -1 and quota < 1000:
            raise bad("cpu-quota", opts["cpu-quota"], "must be -1 or at least 1000")
        cpu["quota"] = quota
    if opts.get("cpuset-cpus") not in (None, ""):
        cpu["cpus"] = parse_cpuset(opts["cpuset-cpus"], "cpuset-cpus")
        _check_online(cpu["cpus"], "cpuset-cpus")
    if opts.get("cpuset-mems") not in (None, ""):
        cpu["mems"] = parse_cpuset(opts["cpuset-mems"], "cpuset-mems")
        _check_online(cpu["mems"], "cpuset-mems")
    if cpu:
        res["cpu"] = cpu

    blkio: dict = {}
    if opts.get("blkio-weight") not in (None, ""):
        weight = parse_int(opts["blkio-weight"], "blkio-weight")
        if weight != 0 and not 10 <= weight <= 1000:
            raise bad("blkio-weight", opts["blkio-weight"], "must be in the range 10 to 1000")
        if weight:
            blkio["weight"] = weight
    for entry in _as_list(opts.get("blkio-weight-device")):
        path, colon, amount = str(entry).rpartition(":")
        if not colon or not path.startswith("/"):
            raise bad("blkio-weight-device", entry, "bad format, expected DEVICE:WEIGHT")
        weight = parse_int(amount, "blkio-weight-device")
        if not 10 <= weight <= 1000:
            raise bad("blkio-weight-device", entry, "weight must be in the range 10 to 1000")
        major, minor = device_numbers(path, "blkio-weight-device")
        blkio.setdefault("weightDevice", []).append(
            {"major": major, "minor": minor, "weight": weight})
    for flag, key, iops in (("device-read-bps", "throttleReadBpsDevice", False),
                            ("device-write-bps", "throttleWriteBpsDevice", False),
                            ("device-read-iops", "throttleReadIOPSDevice", True),
                            ("device-write-iops", "throttleWriteIOPSDevice", True)):
        for entry in _as_list(opts.get(flag)):
            blkio.setdefault(key, []).append(_device_rate(entry, flag, iops))
    if (blkio.get("weight") or blkio.get("weightDevice")) and not _host().blkio_weight_supported():
        warn(_host().BLKIO_WEIGHT_WARNING)  # Docker discards the weight and runs the container
        blkio.pop("weight", None)
        blkio.pop("weightDevice", None)
    if blkio:
        res["blockIO"] = blkio

    if opts.get("pids-limit") not in (None, ""):
        limit = parse_int(opts["pids-limit"], "pids-limit")
        if limit < -1:
            raise bad("pids-limit", opts["pids-limit"], "must be -1 (unlimited) or positive")
        res["pids"] = {"limit": limit if limit > 0 else -1}
    return res


# ================================================================ key=value lists
