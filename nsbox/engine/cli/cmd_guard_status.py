"""Usage:  nsbox guard status

Whether the host's guard process runs, the containers it watches (with the
number of alerts per rule), the events it read and the events the kernel
dropped.  Prints JSON.  See docs/guard.md.
"""

from __future__ import annotations

FLAGS: dict[str, str] = {}
ALIASES: dict[str, str] = {}
HELP: dict[str, object] = {}


def run(args, ctx) -> int:  # noqa: ANN001
    import json

    from nsbox.engine.cli import need_args
    from nsbox.engine.guard.client import status

    need_args(args, "guard status", 0, 0, "argument")
    report = status() or {"running": False}
    report.pop("ok", None)
    report.setdefault("running", True)
    print(json.dumps(report, indent=2))
    return 0
