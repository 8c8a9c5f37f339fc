"""The OCI `linux.seccomp` section: validate it, compile it, cache it, load it.

The work is split along process boundaries:

* `validate` runs in the runtime at `create`, needs no library, and turns a bad
  section into a ConfigError before any process exists.
* `compiled_filter` / `compile_filter` turn the section into a classic BPF
  program (an array of 8-byte `struct sock_filter`) through libseccomp, which
  is loaded with ctypes only when a compile is really needed: a cache hit
  never maps libseccomp into the process.
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
from nsbox._record import record
from nsbox.errors import ConfigError, KernelError, UnsupportedError

log = get_logger(__name__)

try:  # the builtin module: hashlib would load OpenSSL, slow on the create path
    from _sha256 import sha256 as _sha256
except ImportError:  # pragma: no cover - Python builds without it
    from hashlib import sha256 as _sha256

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

# Bumped whenever the way a section is turned into rules changes, so that
# programs cached by an older nsbox are not reused.
_COMPILER_REVISION = 1
_CACHE_MAGIC = b"NSBXSCMP1\n"
_DIGEST_SIZE = 32


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


# ---------------------------------------------------------------- libseccomp (lazy)
_LIBRARY_NAME = "libseccomp.so.2"
_lib: object = None


def _library_dirs() -> list[str]:
    multiarch = f"{os.uname().machine}-linux-gnu"
    extra = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    return extra + [f"/lib/{multiarch}", f"/usr/lib/{multiarch}", "/lib64", "/usr/lib64",
                    "/lib", "/usr/lib", "/usr/local/lib"]


def _library_path() -> str | None:
    """Where libseccomp.so.2 lives, found without loading it."""
    for directory in _library_dirs():
        path = os.path.join(directory, _LIBRARY_NAME)
        if os.path.exists(path):
            return path
    return None


def _load_libseccomp() -> object:
    global _lib
    if _lib is not None:
        return _lib
    import ctypes

    try:
        lib = ctypes.CDLL(_library_path() or _LIBRARY_NAME)
    except OSError as exc:
        raise UnsupportedError(f"seccomp: cannot load {_LIBRARY_NAME} (install libseccomp2): {exc}") from exc

    c_uint32, c_int, c_void_p = ctypes.c_uint32, ctypes.c_int, ctypes.c_void_p
    lib.seccomp_init.argtypes = [c_uint32]
    lib.seccomp_init.restype = c_void_p
    lib.seccomp_release.argtypes = [c_void_p]
    lib.seccomp_release.restype = None
    lib.seccomp_arch_add.argtypes = [c_void_p, c_uint32]
    lib.seccomp_arch_add.restype = c_int
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_resolve_name.restype = c_uint32
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_syscall_resolve_name.restype = c_int
    lib.seccomp_rule_add_array.argtypes = [c_void_p, c_uint32, c_int, ctypes.c_uint,
                                           ctypes.POINTER(_arg_cmp_type())]
    lib.seccomp_rule_add_array.restype = c_int
    lib.seccomp_export_bpf.argtypes = [c_void_p, c_int]
    lib.seccomp_export_bpf.restype = c_int
    lib.seccomp_version.argtypes = []
    lib.seccomp_version.restype = ctypes.POINTER(ctypes.c_uint * 3)
    _lib = lib
    return lib


_ARG_CMP: object = None


def _arg_cmp_type() -> object:
    """ctypes mirror of libseccomp's struct scmp_arg_cmp."""
    global _ARG_CMP
    if _ARG_CMP is None:
        import ctypes

        class ScmpArgCmp(ctypes.Structure):
            _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                        ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]

        _ARG_CMP = ScmpArgCmp
    return _ARG_CMP


def libseccomp_version() -> str | None:
    """The version of the installed libseccomp ("2.5.4"), or None without one."""
    try:
        lib = _load_libseccomp()
    except UnsupportedError:
        return None
    major, minor, micro = lib.seccomp_version().contents
    return f"{major}.{minor}.{micro}"


def _library_identity() -> str:
    """Names the installed libseccomp build without loading it.

    The soname symlink resolves to a versioned file (libseccomp.so.2.5.4);
    size and mtime also catch a rebuilt library of the same version.
    """
    path = _library_path()
    if path is None:
        return f"loaded:{libseccomp_version()}"
    real = os.path.realpath(path)
    st = os.stat(real)
    return f"{real}:{st.st_size}:{st.st_mtime_ns}"


# ---------------------------------------------------------------- compiling
@record
class _Rule:
    """One libseccomp rule: an action, a syscall and AND-ed conditions."""
    action: int
    conditions: list[tuple[int, int, int, int]]  # (index, op, datum_a, datum_b)


def _rules_for(entry: dict) -> list[_Rule]:
    action = action_value(entry["action"], entry.get("errnoRet"))
    conditions = []
    for arg in entry.get("args") or []:
        conditions.append((arg["index"], OPERATOR_VALUES[arg["op"]], arg["value"],
                           arg.get("valueTwo") or 0))
    indexes = [c[0] for c in conditions]
    if len(set(indexes)) != len(indexes):
        # libseccomp refuses two comparisons of one argument in a rule, so an
        # entry that repeats an index means "any of these" (one rule each).
        return [_Rule(action, [c]) for c in conditions]
    return [_Rule(action, conditions)]


def compile_filter(section: dict) -> bytes:
    """Build the BPF program for a seccomp section with libseccomp."""
    validate(section)
    lib = _load_libseccomp()
    default = action_value(section["defaultAction"], section.get("defaultErrnoRet"))
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise KernelError(f"seccomp: seccomp_init({section['defaultAction']}) failed")
    try:
        _add_architectures(lib, ctx, section.get("architectures") or [])
        for i, entry in enumerate(section.get("syscalls") or []):
            _add_entry(lib, ctx, default, entry, i)
        return _export(lib, ctx)
    finally:
        lib.seccomp_release(ctx)


def _add_architectures(lib: object, ctx: object, architectures: list[str]) -> None:
    for i, arch in enumerate(architectures):
        token = lib.seccomp_arch_resolve_name(arch.removeprefix("SCMP_ARCH_").lower().encode())
        if token == 0:
            raise UnsupportedError(f"{WHERE}architectures[{i}]: {arch} is not supported by "
                                   f"libseccomp {libseccomp_version()}")
        ret = lib.seccomp_arch_add(ctx, token)
        # The native architecture is already in every new filter.
        if ret < 0 and ret != -errno.EEXIST:
            raise KernelError(f"seccomp: cannot add architecture {arch}: {os.strerror(-ret)}", -ret)


def _add_entry(lib: object, ctx: object, default: int, entry: dict, index: int) -> None:
    arg_cmp = _arg_cmp_type()
    rules = _rules_for(entry)
    for name in entry["names"]:
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number == -1:  # __NR_SCMP_ERROR
            log.debug("seccomp: skipping syscall %r unknown to libseccomp", name)
            continue
        for rule in rules:
            if rule.action == default:
                # libseccomp rejects rules that repeat the default action.
                log.debug("seccomp: skipping rule for %r: same action as the default", name)
                continue
            array = (arg_cmp * max(len(rule.conditions), 1))()
            for k, (arg_index, op, datum_a, datum_b) in enumerate(rule.conditions):
                array[k] = arg_cmp(arg_index, op, datum_a, datum_b)
            ret = lib.seccomp_rule_add_array(ctx, rule.action, number, len(rule.conditions), array)
            if ret < 0:
                raise ConfigError(f"{WHERE}syscalls[{index}]: libseccomp rejected the rule for "
                                  f"{name!r}: {os.strerror(-ret)}")


def _export(lib: object, ctx: object) -> bytes:
    fd = os.memfd_create("nsbox-seccomp-bpf", os.MFD_CLOEXEC)
    try:
        ret = lib.seccomp_export_bpf(ctx, fd)
        if ret < 0:
            raise KernelError(f"seccomp: seccomp_export_bpf failed: {os.strerror(-ret)}", -ret)
        size = os.fstat(fd).st_size
        program = os.pread(fd, size, 0)
    finally:
        os.close(fd)
    _check_program(program)
    return program


def _check_program(program: bytes) -> None:
    if not program or len(program) % SOCK_FILTER_SIZE:
        raise KernelError(f"seccomp: malformed BPF program of {len(program)} bytes")
    if len(program) // SOCK_FILTER_SIZE > BPF_MAXINSNS:
        raise ConfigError(f"{WHERE}syscalls: the filter needs {len(program) // SOCK_FILTER_SIZE} "
                          f"BPF instructions, the kernel allows {BPF_MAXINSNS}")


# ---------------------------------------------------------------- cache
def _cache_key(section: dict) -> str:
    # Only what shapes the program: flags and the listener are load-time matters.
    relevant = {key: section.get(key) for key in
                ("defaultAction", "defaultErrnoRet", "architectures", "syscalls")}
    canonical = _json.dumps(relevant, sort_keys=True)
    ident = f"{_COMPILER_REVISION}\n{os.uname().machine}\n{_library_identity()}\n{canonical}"
    return _sha256(ident.encode()).hexdigest()


def _read_cached(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.debug("seccomp: cannot read cache %s: %s", path, exc)
        return None
    header = len(_CACHE_MAGIC) + _DIGEST_SIZE
    program = data[header:]
    if (not data.startswith(_CACHE_MAGIC) or not program or len(program) % SOCK_FILTER_SIZE
            or _sha256(program).digest() != data[len(_CACHE_MAGIC):header]):
        log.debug("seccomp: ignoring corrupt cache file %s", path)
        return None
    return program


def _write_cached(cache_dir: str, path: str, program: bytes) -> None:
    import tempfile

    tmp = None
    try:
        os.makedirs(cache_dir, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(_CACHE_MAGIC + _sha256(program).digest() + program)
        os.rename(tmp, path)  # readers see the old file or the whole new one
        tmp = None
    except OSError as exc:
        # A cache that cannot be written only costs speed.
        log.debug("seccomp: cannot write cache %s: %s", path, exc)
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def compiled_filter(section: dict, cache_dir: str | None = None) -> bytes:
    """The BPF program for a section, from cache_dir when compiled before."""
    validate(section)
    if cache_dir is None:
        return compile_filter(section)
    path = os.path.join(cache_dir, _cache_key(section) + ".bpf")
    program = _read_cached(path)
    if program is not None:
        return program
    program = compile_filter(section)
    _write_cached(cache_dir, path, program)
    return program


# ---------------------------------------------------------------- loading
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
    # _cdata, not ctypes: the init runs this after pivot_root, where only what
    # the runtime imported before forking is there, and ctypes is not.
    from nsbox.runtime import _cdata as ctypes
    from nsbox.runtime import syscalls

    _check_program(program)
    flag_bits = filter_flags(flags)
    if new_listener is None:
        new_listener = program_uses_notify(program)
    if new_listener:
        flag_bits |= SECCOMP_FILTER_FLAG_NEW_LISTENER
        if flag_bits & SECCOMP_FILTER_FLAG_TSYNC:
            # The kernel refuses TSYNC with a listener unless failures are ESRCH.
            flag_bits |= SECCOMP_FILTER_FLAG_TSYNC_ESRCH

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = SockFprog(len(program) // SOCK_FILTER_SIZE, ctypes.addressof(buffer))
    try:
        ret = syscalls.syscall(syscalls.SYS_seccomp, SECCOMP_SET_MODE_FILTER, flag_bits,
                               ctypes.addressof(fprog))
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


def features() -> dict:
    """The `linux.seccomp` object of the OCI features document."""
    try:
        lib = _load_libseccomp()
    except UnsupportedError:
        return {"enabled": False}
    archs = [a for a in ARCHITECTURES
             if lib.seccomp_arch_resolve_name(a.removeprefix("SCMP_ARCH_").lower().encode())]
    return {
        "enabled": True,
        "actions": sorted(ACTION_VALUES),
        "operators": sorted(OPERATOR_VALUES),
        "archs": sorted(archs),
        "knownFlags": list(FLAG_VALUES),
        "supportedFlags": supported_flags(),
    }
