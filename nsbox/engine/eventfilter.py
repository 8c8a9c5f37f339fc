"""--since/--until times and --filter keys of `nsbox events` (nsbox/engine/events.py uses them).

parse_time_ns reads Unix seconds (to the nanosecond), RFC 3339 and durations
ago; normalize_filters/matches are Docker's event filters: values of one key
ORed, keys ANDed.  An event is anything with Type, Action and
Actor.ID/Actor.Attributes (events.Event).
"""

from __future__ import annotations

import time

TYPE_CHECKING = False  # typing's own constant costs an import of typing
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

FILTER_KEYS = ("container", "event", "image", "type", "label", "network", "volume")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float | None:
    """Go's time.ParseDuration subset: "10m", "1h30m", "1.5s", "250ms"; None if not one."""
    total, i, n = 0.0, 0, len(text)
    if not n:
        return None
    while i < n:
        j = i
        while j < n and (text[j].isdigit() or text[j] == "."):
            j += 1
        if j == i:
            return None
        k = j
        while k < n and not (text[k].isdigit() or text[k] == "."):
            k += 1
        unit = text[j:k]
        if unit not in _UNITS:
            return None
        try:
            total += float(text[i:j]) * _UNITS[unit]
        except ValueError:
            return None
        i = k
    return total


def parse_time(text: str | float | int, now: float | None = None) -> float:
    """Seconds since the epoch from a --since/--until value; ValueError if it is none.

    Unix seconds (fractions allowed), RFC 3339 (with or without zone: UTC if
    none; nanoseconds accepted), a date (YYYY-MM-DD), or a duration ago."""
    return parse_time_ns(text, now) / 1e9


def parse_time_ns(text: str | float | int, now: float | None = None) -> int:
    """parse_time() in nanoseconds, exact to the digit for "SECONDS.FRACTION" and RFC 3339."""
    if isinstance(text, (int, float)):
        return int(round(text * 1_000_000_000))
    value = text.strip()
    if not value:
        raise ValueError("empty time")
    whole, dot, frac = value.partition(".")
    if whole.isdigit() and (not dot or frac.isdigit()):
        return int(whole) * 1_000_000_000 + int((frac + "0" * 9)[:9])
    ago = parse_duration(value)
    if ago is not None:
        return int(((time.time() if now is None else now) - ago) * 1_000_000_000)
    from datetime import UTC, datetime

    iso = value.replace("Z", "+00:00").replace("z", "+00:00")
    head, dot, frac = iso.partition(".")
    nanos = 0
    if dot:  # Python 3.11 parses at most microseconds: the digits are counted here
        digits = frac[:len(frac) - len(frac.lstrip("0123456789"))]
        nanos = int((digits + "0" * 9)[:9]) if digits else 0
        iso = head + frac[len(digits):]
    try:
        parsed = datetime.fromisoformat(iso)
    except ValueError:
        raise ValueError(f"not a time or duration: {text!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp()) * 1_000_000_000 + nanos


def normalize_filters(filters: Mapping[str, object] | Iterable[str] | None) -> dict[str, list[str]]:
    """{key: [values]} from a mapping (value or list of values) or "k=v" strings.

    ValueError for an unknown key or a string without "="."""
    out: dict[str, list[str]] = {}
    if not filters:
        return out
    if isinstance(filters, dict) or hasattr(filters, "items"):
        items: list[tuple[str, str]] = []
        for key, value in filters.items():  # type: ignore[union-attr]
            values = [value] if isinstance(value, str) else list(value)  # type: ignore[arg-type]
            items.extend((str(key), str(v)) for v in values)
    else:
        items = []
        for spec in filters:  # type: ignore[union-attr]
            key, eq, value = str(spec).partition("=")
            if not eq:
                raise ValueError(f"bad format of filter (expected name=value): {spec!r}")
            items.append((key, value))
    for key, value in items:
        if key not in FILTER_KEYS:
            raise ValueError(f"invalid filter {key!r} (known: {', '.join(FILTER_KEYS)})")
        out.setdefault(key, []).append(value)
    return out


def _match_id(full: str, wanted: str) -> bool:
    return bool(wanted) and (full == wanted or (len(wanted) >= 3 and full.startswith(wanted)))


def _image_names(value: str) -> set[str]:
    names = {value}
    if value and ":" not in value.rsplit("/", 1)[-1] and "@" not in value:
        names.add(value + ":latest")
    for prefix in ("docker.io/library/", "docker.io/", "localhost/"):
        if value.startswith(prefix):
            names |= _image_names(value[len(prefix):])
    return names


def matches(event,  # noqa: ANN001 - an events.Event
             filters: Mapping[str, list[str]]) -> bool:
    """Whether EVENT passes normalized FILTERS (every key must match one of its values)."""
    attrs = event.Actor.Attributes
    for key, values in filters.items():
        if not any(_match_one(event, attrs, key, v) for v in values):
            return False
    return True


def _match_one(event,  # noqa: ANN001
                attrs: dict[str, str], key: str, value: str) -> bool:
    if key == "type":
        return event.Type == value
    if key == "event":  # "health_status: healthy" is matched by health_status too
        return event.Action == value or event.Action.split(":", 1)[0] == value
    if key == "container":
        if event.Type == "container":
            return _match_id(event.Actor.ID, value) or attrs.get("name") == value
        return _match_id(attrs.get("container", ""), value)  # network connect/disconnect
    if key == "image":
        wanted = _image_names(value)
        if event.Type == "image":
            return bool(wanted & (_image_names(event.Actor.ID) | _image_names(attrs.get("name", ""))))
        return event.Type == "container" and bool(wanted & _image_names(attrs.get("image", "")))
    if key == "label":
        k, eq, v = value.partition("=")
        return k in attrs and (not eq or attrs[k] == v)
    if key in ("network", "volume"):
        if event.Type != key:
            return False
        return _match_id(event.Actor.ID, value) or attrs.get("name") == value
    return False
