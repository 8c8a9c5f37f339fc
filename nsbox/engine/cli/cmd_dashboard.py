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


def _number(args, name: str, convert, default: float, bounds: tuple[float, float],  # noqa: ANN001
            want: str) -> float:
    """Flag NAME converted (DEFAULT when not given) and within BOUNDS; UsageError else."""
    from nsbox.engine.cli import UsageError

    try:
        value = convert(args[name] or default)
        if not bounds[0] <= value <= bounds[1]:
            raise ValueError
    except ValueError:
        raise UsageError(f'invalid argument "{args[name]}" for "--{name}" flag: {want}') from None
    return value


def run(args, ctx) -> int:  # noqa: ANN001
    import ipaddress

    from nsbox.engine.cli import UsageError
    from nsbox.errors import NsboxError

    if args.positional:
        raise UsageError('"nsbox dashboard" accepts no arguments')
    port = int(_number(args, "port", int, 0, (0, 65535), "a port number 0-65535"))
    address = args["address"] or "127.0.0.1"
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise UsageError(f'invalid argument "{address}" for "--address" flag: '
                         "an IP address") from None
    interval = _number(args, "interval", float, 2, (0.1, 3600), "seconds, 0.1 to 3600")
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
