"""usage: nsbox-runtime spec [--bundle DIR] [--rootless]

Write a default config.json (like `runc spec`) into the bundle directory.
"""

from __future__ import annotations

FLAGS = {"bundle": "", "b": "", "rootless": False, "help": False}
ALIASES = {"b": "bundle"}
HELP = {
    "bundle": ("DIR", "directory to write config.json to (default .)"),
    "rootless": "a config for a rootless container",
    "help": "print usage",
}


def run(args, ctx) -> int:
    import os

    from nsbox import _json
    from nsbox.errors import ContainerExists
    from nsbox.runtime.spec import default_spec

    path = os.path.join(args["bundle"] or ".", "config.json")
    if os.path.exists(path):
        raise ContainerExists(f"file {path} exists: remove it first")
    with open(path, "x") as f:
        f.write(_json.dumps_pretty(default_spec(rootless=args["rootless"]), indent="\t"))
        f.write("\n")
    return 0
