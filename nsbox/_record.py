"""`@record`: dataclass-style declarations without importing dataclasses.

`import dataclasses` pulls in `inspect`, `re` and `enum` and costs more than
an entire runtime `start` on a slow host.  The runtime's hot-path types
(the OCI spec model) and the engine's records use this instead: fields are
the class annotations in order, class attributes are their defaults, and a
default that is a class (list, dict, or another record) is a factory called
for each instance.

A record gets __init__, __repr__ and __eq__ (unhashable, like a dataclass).
`@record(frozen=True)` makes instances immutable and hashable by their field
values, like `@dataclass(frozen=True)` (assigning raises AttributeError).
`as_dict(obj)` is the counterpart of dataclasses.asdict.
"""

from __future__ import annotations

_MISSING = object()


def record(cls: type | None = None, *, frozen: bool = False):  # noqa: ANN201 - the class
    """Use as `@record` or `@record(frozen=True)`."""
    if cls is None:
        return lambda c: _make_record(c, frozen)
    return _make_record(cls, frozen)


def _make_record(cls: type, frozen: bool) -> type:
    names = tuple(cls.__dict__.get("__annotations__", {}))
    defaults = tuple(cls.__dict__.get(name, _MISSING) for name in names)
    fields = tuple(zip(names, defaults, strict=True))
    factories = frozenset(name for name, default in fields if isinstance(default, type))
    for name in factories:
        delattr(cls, name)  # a factory, not a shared value
    assign = object.__setattr__ if frozen else setattr

    # Written for speed: the runtime makes ~80 records in a `run` (the spec,
    # its mounts' flags), so each field is one dict pop and one assignment.
    def __init__(self, *args, **kwargs) -> None:
        if args:
            if len(args) > len(fields):
                raise TypeError(f"{cls.__name__}() takes {len(fields)} arguments, got {len(args)}")
            for name, value in zip(names, args, strict=False):  # the rest by keyword or default
                if name in kwargs:
                    raise TypeError(f"{cls.__name__}() got multiple values for argument {name!r}")
                kwargs[name] = value
        for name, default in fields:
            value = kwargs.pop(name, _MISSING)
            if value is _MISSING:
                if default is _MISSING:
                    raise TypeError(f"{cls.__name__}() missing argument {name!r}")
                value = default() if name in factories else default
            assign(self, name, value)
        if kwargs:
            raise TypeError(f"{cls.__name__}() got unexpected arguments: {', '.join(kwargs)}")

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
        return f"{cls.__name__}({inner})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in names)

    cls.__init__ = __init__
    cls.__repr__ = __repr__
    cls.__eq__ = __eq__
    cls.__hash__ = None
    if frozen:
        def __setattr__(self, name: str, value: object) -> None:
            raise AttributeError(f"cannot assign to field {name!r}")

        def __delattr__(self, name: str) -> None:
            raise AttributeError(f"cannot delete field {name!r}")

        def __hash__(self) -> int:
            return hash(tuple(getattr(self, n) for n in names))

        cls.__setattr__ = __setattr__
        cls.__delattr__ = __delattr__
        cls.__hash__ = __hash__
    cls.__record_fields__ = names
    return cls


def as_dict(obj: object) -> object:
    """OBJ with every record turned into a dict of its fields, recursively (dataclasses.asdict).

    Lists, tuples and dicts are rebuilt with their items converted; other
    values are returned as they are (not deep-copied).
    """
    fields = getattr(type(obj), "__record_fields__", None)
    if fields is not None:
        return {name: as_dict(getattr(obj, name)) for name in fields}
    if isinstance(obj, list):
        return [as_dict(item) for item in obj]
    if isinstance(obj, tuple):
        return tuple(as_dict(item) for item in obj)
    if isinstance(obj, dict):
        return {as_dict(key): as_dict(value) for key, value in obj.items()}
    return obj
