"""nsbox: a Docker-compatible command line over the nsbox engine.

Flags follow Docker's (pflag) rules: `--flag value`, `--flag=value`, `-f value`,
`-fvalue`, combined boolean shorthands (`-dit`), repeatable list flags, and
`--` to end the flags.  Each command is a module `cmd_<name>.py` with FLAGS
(name -> "bool" | "str" | "list"), optional ALIASES (short -> long), HELP
(name -> one-line description, or (value name, description); `--help` lists
every flag of FLAGS with it, see _help.py), STOP_AFTER (positionals after
which everything is the container's command), and `run(args, ctx) -> int`.  Commands only parse and print: the work is
done by nsbox.api / nsbox.engine.

Exit codes follow Docker: 125 for errors of nsbox itself, 126/127 when the
container's command cannot be invoked / is not found, else the container's.
"""

from __future__ import annotations

import os
import sys

# Top-level command -> module (cmd_<module>.py).
COMMANDS = {
    "run": "run", "create": "create", "start": "start", "stop": "stop", "kill": "kill",
    "restart": "restart", "rm": "rm", "ps": "ps", "logs": "logs", "exec": "exec",
    "wait": "wait", "inspect": "inspect", "top": "top", "rename": "rename",
    "pause": "pause", "unpause": "unpause", "update": "update", "cp": "cp", "port": "port",
    "images": "images", "rmi": "rmi", "tag": "tag", "import": "import", "load": "load",
    "save": "save", "export": "export", "history": "history", "version": "version",
    "info": "info", "attach": "attach", "pull": "pull", "push": "push", "login": "login",
    "logout": "logout", "commit": "commit", "build": "build",
    "ns": "ns", "dashboard": "dashboard",
    "stats": "stats", "cgroup": "cgroup",
    "events": "events",
}
# `nsbox container|image|volume SUB`.
GROUPS = {
    "container": {**{k: v for k, v in COMMANDS.items()
                     if k not in ("images", "rmi", "tag", "import", "load", "save", "history", "pull",
                                  "push", "login", "logout", "version", "info", "build")},
                  "ls": "ps", "list": "ps", "prune": "container_prune", "remove": "rm"},
    "image": {"ls": "images", "list": "images", "rm": "rmi", "remove": "rmi",
              "inspect": "image_inspect", "history": "history", "prune": "image_prune",
              "import": "import", "load": "load", "save": "save", "tag": "tag",
              "build-debian": "build_debian", "pull": "pull", "push": "push", "build": "build"},
    "volume": {"create": "volume_create", "ls": "volume_ls", "list": "volume_ls",
               "rm": "volume_rm", "remove": "volume_rm", "inspect": "volume_inspect",
               "prune": "volume_prune"},
    "system": {"reset": "system_reset", "df": "system_df", "events": "events"},
    "healthcheck": {"run": "healthcheck_run"},
    "network": {"create": "network_create", "ls": "network_ls", "list": "network_ls",
                "inspect": "network_inspect", "rm": "network_rm", "remove": "network_rm",
                "prune": "network_prune", "connect": "network_connect",
                "disconnect": "network_disconnect"},
    "guard": {"watch": "guard_watch", "status": "guard_status"},
}
GLOBAL_FLAGS = {"root": "str", "runroot": "str", "runtime": "str", "log-level": "str",
                "cgroup-manager": "str", "help": "bool", "version": "bool", "debug": "bool"}
GLOBAL_ALIASES = {"v": "version", "D": "debug"}
GLOBAL_HELP = {
    "root": ("DIR", "Engine storage (default /var/lib/nsbox, or $NSBOX_ROOT)"),
    "runroot": ("DIR", "Runtime state (default /run/nsbox, or $NSBOX_RUNROOT)"),
    "runtime": ("PATH", "OCI runtime (default nsbox-runtime, or $NSBOX_RUNTIME)"),
    "log-level": ("LEVEL", "Log level: debug, info, warn or error"),
    "cgroup-manager": ("MANAGER", "Cgroup manager: cgroupfs (default) or systemd (a scope in "
                       "machine.slice; or $NSBOX_CGROUP_MANAGER)"),
    "debug": "Log debug messages (--log-level debug)",
    "help": "Print usage",
    "version": "Print the version and exit",
}

DEFAULT_RUNROOT = "/run/nsbox"


class UsageError(Exception):
    """A command line nsbox cannot parse: exit 125."""


class Args:
    """Parsed flags (long name -> value; only flags that were given) and positionals."""

    __slots__ = ("flags", "positional")

    def __init__(self, flags: dict, positional: list[str]) -> None:
        self.flags = flags
        self.positional = positional

    def get(self, name: str, default=None):  # noqa: ANN001, ANN201
        return self.flags.get(name, default)

    def __getitem__(self, name: str):  # noqa: ANN204
        return self.flags.get(name)


def parse_flags(argv: list[str], spec: dict[str, str], aliases: dict[str, str] | None = None,
                stop_after: int | None = None) -> Args:
    """Parse pflag-style flags against SPEC (name -> "bool" | "str" | "list")."""
    aliases = aliases or {}
    flags: dict = {}
    positional: list[str] = []

    def assign(name: str, value: str | None, take_next) -> None:  # noqa: ANN001
        kind = spec[name]
        if kind == "bool":
            if value is None:
                flags[name] = True
            elif value.lower() in ("true", "1", "false", "0"):
                flags[name] = value.lower() in ("true", "1")
            else:
                raise UsageError(f'invalid argument "{value}" for "--{name}" flag: '
                                 "strconv.ParseBool: parsing: invalid syntax")
            return
        if value is None:
            value = take_next(name)
        if kind == "list":
            flags.setdefault(name, []).append(value)
        else:
            flags[name] = value

    i = 0

    def take_next(name: str) -> str:
        nonlocal i
        if i >= len(argv):
            raise UsageError(f"flag needs an argument: --{name}")
        i += 1
        return argv[i - 1]

    while i < len(argv):
        tok = argv[i]
        i += 1
        if stop_after is not None and len(positional) >= stop_after:
            positional.append(tok)
            continue
        if tok == "--":
            positional.extend(argv[i:])
            break
        if tok.startswith("--"):
            name, eq, value = tok[2:].partition("=")
            name = aliases.get(name, name) if len(name) > 1 else name
            if name not in spec:
                raise UsageError(f"unknown flag: --{name}")
            assign(name, value if eq else None, take_next)
        elif tok.startswith("-") and tok != "-":
            shorts = tok[1:]
            j = 0
            while j < len(shorts):
                letter = shorts[j]
                name = aliases.get(letter, letter)
                if name not in spec:
                    raise UsageError(f"unknown shorthand flag: '{letter}' in {tok}")
                rest = shorts[j + 1:]
                if spec[name] == "bool":
                    if rest.startswith("="):
                        assign(name, rest[1:], take_next)
                        break
                    assign(name, None, take_next)
                    j += 1
                    continue
                assign(name, (rest[1:] if rest.startswith("=") else rest) or None, take_next)
                break
        else:
            positional.append(tok)
    return Args(flags, positional)


class Context:
    """Global options, and the engine built from them on first use."""

    def __init__(self, root: str, runroot: str, runtime: str | None) -> None:
        self.root = root
        self.runroot = runroot
        self.runtime = runtime
        self._engine = None
        self._images = None

    def engine(self):  # noqa: ANN201 - nsbox.engine.containers.Engine
        if self._engine is None:
            from nsbox.engine.containers import Engine

            self._engine = Engine(root=self.root, run_root=self.runroot, runtime=self.runtime)
        return self._engine

    def images(self):  # noqa: ANN201 - ImageStore
        """The image store; the engine's when the container layer exists."""
        if self._images is None:
            try:
                self._images = self.engine().images
            except ImportError:
                from nsbox.engine.images import ImageStore

                self._images = ImageStore(self.root)
        return self._images


def need_args(args: Args, command: str, minimum: int, maximum: int | None = None,
              what: str = "argument") -> list[str]:
    count = len(args.positional)
    if count < minimum or (maximum is not None and count > maximum):
        exact = "exactly" if maximum == minimum else "at least"
        raise UsageError(f'"nsbox {command}" requires {exact} {minimum} {what}'
                         f"{'s' if minimum != 1 else ''}.")
    return args.positional


def fail(message: str, code: int = 125) -> int:
    sys.stderr.write(f"Error: {message}\n")
    return code


def _exit_code_of(exc: BaseException) -> int:
    code = getattr(exc, "exit_code", 125)
    return code if code in (126, 127) else 125


def _setup_logging(level: str) -> None:
    if not level:
        return
    import logging

    from nsbox import _lazylog

    names = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
             "warning": logging.WARNING, "error": logging.ERROR, "fatal": logging.CRITICAL,
             "panic": logging.CRITICAL}
    if level not in names:
        raise UsageError(f'invalid log level "{level}": use debug, info, warn or error')
    logging.basicConfig(level=names[level], format="%(levelname)s %(name)s: %(message)s")
    _lazylog.debug_enabled = level == "debug"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        # Global flags stop at the first positional: the command.
        g = parse_flags(argv, GLOBAL_FLAGS, GLOBAL_ALIASES, stop_after=1)
        _setup_logging("debug" if g["debug"] else (g["log-level"] or ""))
    except UsageError as exc:
        return fail(str(exc))
    if g["cgroup-manager"] is not None:
        if g["cgroup-manager"] not in ("cgroupfs", "systemd"):
            return fail(f'invalid argument "{g["cgroup-manager"]}" for "--cgroup-manager" flag: '
                        "use cgroupfs or systemd")
        # Read where containers are built and the runtime is called (bundle, oci).
        os.environ["NSBOX_CGROUP_MANAGER"] = g["cgroup-manager"]
    if g["version"]:
        argv_rest = ["version"]
    else:
        argv_rest = g.positional
    if g["help"] or not argv_rest:
        from nsbox.engine.cli._help import main_help

        sys.stdout.write(main_help(COMMANDS, GROUPS, GLOBAL_FLAGS, GLOBAL_ALIASES, GLOBAL_HELP))
        return 0 if g["help"] else 125
    command, rest = argv_rest[0], argv_rest[1:]
    label = command
    if command in GROUPS:
        if not rest or rest[0] in ("--help", "-h"):
            from nsbox.engine.cli._help import group_help

            sys.stdout.write(group_help(command, GROUPS[command]))
            return 0 if rest else 125
        sub, rest = rest[0], rest[1:]
        module_name = GROUPS[command].get(sub)
        label = f"{command} {sub}"
    else:
        module_name = COMMANDS.get(command)
    if module_name is None:
        return fail(f"unknown command \"{label}\" for \"nsbox\"")
    root, runroot = "/var/lib/nsbox", DEFAULT_RUNROOT
    rootless = os.geteuid() != 0
    if rootless:
        from nsbox.engine import rootless as rootless_mod
        root, runroot = rootless_mod.default_root(), rootless_mod.default_run_root()
    ctx = Context(root=os.path.abspath(g["root"] or os.environ.get("NSBOX_ROOT") or root),
                  runroot=os.path.abspath(g["runroot"] or os.environ.get("NSBOX_RUNROOT")
                                          or runroot),
                  runtime=g["runtime"] or os.environ.get("NSBOX_RUNTIME") or None)
    if rootless:
        from nsbox.errors import NsboxError
        try:
            rootless_mod.enter(ctx.runroot)
        except NsboxError as exc:
            return fail(str(exc))
    name = f"nsbox.engine.cli.cmd_{module_name}"
    __import__(name)
    module = sys.modules[name]
    from nsbox.errors import NsboxError

    try:
        spec = {**module.FLAGS, "help": "bool"}
        args = parse_flags(rest, spec, getattr(module, "ALIASES", None),
                           stop_after=getattr(module, "STOP_AFTER", None))
        if args["help"]:
            from nsbox.engine.cli._help import command_help

            sys.stdout.write(command_help(module))
            return 0
        return module.run(args, ctx) or 0
    except UsageError as exc:
        return fail(f"{exc} (see 'nsbox {label} --help')")
    except NsboxError as exc:
        return fail(str(exc), _exit_code_of(exc))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except ImportError as exc:  # a part of the engine that is not installed
        return fail(f"{label}: {exc}")
    except OSError as exc:
        return fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
