"""Usage:  nsbox history [OPTIONS] IMAGE

Show the history of an image (-q ids only, --no-trunc, --format).
"""

from __future__ import annotations

import sys

FLAGS = {"quiet": "bool", "no-trunc": "bool", "format": "str", "human": "bool"}
ALIASES = {"q": "quiet", "H": "human"}
HELP = {
    "quiet": "Only show image IDs",
    "no-trunc": "Don't truncate output",
    "format": ("string", "Format output using a Go template, or json"),
    "human": "Accepted for Docker compatibility; ignored",
}
DEFAULT_TABLE = "table {{.ID}}\t{{.CreatedSince}}\t{{.CreatedBy}}\t{{.Size}}\t{{.Comment}}"


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import need_args
    from nsbox.engine.cli._format import HEADERS, ago, human_size, print_formatted

    ref = need_args(args, "history", 1, 1)[0]
    records = ctx.images().history(ref)
    truncate = not args["no-trunc"]
    rows = []
    for record in records:
        image_id = record["Id"]
        if image_id != "<missing>" and truncate:
            image_id = image_id.removeprefix("sha256:")[:12]
        created_by = record["CreatedBy"]
        if truncate and len(created_by) > 45:
            created_by = created_by[:44] + "…"
        rows.append({"ID": image_id, "CreatedSince": ago(record["Created"]),
                     "CreatedBy": created_by, "Size": human_size(record["Size"]),
                     "Comment": record.get("Comment", ""), "Tags": record.get("Tags")})
    if args["quiet"]:
        sys.stdout.write("".join(f"{r['ID']}\n" for r in rows))
        return 0
    HEADERS.update({"ID": "IMAGE", "CreatedBy": "CREATED BY", "Comment": "COMMENT"})
    print_formatted(args["format"] or DEFAULT_TABLE, rows)
    return 0
