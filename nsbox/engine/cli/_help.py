"""`--help` text, made from the same FLAGS / ALIASES / HELP tables the parser reads.

Imported only when help is asked for, so that it costs nothing on the path
of a normal command.  A command module's HELP maps each long flag name to
its one-line description, or to (value name, description) for a flag that
takes a value; the flags themselves (and their short aliases) come from
FLAGS and ALIASES, so a flag the parser accepts is always listed.
"""

from __future__ import annotations

# `nsbox --help`: one line per command, in this order.
COMMAND_SUMMARIES = {
    "run": "Create and run a new container from an image",
    "create": "Create a new container",
    "start": "Start one or more stopped containers",
    "stop": "Stop one or more running containers",
    "restart": "Restart one or more containers",
    "kill": "Kill one or more running containers",
    "rm": "Remove one or more containers",
    "ps": "List containers",
    "logs": "Fetch the logs of a container",
    "exec": "Execute a command in a running container",
    "attach": "Attach to a running container's output and stdin",
    "wait": "Block until containers stop, then print their exit codes",
    "inspect": "Return low-level information on containers or images",
    "top": "Display the running processes of a container",
    "rename": "Rename a container",
    "pause": "Pause all processes within containers",
    "unpause": "Unpause all processes within containers",
    "update": "Update resource limits of containers",
    "cp": "Copy files between a container and the host",
    "port": "List port mappings of a container",
    "export": "Export a container's filesystem as a tar archive",
    "commit": "Create a new image from a container's changes",
    "images": "List images",
    "rmi": "Remove images",
    "tag": "Create a name TARGET_IMAGE that refers to SOURCE_IMAGE",
    "history": "Show the history of an image",
    "import": "Import a rootfs tarball or directory as an image",
    "load": "Load images from a tar archive",
    "save": "Save images to a tar archive",
    "pull": "Pull an image from a registry",
    "push": "Push an image to a registry",
    "login": "Log in to a registry",
    "logout": "Log out of a registry",
    "container": "Manage containers",
    "image": "Manage images",
    "volume": "Manage volumes",
    "network": "Manage networks",
    "system": "Manage nsbox (reset)",
    "version": "Show the nsbox version",
    "info": "Display system-wide information",
    "ns": "List the namespaces of running containers (lsns for containers)",
    "dashboard": "Serve a local web page showing containers live",
    "healthcheck": "Manage healthchecks of containers",
    "stats": "Display a live stream of containers' resource usage statistics",
    "cgroup": "Show a container's cgroups, its limits with their flags, and their events",
    "guard": "Runtime security: watch containers' events (--security-opt guard=)",
}
# Sub-commands that are not also top-level commands.
SUB_SUMMARIES = {
    "container_prune": "Remove all stopped containers",
    "image_inspect": "Display detailed information on images",
    "image_prune": "Remove unused images",
    "build_debian": "Build a Debian image with debootstrap",
    "volume_create": "Create a volume",
    "volume_ls": "List volumes",
    "volume_rm": "Remove volumes",
    "volume_inspect": "Display detailed information on volumes",
    "volume_prune": "Remove unused volumes",
    "network_create": "Create a network", "network_ls": "List networks",
    "network_inspect": "Display detailed information on one or more networks",
    "network_rm": "Remove one or more networks", "network_prune": "Remove all unused networks",
    "network_connect": "Connect a container to a network",
    "network_disconnect": "Disconnect a container from a network",
    "system_reset": "Remove all containers, images, volumes and storage",
    "healthcheck_run": "Run the healthcheck of a container now",
    "guard_watch": "Print the guard's events as JSON lines, live",
    "guard_status": "Show the guard process, the containers it watches, alerts and drops",
}
HELP_FLAG = "Print usage"


def _value_name(kind: str, entry: object) -> str:
    if kind == "bool":
        return ""
    if isinstance(entry, tuple):
        return entry[0]
    return "list" if kind == "list" else "string"


def _description(entry: object) -> str:
    if isinstance(entry, tuple):
        return entry[1]
    return str(entry or "")


def flag_lines(flags: dict[str, str], aliases: dict[str, str] | None,
               descriptions: dict, help_flag: bool = True) -> list[str]:
    """One aligned line per flag, Docker's style: `  -m, --memory bytes   Memory limit`."""
    shorts: dict[str, str] = {}
    for short, name in (aliases or {}).items():
        if len(short) == 1:
            shorts.setdefault(name, short)
    rows = []
    for name in sorted(flags):
        entry = descriptions.get(name)
        value = _value_name(flags[name], entry)
        short = shorts.get(name)
        left = (f"-{short}, " if short else "    ") + f"--{name}" + (f" {value}" if value else "")
        rows.append((left, _description(entry)))
    if help_flag and "help" not in flags:
        rows.append(("    --help", HELP_FLAG))
    width = max((len(left) for left, _ in rows), default=0)
    return [f"  {left.ljust(width)}   {text}".rstrip() for left, text in rows]


def command_help(module) -> str:  # noqa: ANN001 - a cmd_<name> module
    """The module's usage text, then an Options section from its flag tables."""
    text = (module.__doc__ or "").rstrip("\n") + "\n"
    lines = flag_lines(module.FLAGS, getattr(module, "ALIASES", None),
                       getattr(module, "HELP", None) or {})
    return text + "\nOptions:\n" + "\n".join(lines) + "\n"


def _command_lines(entries: list[tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in entries)
    return "".join(f"  {name.ljust(width)}  {text}\n" for name, text in entries)


def main_help(commands: dict, groups: dict, global_flags: dict, global_aliases: dict,
              global_help: dict) -> str:
    """`nsbox --help`: every command, then the global options (the CLI's own tables,
    passed in so that this module imports nothing of the package above it)."""
    names = [n for n in COMMAND_SUMMARIES if n in commands or n in groups]
    names += sorted(n for n in (*commands, *groups) if n not in COMMAND_SUMMARIES)
    entries = [(n, COMMAND_SUMMARIES.get(n, "")) for n in names]
    return ("Usage:  nsbox [OPTIONS] COMMAND\n\nA daemonless, Docker-compatible container engine.\n"
            "\nCommands:\n" + _command_lines(entries)
            + "\nGlobal options:\n"
            + "\n".join(flag_lines(global_flags, global_aliases, global_help, help_flag=False))
            + "\n\nRun 'nsbox COMMAND --help' for more information on a command.\n")


def group_help(group: str, subcommands: dict[str, str]) -> str:
    """`nsbox image --help`: the group's SUBCOMMANDS (name -> command module)."""
    entries = []
    for sub, module_name in subcommands.items():
        text = SUB_SUMMARIES.get(module_name) or COMMAND_SUMMARIES.get(module_name, "")
        entries.append((sub, text))
    return (f"Usage:  nsbox {group} COMMAND\n\n{COMMAND_SUMMARIES.get(group, '')}\n\n"
            f"Commands:\n" + _command_lines(entries)
            + f"\nRun 'nsbox {group} COMMAND --help' for more information on a command.\n")
