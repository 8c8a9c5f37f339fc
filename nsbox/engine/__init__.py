"""The nsbox engine: images, container storage and (later) containers, like a daemonless Docker.

Everything the engine keeps lives under one root directory (DEFAULT_ROOT unless
the caller says otherwise):

    <root>/images/      the image store, an OCI image layout (oci-layout,
                        index.json, blobs/sha256/...)
    <root>/layers/      every layer unpacked once, named by its chain id, shared
                        by all images and containers that use it
    <root>/containers/  each container's overlay upper/work/merged directories
    <root>/tmp/         staging for imports; empty between operations

Nothing heavy is imported here, so `import nsbox.engine` stays cheap.
"""

from __future__ import annotations

DEFAULT_ROOT = "/var/lib/nsbox"
