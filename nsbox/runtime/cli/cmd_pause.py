"""usage: nsbox-runtime pause CONTAINER_ID

Suspend every process of a running (or created) container with the cgroup
freezer (freezer.state on cgroup v1, cgroup.freeze on v2).  `state` then
says "paused"; `resume` lets the processes run again.
"""

from __future__ import annotations

FLAGS: dict = {"help": False}
HELP = {"help": "print usage"}


def run(args, ctx) -> int:
    from nsbox.runtime.cli import need_id

    ctx.runtime().pause(need_id(args, "pause"))
    return 0
