"""Usage:  nsbox stats [OPTIONS] [CONTAINER...]

Display a live stream of resource usage statistics of running containers (or
the ones named): CPU %, memory usage / limit and %, network and block I/O,
PIDs.  On a terminal the table is redrawn in place; piped, each round is
printed after the last.  --format takes "table" (the default), "json" (one
object per line with Docker's fields: Container, Name, ID, CPUPerc, MemUsage,
MemPerc, NetIO, BlockIO, PIDs), a Go template ({{.Name}} {{.CPUPerc}} ...) or
"table TEMPLATE".

CPU % is Docker's: the container's CPU time over the host's, times the online
CPUs.  The live view measures it over each refresh interval (--interval, 1 s);
--no-stream samples once and holds it against the container's start (an
average since then), unless --interval asks for two samples that far apart.
"""

from __future__ import annotations

import sys

FLAGS = {"all": "bool", "no-stream": "bool", "no-trunc": "bool", "format": "str",
         "interval": "str"}
ALIASES = {"a": "all"}
HELP = {
    "all": "Show all containers (default shows just running)",
    "no-stream": "Disable streaming stats and only pull the first result",
    "no-trunc": "Do not truncate output",
    "format": ("string", 'Format output: "table", "json", a Go template, or "table TEMPLATE"'),
    "interval": ("seconds", "Refresh interval of the live view (default 1); with --no-stream, "
                 "measure CPU % over this long instead of since the start"),
}

DEFAULT_TABLE = ("table {{.ID}}\t{{.Name}}\t{{.CPUPerc}}\t{{.MemUsage}}\t{{.MemPerc}}\t"
                 "{{.NetIO}}\t{{.BlockIO}}\t{{.PIDs}}")
HEADERS = {"Container": "CONTAINER", "ID": "CONTAINER ID", "Name": "NAME", "CPUPerc": "CPU %",
           "MemUsage": "MEM USAGE / LIMIT", "MemPerc": "MEM %", "NetIO": "NET I/O",
           "BlockIO": "BLOCK I/O", "PIDs": "PIDS"}
CLEAR = "\033[2J\033[H"  # what docker writes before each redraw on a terminal


def parse_interval(text: str | None, default: float) -> float:
    from nsbox.engine.cli import UsageError

    if text is None:
        return default
    try:
        value = float(text.removesuffix("s"))
    except ValueError:
        value = -1.0
    if not value > 0 or value > 3600:
        raise UsageError(f'invalid argument "{text}" for "--interval" flag: '
                         "want seconds, more than 0")
    return value


def render_rows(template: str, items: list[dict]) -> str:
    """ITEMS (Docker's stats fields) as TEMPLATE asks: json lines, a table, or lines."""
    from nsbox.engine.cli._format import render, table, table_header

    if template == "json":
        from nsbox import _json

        return "".join(_json.dumps(item) + "\n" for item in items)
    if template == DEFAULT_TABLE:
        # The usual case, without the template engine (it parses each action
        # per row, a third of `stats --no-stream` for 50 containers).
        keys = ("ID", "Name", "CPUPerc", "MemUsage", "MemPerc", "NetIO", "BlockIO", "PIDs")
        return table([[HEADERS[k] for k in keys]] + [[item[k] for k in keys] for item in items])
    if template == "table" or template.startswith("table "):
        body = template[5:].strip() or DEFAULT_TABLE[6:]
        rows = [table_header(body, HEADERS)] + [render(body, item).split("\t") for item in items]
        return table(rows)
    return "".join(render(template, item) + "\n" for item in items)


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.observe import stats

    template = args["format"] or "table"
    if template == "table":
        template = DEFAULT_TABLE
    trunc = not args["no-trunc"]
    refs = args.positional
    engine = stats.Reader(ctx.root, ctx.runroot)  # the database alone: see Reader
    out = sys.stdout
    if args["no-stream"]:
        interval = parse_interval(args["interval"], 0.0)
        # detail=False: the table and Docker's fields need none of the API-only files.
        rows = stats.snapshot(engine, refs, all=bool(args["all"]), interval=interval,
                              detail=False)
        out.write(render_rows(template, [r.docker(trunc) for r in rows]))
        return 0
    interval = parse_interval(args["interval"], 1.0)
    tty = out.isatty()
    for rows in stats.stream(engine, refs, all=bool(args["all"]), interval=interval,
                             detail=False):
        text = render_rows(template, [r.docker(trunc) for r in rows])
        out.write(CLEAR + text if tty else text)
        out.flush()
    return 0
