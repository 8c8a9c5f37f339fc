"""usage: nsbox-runtime features

Print what this runtime supports, as the OCI features.json document.
"""

from __future__ import annotations

FLAGS = {"help": False}
HELP = {"help": "print usage"}


def run(args, ctx) -> int:
    import sys

    from nsbox import _json
    from nsbox.runtime.features import features

    sys.stdout.write(_json.dumps_pretty(features()) + "\n")
    return 0
