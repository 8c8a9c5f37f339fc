"""usage: nsbox-runtime run [--bundle DIR] [--detach] [--pid-file FILE] [--console-socket PATH]
       [--preserve-fds N] [--no-pivot] [--no-new-keyring] CONTAINER_ID

Create and start a container.  Without --detach, wait for it and exit with
its exit status, then delete it (unless --keep).
"""

from __future__ import annotations

from nsbox.runtime.cli.cmd_create import ALIASES as _CREATE_ALIASES
from nsbox.runtime.cli.cmd_create import FLAGS as _CREATE_FLAGS
from nsbox.runtime.cli.cmd_create import HELP as _CREATE_HELP

FLAGS = dict(_CREATE_FLAGS, detach=False, d=False, keep=False)
ALIASES = dict(_CREATE_ALIASES, d="detach")
HELP = dict(_CREATE_HELP, detach="do not wait for the container to exit",
            keep="do not delete the container after it exits")


def run(args, ctx) -> int:
    from nsbox.runtime.cli import need_id
    from nsbox.runtime.cli.cmd_create import options

    cid = need_id(args, "run")
    opts = options(args)
    rt = ctx.runtime()
    if not args["detach"] and not opts.console_socket and _wants_terminal(opts.bundle):
        from nsbox.runtime.cli import _terminal

        return _terminal.run_with_terminal(rt, cid, opts, keep=args["keep"])
    return rt.run(cid, opts, detach=args["detach"], keep=args["keep"])


def _wants_terminal(bundle: str) -> bool:
    """process.terminal of the bundle's config.json, looked up without parsing the spec.

    create parses and checks it (and reports any error in it); doing that here
    as well cost every `run` a second parse.
    """
    import os

    from nsbox import _json

    try:
        with open(os.path.join(bundle, "config.json"), "rb") as f:
            process = _json.loads(f.read()).get("process")
    except (OSError, ValueError, AttributeError):
        return False  # create reports it
    return isinstance(process, dict) and process.get("terminal") is True
