"""JSON through the C accelerator alone.

`import json` pulls in `re` and costs more than the rest of a runtime command
on a slow host; the runtime's hot path (create/start/state/delete) reads and
writes JSON through `_json`, which the json package itself uses underneath.
Errors and pretty-printing with sort_keys fall back to the json package.
"""

from __future__ import annotations

import _json

_WS = " \t\n\r"


class _DecodeContext:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float


_scan = _json.make_scanner(_DecodeContext())
_encode = _json.make_encoder(None, None, _json.encode_basestring_ascii, None, ":", ",", False, False, True)
_encode_sorted = _json.make_encoder(None, None, _json.encode_basestring_ascii, None, ":", ",", True, False,
                                    True)
_escape = _json.encode_basestring_ascii


def loads(text: str | bytes) -> object:
    """Parse one JSON document; raises ValueError (json.JSONDecodeError) on bad input."""
    if isinstance(text, bytes | bytearray):
        text = text.decode("utf-8")
    start = len(text) - len(text.lstrip(_WS))
    try:
        value, end = _scan(text, start)
    except (StopIteration, SystemError):
        # SystemError: on some errors the C scanner needs json.decoder, which
        # it only finds once imported; the json package reports them properly.
        return _slow_loads(text)
    if text[end:].strip(_WS):
        return _slow_loads(text)
    return value


def _slow_loads(text: str) -> object:
    import json

    return json.loads(text)  # raises the descriptive JSONDecodeError


def dumps(value: object, sort_keys: bool = False) -> str:
    """Compact JSON (with sort_keys, a canonical form fit for hashing)."""
    return "".join((_encode_sorted if sort_keys else _encode)(value, 0))


def dumps_pretty(value: object, indent: str = "  ", _level: int = 0) -> str:
    """JSON indented like json.dumps(indent=2), for what users read."""
    pad = indent * (_level + 1)
    if isinstance(value, dict) and value:
        items = [f"{pad}{_escape(str(k))}: {dumps_pretty(v, indent, _level + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent * _level + "}"
    if isinstance(value, list | tuple) and value:
        items = [pad + dumps_pretty(v, indent, _level + 1) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + indent * _level + "]"
    return dumps(value)
