"""Usage:  nsbox push [OPTIONS] IMAGE [DESTINATION]

Push an image to a registry (OCI distribution API) and print the digest of
its manifest.  DESTINATION is [docker://]HOST/NAME[:TAG] (default: IMAGE's
name).  Blobs the registry has are not uploaded again; the manifest goes as
it is stored, so its digest is the same on both sides.  Credentials come from
auth.json (nsbox login).
"""

from __future__ import annotations

import sys

FLAGS = {"quiet": "bool", "tls-verify": "bool", "cert-dir": "str", "authfile": "str", "digestfile": "str",
         "format": "str"}
ALIASES = {"q": "quiet", "f": "format"}
HELP = {
    "quiet": "Do not show progress",
    "tls-verify": "Require HTTPS with a verified certificate (default true; false also allows plain HTTP)",
    "cert-dir": ("path", "CA certificates (*.crt) and a client certificate (*.cert, *.key) for the "
                         "registry (default: its certs.d directory)"),
    "authfile": ("path", "The auth.json to read credentials from"),
    "digestfile": ("file", "Write the digest of the pushed manifest to FILE"),
    "format": ("oci|v2s2", "Manifest format to push (default: as stored; only media types change)"),
}


def run(args, ctx) -> int:  # noqa: ANN001
    from nsbox.engine.cli import need_args
    from nsbox.engine.cli.cmd_pull import PullProgress

    positional = need_args(args, "push", 1, 2)
    source, destination = positional[0], (positional[1] if len(positional) > 1 else None)
    progress = None if args["quiet"] else PullProgress()
    digest = ctx.images().push(source, destination, tls_verify=args.flags.get("tls-verify"),
                               authfile=args["authfile"] or None, progress=progress,
                               cert_dir=args["cert-dir"] or None, format=args["format"] or None)
    if args["digestfile"]:
        with open(args["digestfile"], "w") as f:
            f.write(digest)
    sys.stdout.write(digest + "\n")
    return 0
