"""Usage:  nsbox start [OPTIONS] CONTAINER [CONTAINER...]

Start one or more created or stopped containers.  -a/--attach streams the
container's output and exits with its code.
"""

from __future__ import annotations

FLAGS = {"attach": "bool", "interactive": "bool"}
ALIASES = {"a": "attach", "i": "interactive"}
HELP = {
    "attach": "Attach STDOUT/STDERR and forward signals",
    "interactive": "Accepted for Docker compatibility; ignored",
}


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import UsageError, need_args
    from nsbox.engine.cli._common import for_each, reraise_invoke
    from nsbox.errors import NsboxError

    refs = need_args(args, "start", 1)
    engine = ctx.engine()
    if not args["attach"]:
        def start(ref: str) -> str:
            try:
                engine.start(ref)
            except NsboxError as exc:
                reraise_invoke(exc)
            return ref
        return for_each(refs, start)
    if len(refs) > 1:
        raise UsageError("you cannot start and attach multiple containers at once")
    try:
        engine.start(refs[0])
    except NsboxError as exc:
        reraise_invoke(exc)
    from nsbox.engine.cli._common import stream_logs

    stream_logs(engine.logs(refs[0], follow=True))
    return engine.wait(refs[0])
