"""Docker on nsbox-runtime against Docker on runc, one dockerd, side by side.

A private dockerd (the set-up of tests/dockerd.py: own roots and socket, its
own mount and network namespace, cgroups below ours, busybox from `nsbox
save`) has nsbox-runtime registered as `nsbox`; runc is dockerd's built-in
`runc`.  One hyperfine run times, for each runtime:

  docker run --rm --runtime R busybox true     create, start, wait, delete
  docker exec C true                           exec into a running container

Writes bench/results/docker.md and docker.json.  Run as root:
`.venv/bin/python bench/docker_bench.py`.  Settings (environment):
BENCH_WARMUP (3), BENCH_RUNS (20), BENCH_OUT (bench/results/docker.md).
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from dockerd import IMAGE, docker_world  # noqa: E402  (tests/: the private dockerd)

log = logging.getLogger("docker_bench")
RUNTIMES = ("nsbox", "runc")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if os.geteuid() != 0:
        print("docker_bench: run as root", file=sys.stderr)
        return 1
    warmup = int(os.environ.get("BENCH_WARMUP", "3"))
    runs = int(os.environ.get("BENCH_RUNS", "20"))
    out = Path(os.environ.get("BENCH_OUT", REPO / "bench" / "results" / "docker.md"))
    runtime = Path(sys.prefix) / "bin" / "nsbox-runtime"
    with docker_world(runtime, log_calls=False) as docker:
        commands: dict[str, list[str]] = {}
        for name in RUNTIMES:
            commands[f"run --rm ({name})"] = docker.argv("run", "--rm", "--runtime", name,
                                                         IMAGE, "true")
        for name in RUNTIMES:
            container = f"bench-{name}"
            docker.run("run", "-d", "--name", container, "--runtime", name, IMAGE,
                       "sleep", "3600")
            commands[f"exec ({name})"] = docker.argv("exec", container, "true")
        for label, argv in commands.items():  # each must work before it is timed
            docker.run(*argv[1:])
            log.info("%s works", label)
        argv = ["hyperfine", "--shell=none", "--warmup", str(warmup), "--runs", str(runs),
                "--export-markdown", str(out), "--export-json", str(out.with_suffix(".json"))]
        for label, cmd in commands.items():
            argv += ["--command-name", label, shlex.join(cmd)]
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(argv, env=docker.env, check=True)
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
