"""Usage:  nsbox exec [OPTIONS] CONTAINER COMMAND [ARG...]

Run a command in a running container and exit with its code.
"""

from __future__ import annotations

FLAGS = {"interactive": "bool", "tty": "bool", "env": "list", "env-file": "list",
         "user": "str", "workdir": "str", "detach": "bool", "privileged": "bool"}
ALIASES = {"i": "interactive", "t": "tty", "e": "env", "u": "user", "w": "workdir",
           "d": "detach"}
HELP = {
    "interactive": "Keep STDIN open even if not attached",
    "tty": "Allocate a pseudo-TTY",
    "env": ("list", "Set environment variables (K=V)"),
    "env-file": ("list", "Read in a file of environment variables"),
    "user": ("string", "Username or UID (format: <name|uid>[:<group|gid>])"),
    "workdir": ("string", "Working directory inside the container"),
    "detach": "Detached mode: run command in the background",
    "privileged": "Accepted for Docker compatibility; ignored",
}
STOP_AFTER = 1


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import need_args
    from nsbox.engine.cli._common import reraise_invoke
    from nsbox.engine.flags import parse_env, read_env_file
    from nsbox.errors import NsboxError

    positional = need_args(args, "exec", 2)
    ref, cmd = positional[0], positional[1:]
    env: dict[str, str] = {}
    for path in args["env-file"] or []:
        env.update(read_env_file(path))
    env.update(parse_env(args["env"] or []))
    engine = ctx.engine()
    try:
        return engine.exec(ref, cmd, tty=bool(args["tty"]), interactive=bool(args["interactive"]),
                           env=env or None, user=args["user"], workdir=args["workdir"],
                           detach=bool(args["detach"])) or 0
    except NsboxError as exc:
        reraise_invoke(exc)
        raise
