"""The OCI `linux.seccomp` section: validate it, load it, hand NOTIFY listeners over.

The work is split along process boundaries:

* `validate` runs in the runtime at `create`, needs no library, and turns a bad
  section into a ConfigError before any process exists.
* `seccomp_compile.compiled_filter` / `compile_filter` turn the section into a
  classic BPF program (an array of 8-byte `struct sock_filter`) through
  libseccomp, which is loaded with ctypes only when a compile is really
  needed: a cache hit never maps libseccomp into the process.
* `load_filter` installs such a program in the calling process with the raw
  seccomp(2) system call; the container init calls it just before execve.
* For `SCMP_ACT_NOTIFY`, `load_filter` returns the listener fd, and
  `send_seccomp_state` hands it to the agent at `listenerPath` together with
  the container process state, as the spec describes.  Getting the fd from
  the container init to the runtime process (SCM_RIGHTS over the sync socket,
  or pidfd_getfd) is the caller's business.
"""

from __future__ import annotations

import errno
import os

from nsbox import _json
from nsbox._lazylog import get_logger
from nsbox.errors import ConfigError, KernelError

log = get_logger(__name__)


WHERE = "config.json: linux.seccomp."

# ---------------------------------------------------------------- constants
# Action values as libseccomp (and the kernel) define them.  The low 16 bits
# carry the errno for ERRNO and the message for TRACE.
ACTION_VALUES: dict[str, int] = {
    "SCMP_ACT_KILL": 0x00000000,  # same value as KILL_THREAD
    "SCMP_ACT_KILL_THREAD": 0x00000000,
    "SCMP_ACT_KILL_PROCESS": 0x80000000,
    "SCMP_ACT_TRAP": 0x00030000,
    "SCMP_ACT_ERRNO": 0x00050000,
    "SCMP_ACT_NOTIFY": 0x7FC00000,
    "SCMP_ACT_TRACE": 0x7FF00000,
    "SCMP_ACT_LOG": 0x7FFC0000,
    "SCMP_ACT_ALLOW": 0x7FFF0000,
}
# Only these carry a 16-bit return value, so only these accept errnoRet.
ACTIONS_WITH_ERRNO = ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE")

OPERATOR_VALUES: dict[str, int] = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}

# Every architecture name the spec's schema knows.  Whether the installed
# libseccomp knows it too is only found out at compile time.
ARCHITECTURES = (
    "SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_ARM",
    "SCMP_ARCH_AARCH64", "SCMP_ARCH_LOONGARCH64", "SCMP_ARCH_M68K", "SCMP_ARCH_MIPS",
    "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32", "SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64",
    "SCMP_ARCH_MIPSEL64N32", "SCMP_ARCH_PPC", "SCMP_ARCH_PPC64", "SCMP_ARCH_PPC64LE",
    "SCMP_ARCH_S390", "SCMP_ARCH_S390X", "SCMP_ARCH_SH", "SCMP_ARCH_SHEB",
    "SCMP_ARCH_PARISC", "SCMP_ARCH_PARISC64", "SCMP_ARCH_RISCV64",
)

SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1
SECCOMP_FILTER_FLAG_LOG = 2
SECCOMP_FILTER_FLAG_SPEC_ALLOW = 4
SECCOMP_FILTER_FLAG_NEW_LISTENER = 8
SECCOMP_FILTER_FLAG_TSYNC_ESRCH = 16
SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = 32

# The flags a config.json may name (the spec's list).  NEW_LISTENER and
# TSYNC_ESRCH are not config flags: load_filter adds them when NOTIFY needs them.
FLAG_VALUES: dict[str, int] = {
    "SECCOMP_FILTER_FLAG_TSYNC": SECCOMP_FILTER_FLAG_TSYNC,
    "SECCOMP_FILTER_FLAG_LOG": SECCOMP_FILTER_FLAG_LOG,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": SECCOMP_FILTER_FLAG_SPEC_ALLOW,
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV": SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
}

# With NOTIFY on these the init would block on its own agent before it could
# hand over the listener fd (sendmsg/write to the runtime, close of its copy).
NOTIFY_FORBIDDEN_SYSCALLS = ("write", "sendmsg", "close")

MAX_ARGS = 6
BPF_MAXINSNS = 4096
SOCK_FILTER_SIZE = 8
_UINT64_MAX = 2**64 - 1
_ERRNO_MAX = 0xFFFF


# ---------------------------------------------------------------- validation
def _is_uint(value: object, maximum: int) -> bool:
    # bool is an int subclass; true/false is never a number in config.json.
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= maximum


def _check_action(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, not {type(value).__name__}")
    if value not in ACTION_VALUES:
        raise ConfigError(f"{where} is not a seccomp action: {value!r}")
    return value


def _check_errno_ret(value: object, action: str, where: str) -> None:
    if value is None:
        return
    if not _is_uint(value, _ERRNO_MAX):
        raise ConfigError(f"{where} must be an integer between 0 and {_ERRNO_MAX}: {value!r}")
    if action not in ACTIONS_WITH_ERRNO:
        raise ConfigError(f"{where} is set but {action} does not return an errno")


def _check_list(section: dict, key: str, where: str) -> list:
    value = section.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{where}{key} must be an array, not {type(value).__name__}")
    return value


def validate(section: object) -> None:
    """Raise ConfigError with a one-line message naming the first bad field."""
    if not isinstance(section, dict):
        raise ConfigError(f"config.json: linux.seccomp must be an object, not {type(section).__name__}")
    if section.get("defaultAction") is None:
        raise ConfigError(f"{WHERE}defaultAction is required")
    default_action = _check_action(section["defaultAction"], f"{WHERE}defaultAction")
    if default_action == "SCMP_ACT_NOTIFY":
        # The init itself would be stopped on its first syscall after loading.
        raise ConfigError(f"{WHERE}defaultAction cannot be SCMP_ACT_NOTIFY")
    _check_errno_ret(section.get("defaultErrnoRet"), default_action, f"{WHERE}defaultErrnoRet")

    for i, arch in enumerate(_check_list(section, "architectures", WHERE)):
        if arch not in ARCHITECTURES:
            raise ConfigError(f"{WHERE}architectures[{i}] is not a seccomp architecture: {arch!r}")
    for i, flag in enumerate(_check_list(section, "flags", WHERE)):
        if flag not in FLAG_VALUES:
            raise ConfigError(f"{WHERE}flags[{i}] is not a seccomp filter flag: {flag!r}")

    for key in ("listenerPath", "listenerMetadata"):
        value = section.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{WHERE}{key} must be a string, not {type(value).__name__}")
    listener_path = section.get("listenerPath") or ""
    if section.get("listenerMetadata") and not listener_path:
        raise ConfigError(f"{WHERE}listenerMetadata is set but listenerPath is not")
    if listener_path and not listener_path.startswith("/"):
        raise ConfigError(f"{WHERE}listenerPath must be an absolute path: {listener_path!r}")

    uses_notify = False
    for i, rule in enumerate(_check_list(section, "syscalls", WHERE)):
        where = f"{WHERE}syscalls[{i}]."
        if not isinstance(rule, dict):
            raise ConfigError(f"{WHERE}syscalls[{i}] must be an object, not {type(rule).__name__}")
        names = rule.get("names")
        if not isinstance(names, list) or not names:
            raise ConfigError(f"{where}names must be a non-empty array of syscall names")
        for j, name in enumerate(names):
            if not isinstance(name, str) or not name:
                raise ConfigError(f"{where}names[{j}] must be a non-empty string: {name!r}")
        if rule.get("action") is None:
            raise ConfigError(f"{where}action is required")
        action = _check_action(rule["action"], f"{where}action")
        _check_errno_ret(rule.get("errnoRet"), action, f"{where}errnoRet")
        if action == "SCMP_ACT_NOTIFY":
            uses_notify = True
            for name in names:
                if name in NOTIFY_FORBIDDEN_SYSCALLS:
                    raise ConfigError(f"{where}action SCMP_ACT_NOTIFY cannot be used for {name!r}: "
                                      "the runtime needs it to hand over the listener")
        for j, arg in enumerate(_check_list(rule, "args", where)):
            _validate_arg(arg, f"{where}args[{j}]")

    if uses_notify and not listener_path:
        raise ConfigError(f"{WHERE}listenerPath is required when a rule uses SCMP_ACT_NOTIFY")


def _validate_arg(arg: object, where: str) -> None:
    if not isinstance(arg, dict):
        raise ConfigError(f"{where} must be an object, not {type(arg).__name__}")
    for key in ("index", "value", "op"):
        if arg.get(key) is None:
            raise ConfigError(f"{where}.{key} is required")
    if not _is_uint(arg["index"], MAX_ARGS - 1):
        raise ConfigError(f"{where}.index must be an integer between 0 and {MAX_ARGS - 1}: {arg['index']!r}")
    for key in ("value", "valueTwo"):
        value = arg.get(key)
        if value is not None and not _is_uint(value, _UINT64_MAX):
            raise ConfigError(f"{where}.{key} must be an unsigned 64-bit integer: {value!r}")
    op = arg["op"]
    if not isinstance(op, str) or op not in OPERATOR_VALUES:
        raise ConfigError(f"{where}.op is not a seccomp operator: {op!r}")


def uses_notify(section: dict) -> bool:
    """True when some rule of a (validated) section uses SCMP_ACT_NOTIFY."""
    return any(rule.get("action") == "SCMP_ACT_NOTIFY" for rule in section.get("syscalls") or [])


def action_value(action: str, errno_ret: int | None) -> int:
    """The 32-bit seccomp return value for an OCI action name."""
    value = ACTION_VALUES[action]
    if action in ACTIONS_WITH_ERRNO:
        value |= (errno.EPERM if errno_ret is None else errno_ret) & 0xFFFF
    return value


# ---------------------------------------------------------------- loading
def check_program(program: bytes) -> None:
    """Refuse a program that is not whole sock_filter records or is over the kernel's limit."""
    if not program or len(program) % SOCK_FILTER_SIZE:
        raise KernelError(f"seccomp: malformed BPF program of {len(program)} bytes")
    if len(program) // SOCK_FILTER_SIZE > BPF_MAXINSNS:
        raise ConfigError(f"{WHERE}syscalls: the filter needs {len(program) // SOCK_FILTER_SIZE} "
                          f"BPF instructions, the kernel allows {BPF_MAXINSNS}")


def program_uses_notify(program: bytes) -> bool:
    """True when some `ret #k` instruction of the program returns USER_NOTIF."""
    for offset in range(0, len(program), SOCK_FILTER_SIZE):
        code = int.from_bytes(program[offset:offset + 2], "little")
        k = int.from_bytes(program[offset + 4:offset + 8], "little")
        if code == 0x06 and k & 0xFFFF0000 == ACTION_VALUES["SCMP_ACT_NOTIFY"]:  # BPF_RET|BPF_K
            return True
    return False


def filter_flags(flags: list[str] | None) -> int:
    value = 0
    for i, flag in enumerate(flags or []):
        if flag not in FLAG_VALUES:
            raise ConfigError(f"{WHERE}flags[{i}] is not a seccomp filter flag: {flag!r}")
        value |= FLAG_VALUES[flag]
    return value


def load_filter(program: bytes, flags: list[str] | None = None, *,
                new_listener: bool | None = None) -> int | None:
    """Install a BPF program in the calling thread (or process with TSYNC).

    Without no_new_privs the kernel wants CAP_SYS_ADMIN.  new_listener=None
    asks for a notify fd exactly when the program has SCMP_ACT_NOTIFY rules;
    the fd is returned then (close-on-exec), otherwise None.
    """
    # No ctypes: the init runs this after pivot_root, where only what the
    # runtime imported before forking is there.
    from nsbox.runtime import syscalls

    check_program(program)
    flag_bits = filter_flags(flags)
    if new_listener is None:
        new_listener = program_uses_notify(program)
    if new_listener:
        flag_bits |= SECCOMP_FILTER_FLAG_NEW_LISTENER
        if flag_bits & SECCOMP_FILTER_FLAG_TSYNC:
            # The kernel refuses TSYNC with a listener unless failures are ESRCH.
            flag_bits |= SECCOMP_FILTER_FLAG_TSYNC_ESRCH

    # struct sock_fprog: unsigned short len (then 6 bytes of padding), a pointer to
    # the instructions; PROGRAM stays referenced (and bytes never move) until the call returns.
    program = bytes(program)  # the same object when it already is bytes
    fprog = syscalls.u64s(len(program) // SOCK_FILTER_SIZE, syscalls.address(program))
    try:
        ret = syscalls.syscall(syscalls.SYS_seccomp, SECCOMP_SET_MODE_FILTER, flag_bits, fprog)
    except OSError as exc:
        raise KernelError(_load_error_message(exc.errno, flag_bits), exc.errno or 0) from exc
    if not new_listener:
        if ret > 0:
            # TSYNC without a listener reports the thread it could not sync.
            raise KernelError(f"seccomp: cannot load the filter: thread {ret} could not be "
                              "synchronized (TSYNC)", errno.ESRCH)
        return None
    # With a listener the return value is the notify fd.
    os.set_inheritable(ret, False)
    return ret


def _load_error_message(err: int | None, flag_bits: int) -> str:
    reason = {
        errno.EACCES: "the caller has neither no_new_privs set nor CAP_SYS_ADMIN",
        errno.EINVAL: f"the kernel rejected the program or the flags (0x{flag_bits:x})",
        errno.ESRCH: "another thread of the process could not be synchronized (TSYNC)",
        errno.EBUSY: "a seccomp listener is already installed in this process",
        errno.ENOMEM: "out of memory, or too many filters stacked",
    }.get(err or 0, os.strerror(err or 0))
    return f"seccomp: cannot load the filter: {reason}"


# ---------------------------------------------------------------- notify
def connect_agent(listener_path: str) -> int:
    """Connect to the seccomp agent at listener_path; returns the socket fd.

    The runtime connects before it forks, while the host path is reachable;
    the container process sends the notify fd over it once the filter is
    loaded (after pivot_root, when the path no longer is).
    """
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.connect(listener_path)
    except OSError as exc:
        sock.close()
        raise KernelError(f"seccomp: cannot connect to the agent listener at {listener_path}: "
                          f"{exc.strerror or exc}", exc.errno or 0) from None
    return sock.detach()


def send_to_agent(sock_fd: int, seccomp_fd: int, *, pid: int, state: dict,
                  metadata: str | None = None, oci_version: str | None = None) -> None:
    """Send the container process state and the notify fd on a connected agent socket.

    One JSON document with the fd attached by SCM_RIGHTS to the first
    sendmsg, then the connection is closed (the OCI seccomp agent protocol).
    """
    import _socket
    import sys

    from nsbox.runtime.spec import SPEC_VERSION

    version = oci_version or state.get("ociVersion") or SPEC_VERSION
    document: dict[str, object] = {"ociVersion": version, "fds": ["seccompFd"], "pid": pid,
                                   "state": state}
    if metadata:
        document["metadata"] = metadata
    payload = _json.dumps(document).encode()
    sock = _socket.socket(fileno=sock_fd)
    try:
        rights = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, seccomp_fd.to_bytes(4, sys.byteorder))]
        sent = sock.sendmsg([payload], rights)
        if sent < len(payload):
            sock.sendall(payload[sent:])
    except OSError as exc:
        raise KernelError(f"seccomp: cannot send the notify fd to the agent: "
                          f"{exc.strerror or exc}", exc.errno or 0) from None
    finally:
        sock.close()


def send_seccomp_state(listener_path: str, seccomp_fd: int, *, pid: int, state: dict,
                       metadata: str | None = None, oci_version: str | None = None) -> None:
    """Connect to the agent at listener_path and send it the state and notify fd."""
    send_to_agent(connect_agent(listener_path), seccomp_fd, pid=pid, state=state,
                  metadata=metadata, oci_version=oci_version)


# ---------------------------------------------------------------- features
def _kernel_supports_flag(flag_bits: int) -> bool:
    """Probe a filter flag: with a NULL program the kernel answers EFAULT
    when it accepts the flags, EINVAL when it does not; nothing is installed."""
    from nsbox.runtime import syscalls

    try:
        syscalls.syscall(syscalls.SYS_seccomp, SECCOMP_SET_MODE_FILTER, flag_bits, None)
    except OSError as exc:
        return exc.errno == errno.EFAULT
    return False  # cannot happen: a NULL program never loads


def supported_flags() -> list[str]:
    supported = []
    for name, bits in FLAG_VALUES.items():
        if bits == SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV:
            bits |= SECCOMP_FILTER_FLAG_NEW_LISTENER  # only valid together
        if _kernel_supports_flag(bits):
            supported.append(name)
    return supported
