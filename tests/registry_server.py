"""Debian's docker-registry (the CNCF distribution registry) on 127.0.0.1 for a test module.

One way to start it for every registry fixture (test_engine_pull's plain one,
test_engine_registry_tls's TLS + htpasswd one, test_engine_registry_token's
token-auth one): they differ only in the configuration after the storage
root and in how they tell that it answers.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REGISTRY = "/usr/bin/docker-registry"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_registry(tmp: Path, config_rest: str, answers: Callable[[], bool],
                     timeout: float = 15) -> Iterator[None]:
    """docker-registry storing in TMP/data, logging to TMP/registry.log; CONFIG_REST
    is its config.yml after the storage root (more storage keys, auth, http).
    Returns once ANSWERS() is true; killed on exit."""
    (tmp / "config.yml").write_text(
        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {tmp / 'data'}\n" + config_rest)
    log = open(tmp / "registry.log", "wb")  # noqa: SIM115 - the registry writes it until killed
    proc = subprocess.Popen([REGISTRY, "serve", str(tmp / "config.yml")], stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while not answers():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError((tmp / "registry.log").read_text())
            time.sleep(0.05)
        yield
    finally:
        proc.kill()
        proc.wait()
        log.close()
