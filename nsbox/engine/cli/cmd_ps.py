"""Usage:  nsbox ps [OPTIONS]

List containers (running ones; -a/--all for every one).  --format takes a
Go template ({{.ID}} {{.Names}} {{.Image}} {{.Status}} ...), "table ..." for
columns with headers, or "json"; -f/--filter K=V is repeatable.
"""

from __future__ import annotations

import sys

FLAGS = {"all": "bool", "quiet": "bool", "filter": "list", "format": "str", "last": "str",
         "latest": "bool", "no-trunc": "bool", "size": "bool"}
ALIASES = {"a": "all", "q": "quiet", "f": "filter", "n": "last", "l": "latest", "s": "size"}
HELP = {
    "all": "Show all containers (default shows just running)",
    "quiet": "Only display container IDs",
    "filter": ("filter", "Filter output: name=, id=, status=, label=K[=V], ancestor=, exited=, "
               "health="),
    "format": ("string", "Format output using a Go template, table ..., or json"),
    "last": ("int", "Show N last created containers"),
    "latest": "Show the latest created container",
    "no-trunc": "Don't truncate output",
    "size": "Accepted for Docker compatibility; ignored",
}

FILTER_KEYS = ("name", "status", "label", "id", "ancestor", "exited", "health")
HEALTH = ("starting", "healthy", "unhealthy", "none")
STATUSES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")
DEFAULT_TABLE = ("table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t"
                 "{{.Ports}}\t{{.Names}}")


def parse_filters(entries: list[str]) -> dict[str, list[str]]:
    from nsbox.errors import ConfigError

    filters: dict[str, list[str]] = {}
    for entry in entries:
        key, eq, value = entry.partition("=")
        if not eq:
            raise ConfigError(f"bad format of filter (expected name=value): {entry}")
        if key not in FILTER_KEYS:
            raise ConfigError(f"invalid filter '{key}'")
        if key == "status" and value not in STATUSES:
            raise ConfigError(f"invalid filter 'status={value}'")
        if key == "health" and value not in HEALTH:
            raise ConfigError(f"Unrecognised filter value for health: {value}")
        filters.setdefault(key, []).append(value)
    return filters


def matches(container, filters: dict[str, list[str]]) -> bool:  # noqa: ANN001
    """Docker's rules: values of one key are OR-ed, keys are AND-ed."""
    for key, values in filters.items():
        if key == "name":
            ok = any(v in container.name for v in values)
        elif key == "id":
            ok = any(container.id.startswith(v) for v in values)
        elif key == "status":
            ok = container.state in values
        elif key == "exited":
            ok = container.state == "exited" and str(container.exit_code) in values
        elif key == "health":
            ok = _health_of(container) in values
        elif key == "ancestor":
            ok = any(v in (container.image, container.image_id)
                     or container.image_id.removeprefix("sha256:").startswith(v) for v in values)
        else:
            labels = container.spec.labels or {}
            ok = all(k in labels and (not eq or labels[k] == v)
                     for k, eq, v in (val.partition("=") for val in values))
        if not ok:
            return False
    return True


def _health_of(container) -> str:  # noqa: ANN001
    """starting, healthy, unhealthy, or none (no healthcheck, or never started with it)."""
    if not (getattr(container, "extra", None) or {}).get("healthcheck"):
        return "none"
    from nsbox.engine.health.state import status
    return status(container.bundle) or "none"


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli._common import row_of
    from nsbox.engine.cli._format import print_formatted, to_epoch

    filters = parse_filters(args["filter"] or [])
    show_all = bool(args["all"]) or bool(filters.get("status")) or bool(filters.get("exited"))
    engine = ctx.engine()
    containers = [c for c in engine.list(all=True) if matches(c, filters)]
    if not show_all:
        containers = [c for c in containers if c.state in ("running", "paused", "restarting")]
    containers.sort(key=lambda c: to_epoch(c.created), reverse=True)
    if args["latest"]:
        containers = containers[:1]
    elif args["last"] is not None:
        from nsbox.engine.flags import parse_int

        containers = containers[:parse_int(args["last"], "last", 0)]
    truncate = not args["no-trunc"]
    if args["quiet"]:
        for c in containers:
            sys.stdout.write((c.id[:12] if truncate else c.id) + "\n")
        return 0
    rows = [row_of(engine, c, truncate) for c in containers]
    print_formatted(args["format"] or DEFAULT_TABLE, rows)
    return 0
