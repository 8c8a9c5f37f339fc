"""Reaching into a running container: exec, attach, and cp between it and the host (lifecycle/copy.py)."""

from __future__ import annotations

import os
import stat
import time

from nsbox import _json
from nsbox.engine.lifecycle.host import runtime_root, stdin_fifo
from nsbox.engine.lifecycle.query import logs
from nsbox.engine.lifecycle.record import Container
from nsbox.engine.model import PAUSED, RUNNING
from nsbox.errors import CommandError, ConfigError, InvalidState, UnsupportedError

TYPE_CHECKING = False  # typing's own constant costs an import of typing
if TYPE_CHECKING:
    from collections.abc import Iterator

    from nsbox.engine.lifecycle.state import EngineBase


def exec_in(engine: EngineBase, ref: str, cmd: list[str], tty: bool = False,
            interactive: bool = False,
            env: dict[str, str] | None = None, user: str | None = None,
            workdir: str | None = None, detach: bool = False,
            stdin=None, stdout=None, stderr=None) -> int:  # noqa: ANN001
    """Run CMD in the running container; its exit code (0 with DETACH).

    STDIN/STDOUT/STDERR (files or fds) default to this process's; not
    interactive means stdin is /dev/null.
    """
    import subprocess

    from nsbox.engine.bundle import resolve_user
    c = engine.get(ref)
    if c.state == PAUSED:
        raise InvalidState(f"container {c.name} is paused, unpause the container before exec")
    if c.state != RUNNING:
        raise InvalidState(f"container {c.name} is not running")
    args = ["exec"]
    if tty:
        args.append("--tty")
    if detach:
        args.append("--detach")
    if workdir:
        args += ["--cwd", workdir]
    for key, value in (env or {}).items():
        args += ["--env", f"{key}={value}"]
    if user:
        info = engine.storage.rootfs(c.id)
        uid, gid, _ = resolve_user(user, [info.upper] + info.lower_dirs)
        args += ["--user", f"{uid}:{gid}"]
    _check_command(engine, c, cmd, env or {}, workdir)
    args += [c.id, *cmd]
    if stdin is None and not interactive:
        stdin = subprocess.DEVNULL
    from nsbox.engine.events import emit_container
    exec_id = os.urandom(32).hex()
    shown = " ".join(cmd)
    emit_container(engine.root, c, f"exec_create: {shown}", execID=exec_id)
    emit_container(engine.root, c, f"exec_start: {shown}", execID=exec_id)
    result = subprocess.run([c.runtime, "--root", runtime_root(engine.run_root, c.runtime),
                             *engine.oci(c.runtime).global_args, *args],
                            stdin=stdin, stdout=stdout, stderr=stderr, check=False)
    if not detach:
        emit_container(engine.root, c, "exec_die", execID=exec_id, exitCode=result.returncode)
    return result.returncode


def _check_command(engine: EngineBase, c: Container, cmd: list[str], env: dict[str, str],
                   workdir: str | None) -> None:
    """Docker's 127 (not found) and 126 (not executable) for `exec`, decided up front.

    The program is looked up in the container's root filesystem, mounts
    included, with openat2(RESOLVE_IN_ROOT), so its symlinks resolve as
    inside the container.
    """
    from nsbox.runtime import syscalls as sc
    if not cmd:
        raise ConfigError("exec: no command given")
    try:
        with open(os.path.join(c.bundle, "config.json")) as f:
            process = _json.loads(f.read()).get("process") or {}
    except (OSError, ValueError):
        return  # let the runtime report it
    path_env = env.get("PATH") or next(
        (e[5:] for e in process.get("env", []) if e.startswith("PATH=")), "/usr/bin:/bin")
    name = cmd[0]
    cwd = workdir or process.get("cwd") or "/"
    candidates = ([name if name.startswith("/") else os.path.join(cwd, name)] if "/" in name
                  else [os.path.join(d or ".", name) for d in path_env.split(":")])
    # The running container's own view (/proc/PID/root) includes its
    # volumes and bind mounts; the overlay alone would not.
    root = f"/proc/{c.pid}/root" if c.pid else engine.storage.rootfs(c.id).merged
    try:
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        for candidate in candidates:
            try:
                fd = sc.openat2(root_fd, candidate.lstrip("/") or ".", os.O_PATH | os.O_CLOEXEC,
                                resolve=sc.RESOLVE_IN_ROOT)
            except OSError:
                continue
            try:
                st = os.fstat(fd)
            finally:
                os.close(fd)
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
                return
            if "/" in name:
                raise CommandError(f"exec {name!r}: permission denied", 126)
        raise CommandError(f"exec {name!r}: executable file not found in $PATH"
                           if "/" not in name else f"exec {name!r}: no such file or directory", 127)
    finally:
        os.close(root_fd)


def attach(engine: EngineBase, ref: str, stdin=None) -> Iterator[tuple[str, str, bytes]]:  # noqa: ANN001
    """Follow a running container from now on: its new output, as logs() gives it,
    until it stops (then wait() has its exit code).

    STDIN, a binary file or an fd, is copied into the container's stdin by
    a daemon thread until its end; only a container run detached with -i
    has a stdin to write to (InvalidState otherwise).  A container with a
    terminal cannot be attached to (UnsupportedError): its monitor owns
    the terminal, and `exec -it` is the way in.
    """
    c = engine.get(ref)
    if c.state != RUNNING:
        raise InvalidState(f"you cannot attach to a stopped container {c.name}, start it first")
    if c.spec.tty:
        raise UnsupportedError(f"container {c.name} has a terminal: attaching to it is not "
                               "supported; use `nsbox exec -it` or `nsbox logs -f`")
    since = time.time()
    from nsbox.engine.events import emit_container
    emit_container(engine.root, c, "attach")
    if stdin is not None:
        if not c.spec.interactive:
            raise InvalidState(f"container {c.name} has no open stdin: run it with -i to attach one")
        try:
            fd = os.open(stdin_fifo(engine.run_root, c.id), os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise InvalidState(f"container {c.name}: its stdin is gone ({exc.strerror})") from None
        os.set_blocking(fd, True)
        import threading
        threading.Thread(target=_copy_into, args=(stdin, fd), daemon=True,
                         name=f"attach-stdin-{c.id[:12]}").start()
    return logs(engine, c.id, follow=True, since=since)


def _copy_into(source, fd: int) -> None:  # noqa: ANN001 - a binary file or an fd
    """Copy SOURCE into FD until either end is done, then close FD."""
    src = source if isinstance(source, int) else source.fileno()
    try:
        while True:
            data = os.read(src, 65536)
            if not data:
                break
            while data:
                data = data[os.write(fd, data):]
    except OSError:
        pass  # the container is gone (EPIPE) or our stdin was closed
    finally:
        os.close(fd)


def cp(engine: EngineBase, src: str, dst: str, **options) -> None:  # noqa: ANN003
    """Copy between the host and a container's filesystem; "CTR:/path" on either side.

    The container's mounts are seen as Docker does: see lifecycle/copy.py.
    """
    from nsbox.engine.lifecycle import copy
    copy.cp(engine, src, dst, **options)
