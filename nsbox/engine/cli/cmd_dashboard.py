"""Usage:  nsbox dashboard [OPTIONS]

A local web page showing every container: its eight namespaces beside the
host's, its cgroups and limits, live CPU / memory / PIDs graphs, its
security posture (inspect --security), its health and the event stream;
actions: stop, restart, logs.  It listens on 127.0.0.1 on a free port and
prints its URL, which carries a random token: only someone with that URL
(the user who started it) gets in; every other request is refused (403).
Runs until interrupted (Ctrl-C).  Needs the `dashboard` extra
(pip install 'nsbox[dashboard]': Starlette, uvicorn, Jinja2).
"""

from __future__ import annotations

import sys

FLAGS = {"port": "str", "address": "str", "interval": "str"}
ALIASES = {"p": "port"}
HELP = {
    "port": ("int", "Port to listen on (default: a free one)"),
    "address": ("ip", "Address to listen on (default 127.0.0.1)"),
    "interval": ("seconds", "Seconds between usage samples (default 2)"),
}


def run(args, ctx) -> int:  # noqa: ANN001
    import ipaddress

    from nsbox.engine.cli import UsageError
    from nsbox.errors import NsboxError

    if args.positional:
        raise UsageError('"nsbox dashboard" accepts no arguments')
    try:
        port = int(args["port"] or 0)
        if not 0 <= port <= 65535:
            raise ValueError
    except ValueError:
        raise UsageError(f'invalid argument "{args["port"]}" for "--port" flag: '
                         "a port number 0-65535") from None
    address = args["address"] or "127.0.0.1"
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise UsageError(f'invalid argument "{address}" for "--address" flag: '
                         "an IP address") from None
    try:
        interval = float(args["interval"] or 2)
        if not 0.1 <= interval <= 3600:
            raise ValueError
    except ValueError:
        raise UsageError(f'invalid argument "{args["interval"]}" for "--interval" flag: '
                         "seconds, 0.1 to 3600") from None
    try:
        from nsbox.engine.dashboard.app import serve
    except ImportError as exc:
        raise NsboxError(f"dashboard: {exc.name or exc} is not installed: "
                         "pip install 'nsbox[dashboard]'") from None
    engine = ctx.engine()

    def announce(url: str) -> None:
        sys.stdout.write(url + "\n")
        sys.stdout.flush()
    try:
        serve(engine, address, port, interval=interval, announce=announce)
    except OSError as exc:
        raise NsboxError(f"dashboard: cannot listen on {address}:{port}: "
                         f"{exc.strerror or exc}") from None
    return 0
