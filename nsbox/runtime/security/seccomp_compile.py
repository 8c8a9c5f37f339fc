"""Turning an OCI `linux.seccomp` section into a classic BPF program with libseccomp.

libseccomp is loaded with ctypes only when a compile is really needed:
`compiled_filter` first looks in the runtime's cache, keyed by the section, the
compiler revision and the installed library's identity (found without loading
it), so a cache hit never maps libseccomp into the process.  `features` says
what the library and the kernel support, for `nsbox-runtime features`.

Validation, loading and the notify hand-over are in seccomp.py, which the
container init imports without this module.
"""

from __future__ import annotations

import errno
import os

from nsbox import _json
from nsbox._lazylog import get_logger
from nsbox._record import record
from nsbox.errors import ConfigError, KernelError, UnsupportedError
from nsbox.runtime.security.seccomp import (
    ACTION_VALUES,
    ARCHITECTURES,
    FLAG_VALUES,
    OPERATOR_VALUES,
    SOCK_FILTER_SIZE,
    WHERE,
    action_value,
    check_program,
    supported_flags,
    validate,
)

log = get_logger(__name__)

try:  # the builtin module: hashlib would load OpenSSL, slow on the create path
    from _sha256 import sha256 as _sha256
except ImportError:  # pragma: no cover - Python builds without it
    from hashlib import sha256 as _sha256

# Bumped whenever the way a section is turned into rules changes, so that
# programs cached by an older nsbox are not reused.
_COMPILER_REVISION = 1
_CACHE_MAGIC = b"NSBXSCMP1\n"
_DIGEST_SIZE = 32


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
    check_program(program)
    return program


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
