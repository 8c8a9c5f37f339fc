"""Usage:  nsbox exec [OPTIONS] CONTAINER COMMAND [ARG...]

Run a command in a running container and exit with its code.
  -i, --interactive   keep stdin open      -t, --tty   allocate a terminal
  -e, --env K=V       environment          -u, --user  uid[:gid] or name
  -w, --workdir DIR   working directory    -d, --detach  run in the background
"""

from __future__ import annotations

FLAGS = {"interactive": "bool", "tty": "bool", "env": "list", "env-file": "list",
         "user": "str", "workdir": "str", "detach": "bool", "privileged": "bool"}
ALIASES = {"i": "interactive", "t": "tty", "e": "env", "u": "user", "w": "workdir",
           "d": "detach"}
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
