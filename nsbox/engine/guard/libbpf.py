"""libbpf (libbpf.so.1, Debian's libbpf1) through ctypes: open, load, attach, maps, ring buffer.

libbpf is the kept loader for CO-RE programs: it relocates the compiled
object's field accesses against this kernel's BTF, creates the maps and
runs the verifier, so nsbox neither assembles bytecode nor carries a
loader.  Only the handful of calls the guard needs are bound here; every
object stays owned by this process (no pins), so when it exits, even by
SIGKILL, the kernel closes the fds and frees programs, links and maps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from nsbox._lazylog import get_logger
from nsbox.errors import NsboxError

log = get_logger(__name__)

LIBRARY = "libbpf.so.1"

# enum libbpf_print_level
_LEVELS = {0: 30, 1: 20, 2: 10}  # WARN, INFO, DEBUG -> logging levels

SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


class LibbpfError(NsboxError):
    """libbpf could not be loaded or refused an operation."""


_lib: ctypes.CDLL | None = None
# libbpf's own messages (the verifier's log when a load fails), kept for the error.
_messages: list[str] = []


def _declare(lib: ctypes.CDLL) -> None:
    p, i, s, u64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint64
    size = ctypes.c_size_t
    table = {
        "bpf_object__open_file": (p, [s, p]),
        "bpf_object__load": (i, [p]),
        "bpf_object__close": (None, [p]),
        "bpf_object__next_program": (p, [p, p]),
        "bpf_object__find_map_by_name": (p, [p, s]),
        "bpf_program__name": (s, [p]),
        "bpf_program__section_name": (s, [p]),
        "bpf_program__set_autoload": (i, [p, ctypes.c_bool]),
        "bpf_program__attach": (p, [p]),
        "bpf_link__destroy": (i, [p]),
        "bpf_map__fd": (i, [p]),
        "bpf_map__update_elem": (i, [p, p, size, p, size, u64]),
        "bpf_map__delete_elem": (i, [p, p, size, u64]),
        "bpf_map__lookup_elem": (i, [p, p, size, p, size, u64]),
        "ring_buffer__new": (p, [i, SAMPLE_FN, p, p]),
        "ring_buffer__consume": (i, [p]),
        "ring_buffer__poll": (i, [p, i]),
        "ring_buffer__epoll_fd": (i, [p]),
        "ring_buffer__free": (None, [p]),
        "libbpf_num_possible_cpus": (i, []),
        "libbpf_set_print": (p, [p]),
    }
    for name, (res, args) in table.items():
        fn = getattr(lib, name)
        fn.restype = res
        fn.argtypes = args


# int (*)(enum libbpf_print_level, const char *, va_list): vsnprintf through libc.
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_libc = ctypes.CDLL(None)
_libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]


@_PRINT_FN
def _print(level: int, fmt: bytes, args: int) -> int:
    if level >= 2 and not log.isEnabledFor(10):
        return 0  # libbpf's debug lines (hundreds per load): formatted only when wanted
    buf = ctypes.create_string_buffer(1 << 18)  # the verifier log comes as one message
    _libc.vsnprintf(buf, len(buf), fmt, args)
    text = buf.value.decode(errors="replace").rstrip()
    if level <= 1:
        _messages.append(text)
        del _messages[:-200]
    log.log(_LEVELS.get(level, 10), "libbpf: %s", text)
    return 0


def library() -> ctypes.CDLL:
    """libbpf, loaded once; LibbpfError if it is not installed."""
    global _lib
    if _lib is None:
        try:
            lib = ctypes.CDLL(LIBRARY, use_errno=True)
        except OSError as exc:
            raise LibbpfError(f"cannot load {LIBRARY} ({exc}): install libbpf1") from None
        _declare(lib)
        lib.libbpf_set_print(ctypes.cast(_print, ctypes.c_void_p))
        _lib = lib
    return _lib


def available() -> str:
    """'' when libbpf loads, else why not."""
    try:
        library()
    except LibbpfError as exc:
        return str(exc)
    return ""


def _fail(what: str) -> LibbpfError:
    err = ctypes.get_errno()
    detail = "; ".join(m for m in _messages[-6:] if m)
    _messages.clear()
    message = f"{what}: {os.strerror(err) if err else 'failed'}"
    return LibbpfError(f"{message} ({detail})" if detail else message)


class Map:
    """One map of a loaded object, by libbpf's handle."""

    def __init__(self, lib: ctypes.CDLL, handle: int, name: str) -> None:
        self._lib, self.handle, self.name = lib, handle, name

    @property
    def fd(self) -> int:
        return self._lib.bpf_map__fd(self.handle)

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        if self._lib.bpf_map__update_elem(self.handle, key, len(key), value, len(value), flags):
            raise _fail(f"updating map {self.name}")

    def delete(self, key: bytes) -> bool:
        """False when KEY was not there."""
        return self._lib.bpf_map__delete_elem(self.handle, key, len(key), 0) == 0

    def lookup(self, key: bytes, value_size: int) -> bytes | None:
        out = ctypes.create_string_buffer(value_size)
        if self._lib.bpf_map__lookup_elem(self.handle, key, len(key), out, value_size, 0):
            return None
        return out.raw


class RingBuffer:
    """A BPF ring buffer read with a Python callback, CALLBACK(bytes) per record."""

    def __init__(self, lib: ctypes.CDLL, map_fd: int, callback) -> None:
        self._lib = lib

        def sample(_ctx: int, data: int, size: int) -> int:
            try:
                callback(ctypes.string_at(data, size))
            except Exception:  # noqa: BLE001 - one bad record must not stop the reader
                log.exception("guard: handling an event failed")
            return 0

        self._fn = SAMPLE_FN(sample)  # kept alive as long as the ring buffer
        ctypes.set_errno(0)
        self.handle = lib.ring_buffer__new(map_fd, self._fn, None, None)
        if not self.handle:
            raise _fail("creating the ring buffer reader")

    def fileno(self) -> int:
        return self._lib.ring_buffer__epoll_fd(self.handle)

    def consume(self) -> int:
        return self._lib.ring_buffer__consume(self.handle)

    def poll(self, timeout_ms: int) -> int:
        return self._lib.ring_buffer__poll(self.handle, timeout_ms)

    def close(self) -> None:
        if self.handle:
            self._lib.ring_buffer__free(self.handle)
            self.handle = None


class BpfObject:
    """A compiled BPF object file: opened, then loaded (verified), then its programs attached."""

    def __init__(self, path: str) -> None:
        self._lib = library()
        ctypes.set_errno(0)
        self.handle = self._lib.bpf_object__open_file(path.encode(), None)
        if not self.handle:
            raise _fail(f"opening {path}")
        self.links: list[int] = []
        self.failed: dict[str, str] = {}  # programs that could not be attached: why

    def programs(self) -> list[tuple[str, str, int]]:
        """(name, section, handle) of every program."""
        out, prog = [], None
        while True:
            prog = self._lib.bpf_object__next_program(self.handle, prog)
            if not prog:
                return out
            out.append((self._lib.bpf_program__name(prog).decode(),
                        self._lib.bpf_program__section_name(prog).decode(), prog))

    def set_autoload(self, handle: int, on: bool) -> None:
        self._lib.bpf_program__set_autoload(handle, on)

    def load(self) -> None:
        ctypes.set_errno(0)
        if self._lib.bpf_object__load(self.handle):
            raise _fail("loading the guard's BPF programs")

    def attach(self, handle: int, name: str, required: bool = True) -> bool:
        ctypes.set_errno(0)
        link = self._lib.bpf_program__attach(handle)
        if not link:
            err = _fail(f"attaching {name}")
            if required:
                raise err
            self.failed[name] = str(err)
            log.warning("guard: %s", err)
            return False
        self.links.append(link)
        return True

    def map(self, name: str) -> Map:
        handle = self._lib.bpf_object__find_map_by_name(self.handle, name.encode())
        if not handle:
            raise LibbpfError(f"the guard's BPF object has no map {name}")
        return Map(self._lib, handle, name)

    def possible_cpus(self) -> int:
        return max(1, self._lib.libbpf_num_possible_cpus())

    def close(self) -> None:
        for link in self.links:
            self._lib.bpf_link__destroy(link)
        self.links = []
        if self.handle:
            self._lib.bpf_object__close(self.handle)
            self.handle = None
