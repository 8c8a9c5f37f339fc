"""Usage:  nsbox version [OPTIONS]

Show the nsbox version (--format json for machine-readable output).
"""

from __future__ import annotations

import sys

FLAGS = {"format": "str"}
ALIASES = {"f": "format"}
HELP = {
    "format": ("string", "Format output using a Go template, or json"),
}


def version_info() -> dict:
    import platform

    from nsbox import __version__

    return {"Version": __version__, "ApiVersion": "1.41", "GoVersion": "",
            "PythonVersion": platform.python_version(), "Os": "linux",
            "Arch": platform.machine(), "KernelVersion": platform.release()}


def run(args, ctx) -> int:  # noqa: ANN001
    info = version_info()
    if args["format"]:
        from nsbox.engine.cli._format import print_formatted

        print_formatted(args["format"], [info])
        return 0
    sys.stdout.write(f"nsbox version {info['Version']}\n"
                     f"Client:\n Version:\t{info['Version']}\n API version:\t{info['ApiVersion']}\n"
                     f" Python:\t{info['PythonVersion']}\n OS/Arch:\tlinux/{info['Arch']}\n")
    return 0
