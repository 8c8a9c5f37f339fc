"""usage: nsbox-runtime features

Print what this runtime supports, as the OCI features.json document.
"""

from __future__ import annotations

FLAGS = {"help": False}


def run(args, ctx) -> int:
    import json
    import sys

    from nsbox.runtime.features import features

    sys.stdout.write(json.dumps(features(), indent=2) + "\n")
    return 0
