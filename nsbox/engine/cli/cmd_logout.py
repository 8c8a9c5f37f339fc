"""Usage:  nsbox logout [OPTIONS] REGISTRY

Remove the credentials for REGISTRY (or, with --all, every registry) from
auth.json (the file nsbox login writes, or --authfile).
"""

from __future__ import annotations

import sys

FLAGS = {"all": "bool", "authfile": "str"}
ALIASES = {"a": "all"}
HELP = {
    "all": "Remove the credentials for every registry",
    "authfile": ("path", "The auth.json to edit (default: Podman's per-user file)"),
}


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import need_args
    from nsbox.engine.images.registries import login_key, remove_credentials
    from nsbox.errors import ConfigError

    authfile = args["authfile"] or None
    if args["all"]:
        need_args(args, "logout", 0, 0)
        remove_credentials(None, authfile)
        sys.stdout.write("Removed login credentials for all registries\n")
        return 0
    (registry,) = need_args(args, "logout", 1, 1)
    key = login_key(registry)
    if not remove_credentials(key, authfile):
        raise ConfigError(f"not logged into {key}")
    sys.stdout.write(f"Removed login credentials for {key}\n")
    return 0
