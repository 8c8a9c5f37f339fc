"""nsbox.runtime._cdata: the ctypes subset syscalls.py is built on."""

from __future__ import annotations

import os
import subprocess
import sys

from nsbox.runtime import _cdata
from nsbox.runtime import syscalls as sc


def test_syscalls_do_not_import_ctypes():
    code = "import sys, nsbox.runtime.syscalls; print('ctypes' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_types_have_their_c_sizes():
    sizes = {_cdata.c_int: 4, _cdata.c_uint: 4, _cdata.c_long: 8, _cdata.c_ulong: 8,
             _cdata.c_char_p: 8, _cdata.c_void_p: 8, _cdata.c_char: 1, _cdata.c_ushort: 2}
    assert {t: _cdata.sizeof(t) for t in sizes} == sizes


def test_calls_set_errno_and_return_values():
    assert _cdata.raw_syscall(39) == os.getpid()  # getpid
    try:
        sc.mount("none", "/nonexistent/nsbox-cdata-test", None)
    except OSError as exc:
        assert exc.errno == 2
    else:
        raise AssertionError("mount on a missing path succeeded")
    effective, permitted, _ = sc.capget()
    assert effective & permitted == effective


def test_string_buffer_and_memmove():
    buf = _cdata.create_string_buffer(b"lo", 40)
    assert len(buf.raw) == 40 and buf.raw[:3] == b"lo\0"
    _cdata.memmove(_cdata.addressof(buf) + 16, (0x1234).to_bytes(2, "little"), 2)
    assert buf.raw[16:18] == b"\x34\x12"


def test_structures_mix_with_real_ctypes():
    import ctypes

    assert sc.statfs("/").f_bsize > 0
    assert _cdata.sizeof(_cdata._CloneArgs) == ctypes.sizeof(_cdata._CloneArgs) == 88
    assert _cdata.c_double is ctypes.c_double  # anything else comes from ctypes itself
