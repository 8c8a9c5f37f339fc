"""`@record`: dataclass-style declarations without importing dataclasses.

`import dataclasses` pulls in `inspect`, `re` and `enum` and costs more than
an entire runtime `start` on a slow host.  The runtime's hot-path types
(the OCI spec model) use this instead: fields are the class annotations in
order, class attributes are their defaults, and a default that is a class
(list, dict, or another record) is a factory called for each instance.
"""

from __future__ import annotations

_MISSING = object()


def record(cls: type) -> type:
    names = tuple(cls.__dict__.get("__annotations__", {}))
    defaults = tuple(cls.__dict__.get(name, _MISSING) for name in names)
    fields = tuple(zip(names, defaults, strict=True))
    for name, default in fields:
        if isinstance(default, type):
            delattr(cls, name)  # a factory, not a shared value

    def __init__(self, *args, **kwargs) -> None:
        if len(args) > len(fields):
            raise TypeError(f"{cls.__name__}() takes {len(fields)} arguments, got {len(args)}")
        for i, (name, default) in enumerate(fields):
            if i < len(args):
                value = args[i]
            elif name in kwargs:
                value = kwargs.pop(name)
            elif default is _MISSING:
                raise TypeError(f"{cls.__name__}() missing argument {name!r}")
            elif isinstance(default, type):
                value = default()
            else:
                value = default
            setattr(self, name, value)
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
    cls.__record_fields__ = names
    return cls
