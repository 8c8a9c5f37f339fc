"""usage: nsbox-runtime kill [--all] CONTAINER_ID [SIGNAL]

Send SIGNAL (name like TERM/SIGTERM or a number; default SIGTERM) to the
container's init, or with --all to every process of the container.
"""

from __future__ import annotations

FLAGS = {"all": False, "a": False, "help": False}
ALIASES = {"a": "all"}
HELP = {
    "all": "send the signal to every process of the container",
    "help": "print usage",
}


def parse_signal(text: str) -> int:
    import signal

    from nsbox.errors import ConfigError

    if text.isdigit():
        num = int(text)
        if not 0 < num < 65:
            raise ConfigError(f"invalid signal {text!r}")
        return num
    name = text.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    if name.startswith("SIGRTMIN+") or name.startswith("SIGRTMAX-"):
        base, _, off = name.partition("+" if "+" in name else "-")
        if off.isdigit():
            value = signal.SIGRTMIN + int(off) if "+" in name else signal.SIGRTMAX - int(off)
            if signal.SIGRTMIN <= value <= signal.SIGRTMAX:
                return int(value)
    sig = getattr(signal.Signals, name, None) if name in signal.Signals.__members__ else None
    if sig is None:
        raise ConfigError(f"invalid signal {text!r}")
    return int(sig)


def run(args, ctx) -> int:
    from nsbox.runtime.cli import need_id

    cid = need_id(args, "kill")
    sig = parse_signal(args.positional[1]) if len(args.positional) > 1 else 15
    ctx.runtime().kill(cid, sig, all_processes=args["all"])
    return 0
