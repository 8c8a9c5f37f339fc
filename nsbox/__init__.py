"""nsbox: Linux containers you can read, trust and measure.

    import nsbox
    box = nsbox.run("busybox", ["echo", "hi"])   # see nsbox/api.py
    nsbox.containers(all=True); nsbox.images(); nsbox.Engine(root=...)

The API is loaded on first use (module __getattr__), so `import nsbox`, which
every runtime command does, stays cheap.
"""

__version__ = "0.1.0"

# Public name -> module that defines it.
_LAZY = {
    "run": "nsbox.api", "create": "nsbox.api", "get": "nsbox.api", "containers": "nsbox.api",
    "images": "nsbox.api", "Container": "nsbox.api", "Engine": "nsbox.engine.containers",
    "namespaces": "nsbox.api", "stats": "nsbox.api",
    "cgroup": "nsbox.api", "build": "nsbox.api", "events": "nsbox.api",
    "pull": "nsbox.api", "push": "nsbox.api",
}


def __getattr__(name: str):
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'nsbox' has no attribute {name!r}")
    __import__(module_name)
    import sys

    value = getattr(sys.modules[module_name], name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
