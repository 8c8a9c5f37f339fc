"""Every example of docs/user-guide.md, docs/api.md and docs/runtime-cli.md runs as written.

The fenced blocks are run in document order, one test per block, in one
bash session (so `cd`, `export PATH=...` and variables such as `$PID` carry
from block to block, as they would for a reader typing them):

* ```console blocks: each line starting with `# ` is a command (continued on
  the next lines until bash can parse it); the lines after it are its
  expected output.  Every command must exit 0; expected output without
  digits (no pids, ids, times) must be printed (stdout and stderr; other
  lines such as progress may come between), blanks collapsed.
* ```sh blocks: run as one script, which must exit 0.
* ```python blocks: a block whose first line is `# /some/file.py` is written
  to that file (a later console block runs it); any other block is run by
  the venv's interpreter and must exit 0.

A block the test cannot run (it needs the internet, a terminal, or runs
other test suites) has `<!-- docs-test: skip REASON -->` on a line before
it, and is reported as skipped with that reason.

Each document's blocks start in the repository root (a `cd` of an earlier
document does not carry over). The session's PATH starts with the venv's
bin, so `nsbox` and `nsbox-runtime` are the venv's; the engine works in a
private root ($NSBOX_ROOT / $NSBOX_RUNROOT).  Nothing is left behind: no
containers, mounts or cgroups (checked at the end), and the files the
documents make under /tmp are removed by their own clean-up blocks (and by
the fixture).
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
DOCS = ("docs/user-guide.md", "docs/api.md", "docs/runtime-cli.md")
# The paths the documents work in (their clean-up blocks remove them).
GUIDE_PATHS = ("/tmp/first", "/tmp/hello", "/tmp/nsbox-guide", "/tmp/nsbox_api_demo.py",
               "/tmp/nsbox-app",
               "/tmp/docroot", "/tmp/docbundle", "/tmp/docbundle2", "/tmp/doctty",
               "/tmp/web.pid", "/tmp/tty.sock", "/tmp/tty.out", "/tmp/log.json")
# Their nsbox-runtime --root directories.
RUNTIME_ROOTS = ("/tmp/nsbox-guide", "/tmp/docroot")
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*(.*?)\s*-->")
MARK = "__DOCS_TEST_RC__"
COMMAND_TIMEOUT = 240

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the guide's examples run as root")


class Block:
    def __init__(self, doc: str, line: int, lang: str, text: str, skip: str | None) -> None:
        self.doc, self.line, self.lang, self.text, self.skip = doc, line, lang, text, skip

    @property
    def id(self) -> str:
        return f"{Path(self.doc).stem}:{self.line}:{self.lang}"


def blocks_of(doc: str) -> list[Block]:
    """The fenced sh/console/python blocks of DOC, with their skip markers."""
    lines = (ROOT / doc).read_text().splitlines()
    out, i, skip = [], 0, None
    while i < len(lines):
        line = lines[i]
        marker = SKIP.search(line)
        if marker:
            skip = marker.group(1) or "marked docs-test: skip"
        elif line.startswith("```"):
            lang, start, body = line[3:].strip(), i + 1, []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            if lang in ("sh", "console", "python"):
                out.append(Block(doc, start, lang, "\n".join(body) + "\n", skip))
            skip = None
        elif line.strip():
            skip = None  # a marker applies to the block right after it
        i += 1
    return out


def _complete(command: str) -> bool:
    return subprocess.run(["bash", "-n", "-c", command], capture_output=True).returncode == 0


def console_commands(text: str) -> list[tuple[str, str]]:
    """(command, expected output) pairs of a console block."""
    pairs: list[tuple[str, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("# "):
            i += 1
            continue
        command = lines[i][2:]
        i += 1
        while not _complete(command) and i < len(lines):
            command += "\n" + lines[i]
            i += 1
        expected = []
        while i < len(lines) and not lines[i].startswith("# "):
            expected.append(lines[i])
            i += 1
        pairs.append((command, "\n".join(expected)))
    return pairs


def _normal(text: str) -> list[str]:
    return [" ".join(line.split()) for line in text.strip().splitlines()]


def _in_order(expected: list[str], got: list[str]) -> bool:
    """EXPECTED lines appear in GOT in that order (progress lines on stderr may come between)."""
    it = iter(got)
    return all(any(line == seen for seen in it) for line in expected)


class Shell:
    """One bash that reads the commands from a pipe; each command's stdin is /dev/null."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(["bash", "--norc", "--noprofile"], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.buffer = b""

    def run(self, command: str, timeout: float = COMMAND_TIMEOUT) -> tuple[int, str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{{ {command}\n}} </dev/null 2>&1\n"
                              f"printf '\\n{MARK} %s\\n' $?\n".encode())
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while f"\n{MARK} ".encode() not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(f"timed out after {timeout}s: {command}\n"
                                     f"{self.buffer.decode(errors='replace')}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"the shell died running: {command}\n"
                                     f"{self.buffer.decode(errors='replace')}")
            self.buffer += chunk
        head, _, rest = self.buffer.partition(f"\n{MARK} ".encode())
        code, _, self.buffer = rest.partition(b"\n")
        return int(code), head.decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _runtime_containers() -> list[str]:
    return sorted(f"{root}/{cid}" for root in RUNTIME_ROOTS if os.path.isdir(root)
                  for cid in os.listdir(root))


def _remove_guide_leftovers() -> None:
    """Containers under the documents' runtime roots, then their files."""
    runtime = str(VENV_BIN / "nsbox-runtime")
    for container in _runtime_containers():
        root, cid = os.path.split(container)
        subprocess.run([runtime, "--root", root, "delete", "--force", cid],
                       capture_output=True, timeout=60)
    for path in GUIDE_PATHS:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.unlink(path)


def _mounts_under(prefixes: tuple[str, ...]) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith(prefixes)]


def _cgroup_dirs(names: set[str]) -> list[str]:
    """Cgroup directories (any depth, any hierarchy) whose name contains one of NAMES."""
    found = []
    for top, dirs, _ in os.walk("/sys/fs/cgroup"):
        found += [os.path.join(top, d) for d in dirs if any(n in d for n in names)]
    return found


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory):
    for path in GUIDE_PATHS:
        if os.path.lexists(path):
            pytest.skip(f"{path} exists: the guide's examples would use it")
    private = tmp_path_factory.mktemp("docs-engine")
    env = {**os.environ, "NSBOX_ROOT": str(private / "lib"), "NSBOX_RUNROOT": str(private / "run"),
           "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    env.pop("NSBOX_RUNTIME", None)
    shell = Shell(env)
    state = {"shell": shell, "env": env, "private": private, "ids": set()}
    yield state
    shell.close()
    nsbox = [str(VENV_BIN / "nsbox")]
    left = subprocess.run([*nsbox, "ps", "-aq", "--no-trunc"], env=env, capture_output=True,
                          text=True, timeout=60).stdout.split()
    for cid in left:
        subprocess.run([*nsbox, "rm", "-f", "-v", cid], env=env, capture_output=True, timeout=120)
    guide_left = _runtime_containers()
    files_left = [p for p in GUIDE_PATHS if os.path.lexists(p)]
    _remove_guide_leftovers()
    mounts = _mounts_under((str(private), "/tmp/first", "/tmp/hello"))
    for point in reversed(mounts):
        subprocess.run(["umount", "-l", point], capture_output=True)
    cgroups = _cgroup_dirs({"nsbox-first", "nsbox-hello", "nsbox-demo", "nsbox-web",
                            "nsbox-tty1", *state["ids"]})
    shutil.rmtree(private, ignore_errors=True)
    assert not left, f"engine containers left behind: {left}"
    assert not guide_left, f"runtime containers left behind: {guide_left}"
    assert not files_left, f"files left behind (the guide's clean-up did not run?): {files_left}"
    assert not mounts, f"mounts left behind: {mounts}"
    assert not cgroups, f"cgroups left behind: {cgroups}"


ALL_BLOCKS = [block for doc in DOCS for block in blocks_of(doc)]


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[b.id for b in ALL_BLOCKS])
def test_doc_example(block: Block, session) -> None:  # noqa: ANN001
    if block.skip:
        pytest.skip(f"{block.doc}:{block.line}: {block.skip}")
    shell: Shell = session["shell"]
    where = f"{block.doc}:{block.line}"
    if session.get("doc") != block.doc:
        # Each document starts where its reader would: the repository root.
        session["doc"] = block.doc
        assert shell.run(f"cd {ROOT}")[0] == 0
    if block.lang == "python":
        first = block.text.splitlines()[0]
        if first.startswith("# /") and first.endswith(".py"):
            Path(first[2:].strip()).write_text(block.text)
            return
        script = session["private"] / f"block-{block.line}.py"
        script.write_text(block.text)
        code, out = shell.run(f"{VENV_BIN / 'python'} {script}")
        script.unlink()
        assert code == 0, f"{where}: python block exited {code}\n{out}"
        return
    if block.lang == "sh":
        code, out = shell.run(block.text)
        session["ids"].update(re.findall(r"\b[0-9a-f]{64}\b", out))
        assert code == 0, f"{where}: exited {code}\n{out}"
        return
    for command, expected in console_commands(block.text):
        code, out = shell.run(command)
        session["ids"].update(re.findall(r"\b[0-9a-f]{64}\b", out))
        assert code == 0, f"{where}: `{command}` exited {code}\n{out}"
        if expected.strip() and not re.search(r"\d", expected):
            assert _in_order(_normal(expected), _normal(out)), f"{where}: `{command}` printed\n{out}"


def test_blocks_are_found() -> None:
    """The extraction sees the guide's examples (a test that runs nothing proves nothing)."""
    guide = [b for b in ALL_BLOCKS if b.doc == "docs/user-guide.md"]
    assert len([b for b in guide if b.lang == "console" and not b.skip]) >= 10
    assert any(b.doc == "docs/api.md" and b.lang == "python" for b in ALL_BLOCKS)
    runtime = [c for b in ALL_BLOCKS if b.doc == "docs/runtime-cli.md" and b.lang == "console"
               and not b.skip for c, _ in console_commands(b.text)]
    assert "nsbox-runtime --root /tmp/docroot start web" in runtime
    commands = [c for b in guide if b.lang == "console" for c, _ in console_commands(b.text)]
    assert "nsbox run --rm busybox echo hello from nsbox" in commands
