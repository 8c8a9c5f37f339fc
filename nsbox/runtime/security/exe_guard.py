"""Run the runtime from a sealed copy of its program when the container could reach it.

The setup processes of `create` and `exec` are the runtime's Python
interpreter until they execve() the container's program.  They are
non-dumpable, which keeps unprivileged container processes away from
/proc/PID/exe; but a container granted CAP_SYS_PTRACE may open that link
anyway (CVE-2019-5736).  For such containers the CLI re-executes itself
from a sealed memfd copy of the interpreter first, so /proc/PID/exe leads
to an anonymous, unwritable file instead of the host's binary.
"""

from __future__ import annotations

import os
import sys

from nsbox.errors import KernelError

PTRACE_CAP = "CAP_SYS_PTRACE"


def running_sealed() -> bool:
    try:
        return os.readlink("/proc/self/exe").startswith("/memfd:")
    except OSError:
        return False


def needs_sealed_exe(process) -> bool:
    """True when the process would be granted CAP_SYS_PTRACE in any set."""
    caps = process.capabilities if process is not None else None
    if caps is None:
        return False
    return any(PTRACE_CAP in names for names in
               (caps.bounding, caps.effective, caps.permitted, caps.inheritable, caps.ambient))


def reexec_sealed(argv: list[str]) -> None:
    """execve() argv with a sealed memfd copy of our interpreter; never returns."""
    import fcntl

    try:
        fd = os.memfd_create("nsbox-runtime", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        with open("/proc/self/exe", "rb") as f:
            os.write(fd, f.read())
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK
                    | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(fd, argv, os.environ)
    except OSError as exc:
        raise KernelError(f"re-executing from a sealed copy of the runtime: {exc.strerror}",
                          exc.errno or 0) from None


def cli_reexec() -> None:
    """The CLI's hook: restart this very command from a sealed interpreter."""
    launcher = getattr(sys, "_nsbox_launcher", None)
    if launcher:
        # The compiled launcher (bin/launcher.c) is /proc/self/exe: its copy
        # finds the installation from argv[0], since its own link names the memfd.
        reexec_sealed([launcher, *sys.argv[1:]])
    else:
        reexec_sealed([sys.executable, *sys.argv])
