"""What `nsbox run` imports, and the stand-ins that keep slow modules off that path.

Checks that the hand-written stand-ins (reference grammar without re, JSON
through nsbox._json, temp files and tree removal without tempfile/shutil,
the database's context managers without contextlib) do what the standard
library versions did.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nsbox.engine.images import reference as refmod
from nsbox.engine.images.layout import canonical_json

ROOT = Path(__file__).resolve().parent.parent

# Never imported by the modules a `run` goes through (each costs milliseconds).
SLOW_MODULES = ("dataclasses", "inspect", "json", "logging", "secrets", "hmac", "hashlib",
                "typing", "contextlib", "tempfile", "shutil", "re", "subprocess", "random",
                "threading", "shlex", "traceback", "collections", "weakref")
RUN_PATH_MODULES = ("nsbox.engine.cli", "nsbox.engine.cli.cmd_run", "nsbox.api",
                    "nsbox.engine.cli._common", "nsbox.engine.cli._format",
                    "nsbox.engine.containers", "nsbox.engine.volumes", "nsbox.engine.images.store",
                    "nsbox.engine.bundle", "nsbox.engine.storage", "nsbox.engine.logs",
                    "nsbox.engine.monitor", "nsbox.engine.oci", "nsbox.engine.rootless",
                    "nsbox.engine.db", "nsbox.engine.events")


def test_run_path_modules_import_nothing_slow() -> None:
    code = ("import sys\n"
            "before = set(sys.modules)\n"
            f"for name in {RUN_PATH_MODULES!r}:\n"
            "    __import__(name)\n"
            "print(' '.join(sorted(set(sys.modules) - before)))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    assert not sorted(set(SLOW_MODULES) & set(out)), out


def _random_strings(alphabet: str, count: int, max_len: int) -> list[str]:
    rng = random.Random(1234)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, max_len)))
            for _ in range(count)]


@pytest.mark.parametrize(("check", "pattern", "alphabet", "max_len"), [
    (refmod._is_path_component, refmod._PATH_COMPONENT, "ab09._-A/", 8),
    (refmod._is_domain, refmod._DOMAIN, "aZ9.-:1_", 10),
    (refmod._is_tag, refmod._TAG, "aZ_9.-é٣:/ ", 6),
    (refmod._is_hex, refmod._HEX, "0af9gA", 5),
])
def test_reference_checks_match_their_regex(check, pattern, alphabet, max_len) -> None:  # noqa: ANN001
    compiled = re.compile(pattern)
    samples = _random_strings(alphabet, 20000, max_len)
    samples += ["a" * 127, "a" * 128, "a" * 129, "a__b", "a___b", "a--b", "a.-b", "localhost:5000",
                "a-.b", "-a", "a-", "a:", ":1", "a:1:2", "x" * 64]
    for text in samples:
        assert check(text) == bool(compiled.fullmatch(text)), text


def test_reference_digest_check() -> None:
    hex64 = "0123456789abcdef" * 4
    for text in ("sha256:" + hex64, "sha256:" + hex64[:-1], "sha256:" + hex64 + "0",
                 "sha256:" + hex64.upper(), "sha512:" + hex64, "sha256:"):
        assert refmod._is_digest(text) == bool(re.fullmatch(refmod._DIGEST, text)), text


def test_canonical_json_is_json_dumps() -> None:
    doc = {"z": [1, 2.5, -0.0, 1e100, None, True], "a": {"é": "ünï\u2028", "b": []},
           "created": "2024-01-01T00:00:00Z", "n": 10 ** 20, "t": (1, 2)}
    assert canonical_json(doc) == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def test_remove_tree_is_rmtree(tmp_path: Path) -> None:
    from nsbox.engine.storage import remove_tree

    outside = tmp_path / "outside"
    (outside / "keep").mkdir(parents=True)
    (outside / "keep" / "file").write_text("x")
    tree = tmp_path / "tree"
    (tree / "a" / "b" / "c").mkdir(parents=True)
    (tree / "a" / "b" / "c" / "f").write_text("f")
    (tree / "a" / "locked").mkdir(mode=0)
    os.mkfifo(tree / "fifo")
    (tree / "dirlink").symlink_to(outside)
    (tree / "a" / "filelink").symlink_to(outside / "keep" / "file")
    remove_tree(str(tree))
    assert not tree.exists()
    assert (outside / "keep" / "file").read_text() == "x"
    remove_tree(str(tree))  # missing: nothing happens
    link = tmp_path / "link"
    link.symlink_to(outside)
    remove_tree(str(link))  # a symlink is left alone, as rmtree(ignore_errors=True) does
    assert link.is_symlink() and (outside / "keep" / "file").exists()


def test_storage_temp_names(tmp_path: Path) -> None:
    from nsbox.engine.storage import _mkdtemp, _mkstemp

    fd, path = _mkstemp(str(tmp_path), ".rootfs-")
    os.close(fd)
    assert os.path.basename(path).startswith(".rootfs-") and os.path.dirname(path) == str(tmp_path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    directory = _mkdtemp(str(tmp_path), "gone-")
    assert os.path.isdir(directory) and os.stat(directory).st_mode & 0o777 == 0o700
    assert _mkstemp(str(tmp_path), "x")[1] != _mkstemp(str(tmp_path), "x")[1]


def test_database_transaction_commits_and_rolls_back(tmp_path: Path) -> None:
    from nsbox.engine.db import Database

    db = Database(str(tmp_path))
    with db.transaction() as conn:
        conn.execute("INSERT INTO volume_volumes (name, created, mountpoint) VALUES ('a', 0, '/')")
    with pytest.raises(RuntimeError), db.transaction() as conn:
        conn.execute("INSERT INTO volume_volumes (name, created, mountpoint) VALUES ('b', 0, '/')")
        raise RuntimeError("undo")
    with db.connection() as conn:
        names = [row[0] for row in conn.execute("SELECT name FROM volume_volumes")]
    assert names == ["a"]
