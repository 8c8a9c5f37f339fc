"""The part of ctypes that nsbox uses, built on the `_ctypes` extension alone,
and syscalls.py's entry points (raw_syscall, clone3, address) on it for a plain
interpreter: the launchers have them built in (bin/syscall_module.c), without ctypes.

`import ctypes` costs about 1.4 ms on this kind of host: it imports `struct`
and `types`, defines some thirty C types, checks their sizes and creates a
callback, before the first system call is made.  Every runtime command that
makes one (create, run, exec, kill, delete) paid it.  This module, with the
dozen names below, costs about 0.6 ms, half of it loading `_ctypes` itself.
They are the same `_ctypes` machinery, so their
instances mix with real ctypes objects where the C layer accepts any C data
(byref, sizeof, Structure fields); for anything not defined here the module
falls back to the real `ctypes` (PEP 562 `__getattr__`), so a new use
works unchanged, just without the saving.  Not in the
container's init after pivot_root, though, where the host's library is out
of reach: whatever the init calls must be defined here (seccomp.load uses
this module too).

Only for x86_64 Linux, like the syscall numbers in syscalls.py: long and
pointers are 64 bits, int 32.
"""

from __future__ import annotations

import _ctypes
from _ctypes import (  # noqa: F401  (re-exported: syscalls.py uses them as ctypes.X)
    POINTER,
    Structure,
    _SimpleCData,
    addressof,
    byref,
    get_errno,
    sizeof,
)


class c_ushort(_SimpleCData):  # noqa: N801 - ctypes' names
    _type_ = "H"


class c_int(_SimpleCData):  # noqa: N801
    _type_ = "i"


class c_uint(_SimpleCData):  # noqa: N801
    _type_ = "I"


class c_long(_SimpleCData):  # noqa: N801
    _type_ = "l"


class c_ulong(_SimpleCData):  # noqa: N801
    _type_ = "L"


class c_char(_SimpleCData):  # noqa: N801
    _type_ = "c"


class c_char_p(_SimpleCData):  # noqa: N801
    _type_ = "z"


class c_void_p(_SimpleCData):  # noqa: N801
    _type_ = "P"


c_int32, c_uint32 = c_int, c_uint
c_int64, c_uint64 = c_long, c_ulong
c_size_t, c_ssize_t = c_ulong, c_long


def create_string_buffer(init: bytes, size: int | None = None):
    """A c_char array holding INIT, NUL-padded to SIZE bytes (ctypes' function)."""
    buf = (c_char * (len(init) + 1 if size is None else size))()
    buf.value = init
    return buf


class CDLL:
    """A loaded library whose attributes are its C functions (ctypes.CDLL, cdecl, int result)."""

    _func_flags_ = _ctypes.FUNCFLAG_CDECL

    def __init__(self, name: str | None, use_errno: bool = False) -> None:
        class _FuncPtr(_ctypes.CFuncPtr):
            _flags_ = self._func_flags_ | (_ctypes.FUNCFLAG_USE_ERRNO if use_errno else 0)
            _restype_ = c_int

        self._FuncPtr = _FuncPtr
        self._name = name
        self._handle = _ctypes.dlopen(name, _ctypes.RTLD_LOCAL)

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        func = self._FuncPtr((name, self))
        func.__name__ = name
        setattr(self, name, func)
        return func


class PyDLL(CDLL):
    """Like CDLL, but the GIL stays held across each call (ctypes.PyDLL)."""

    _func_flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_PYTHONAPI


class _MemmoveType(_ctypes.CFuncPtr):
    _flags_ = _ctypes.FUNCFLAG_CDECL
    _restype_ = c_void_p
    _argtypes_ = (c_void_p, c_void_p, c_size_t)


memmove = _MemmoveType(_ctypes._memmove_addr)


def __getattr__(name: str):
    if name.startswith("__") and name.endswith("__"):
        # Not ctypes' own: the import system asks a module for __path__ (is it
        # a package?) and would get ctypes' package path.
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name == "pythonapi":
        api = PyDLL(None)
        globals()["pythonapi"] = api
        return api
    import ctypes

    return getattr(ctypes, name)


# --- syscalls.py's entry points, for an interpreter without _nsbox_syscall -------
# The same contract as bin/syscall_module.c's functions, which say why they exist.

_libc = CDLL(None, use_errno=True)
_libc.syscall.restype = c_long
_MASK64 = (1 << 64) - 1
_buffer_types: dict[int, type] = {}


def _over(buffer: object) -> object:
    """A c_char array over BUFFER's memory (writable), its array type made once a size."""
    size = memoryview(buffer).nbytes
    array = _buffer_types.get(size)
    if array is None:
        array = _buffer_types[size] = c_char * size
    return array.from_buffer(buffer)


def address(data: bytes | bytearray) -> int:
    """Where DATA's bytes are (a c_char_p points into a bytes object, not to a copy)."""
    if isinstance(data, bytes):
        return c_void_p.from_buffer(c_char_p(data)).value
    if isinstance(data, bytearray):  # no memory behind an empty one: NULL
        return addressof(_over(data)) if data else 0
    raise TypeError("address() takes bytes or a bytearray")


def raw_syscall(number: int, *args: int | bytes | None | object) -> int:
    """syscall(2): ARGS are ints, None (NULL), bytes or writable buffers (their
    memory); the kernel's result, or -errno when it fails."""
    c_args: list[object] = []
    for arg in args:
        if arg is None or isinstance(arg, bytes):
            c_args.append(arg)
        elif isinstance(arg, int):
            c_args.append(c_ulong(arg & _MASK64))
        else:
            c_args.append(_over(arg))
    result = _libc.syscall(c_long(number), *c_args)
    return result if result >= 0 else -get_errno()


class _CloneArgs(Structure):
    _fields_ = [(name, c_ulong) for name in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size",
        "tls", "set_tid", "set_tid_size", "cgroup")]


_gil_libc: PyDLL | None = None
_SIGCHLD = 17
_SYS_clone3 = 435


def clone3(flags: int, cgroup_fd: int) -> int:
    """A fork through clone3(2) with FLAGS, SIGCHLD and clone_args.cgroup = CGROUP_FD
    (when not negative): 0 in the child, its pid in the parent, -errno on failure.

    Through a PyDLL, so the GIL stays held across the call, between the
    interpreter's own fork hooks as os.fork() calls them.
    """
    global _gil_libc
    if _gil_libc is None:
        _gil_libc = PyDLL(None, use_errno=True)
        _gil_libc.syscall.restype = c_long
    args = _CloneArgs(flags=flags, exit_signal=_SIGCHLD, cgroup=max(cgroup_fd, 0))
    api = _gil_libc  # the process's own symbols, the interpreter's among them (ctypes.pythonapi)
    api.PyOS_BeforeFork()
    pid = api.syscall(c_long(_SYS_clone3), byref(args), c_ulong(sizeof(args)))
    if pid == 0:
        api.PyOS_AfterFork_Child()
        return 0
    err = get_errno()
    api.PyOS_AfterFork_Parent()
    return pid if pid > 0 else -err
