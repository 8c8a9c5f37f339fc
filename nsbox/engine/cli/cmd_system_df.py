"""Usage:  nsbox system df [OPTIONS]

Show the disk the engine uses: images (shared layers counted once),
containers (their writable layers), local volumes and the build cache, with
what removing the unused ones would free.
"""

from __future__ import annotations

import sys

FLAGS = {"format": "str"}
ALIASES: dict[str, str] = {}
HELP = {"format": ("string", "json: one JSON object per row (sizes in bytes)")}


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox import _json
    from nsbox.engine.cli import need_args
    from nsbox.engine.cli._format import human_size
    from nsbox.engine.diskusage import disk_usage

    need_args(args, "system df", 0, 0)
    rows = disk_usage(ctx.engine())
    if args["format"] == "json":
        for row in rows:
            sys.stdout.write(_json.dumps(row) + "\n")
        return 0
    if args["format"]:
        from nsbox.errors import ConfigError
        raise ConfigError(f"--format {args['format']!r}: only json is supported")
    table = [("TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE")]
    for row in rows:
        share = f" ({100 * row['Reclaimable'] // row['Size']}%)" if row["Size"] else ""
        table.append((row["Type"], str(row["TotalCount"]), str(row["Active"]),
                      human_size(row["Size"]), human_size(row["Reclaimable"]) + share))
    widths = [max(len(line[i]) for line in table) for i in range(5)]
    for line in table:
        sys.stdout.write("   ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
                         .rstrip() + "\n")
    return 0
