"""Usage:  nsbox events [OPTIONS]

Print the engine's events (container, image, volume, network) as they
happen.  --since/--until: Unix seconds, RFC 3339, or a duration ago (10m,
1h30m).  Without --until it follows forever (Ctrl-C ends it); with --until
in the future it follows until then.  -f/--filter K=V, repeatable:
container=, event=, image=, type=, label=, network=, volume=.
--format json prints Docker's JSON objects, one a line; a Go template
sees .Type, .Action, .Actor.ID, .Actor.Attributes, .Status, .ID, .From,
.Time, .TimeNano, .Scope.
"""

from __future__ import annotations

FLAGS = {"since": "str", "until": "str", "filter": "list", "format": "str"}
ALIASES = {"f": "filter"}
HELP = {
    "since": ("string", "Show all events created since timestamp (Unix, RFC 3339, or 10m ago)"),
    "until": ("string", "Stream events until this timestamp"),
    "filter": ("filter", "Filter output: container=, event=, image=, type=, label=, network=, "
                         "volume="),
    "format": ("string", "Format the output using the given Go template, or json"),
}


class _Attributes(dict):
    """Actor.Attributes for a template: a key this event lacks is Go's "<no value>", not an error."""

    def __contains__(self, key: object) -> bool:
        return True

    def __missing__(self, key: str) -> None:
        return None


def template_fields(event) -> dict:  # noqa: ANN001 - nsbox.engine.events.Event
    """What a Go template sees: Docker's JSON keys and its Go field names."""
    doc = event.as_dict()
    doc["Actor"]["Attributes"] = _Attributes(doc["Actor"]["Attributes"])
    doc.update({"Status": event.status or "", "ID": event.id or "", "From": event.from_ or "",
                "Time": event.time, "TimeNano": event.timeNano, "Scope": event.scope})
    return doc


def run(args, ctx) -> int:  # noqa: ANN001
    import sys
    import time

    from nsbox import _json
    from nsbox.engine import events
    from nsbox.engine.cli import need_args
    from nsbox.errors import ConfigError

    need_args(args, "events", 0, 0, "argument")
    now = time.time()
    try:
        since = events.parse_time_ns(args["since"], now) if args["since"] else None
    except ValueError:
        raise ConfigError(f'invalid value "{args["since"]}" for --since: '
                          "not a time or duration") from None
    try:
        until = events.parse_time_ns(args["until"], now) if args["until"] else None
    except ValueError:
        raise ConfigError(f'invalid value "{args["until"]}" for --until: '
                          "not a time or duration") from None
    try:
        filters = events.normalize_filters(args["filter"] or [])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    fmt = args["format"] or ""
    if fmt and fmt != "json" and "{{" not in fmt:
        raise ConfigError(f"invalid --format {fmt!r}: json or a Go template")
    if fmt not in ("", "json"):
        from nsbox.engine.cli._format import render
        sample = events.Event("container", "create", events.Actor("0" * 64, {}), 0)
        render(fmt, template_fields(sample))  # a bad template fails now, not at the first event

    def show(event) -> None:  # noqa: ANN001
        if fmt == "json":
            line = _json.dumps(event.as_dict())
        elif fmt:
            line = render(fmt, template_fields(event))
        else:
            line = event.text()
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    _stop_on_sigterm()
    try:
        if until is not None and until <= time.time_ns():
            stream = events.read(ctx.root, since=since, until=until, filters=filters)
        else:
            stream = events.follow(ctx.root, since=since, filters=filters, until=until)
        for event in stream:
            show(event)
    except KeyboardInterrupt:
        pass  # Ctrl-C or SIGTERM: the end the user asked for
    return 0


def _stop_on_sigterm() -> None:
    import signal

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
