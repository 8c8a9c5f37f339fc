"""usage: nsbox-runtime events [--stats] [--interval DURATION] CONTAINER_ID

Print the container's events as JSON, one object per line, until it stops:
{"type":"oom","id":ID} each time the OOM killer strikes in its memory cgroup,
and every --interval (default 5s) {"type":"stats","id":ID,"data":{...}} with
the cgroup counters (cpu, memory, pids, blkio, hugetlb, cpuset).
--stats prints one stats object and exits.
"""

from __future__ import annotations

FLAGS = {"stats": False, "interval": "5s", "help": False}
HELP = {
    "stats": "print one stats object and exit",
    "interval": ("DURATION", "time between stats objects"),
    "help": "print usage",
}


def run(args, ctx) -> int:
    import sys

    from nsbox import _json
    from nsbox.runtime.cgroups.convert import parse_duration
    from nsbox.runtime.cli import UsageError, need_id

    cid = need_id(args, "events")
    runtime = ctx.runtime()
    if args["stats"]:
        event = {"type": "stats", "id": cid, "data": runtime.stats(cid)}
        sys.stdout.write(_json.dumps(event) + "\n")
        return 0
    interval = parse_duration(args["interval"], "interval")
    if interval <= 0:
        raise UsageError("duration interval must be greater than 0")
    try:
        for event in runtime.events(cid, interval):
            sys.stdout.write(_json.dumps(event) + "\n")
            sys.stdout.flush()
    except BrokenPipeError:
        return 0
    return 0
