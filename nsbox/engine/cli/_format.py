"""Output helpers of the `nsbox` CLI: Go-template subset, tables, ages, sizes, progress.

`--format` takes the templates Docker users already write: `{{.ID}}`,
`{{.State.Pid}}`, `{{json .Config}}`, `{{index .Labels "k"}}`, `{{upper .Name}}`,
`{{join .Args " "}}`, and a leading `table ` for aligned columns with headers.
"""

from __future__ import annotations

import sys
import time

from nsbox.errors import ConfigError

# Header names Docker prints for `table` formats.
HEADERS = {"ID": "CONTAINER ID", "Names": "NAMES", "Image": "IMAGE", "Command": "COMMAND",
           "CreatedAt": "CREATED AT", "RunningFor": "CREATED", "Status": "STATUS",
           "State": "STATE", "Ports": "PORTS", "Labels": "LABELS", "Size": "SIZE",
           "Mounts": "MOUNTS", "Repository": "REPOSITORY", "Tag": "TAG", "Digest": "DIGEST",
           "CreatedSince": "CREATED", "Name": "NAME", "Driver": "DRIVER",
           "Mountpoint": "MOUNTPOINT"}


# ================================================================ Go templates
def _go_str(value: object) -> str:
    """How Go's text/template prints a value."""
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_go_str(v)}" for k, v in sorted(value.items())) + "]"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(_go_str(v) for v in value) + "]"
    return str(value)


def _lookup(obj: object, path: str) -> object:
    if path == ".":
        return obj
    value = obj
    for part in path.lstrip(".").split("."):
        if isinstance(value, dict):
            if part not in value:
                raise ConfigError(f"template: can't evaluate field {part}")
            value = value[part]
        elif hasattr(value, part):
            value = getattr(value, part)
        else:
            raise ConfigError(f"template: can't evaluate field {part}")
    return value


def _split_args(text: str) -> list[str]:
    import shlex

    try:
        return shlex.split(text)
    except ValueError as exc:
        raise ConfigError(f"template: {exc}") from None


def _eval(expr: str, obj: object) -> object:
    import json

    pipeline = [p.strip() for p in expr.split("|")]
    value: object = None
    for stage_index, stage in enumerate(pipeline):
        words = _split_args(stage)
        if not words:
            raise ConfigError(f"template: empty command in {{{{{expr}}}}}")
        head, rest = words[0], words[1:]
        args = [_lookup(obj, w) if w.startswith(".") else w for w in rest]
        if stage_index > 0:
            args.append(value)
        if head.startswith("."):
            value = _lookup(obj, head)
        elif head == "json":
            value = json.dumps(args[0] if args else None, separators=(",", ":"))
        elif head in ("upper", "lower", "title"):
            value = getattr(_go_str(args[0]), head)()
        elif head == "index":
            container, key = args[0], args[1]
            try:
                value = container[int(key) if isinstance(container, list) else key]  # type: ignore[index]
            except (KeyError, IndexError, TypeError, ValueError):
                value = None
        elif head == "join":
            sep = args[1] if len(args) > 1 else ""
            value = str(sep).join(_go_str(v) for v in (args[0] or []))  # type: ignore[union-attr]
        elif head == "len":
            value = len(args[0])  # type: ignore[arg-type]
        elif head == "printf":
            value = str(args[0]).replace("%s", "{}").replace("%d", "{}").replace("%v", "{}").format(
                *(_go_str(a) for a in args[1:]))
        else:
            raise ConfigError(f'template: function "{head}" not defined')
    return value


def render(template: str, obj: object) -> str:
    """Render a Go-template subset: literal text and {{...}} actions."""
    out = []
    rest = template.replace("\\t", "\t").replace("\\n", "\n")
    while True:
        start = rest.find("{{")
        if start < 0:
            out.append(rest)
            break
        end = rest.find("}}", start)
        if end < 0:
            raise ConfigError("template: unclosed action")
        out.append(rest[:start])
        action = rest[start + 2:end].strip().strip("-").strip()
        value = _eval(action, obj)
        out.append(value if isinstance(value, str) else _go_str(value))
        rest = rest[end + 2:]
    return "".join(out)


def table(rows: list[list[str]], padding: int = 3) -> str:
    """Columns aligned like Go's tabwriter (as docker prints them)."""
    if not rows:
        return ""
    widths = [0] * max(len(r) for r in rows)
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i] + padding) if i < len(row) - 1 else cell
                 for i, cell in enumerate(row)]
        lines.append("".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def table_header(body: str, headers: dict[str, str] = HEADERS) -> list[str]:
    """The header row of a `table` template BODY: each column's field by its heading in
    HEADERS (else the field upper-cased)."""
    header = []
    for column in body.replace("\\t", "\t").split("\t"):
        key = column.strip()
        if key.startswith("{{") and key.endswith("}}"):
            key = key[2:-2].strip().lstrip(".")
        header.append(headers.get(key, key.upper()))
    return header


def print_formatted(template: str, items: list[dict]) -> None:
    """`--format` output for ITEMS: `json`, `table ...`, or one rendered line per item."""
    import json

    if template == "json":
        for item in items:
            sys.stdout.write(json.dumps(item) + "\n")
        return
    if template.startswith("table"):
        body = template[5:].strip() or "{{.ID}}"
        rows = [table_header(body)]
        rows += [render(body, item).split("\t") for item in items]
        sys.stdout.write(table(rows))
        return
    for item in items:
        sys.stdout.write(render(template, item) + "\n")


# ================================================================ times and sizes
def to_epoch(value: object) -> float:
    """Seconds since the epoch from a float/int or an RFC 3339 string (0 if unknown)."""
    if value is None or value == "":
        return 0.0
    if isinstance(value, (int, float)):
        return float(value)
    from datetime import datetime

    text = str(value).strip()
    if text.startswith("0001-01-01"):
        return 0.0
    text = text.replace("Z", "+00:00")
    # Python 3.11 parses at most microseconds: drop the nanosecond digits.
    head, dot, frac = text.partition(".")
    if dot:
        digits = "".join(c for c in frac if c.isdigit())
        tz = frac[len(digits):]
        text = f"{head}.{digits[:6]}{tz}"
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


def human_duration(seconds: float) -> str:
    """Docker's units.HumanDuration: "Less than a second", "5 seconds", "About an hour"."""
    seconds = int(seconds)
    if seconds < 1:
        return "Less than a second"
    if seconds == 1:
        return "1 second"
    if seconds < 60:
        return f"{seconds} seconds"
    minutes = seconds // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def ago(value: object, now: float | None = None) -> str:
    stamp = to_epoch(value)
    if not stamp:
        return ""
    return human_duration((now or time.time()) - stamp) + " ago"


def human_size(size: float) -> str:
    """Docker's units.HumanSize (decimal units, 3 significant digits)."""
    units = ["B", "kB", "MB", "GB", "TB", "PB"]
    i = 0
    while size >= 1000 and i < len(units) - 1:
        size /= 1000
        i += 1
    return f"{size:.4g}{units[i]}"


# ================================================================ progress
class Progress:
    """A progress callback (message, done, total): a bar on a TTY, plain lines when piped."""

    def __init__(self, stream=None) -> None:  # noqa: ANN001
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.last_message = ""
        self.drawn = False

    def __call__(self, message: str, done: int, total: int) -> None:
        if self.tty:
            if total:
                width = 30
                filled = int(width * min(done, total) / total)
                bar = "=" * filled + (">" if filled < width else "") + " " * (width - filled - 1)
                text = f"\r{message[:40]:<40} [{bar}] {human_size(done)}/{human_size(total)}"
            else:
                text = f"\r{message[:80]:<80}"
            self.stream.write(text)
            self.stream.flush()
            self.drawn = True
        elif message != self.last_message:
            self.stream.write(message + "\n")
        self.last_message = message

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.drawn = False
