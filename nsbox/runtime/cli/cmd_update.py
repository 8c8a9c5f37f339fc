"""usage: nsbox-runtime update [flags] CONTAINER_ID

Change the resource limits of a running, paused or created container.  The
new values also replace those in the container's stored config.

-r/--resources FILE gives linux.resources as JSON; the limit flags override
values from it.
"""

from __future__ import annotations

# Strings, so that an absent flag ("") differs from an explicit 0.
FLAGS = {
    "resources": "", "memory": "", "memory-swap": "", "memory-reservation": "",
    "kernel-memory": "", "kernel-memory-tcp": "", "cpu-shares": "", "cpu-period": "",
    "cpu-quota": "", "cpu-burst": "", "cpu-rt-period": "", "cpu-rt-runtime": "", "cpu-idle": "",
    "cpuset-cpus": "", "cpuset-mems": "", "pids-limit": "", "blkio-weight": "",
    "l3-cache-schema": "", "mem-bw-schema": "", "help": False,
}
ALIASES = {"r": "resources", "cpu-share": "cpu-shares"}
HELP = {
    "resources": ("FILE", 'linux.resources as JSON ("-" reads standard input)'),
    "memory": ("BYTES", "memory limit (suffixes k, m, g, t; -1 unlimited)"),
    "memory-swap": ("BYTES", "memory plus swap limit (-1 unlimited swap)"),
    "memory-reservation": ("BYTES", "soft limit (v1) / memory.low (v2)"),
    "kernel-memory": ("BYTES", "kernel memory limit (cgroup v1 only, obsolete)"),
    "kernel-memory-tcp": ("BYTES", "kernel TCP buffer limit (cgroup v1 only, obsolete)"),
    "cpu-shares": ("N", "relative CPU weight (2..262144)"),
    "cpu-period": ("USEC", "CFS period"),
    "cpu-quota": ("USEC", "CFS quota per period (-1 unlimited)"),
    "cpu-burst": ("USEC", "CFS burst"),
    "cpu-rt-period": ("USEC", "realtime period (cgroup v1)"),
    "cpu-rt-runtime": ("USEC", "realtime runtime per period (cgroup v1)"),
    "cpu-idle": ("0|1", "SCHED_IDLE for the cgroup"),
    "cpuset-cpus": ("LIST", "CPUs to run on, like 0-2,4"),
    "cpuset-mems": ("LIST", "memory nodes to use"),
    "pids-limit": ("N", "maximum number of processes (0 or -1: unlimited)"),
    "blkio-weight": ("N", "block I/O weight (10..1000)"),
    "l3-cache-schema": ("SCHEMA", "Intel RDT: refused (not supported)"),
    "mem-bw-schema": ("SCHEMA", "Intel RDT: refused (not supported)"),
    "help": "print usage",
}

_MEMORY = (("memory", "limit"), ("memory-swap", "swap"), ("memory-reservation", "reservation"),
           ("kernel-memory", "kernel"), ("kernel-memory-tcp", "kernelTCP"))
_CPU = (("cpu-shares", "shares"), ("cpu-period", "period"), ("cpu-quota", "quota"),
        ("cpu-burst", "burst"), ("cpu-rt-period", "realtimePeriod"),
        ("cpu-rt-runtime", "realtimeRuntime"), ("cpu-idle", "idle"))


def _int(text: str, flag: str) -> int:
    from nsbox.errors import ConfigError

    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"invalid value {text!r} for --{flag}: not an integer") from None


def resources_from_args(args) -> dict:
    """The linux.resources object that `update`'s flags (and -r FILE) describe."""
    import sys

    from nsbox import _json
    from nsbox.errors import ConfigError, UnsupportedError
    from nsbox.runtime.cgroups.convert import parse_memory_size

    resources: dict = {}
    if args["resources"]:
        source = args["resources"]
        try:
            if source == "-":
                text = sys.stdin.read()
            else:
                with open(source) as f:
                    text = f.read()
            resources = _json.loads(text)
        except OSError as exc:
            raise ConfigError(f"--resources {source}: {exc.strerror}") from None
        except ValueError as exc:
            raise ConfigError(f"--resources {source}: not valid JSON: {exc}") from None
        if not isinstance(resources, dict):
            raise ConfigError(f"--resources {source}: expected a JSON object (linux.resources)")
    for flag in ("l3-cache-schema", "mem-bw-schema"):
        if args[flag]:
            raise UnsupportedError(f"--{flag}: Intel RDT is not supported by nsbox-runtime")
    for flag, key in _MEMORY:
        if args[flag]:
            resources.setdefault("memory", {})[key] = parse_memory_size(args[flag], flag)
    for flag, key in _CPU:
        if args[flag]:
            resources.setdefault("cpu", {})[key] = _int(args[flag], flag)
    if args["cpuset-cpus"]:
        resources.setdefault("cpu", {})["cpus"] = args["cpuset-cpus"]
    if args["cpuset-mems"]:
        resources.setdefault("cpu", {})["mems"] = args["cpuset-mems"]
    if args["pids-limit"]:
        resources.setdefault("pids", {})["limit"] = _int(args["pids-limit"], "pids-limit")
    if args["blkio-weight"]:
        resources.setdefault("blockIO", {})["weight"] = _int(args["blkio-weight"], "blkio-weight")
    return resources


def run(args, ctx) -> int:
    from nsbox.runtime.cli import UsageError, need_id

    cid = need_id(args, "update")
    resources = resources_from_args(args)
    if not resources:
        raise UsageError("update: nothing to change: give -r FILE or a limit flag")
    ctx.runtime().update(cid, resources)
    return 0
