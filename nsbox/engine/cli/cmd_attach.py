"""Usage:  nsbox attach [OPTIONS] CONTAINER

Attach to a running container: print its output from now on, send our
stdin to its stdin when it was run with -i (-d -i), and exit with its exit
code when it stops.  Signals we receive go to the container unless
--sig-proxy=false.  --no-stdin leaves the container's stdin alone.
"""

from __future__ import annotations

import sys

FLAGS = {"no-stdin": "bool", "sig-proxy": "str"}
HELP = {
    "no-stdin": "Do not attach STDIN",
    "sig-proxy": ("bool", "Proxy received signals to the container (default true)"),
}

# What Docker proxies: everything a user can send that the container can act on.
PROXIED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH")


def run(args, ctx) -> int:  # noqa: ANN001
    import signal

    from nsbox.engine.cli import need_args
    from nsbox.engine.cli._common import stream_logs
    from nsbox.engine.flags import parse_bool

    ref = need_args(args, "attach", 1, 1, "argument")[0]
    proxy = parse_bool(args["sig-proxy"] if args["sig-proxy"] is not None else True, "sig-proxy")
    engine = ctx.engine()
    container = engine.get(ref)
    stdin = None if args["no-stdin"] or not container.spec.interactive else sys.stdin.buffer
    records = engine.attach(container.id, stdin=stdin)
    if proxy:
        def forward(signum: int, _frame: object) -> None:
            engine.kill(container.id, signum)

        for name in PROXIED:
            signal.signal(getattr(signal, name), forward)
    stream_logs(records)
    return engine.wait(container.id)
