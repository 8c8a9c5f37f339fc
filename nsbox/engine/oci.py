"""How the engine drives an OCI runtime: its command line, or nsbox's own runtime in-process.

Any runtime (runc, crun, nsbox-runtime) is driven through its runc-style
command line, as Podman drives crun.  When the runtime is this very
installation's `nsbox-runtime`, the same operations are calls into
`nsbox.runtime.container.Runtime` instead: the state directory and its
format are the same either way, so a container created in-process can be
inspected, killed or deleted with the `nsbox-runtime` command and the other
way round.  In-process calls save starting a Python interpreter per step
(three or four per `run`).  NSBOX_RUNTIME_IN_PROCESS=0 turns them off.

Errors come back as NsboxError with the runtime's one-line message.
"""

from __future__ import annotations

import os
import sys

from nsbox import _json
from nsbox.errors import NsboxError

RUNTIME_NAME = "nsbox-runtime"


def state_root(run_root: str, binary: str) -> str:
    """Each runtime binary keeps its state in its own directory under the engine's run root."""
    return os.path.join(run_root, os.path.basename(binary))


def own_runtime_binary() -> str | None:
    """This installation's nsbox-runtime launcher (next to the interpreter), if any."""
    candidate = os.path.join(os.path.dirname(sys.executable), RUNTIME_NAME)
    return candidate if os.access(candidate, os.X_OK) else None


# The ociVersion written for a runtime that cannot say what it accepts (no `features`
# command, as crun 1.8): the newest 1.0.x, which runc 1.1 and crun 1.8 both take.
SAFE_OCI_VERSION = "1.0.2"
OCI_VERSION_CACHE = "oci-versions.json"


def _version_key(text: str) -> tuple[int, ...]:
    numbers = []
    for part in text.split("-", 1)[0].split("."):
        numbers.append(int(part) if part.isdigit() else 0)
    return tuple(numbers)


def ask_oci_version(binary: str, ours: str) -> str:
    """The ociVersion to write for BINARY: its `features` ociVersionMax, capped at OURS
    (the version our config follows); SAFE_OCI_VERSION when it cannot tell."""
    import subprocess

    try:
        result = subprocess.run([binary, "features"], capture_output=True, timeout=10, check=False)
        newest = _json.loads(result.stdout).get("ociVersionMax") if result.returncode == 0 else None
    except (OSError, ValueError, AttributeError, subprocess.SubprocessError):
        newest = None
    if not isinstance(newest, str) or not newest.startswith("1."):
        return SAFE_OCI_VERSION
    return newest if _version_key(newest) < _version_key(ours) else ours


def spec_version_for(binary: str, cache_dir: str) -> str | None:
    """The ociVersion config.json must carry for the runtime BINARY; None for nsbox-runtime
    (it takes the version default_spec writes).  Asked once per binary (path, mtime and
    size) and kept in CACHE_DIR/oci-versions.json, so a run costs a stat and a small read."""
    if os.path.basename(binary) == RUNTIME_NAME:
        return None
    own = own_runtime_binary()
    real = os.path.realpath(binary)
    if own is not None and real == os.path.realpath(own):
        return None
    try:
        st = os.stat(real)
    except OSError:
        return SAFE_OCI_VERSION
    key = f"{real}:{st.st_mtime_ns}:{st.st_size}"
    path = os.path.join(cache_dir, OCI_VERSION_CACHE)
    try:
        with open(path) as f:
            cache = _json.loads(f.read())
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    version = cache.get(key)
    if isinstance(version, str):
        return version
    from nsbox.runtime.spec import SPEC_VERSION
    version = ask_oci_version(binary, SPEC_VERSION)
    cache = {k: v for k, v in cache.items() if not k.startswith(real + ":")}
    cache[key] = version
    try:
        os.makedirs(cache_dir, mode=0o700, exist_ok=True)
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(_json.dumps(cache))
        os.replace(tmp, path)
    except OSError:
        pass  # no cache: asked again next time
    return version


def runtime_for(run_root: str, binary: str) -> OciRuntime:
    """The driver for BINARY: in-process for our own nsbox-runtime, else its command line."""
    from nsbox.engine import rootless

    cgroups = rootless.cgroups_usable()
    if os.environ.get("NSBOX_RUNTIME_IN_PROCESS", "1") != "0":
        own = own_runtime_binary()
        if own is not None and os.path.realpath(binary) == os.path.realpath(own):
            return InProcessRuntime(run_root, binary, cgroups)
    return OciRuntime(run_root, binary, cgroups)


class OciRuntime:
    """An OCI runtime binary with a runc-compatible command line and its state root."""

    in_process = False

    def __init__(self, run_root: str, binary: str, cgroups: bool = True) -> None:
        self.binary = binary
        self.root = state_root(run_root, binary)
        self.name = os.path.basename(binary)
        # False in rootless mode (no cgroups there): nsbox-runtime is
        # told so; runc and crun notice a rootless caller themselves.
        self.cgroups = cgroups
        self.global_args = [] if cgroups or self.name != RUNTIME_NAME else \
            ["--cgroup-manager", "disabled"]  # before the command, in every call
        if cgroups and os.environ.get("NSBOX_CGROUP_MANAGER") == "systemd":
            self.global_args.append("--systemd-cgroup")  # runc and crun need it for slice:prefix:name

    # ---------------------------------------------------------- the command
    def command(self, *args: str, input: bytes | None = None,  # noqa: A002
                check: bool = True, capture: bool = True):  # noqa: ANN201 - CompletedProcess
        import subprocess

        result = subprocess.run([self.binary, "--root", self.root, *self.global_args, *args], input=input,
                                stdout=subprocess.PIPE if capture else None,
                                stderr=subprocess.PIPE if capture else None, check=False)
        if check and result.returncode != 0:
            lines = (result.stderr or b"").decode(errors="replace").strip().splitlines()
            raise NsboxError(f"{self.name} {args[0]}: "
                             f"{lines[-1] if lines else f'exit status {result.returncode}'}")
        return result

    # ---------------------------------------------------------- lifecycle
    def create(self, cid: str, bundle: str, pid_file: str, console_socket: str,
               stdio: tuple[int, int, int], log_path: str) -> None:
        """Create CID from BUNDLE with STDIO as the container's fds 0-2; NsboxError if it fails."""
        import subprocess

        with open(log_path, "w"):
            pass
        created = subprocess.run(
            [self.binary, "--root", self.root, *self.global_args, "--log", log_path, "create", "--bundle", bundle,
             "--pid-file", pid_file, *(["--console-socket", console_socket] if console_socket else []),
             cid],
            stdin=stdio[0], stdout=stdio[1], stderr=stdio[2], check=False)
        if created.returncode != 0:
            raise NsboxError(runtime_log_error(log_path)
                             or f"runtime create failed (status {created.returncode})")

    def start(self, cid: str) -> None:
        self.command("start", cid)

    def delete(self, cid: str, force: bool = True) -> None:
        """Delete CID; a container the runtime does not know is not an error."""
        self.command("delete", *(["--force"] if force else []), cid, check=False)

    def state(self, cid: str) -> dict | None:
        """The runtime's state of CID, or None when it has none."""
        result = self.command("state", cid, check=False)
        if result.returncode != 0:
            return None
        try:
            return _json.loads(result.stdout)
        except ValueError:
            return None

    def kill(self, cid: str, signal: str = "TERM") -> None:
        self.command("kill", cid, signal)

    def pause(self, cid: str) -> None:
        self.command("pause", cid)

    def resume(self, cid: str) -> None:
        self.command("resume", cid)

    def update(self, cid: str, resources: dict) -> None:
        self.command("update", "--resources", "-", cid, input=_json.dumps(resources).encode())

    def pids(self, cid: str) -> list[int]:
        return [int(p) for p in _json.loads(self.command("ps", "--format", "json", cid).stdout)]

    def oom_kills(self, cid: str) -> int:
        """OOM kills in CID's memory cgroup (0 if unknown): `events --stats` of a stopped
        container is refused by most runtimes, so this is best effort for them."""
        result = self.command("events", "--stats", cid, check=False)
        try:
            memory = _json.loads(result.stdout)["data"]["memory"]
        except (ValueError, KeyError, TypeError):
            return 0
        return int(memory.get("oom_kill") or memory.get("oomKill") or 0)


class _NeedsSealedExe(Exception):
    """The container may reach our interpreter: only the CLI can re-execute from a sealed copy."""


class InProcessRuntime(OciRuntime):
    """nsbox's own runtime, called as a library."""

    in_process = True

    def _runtime(self):  # noqa: ANN202 - nsbox.runtime.container.Runtime
        from nsbox.runtime.container import Runtime

        return Runtime(self.root, use_cgroups=self.cgroups)

    def create(self, cid: str, bundle: str, pid_file: str, console_socket: str,
               stdio: tuple[int, int, int], log_path: str) -> None:
        """As OciRuntime.create; the calling process's fds 0-2 become STDIO for good.

        Callers are short-lived helper processes (see monitor.py).
        """
        from nsbox.runtime.container import CreateOptions

        for target, fd in enumerate(stdio):
            if fd != target:
                os.dup2(fd, target)
        runtime = self._runtime()

        def refuse() -> None:
            raise _NeedsSealedExe

        runtime.reexec_sealed = refuse
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        try:
            runtime.create(cid, CreateOptions(bundle=bundle, pid_file=pid_file,
                                              console_socket=console_socket or None))
        except _NeedsSealedExe:
            # A container granted CAP_SYS_PTRACE: the command line re-executes
            # itself from a sealed copy of the interpreter before creating it.
            super().create(cid, bundle, pid_file, console_socket, (0, 1, 2), log_path)

    def start(self, cid: str) -> None:
        self._runtime().start(cid)

    def delete(self, cid: str, force: bool = True) -> None:
        runtime = self._runtime()
        if not os.path.isdir(runtime.store.dir(cid)):
            return
        try:
            runtime.delete(cid, force=force)
        except NsboxError:
            if os.path.isdir(runtime.store.dir(cid)):
                raise

    def state(self, cid: str) -> dict | None:
        try:
            return self._runtime().state(cid)
        except NsboxError:
            return None

    def kill(self, cid: str, signal: str = "TERM") -> None:
        from nsbox.runtime.cli.cmd_kill import parse_signal

        self._runtime().kill(cid, parse_signal(signal))

    def pause(self, cid: str) -> None:
        self._runtime().pause(cid)

    def resume(self, cid: str) -> None:
        self._runtime().resume(cid)

    def update(self, cid: str, resources: dict) -> None:
        self._runtime().update(cid, resources)

    def pids(self, cid: str) -> list[int]:
        return self._runtime().pids(cid)

    def oom_kills(self, cid: str) -> int:
        try:
            return self._runtime().oom_kills(cid)
        except NsboxError:
            return 0


def runtime_log_error(path: str) -> str:
    """The message of the last error in a runtime --log file (JSON, logfmt or text lines)."""
    import re

    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return ""
    for line in reversed(lines):
        try:
            entry = _json.loads(line)
        except ValueError:
            entry = None
        if isinstance(entry, dict):
            if entry.get("level", "error") in ("error", "fatal"):
                return str(entry.get("msg") or line)
            continue
        logfmt = re.search(r'\bmsg="((?:[^"\\]|\\.)*)"', line)
        if logfmt:
            if "level=error" in line or "level=fatal" in line:
                return logfmt.group(1).replace('\\"', '"')
            continue
        return re.sub(r"^\S+\s+(ERROR|FATAL)\s+[\w.-]+:\s*", "", line)
    return ""
