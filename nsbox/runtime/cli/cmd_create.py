"""usage: nsbox-runtime create [--bundle DIR] [--pid-file FILE] [--console-socket PATH]
       [--preserve-fds N] [--no-pivot] [--no-new-keyring] CONTAINER_ID

Create a container from the bundle; its process waits until `start`.
"""

from __future__ import annotations

FLAGS = {"bundle": "", "b": "", "pid-file": "", "console-socket": "", "preserve-fds": 0,
         "no-pivot": False, "no-new-keyring": False, "help": False}
ALIASES = {"b": "bundle", "h": "help"}
HELP = {
    "bundle": ("DIR", "path to the root of the bundle directory (default .)"),
    "pid-file": ("FILE", "write the container's init pid to FILE"),
    "console-socket": ("PATH", "AF_UNIX socket to receive the terminal's master fd"),
    "preserve-fds": ("N", "pass N more open fds (from 3) to the container"),
    "no-pivot": "use chroot-like MS_MOVE instead of pivot_root",
    "no-new-keyring": "keep the caller's session keyring",
    "help": "print usage",
}


def options(args):
    from nsbox.runtime.cli import UsageError
    from nsbox.runtime.create import CreateOptions

    if args["preserve-fds"] < 0:
        raise UsageError("--preserve-fds must not be negative")
    return CreateOptions(bundle=args["bundle"] or ".", pid_file=args["pid-file"] or None,
                         console_socket=args["console-socket"] or None,
                         preserve_fds=args["preserve-fds"], no_pivot=args["no-pivot"],
                         no_new_keyring=args["no-new-keyring"])


def run(args, ctx) -> int:
    from nsbox.runtime.cli import need_id

    ctx.runtime().create(need_id(args, "create"), options(args))
    return 0
