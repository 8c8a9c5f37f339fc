"""`nsbox-runtime [COMMAND] --help` text, made from the tables the parser reads.

Imported only when help is asked for.  A command module's HELP maps each
flag of FLAGS to its one-line description, or to (value name, description)
for a flag that takes a value; a FLAGS entry that is only the target of an
ALIASES short name (runc's `-b` next to `--bundle`) is shown with its long flag.
"""

from __future__ import annotations


def _value_name(default: object, entry: object) -> str:
    if isinstance(default, bool):
        return ""
    if isinstance(entry, tuple):
        return entry[0]
    return "N" if isinstance(default, int) else "value"


def flag_lines(flags: dict, aliases: dict[str, str] | None, descriptions: dict) -> list[str]:
    """One aligned line per flag: `  -b, --bundle DIR   path to the bundle`."""
    aliases = aliases or {}
    shorts: dict[str, list[str]] = {}
    for alias, name in aliases.items():
        if name in flags:
            shorts.setdefault(name, []).append(alias)
    rows = []
    for name in sorted(flags):
        if name in aliases and aliases[name] in flags:
            continue  # shown with the flag it stands for
        entry = descriptions.get(name)
        value = _value_name(flags[name], entry)
        names = [f"-{a}" if len(a) == 1 else f"--{a}" for a in sorted(shorts.get(name, []))]
        left = ", ".join([f"--{name}", *names]) + (f" {value}" if value else "")
        text = entry[1] if isinstance(entry, tuple) else str(entry or "")
        default = flags[name]
        if default not in ("", 0, False, []) and not isinstance(default, bool):
            text += f" (default {default})"
        rows.append((left, text))
    width = max((len(left) for left, _ in rows), default=0)
    return [f"  {left.ljust(width)}   {text}".rstrip() for left, text in rows]


def command_help(module) -> str:  # noqa: ANN001 - a cmd_<name> module
    text = (module.__doc__ or "").rstrip("\n") + "\n"
    lines = flag_lines(module.FLAGS, getattr(module, "ALIASES", None),
                       getattr(module, "HELP", None) or {})
    return text + "\nflags:\n" + "\n".join(lines) + "\n"


def main_help(usage: str, global_flags: dict, aliases: dict, global_help: dict) -> str:
    """`nsbox-runtime --help`: USAGE, then the global flags (tables passed in by the CLI)."""
    return (usage.rstrip("\n") + "\n\nglobal flags:\n"
            + "\n".join(flag_lines(global_flags, aliases, global_help)) + "\n")
