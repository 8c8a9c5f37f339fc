"""Usage:  nsbox cgroup [OPTIONS] CONTAINER

Show a container's cgroups: its directory in each hierarchy (the v1
controllers, or the cgroup2 path), every limit in force with the `docker run`
flag it came from ("(default)" when nsbox set it), what the kernel's file
says now and the usage against it, and the counters of limits that bit
(memory.events / memory.oom_control and memory.failcnt, cpu.stat's throttling,
pids.events).  --format json prints it as one JSON object.
"""

from __future__ import annotations

import sys

FLAGS = {"format": "str"}
ALIASES = {"f": "format"}
HELP = {"format": ("string", 'Format output: "json", or a Go template ({{.Mode}}, '
                   '{{json .Limits}}, ...)')}
MODES = {"hybrid": "hybrid (v1 controllers, and cgroup2 beside them)", "v1": "v1",
         "v2": "v2 (unified)"}


def human(data: dict) -> str:
    from nsbox.engine.cli._format import table

    state = data["State"] + (f", pid {data['Pid']}" if data["Pid"] else "")
    lines = [f"Container:  {data['Name']} ({data['Id'][:12]}), {state}",
             f"Cgroups:    {MODES.get(data['Mode'], data['Mode'])}", ""]
    if data["Paths"]:
        rows = [["HIERARCHY", "PATH"]] + [[key, path] for key, path in data["Paths"].items()]
        lines.append(table(rows))
    else:
        lines.append("(not running: no cgroup)\n")
    if data["Limits"]:
        rows = [["FLAG", "REQUESTED", "SETTING", "USAGE", "%", "FILE"]]
        for lim in data["Limits"]:
            flag = lim["Flag"] + (" (default)" if lim["Default"] else "")
            percent = "" if lim["Percent"] is None else f"{lim['Percent']:.1f}%"
            rows.append([flag, lim["Requested"], lim["Setting"] or "-", lim["Usage"] or "-",
                         percent or "-", ", ".join(lim["Files"]) or "-"])
        lines.append(table(rows))
    else:
        lines.append("(no limits)\n")
    if data["Events"]:
        rows = [["EVENT", "VALUE", "FILE"]] + [[ev["Counter"], str(ev["Value"]), ev["File"]]
                                                for ev in data["Events"]]
        lines.append(table(rows))
    return "\n".join(lines)


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import need_args
    from nsbox.engine.observe import cgroupview

    ref = need_args(args, "cgroup", 1, 1, "container")[0]
    data = cgroupview.view(ctx.engine(), ref).as_dict()
    template = args["format"]
    if template == "json":
        import json

        sys.stdout.write(json.dumps(data, indent=4) + "\n")
    elif template:
        from nsbox.engine.cli._format import render

        sys.stdout.write(render(template, data) + "\n")
    else:
        sys.stdout.write(human(data))
    return 0
