"""The runtime's security layers: capabilities, seccomp, LSMs and the exe guard."""

from __future__ import annotations

TYPE_CHECKING = False  # typing's own constant costs an import of typing
if TYPE_CHECKING:
    from nsbox.runtime.spec import Spec


def seccomp_agent_fd(spec: Spec) -> int:
    """The agent socket for SCMP_ACT_NOTIFY rules, or -1 when the profile has none.

    Here rather than in seccomp.py so that create and exec import that module
    only when the profile names a listener.
    """
    section = spec.linux.seccomp
    if not section or not section.get("listenerPath"):
        return -1
    from nsbox.runtime.security import seccomp

    if not seccomp.uses_notify(section):
        return -1
    return seccomp.connect_agent(section["listenerPath"])
