"""Healthcheck settings: the --health-* flags, Go durations and the image's Healthcheck.

A healthcheck is kept in Docker's shape (HealthConfig), durations in
nanoseconds:

    {"Test": ["CMD-SHELL", "wget -qO- localhost"], "Interval": 30_000_000_000,
     "Timeout": 30_000_000_000, "StartPeriod": 0, "StartInterval": 0, "Retries": 3}

Test is ["CMD", prog, args...], ["CMD-SHELL", command] (run by the image's
shell, /bin/sh -c), ["NONE"] (no check) or [] (inherit the image's).  A 0
duration or retry count means "the image's, else the default", as Docker.
"""

from __future__ import annotations

from nsbox.engine.resource_flags import bad, parse_bool, parse_int
from nsbox.errors import ConfigError

SECOND = 1_000_000_000
DEFAULT_INTERVAL = 30 * SECOND
DEFAULT_TIMEOUT = 30 * SECOND
DEFAULT_START_INTERVAL = 5 * SECOND
DEFAULT_RETRIES = 3
MIN_DURATION = 1_000_000  # 1 ms: Docker refuses anything shorter but 0
DURATION_FIELDS = ("Interval", "Timeout", "StartPeriod", "StartInterval")

# flag -> HealthConfig field (durations)
_DURATION_FLAGS = {"health-interval": "Interval", "health-timeout": "Timeout",
                   "health-start-period": "StartPeriod", "health-start-interval": "StartInterval"}
FLAGS = ("health-cmd", *_DURATION_FLAGS, "health-retries", "no-healthcheck")

_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": SECOND,
          "m": 60 * SECOND, "h": 3600 * SECOND}


def parse_go_duration(text: str) -> int:
    """Nanoseconds from Go's time.ParseDuration syntax ("1m30s", "1.5s", "500ms", "0").

    ValueError with Go's wording otherwise.
    """
    orig = text
    sign = 1
    if text[:1] in ("+", "-"):
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    if text == "0":
        return 0
    if not text:
        raise ValueError(f'time: invalid duration "{orig}"')
    total = 0
    while text:
        i = 0
        while i < len(text) and (text[i].isdigit() or text[i] == "."):
            i += 1
        number, text = text[:i], text[i:]
        if not number or number == "." or number.count(".") > 1:
            raise ValueError(f'time: invalid duration "{orig}"')
        j = 0
        while j < len(text) and not (text[j].isdigit() or text[j] == "."):
            j += 1
        unit, text = text[:j], text[j:]
        if not unit:
            raise ValueError(f'time: missing unit in duration "{orig}"')
        if unit not in _UNITS:
            raise ValueError(f'time: unknown unit "{unit}" in duration "{orig}"')
        whole, _, frac = number.partition(".")
        scale = _UNITS[unit]
        total += int(whole or "0") * scale
        if frac:
            total += int(frac) * scale // 10 ** len(frac)
    return sign * total


def format_go_duration(ns: int) -> str:
    """Go's Duration.String() for whole milliseconds and up: "1m30s", "500ms", "0s"."""
    if ns == 0:
        return "0s"
    if ns < SECOND:
        return f"{ns / 1_000_000:g}ms"
    seconds = ns / SECOND
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    out = (f"{int(hours)}h" if hours else "") + (f"{int(minutes)}m" if hours or minutes else "")
    return out + f"{secs:g}s"


def _duration(opts: dict, flag: str) -> int:
    value = opts.get(flag)
    if isinstance(value, bool):
        raise bad(flag, value, f'time: invalid duration "{value}"')
    if isinstance(value, (int, float)):  # the Python API: seconds
        ns = int(value * SECOND)
    else:
        try:
            ns = parse_go_duration(str(value).strip())
        except ValueError as exc:
            raise bad(flag, value, str(exc)) from None
    if ns < 0:
        raise ConfigError(f"--{flag} cannot be negative")
    if 0 < ns < MIN_DURATION:
        raise ConfigError(f"--{flag} cannot be less than 1ms")
    return ns


def _given(opts: dict, flag: str) -> bool:
    return opts.get(flag) not in (None, "", False)


def parse_health_flags(opts: dict) -> dict | None:
    """The HealthConfig the --health-* / --no-healthcheck flags in OPTS ask for (None: none).

    As Docker: --health-cmd CMD is ["CMD-SHELL", CMD] (a list from the
    Python API is ["CMD", ...]); flags without --health-cmd keep the
    image's test and change its timings; --no-healthcheck is ["NONE"] and
    conflicts with the others.
    """
    health = [f for f in FLAGS[:-1] if _given(opts, f)]
    disabled = opts.get("no-healthcheck") not in (None, "") and \
        parse_bool(opts["no-healthcheck"], "no-healthcheck")
    if disabled:
        if health:
            raise ConfigError("--no-healthcheck conflicts with --health-* options")
        return {"Test": ["NONE"]}
    if not health:
        return None
    cmd = opts.get("health-cmd")
    test: list[str] = []
    if isinstance(cmd, (list, tuple)):
        test = ["CMD", *map(str, cmd)] if cmd else []
    elif _given(opts, "health-cmd"):
        test = ["CMD-SHELL", str(cmd)]
    config: dict = {"Test": test}
    for flag, field in _DURATION_FLAGS.items():
        config[field] = _duration(opts, flag) if _given(opts, flag) else 0
    retries = 0
    if _given(opts, "health-retries"):
        retries = parse_int(opts["health-retries"], "health-retries")
        if retries < 0:
            raise ConfigError("--health-retries cannot be negative")
    config["Retries"] = retries
    return config


def check_image_healthcheck(config: object) -> dict | None:
    """An image config's Healthcheck, checked (ConfigError), or None."""
    if not config:
        return None
    if not isinstance(config, dict):
        raise ConfigError("the image's Healthcheck is not an object")
    test = config.get("Test") or []
    if not isinstance(test, list) or not all(isinstance(t, str) for t in test):
        raise ConfigError("the image's Healthcheck.Test is not a list of strings")
    out = {"Test": list(test)}
    for field in DURATION_FIELDS:
        value = config.get(field) or 0
        if not isinstance(value, int) or value < 0:
            raise ConfigError(f"the image's Healthcheck.{field} is not a duration")
        out[field] = value
    retries = config.get("Retries") or 0
    if not isinstance(retries, int) or retries < 0:
        raise ConfigError("the image's Healthcheck.Retries is not a count")
    out["Retries"] = retries
    return out


def merge(user: dict | None, image: dict | None) -> dict | None:
    """The container's HealthConfig: USER's fields over the IMAGE's (Docker's merge).

    Returned as given (["NONE"] included) so inspect shows it; see effective().
    """
    image = check_image_healthcheck(image)
    if user is None:
        return image
    merged = dict(user)
    if image is not None:
        if not merged.get("Test"):
            merged["Test"] = image["Test"]
        for field in (*DURATION_FIELDS, "Retries"):
            if not merged.get(field):
                merged[field] = image.get(field, 0)
    return merged


def effective(config: dict | None) -> dict | None:
    """CONFIG with the defaults filled in, or None if there is nothing to run."""
    if not config:
        return None
    test = config.get("Test") or []
    if not test or test[0] == "NONE":
        return None
    if test[0] not in ("CMD", "CMD-SHELL") or len(test) < 2:
        raise ConfigError(f"unknown or empty healthcheck test {test!r}: use CMD, CMD-SHELL "
                          "or NONE")
    return {"Test": list(test),
            "Interval": config.get("Interval") or DEFAULT_INTERVAL,
            "Timeout": config.get("Timeout") or DEFAULT_TIMEOUT,
            "StartPeriod": config.get("StartPeriod") or 0,
            "StartInterval": config.get("StartInterval") or DEFAULT_START_INTERVAL,
            "Retries": config.get("Retries") or DEFAULT_RETRIES}


def probe_command(config: dict, shell: list[str] | None = None) -> list[str]:
    """The argv a check runs in the container: CMD's as given, CMD-SHELL's by the shell."""
    test = config["Test"]
    if test[0] == "CMD":
        return list(test[1:])
    return [*(shell or ["/bin/sh", "-c"]), " ".join(test[1:])]
