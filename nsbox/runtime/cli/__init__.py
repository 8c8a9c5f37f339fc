"""nsbox-runtime: a runc-compatible command line over nsbox.runtime.

Flags are parsed the way Go's flag package does (runc's CLI library builds
on it): `-flag`, `--flag`, `--flag=value` and `--flag value` all work, and
boolean flags take `=true|false`.  Each command lives in its own module with
a FLAGS table (name -> default), HELP (name -> one-line description, or
(value name, description); `--help` is made from both, see _help.py) and a
`run(args, ctx)` function.
"""

from __future__ import annotations

import os
import sys

COMMANDS = ("checkpoint", "create", "delete", "events", "exec", "features", "kill", "list",
            "pause", "ps", "restore", "resume", "run", "spec", "start", "state", "update")

GLOBAL_FLAGS = {
    "debug": False, "log": "", "log-format": "", "root": "", "criu": "", "systemd-cgroup": False,
    "rootless": "", "cgroup-manager": "", "help": False, "h": False, "version": False, "v": False,
}
_ALIASES = {"h": "help", "v": "version"}
GLOBAL_HELP = {
    "root": ("DIR", "state directory (default /run/nsbox-runtime)"),
    "log": ("FILE", "write log messages to FILE"),
    "log-format": ("FORMAT", "text or json"),
    "debug": "log debug messages",
    "systemd-cgroup": "use systemd for cgroups (needs systemd)",
    "cgroup-manager": ("M", "cgroupfs (default), systemd, or disabled (no cgroups at all)"),
    "criu": ("PATH", "accepted for runc compatibility; ignored"),
    "rootless": ("VALUE", "accepted for runc compatibility; ignored"),
    "help": "print usage",
    "version": "print the version",
}


# What `create`, `run` and `exec` import once their flags are parsed, each module
# after the modules it imports: main() has the code bundle load them in one go
# (_codebundle.CodeBundle.preload), ~0.5 ms less of each command than one import
# statement at a time.  tests/test_codebundle.py compares it with what the
# commands really import; a module missing here is imported where it is used.
_CREATE_IMPORTS = tuple(f"nsbox.{name}" for name in (
    "errors", "_lite", "runtime.cgroups.host", "runtime.cgroups", "runtime.security",
    "runtime.state", "runtime.create", "runtime.container",
    "runtime.syscalls", "_record", "runtime.spec", "runtime.namespaces",
    "runtime.security.capabilities", "runtime.security.lsm", "runtime.rootfs.options",
    "runtime.rootfs.sources", "runtime.rootfs", "runtime.security.exe_guard",
    "runtime.cgroups.values", "runtime.cgroups.resources", "runtime.cgroups.manager",
    "runtime.channel", "runtime.process", "runtime.init", "runtime.rootfs.resolve",
    "runtime.rootfs.devices", "runtime.rootfs.masking", "runtime.rootfs.mountinfo",
    "runtime.rootfs.mounts", "runtime.rootfs.switch"))
_EXEC_IMPORTS = tuple(f"nsbox.{name}" for name in (
    "errors", "_lite", "runtime.cgroups.host", "runtime.cgroups", "runtime.state",
    "runtime.container", "_record", "runtime.spec", "runtime.channel",
    "runtime.syscalls", "runtime.namespaces", "runtime.process", "runtime.execute",
    "runtime.security", "runtime.security.exe_guard", "runtime.security.capabilities",
    "runtime.init", "runtime.security.lsm", "runtime.rootfs.options", "runtime.rootfs.sources",
    "runtime.rootfs", "runtime.rootfs.resolve", "runtime.rootfs.devices",
    "runtime.rootfs.masking", "runtime.rootfs.mountinfo", "runtime.rootfs.mounts",
    "runtime.rootfs.switch"))
PRELOAD = {"create": _CREATE_IMPORTS, "run": _CREATE_IMPORTS, "exec": _EXEC_IMPORTS}


class UsageError(Exception):
    """Bad command-line usage: exit status 1 with a message."""


class Args:
    """Parsed flags (by name) and positional arguments."""

    __slots__ = ("flags", "positional")

    def __init__(self, flags: dict, positional: list[str]) -> None:
        self.flags = flags
        self.positional = positional

    def __getitem__(self, name: str):
        return self.flags[name]


class Context:
    """The global flags every command sees."""

    # Plain classes, not dataclasses: importing dataclasses costs more than a
    # whole `start` command on a slow host.
    __slots__ = ("root", "systemd_cgroup", "debug", "log_path", "log_format", "cgroups")

    def __init__(self, root: str, systemd_cgroup: bool, debug: bool, log_path: str,
                 log_format: str, cgroups: bool = True) -> None:
        self.root = root
        self.systemd_cgroup = systemd_cgroup
        self.debug = debug
        self.log_path = log_path
        self.log_format = log_format
        self.cgroups = cgroups

    def runtime(self):
        from nsbox.runtime.container import Runtime

        rt = Runtime(self.root, self.systemd_cgroup, use_cgroups=self.cgroups)
        rt.reexec_sealed = _cli_reexec
        return rt


def _cli_reexec() -> None:
    # exe_guard is imported only when a re-exec is due, not by every command.
    from nsbox.runtime.security.exe_guard import cli_reexec

    cli_reexec()


def parse_flags(argv: list[str], spec: dict, aliases: dict[str, str] | None = None,
                interspersed: bool = True, stop_after: int | None = None) -> Args:
    """Parse Go-style flags. spec maps name -> default (bool, str, int or list for repeatable).

    interspersed: flags may follow positional arguments.  stop_after: after
    this many positional arguments everything is positional (exec's command).
    """
    aliases = aliases or {}
    out = Args({k: (list(v) if isinstance(v, list) else v) for k, v in spec.items()}, [])
    i = 0
    while i < len(argv):
        tok = argv[i]
        i += 1
        if stop_after is not None and len(out.positional) >= stop_after:
            out.positional.append(tok)
            continue
        if tok == "--":
            out.positional.extend(argv[i:])
            break
        if not tok.startswith("-") or tok == "-":
            out.positional.append(tok)
            if not interspersed:
                out.positional.extend(argv[i:])
                break
            continue
        name, eq, value = tok.lstrip("-").partition("=")
        name = aliases.get(name, name)
        if name not in spec:
            raise UsageError(f"flag provided but not defined: -{name}")
        default = spec[name]
        if isinstance(default, bool):
            if eq:
                if value.lower() not in ("true", "false", "1", "0"):
                    raise UsageError(f"invalid boolean value {value!r} for -{name}")
                out.flags[name] = value.lower() in ("true", "1")
            else:
                out.flags[name] = True
            continue
        if not eq:
            if i >= len(argv):
                raise UsageError(f"flag needs an argument: -{name}")
            value = argv[i]
            i += 1
        if isinstance(default, list):
            out.flags[name].append(value)
        elif isinstance(default, int):
            try:
                out.flags[name] = int(value)
            except ValueError:
                raise UsageError(f"invalid value {value!r} for flag -{name}: not a number") from None
        else:
            out.flags[name] = value
    return out


def need_id(args: Args, command: str) -> str:
    if not args.positional:
        raise UsageError(f"{command}: requires exactly one argument: the container id")
    return args.positional[0]


def _version() -> str:
    """runc's shape: name and version, then `key: value` lines (go -> python)."""
    from nsbox import __version__
    from nsbox.runtime.security.seccomp_compile import libseccomp_version
    from nsbox.runtime.spec import SPEC_VERSION

    out = (f"nsbox-runtime version {__version__}\nspec: {SPEC_VERSION}\n"
           f"python: {sys.version.split()[0]}\n")
    seccomp = libseccomp_version()  # seccomp_version() of the library create would load
    if seccomp:
        out += f"libseccomp: {seccomp}\n"
    return out


USAGE = """usage: nsbox-runtime [global flags] COMMAND [flags] [args]

An OCI runtime with a runc-compatible command line.

commands:
  create    create a container from a bundle, stopped before its process
  start     run the process of a created container
  run       create and start a container (and wait, unless --detach)
  state     print the state of a container as JSON
  list      list containers (table or --format json)
  kill      send a signal to the container's init (or --all processes)
  delete    delete a stopped container (--force: any container)
  exec      run another process in a running container
  ps        list the processes of a container
  pause     freeze every process of a container
  resume    thaw a paused container
  update    change the resource limits of a running container
  events    stream OOM events, or --stats once
  spec      write a default config.json
  features  print the features this runtime supports as JSON

"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        g = parse_flags(argv, GLOBAL_FLAGS, _ALIASES, interspersed=False)
    except UsageError as exc:
        sys.stderr.write(f"nsbox-runtime: {exc}\n")
        return 1
    if g["version"]:
        sys.stdout.write(_version())
        return 0
    if g["help"] or not g.positional:
        from nsbox.runtime.cli._help import main_help

        sys.stdout.write(main_help(USAGE, GLOBAL_FLAGS, _ALIASES, GLOBAL_HELP))
        return 0 if g["help"] else 1
    command, rest = g.positional[0], g.positional[1:]
    if g["log-format"] not in ("", "text", "json"):
        sys.stderr.write(f"nsbox-runtime: invalid --log-format {g['log-format']!r}: "
                         "use text or json\n")
        return 1
    manager = g["cgroup-manager"]
    if manager not in ("", "cgroupfs", "systemd", "disabled"):
        sys.stderr.write(f"nsbox-runtime: unknown --cgroup-manager {manager!r}: "
                         "use cgroupfs, systemd or disabled\n")
        return 1
    ctx = Context(root=g["root"] or "/run/nsbox-runtime",
                  systemd_cgroup=g["systemd-cgroup"] or manager == "systemd",
                  debug=g["debug"], log_path=g["log"], log_format=g["log-format"] or "text",
                  cgroups=manager != "disabled")
    from nsbox.runtime.cli import _log

    try:
        undo_log_setup = _log.setup(ctx)
    except OSError as exc:  # as runc: one line, before the command does anything
        sys.stderr.write(f"nsbox-runtime: cannot open the log file {ctx.log_path}: "
                         f"{exc.strerror}\n")
        return 1
    try:
        return _command(command, rest, ctx)
    finally:
        undo_log_setup()  # main() called in-process (tests) leaves no logging set-up behind


def _command(command: str, rest: list[str], ctx: Context) -> int:
    from nsbox.runtime.cli import _log

    if command not in COMMANDS:
        return _log.fail(ctx, f"no such command: {command}", 1)
    name = f"nsbox.runtime.cli.cmd_{command}"
    __import__(name)  # importlib.import_module would cost an import of importlib
    module = sys.modules[name]
    from nsbox.errors import NsboxError

    try:
        args = parse_flags(rest, module.FLAGS, getattr(module, "ALIASES", None),
                           stop_after=getattr(module, "STOP_AFTER", None))
        if args.flags.get("help"):
            from nsbox.runtime.cli._help import command_help

            sys.stdout.write(command_help(module))
            return 0
        bundle = getattr(sys.modules.get("nsbox._codebundle"), "installed", None)
        if bundle is not None and command in PRELOAD:
            bundle.preload(PRELOAD[command])
        return module.run(args, ctx) or 0
    except UsageError as exc:
        return _log.fail(ctx, f"{command}: {exc}", 1)
    except NsboxError as exc:
        return _log.fail(ctx, str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        return _log.fail(ctx, f"{command}: {exc}", 1)


if __name__ == "__main__":
    os._exit(main())
