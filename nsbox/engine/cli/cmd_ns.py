"""Usage:  nsbox ns [OPTIONS] [CONTAINER]

lsns for containers.  Without CONTAINER: every namespace of every running
container, one row each: NS (inode), TYPE, NPROCS (processes in it, host
processes included), PID (its oldest process), HOST (yes when it is PID 1's
namespace of that type) and CONTAINERS (the running containers using it).
With CONTAINER: its eight namespaces (mnt uts ipc pid net user cgroup time)
beside the host's, each marked private, host, or shared with another
container (--pid/--network/--ipc container:X).
  --format table|json   json: an array of rows (lsns -J's field names), or
                        the container's view as an object
  --sort COLUMN         ns (default), type, nprocs, pid, host or containers
"""

from __future__ import annotations

import sys

FLAGS = {"format": "str", "sort": "str"}
HELP = {
    "format": ("string", "Output format: table (default) or json"),
    "sort": ("column", "Sort rows by ns, type, nprocs, pid, host or containers"),
}


def run(args, ctx) -> int:  # noqa: ANN001
    import json

    from nsbox.engine.cli import UsageError
    from nsbox.engine.cli._format import table
    from nsbox.engine.observe import namespaces as nsmod

    fmt = args["format"] or "table"
    if fmt not in ("table", "json"):
        raise UsageError(f'invalid --format "{fmt}": use table or json')
    if len(args.positional) > 1:
        raise UsageError('"nsbox ns" accepts at most 1 container')
    if args.positional:
        if args["sort"]:
            raise UsageError("--sort applies to the list of all namespaces, not to one container")
        view = nsmod.container_view(ctx.engine(), args.positional[0])
        if fmt == "json":
            sys.stdout.write(json.dumps(view, indent=2) + "\n")
            return 0
        rows = [["TYPE", "CONTAINER", "HOST", "STATUS"]]
        for row in view["Namespaces"]:
            rows.append([row["type"], str(row["container"]), str(row["host"] or "-"),
                         nsmod.status_text(row)])
        sys.stdout.write(f"{view['Name']} (pid {view['Pid']}):\n" + table(rows))
        return 0
    rows = nsmod.table(ctx.engine())
    if args["sort"]:
        rows = nsmod.sort_rows(rows, args["sort"])
    if fmt == "json":
        sys.stdout.write(json.dumps([r.as_dict() for r in rows], indent=2) + "\n")
        return 0
    lines = [["NS", "TYPE", "NPROCS", "PID", "HOST", "CONTAINERS"]]
    for r in rows:
        lines.append([str(r.ns), r.type, str(r.nprocs), str(r.pid), "yes" if r.host else "no",
                      ",".join(r.containers)])
    sys.stdout.write(table(lines))
    return 0
