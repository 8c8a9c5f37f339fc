"""usage: nsbox-runtime ps [--format table|json] CONTAINER_ID [ps options]

List the processes of a container: as a JSON array of host pids, or as a
table of `ps` output restricted to the container's processes.
"""

from __future__ import annotations

FLAGS = {"format": "table", "f": "table", "help": False}
ALIASES = {"f": "format"}
HELP = {
    "format": ("FORMAT", "table or json"),
    "help": "print usage",
}
STOP_AFTER = 1


def run(args, ctx) -> int:
    import subprocess
    import sys

    from nsbox import _json
    from nsbox.runtime.cli import UsageError, need_id

    cid = need_id(args, "ps")
    pids = ctx.runtime().pids(cid)
    if args["format"] == "json":
        sys.stdout.write(_json.dumps(pids) + "\n")
        return 0
    if args["format"] != "table":
        raise UsageError(f"invalid format option {args['format']!r}: use table or json")
    ps_args = args.positional[1:] or ["-ef"]
    out = subprocess.run(["ps", *ps_args], capture_output=True, text=True, check=False).stdout
    lines = out.splitlines()
    if not lines:
        return 0
    header = lines[0].split()
    if "PID" not in header:
        raise UsageError("ps output has no PID column")
    col = header.index("PID")
    wanted = set(pids)
    sys.stdout.write(lines[0] + "\n")
    for line in lines[1:]:
        fields = line.split()
        if len(fields) > col and fields[col].isdigit() and int(fields[col]) in wanted:
            sys.stdout.write(line + "\n")
    return 0
