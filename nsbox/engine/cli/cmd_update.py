"""Usage:  nsbox update [OPTIONS] CONTAINER [CONTAINER...]

Change the resource limits of containers.
"""

from __future__ import annotations

from nsbox.engine.run_flags import RESOURCE_FLAGS, RUN_FLAG_HELP

FLAGS = {name: ("bool" if name == "oom-kill-disable" else
                "list" if name.startswith(("device-", "blkio-weight-device")) else "str")
         for name in RESOURCE_FLAGS}
ALIASES = {"m": "memory", "c": "cpu-shares"}
HELP = RUN_FLAG_HELP


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import need_args
    from nsbox.engine.cli._common import for_each
    from nsbox.engine.resource_flags import build_resources
    from nsbox.errors import ConfigError

    refs = need_args(args, "update", 1)
    resources = build_resources(args.flags)
    if not resources:
        raise ConfigError("you must provide one or more flags when using this command")
    engine = ctx.engine()
    return for_each(refs, lambda ref: engine.update(ref, resources))
