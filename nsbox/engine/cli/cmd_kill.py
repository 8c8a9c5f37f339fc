"""Usage:  nsbox kill [OPTIONS] CONTAINER [CONTAINER...]

Send a signal (-s/--signal, default KILL) to running containers.
"""

from __future__ import annotations

FLAGS = {"signal": "str"}
ALIASES = {"s": "signal"}
HELP = {
    "signal": ("string", "Signal to send to the container (default KILL)"),
}


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import need_args
    from nsbox.engine.cli._common import for_each
    from nsbox.engine.flags import parse_stop_signal

    refs = need_args(args, "kill", 1)
    signal = args["signal"] or "KILL"
    parse_stop_signal(signal)  # a bad name fails before any container is touched
    engine = ctx.engine()
    return for_each(refs, lambda ref: engine.kill(ref, signal=signal))
