"""Usage:  nsbox images [OPTIONS] [REPOSITORY[:TAG]]

List images.  -a/--all, -q/--quiet (ids only), --no-trunc, --digests,
--format TMPL ({{.Repository}} {{.Tag}} {{.ID}} {{.CreatedSince}} {{.Size}}, "table ...", "json"),
-f/--filter dangling=true|false / reference=PATTERN.  A pattern matches a name
in any spelling: `busybox` and `localhost/busybox` both match localhost/busybox:latest.
"""

from __future__ import annotations

import sys

FLAGS = {"all": "bool", "quiet": "bool", "no-trunc": "bool", "digests": "bool",
         "format": "str", "filter": "list"}
ALIASES = {"a": "all", "q": "quiet", "f": "filter"}
HELP = {
    "all": "Accepted for Docker compatibility; ignored",
    "quiet": "Only show image IDs",
    "no-trunc": "Don't truncate output",
    "digests": "Show digests",
    "format": ("string", "Format output using a Go template, table ..., or json"),
    "filter": ("filter", "Filter output: dangling=true|false, reference=PATTERN"),
}
DEFAULT_TABLE = "table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"


def run(args, ctx) -> int:  # noqa: ANN001
    import fnmatch

    from nsbox.engine.cli._common import image_row
    from nsbox.engine.cli._format import HEADERS, print_formatted
    from nsbox.errors import ConfigError

    HEADERS["ID"] = "IMAGE ID"
    summaries = ctx.images().list()
    rows = []
    patterns = list(args.positional)
    dangling = None
    for entry in args["filter"] or []:
        key, _, value = entry.partition("=")
        if key == "dangling":
            dangling = value.lower() in ("true", "1")
        elif key == "reference":
            patterns.append(value)
        else:
            raise ConfigError(f"invalid filter '{key}'")
    for summary in summaries:
        if dangling is not None and summary.dangling != dangling:
            continue
        for row in image_row(summary):
            if patterns and not _matches(f"{row['Repository']}:{row['Tag']}", patterns, fnmatch):
                continue
            if args["no-trunc"]:
                row["ID"] = row["FullID"]
            rows.append(row)
    if args["quiet"]:
        seen = []
        for row in rows:
            if row["ID"] not in seen:
                seen.append(row["ID"])
        sys.stdout.write("".join(f"{i}\n" for i in seen))
        return 0
    template = args["format"] or DEFAULT_TABLE
    if args["digests"] and not args["format"]:
        template = template.replace("{{.Tag}}\t", "{{.Tag}}\t{{.Digest}}\t")
    print_formatted(template, rows)
    return 0


def _matches(name: str, patterns: list[str], fnmatch) -> bool:  # noqa: ANN001 - the module
    """Whether a row's NAME (familiar `repo:tag`) matches a PATTERN in any of its spellings."""
    from nsbox.engine.images.reference import parse_reference, short_name_spellings
    from nsbox.errors import ConfigError

    if name == "<none>:<none>":
        return False
    try:
        spellings = short_name_spellings(parse_reference(name).name)
    except ConfigError:
        spellings = [name]
    for spelling in spellings:
        repository = spelling.rpartition(":")[0]
        for pattern in patterns:
            if fnmatch.fnmatch(spelling, pattern) or fnmatch.fnmatch(repository, pattern):
                return True
    return False
