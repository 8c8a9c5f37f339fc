"""Usage:  nsbox network ls [OPTIONS]

List networks.  -q/--quiet ids only, --no-trunc full ids, --format TMPL
({{.ID}} {{.Name}} {{.Driver}} {{.Scope}} {{.Subnet}} {{.Gateway}}).
"""

from __future__ import annotations

import sys

FLAGS = {"quiet": "bool", "format": "str", "filter": "list", "no-trunc": "bool"}
ALIASES = {"q": "quiet", "f": "filter"}
HELP = {
    "quiet": "Only display network IDs",
    "format": ("string", "Format output using a Go template, or json"),
    "filter": ("filter", "Filter output (name=, id=, driver=)"),
    "no-trunc": "Do not truncate the output",
}


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli._format import print_formatted
    from nsbox.engine.network import networks

    engine = ctx.engine()
    rows = [networks.summary(engine, n) for n in networks.list_networks(engine)]
    for entry in args["filter"] or []:
        key, _, value = entry.partition("=")
        field = {"name": "Name", "id": "Id", "driver": "Driver"}.get(key)
        if field is None:
            from nsbox.errors import ConfigError
            raise ConfigError(f"invalid filter {key!r}: use name, id or driver")
        rows = [r for r in rows if (value in r[field] if key == "name" else
                                    r[field].startswith(value) if key == "id" else
                                    r[field] == value)]
    if args["no-trunc"]:
        for r in rows:
            r["ID"] = r["Id"]
    if args["quiet"]:
        sys.stdout.write("".join(r["ID"] + "\n" for r in rows))
        return 0
    print_formatted(args["format"] or "table {{.ID}}\t{{.Name}}\t{{.Driver}}\t{{.Scope}}", rows)
    return 0
