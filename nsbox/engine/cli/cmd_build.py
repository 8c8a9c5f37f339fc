"""Usage:  nsbox build [OPTIONS] CONTEXT|-

Build an image from a Containerfile (else Dockerfile) in the context
directory, or from a tar of the context read from stdin (`-`).  RUN steps run
in nsbox containers; every step is cached (--no-cache ignores the cache).
Prints the steps, the RUN output, and the image id last.
"""

from __future__ import annotations

import sys

FLAGS = {"tag": "list", "file": "str", "build-arg": "list", "target": "str", "no-cache": "bool",
         "pull": "bool", "label": "list", "iidfile": "str", "quiet": "bool", "network": "str",
         "tls-verify": "bool"}
ALIASES = {"t": "tag", "f": "file", "q": "quiet"}
HELP = {
    "tag": ("name", "Name the image (repeatable)"),
    "file": ("path", "The Containerfile, relative to here, else to the context (default: "
             "CONTEXT/Containerfile, else CONTEXT/Dockerfile)"),
    "build-arg": ("KEY=VALUE", "Set a build argument (repeatable; KEY alone takes it from the "
                  "environment)"),
    "target": ("stage", "Build up to this stage (by its AS name) and store it"),
    "no-cache": "Do not use the build cache (results are still recorded)",
    "pull": "Pull the FROM images even if they are in the store",
    "label": ("KEY=VALUE", "Set a label on the image (repeatable)"),
    "iidfile": ("path", "Write the image id to this file"),
    "quiet": "Print only the image id",
    "network": ("mode", "The network of RUN containers (as run --network; default as run)"),
    "tls-verify": "Require HTTPS with a verified certificate when pulling (default true)",
}


def _pairs(items: list[str], what: str, environ: bool) -> dict[str, str]:
    import os

    from nsbox.errors import ConfigError
    found = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        if not key:
            raise ConfigError(f"--{what} {item!r}: want KEY=VALUE")
        if not sep:
            if not environ:
                raise ConfigError(f"--{what} {item!r}: want KEY=VALUE")
            if key not in os.environ:
                continue
            value = os.environ[key]
        found[key] = value
    return found


def run(args, ctx) -> int:  # noqa: ANN001
    import os

    import nsbox.api
    from nsbox.engine.cli import need_args

    (context,) = need_args(args, "build", 1, 1)
    quiet = bool(args["quiet"])

    def emit(event: dict) -> None:
        text = event.get("stream", "")
        if text and not quiet:
            sys.stdout.write(text)
            sys.stdout.flush()

    dockerfile = args["file"] or None
    if dockerfile and context != "-" and os.path.isfile(dockerfile):
        dockerfile = os.path.abspath(dockerfile)  # -f is relative to here, as in docker/podman
    image = nsbox.api.build(
        context, tag=args["tag"] or [], dockerfile=dockerfile,
        buildargs=_pairs(args["build-arg"], "build-arg", True), target=args["target"] or None,
        nocache=bool(args["no-cache"]), pull=bool(args["pull"]),
        labels=_pairs(args["label"], "label", False), network=args["network"] or None,
        tls_verify=args.flags.get("tls-verify"), progress=emit, engine=ctx.engine(),
        stdin=sys.stdin.buffer if context == "-" else None)
    if args["iidfile"]:
        with open(args["iidfile"], "w") as f:
            f.write(image.id)
    sys.stdout.write(image.id.removeprefix("sha256:") + "\n")
    return 0
