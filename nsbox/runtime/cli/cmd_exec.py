"""usage: nsbox-runtime exec [flags] CONTAINER_ID COMMAND [ARGS...]
       nsbox-runtime exec [flags] --process FILE CONTAINER_ID

Run a new process inside a running container.  Without --process the new
process starts from the container's own process settings, changed by
--tty, --cwd, --env, --user, --additional-gids, --cap, --no-new-privs,
--apparmor and --process-label.
"""

from __future__ import annotations

FLAGS = {"console-socket": "", "pid-file": "", "process": "", "tty": False, "cwd": "",
         "env": [], "user": "", "additional-gids": [], "cap": [], "detach": False,
         "no-new-privs": False, "apparmor": "", "process-label": "", "preserve-fds": 0,
         "ignore-paused": False, "cgroup": [], "help": False}
ALIASES = {"p": "process", "t": "tty", "e": "env", "u": "user", "g": "additional-gids",
           "c": "cap", "d": "detach", "h": "help"}
HELP = {
    "console-socket": ("PATH", "AF_UNIX socket to receive the terminal's master fd"),
    "pid-file": ("FILE", "write the new process's pid to FILE"),
    "process": ("FILE", "the process to run, as an OCI process JSON"),
    "tty": "allocate a pseudo-TTY",
    "cwd": ("DIR", "working directory"),
    "env": ("K=V", "set an environment variable (repeatable)"),
    "user": ("UID[:GID]", "user to run as"),
    "additional-gids": ("GID", "add a supplementary group (repeatable)"),
    "cap": ("CAP", "add a capability (repeatable)"),
    "detach": "do not wait for the process to exit",
    "no-new-privs": "set no_new_privs for the process",
    "apparmor": ("PROFILE", "AppArmor profile of the process"),
    "process-label": ("LABEL", "SELinux label of the process"),
    "preserve-fds": ("N", "pass N more open fds (from 3) to the process"),
    "ignore-paused": "accepted for runc compatibility; ignored",
    "cgroup": ("PATH", "accepted for runc compatibility; ignored"),
    "help": "print usage",
}
STOP_AFTER = 1


def build_process(args, config: dict):
    import copy

    from nsbox.errors import ConfigError
    from nsbox.runtime.cli import UsageError
    from nsbox.runtime.spec import parse_process

    base = copy.deepcopy(config.get("process") or {})
    command = args.positional[1:]
    if not command:
        raise UsageError("a command to run is required (or --process FILE)")
    base["args"] = command
    base.pop("commandLine", None)
    base["terminal"] = args["tty"]
    if args["cwd"]:
        base["cwd"] = args["cwd"]
    if args["env"]:
        base["env"] = list(base.get("env") or []) + args["env"]
    if args["user"]:
        uid, _, gid = args["user"].partition(":")
        if not uid.isdigit() or (gid and not gid.isdigit()):
            raise ConfigError(f"invalid --user {args['user']!r}: use UID[:GID] numbers")
        base["user"] = {"uid": int(uid), "gid": int(gid or 0)}
    if args["additional-gids"]:
        try:
            base.setdefault("user", {})["additionalGids"] = [int(g) for g in args["additional-gids"]]
        except ValueError:
            raise ConfigError("invalid --additional-gids: not a number") from None
    if args["cap"]:
        caps = base.setdefault("capabilities", {})
        for key in ("bounding", "effective", "permitted", "inheritable", "ambient"):
            current = caps.setdefault(key, [])
            for cap in args["cap"]:
                if key in ("bounding", "effective", "permitted") and cap not in current:
                    current.append(cap)
    if args["no-new-privs"]:
        base["noNewPrivileges"] = True
    if args["apparmor"]:
        base["apparmorProfile"] = args["apparmor"]
    if args["process-label"]:
        base["selinuxLabel"] = args["process-label"]
    return parse_process(base)


def run(args, ctx) -> int:
    from nsbox.runtime.cli import need_id
    from nsbox.runtime.container import ExecOptions

    cid = need_id(args, "exec")
    rt = ctx.runtime()
    if args["process"]:
        process = rt.process_from_file(args["process"])
    else:
        process = build_process(args, rt.store.load(cid).config)
    opts = ExecOptions(process=process, console_socket=args["console-socket"] or None,
                       pid_file=args["pid-file"] or None, detach=args["detach"],
                       preserve_fds=args["preserve-fds"])
    if process.terminal and not opts.console_socket and not opts.detach:
        from nsbox.runtime.cli import _terminal

        return _terminal.exec_with_terminal(rt, cid, opts)
    return rt.exec(cid, opts)
