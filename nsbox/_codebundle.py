"""The runtime's compiled modules in one file, imported without the path finder.

Why: a `run` of nsbox-runtime imports ~40 of nsbox's modules, and Python's
path-based import spends ~55 µs on each before its code runs: the finder
checks the package directory and tries every suffix, the loader stats the
source, opens the `.pyc` through io objects and validates its header.  That
is ~2 ms of every `run` and `create`.  `setup.py`'s `build_code_bundle`
step compiles nsbox/runtime and nsbox's top-level modules into one file,
`nsbox/_runtime.codebundle`, and the nsbox-runtime launcher puts the finder
below first on `sys.meta_path`: a dictionary lookup, one `pread` and
`marshal.loads` per module.  Anything not in the file, and the whole file
when it is missing, unreadable or for another Python, is imported as usual.

Which copy of a module runs: in an install (`pip install .`) the bundle is
used unchecked, as CPython uses its frozen standard library modules (both
are made from the same sources by the same build; edit the sources and
reinstall).  In an editable install (the development tree) the bundle
records each source's size and modification time, and a module whose source
differs is imported from the source instead, so an edit is never hidden.
`NSBOX_CODE_BUNDLE=0` in the environment turns the bundle off.

The file: `MAGIC`, the interpreter's bytecode magic number, the length of
the index (4 bytes, little-endian), the index (marshal: {"checked": bool,
"modules": {name: (path relative to the directory holding nsbox/,
is_package, mtime_ns, size, offset, length)}}), then each module's code
object (marshal), at its offset from the end of the index.
"""

import marshal
import posix
import sys
from _frozen_importlib import ModuleSpec
from _frozen_importlib_external import MAGIC_NUMBER

MAGIC = b"NSBOXCB1"
FILE_NAME = "_runtime.codebundle"
_HEADER = len(MAGIC) + len(MAGIC_NUMBER) + 4


class CodeBundle:
    """A meta path finder and loader for the modules in one bundle file."""

    def __init__(self, path: str, root: str, checked: bool, modules: dict,
                 data_start: int) -> None:
        self.path = path
        self.data_start = data_start  # where the code objects begin in the file
        self.root = root  # the directory that holds the nsbox package
        self.checked = checked
        self.modules = modules

    def _source(self, entry: tuple) -> str:
        """The source file an index entry was made from."""
        return f"{self.root}/{entry[0]}"

    def _entry(self, name: str) -> tuple | None:
        entry = self.modules.get(name)
        if entry is None or not self.checked:
            return entry
        try:
            st = posix.stat(self._source(entry))
        except OSError:
            return None
        if st.st_mtime_ns != entry[2] or st.st_size != entry[3]:
            return None  # edited since the bundle was made: import the source
        return entry

    def find_spec(self, name: str, path=None, target=None) -> ModuleSpec | None:
        entry = self._entry(name)
        if entry is None:
            return None
        return self._spec(name, entry)

    def _spec(self, name: str, entry: tuple) -> ModuleSpec:
        origin = self._source(entry)
        spec = ModuleSpec(name, self, origin=origin, is_package=entry[1])
        spec.has_location = True  # __file__, as a module imported from its source has
        if entry[1]:
            # Submodules that are not in the bundle are found there as usual.
            spec.submodule_search_locations = [origin.rpartition("/")[0]]
        return spec

    def preload(self, names: tuple[str, ...]) -> None:
        """Import NAMES from the bundle, in that order, without the import system.

        What a command will import anyway, listed by the caller with each
        module after those it imports: here a module costs its code and
        little else, where an import statement's trip through importlib
        (module locks, spec, six attributes) is ~12 µs more per module, ~0.5 ms
        of a `run`.  A module is imported this way as the import system would
        (parent package first, in sys.modules during its code, removed if the
        code fails, then an attribute of its parent).  Names already imported,
        not in the bundle or edited since (a checked bundle) are left to
        their import statements.
        """
        for name in names:
            if name not in sys.modules:
                self._import(name)

    def _import(self, name: str) -> None:
        entry = self._entry(name)
        if entry is None:
            return
        parent, _, child = name.rpartition(".")
        if parent and parent not in sys.modules:
            self._import(parent)
            if parent not in sys.modules or name in sys.modules:
                return  # the parent imported it (or could not be imported here)
        spec = self._spec(name, entry)
        module = type(sys)(name)
        module.__spec__ = spec
        module.__loader__ = self
        module.__file__ = spec.origin
        module.__package__ = name if entry[1] else parent
        if entry[1]:
            module.__path__ = spec.submodule_search_locations
        sys.modules[name] = module
        try:
            self.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        if parent:
            setattr(sys.modules[parent], child, module)
        if sys.flags.verbose:  # as the import system reports each module
            print(f"import {name!r} # {self!r}", file=sys.stderr)

    def create_module(self, spec: ModuleSpec) -> None:
        return None  # the default module object

    def exec_module(self, module) -> None:
        _, _, _, _, offset, length = self.modules[module.__spec__.name]
        fd = posix.open(self.path, posix.O_RDONLY | posix.O_CLOEXEC)
        try:
            data = posix.pread(fd, length, self.data_start + offset)
        finally:
            posix.close(fd)
        if len(data) != length:
            raise ImportError(f"{self.path}: truncated", name=module.__spec__.name)
        exec(marshal.loads(data), module.__dict__)

    def get_source(self, name: str) -> str | None:
        """For tracebacks and inspect: the source file the module was made from."""
        entry = self.modules.get(name)
        if entry is None:
            return None
        try:
            with open(self._source(entry), encoding="utf-8") as f:
                return f.read()
        except OSError:
            return None


def load(path: str, root: str) -> CodeBundle | None:
    """The bundle at PATH, or None if it is missing or not for this interpreter."""
    try:
        fd = posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC)
    except OSError:
        return None
    try:
        head = posix.read(fd, 65536)
        if len(head) < _HEADER or head[:len(MAGIC)] != MAGIC or \
                head[len(MAGIC):_HEADER - 4] != MAGIC_NUMBER:
            return None
        size = int.from_bytes(head[_HEADER - 4:_HEADER], "little")
        raw = head[_HEADER:_HEADER + size]
        if len(raw) < size:
            raw += posix.pread(fd, size - len(raw), _HEADER + len(raw))
        index = marshal.loads(raw)
    except (OSError, ValueError, EOFError, TypeError):
        return None
    finally:
        posix.close(fd)
    return CodeBundle(path, root, bool(index["checked"]), index["modules"], _HEADER + size)


installed: CodeBundle | None = None  # install()'s, for preload


def install() -> CodeBundle | None:
    """Put this package's bundle first on sys.meta_path, if there is a usable one."""
    global installed
    if posix.environ.get(b"NSBOX_CODE_BUNDLE") == b"0":
        return None
    package_dir = __file__.rpartition("/")[0]
    bundle = load(f"{package_dir}/{FILE_NAME}", package_dir.rpartition("/")[0])
    if bundle is not None:
        sys.meta_path.insert(0, bundle)
        installed = bundle
    return bundle


def sources(root: str) -> list[str]:
    """What goes into the bundle: nsbox's top-level modules (not the package
    itself, imported before the bundle, nor this module) and all of nsbox/runtime."""
    import os

    package = os.path.join(root, "nsbox")
    names = [f"nsbox/{n}" for n in sorted(os.listdir(package))
             if n.endswith(".py") and n not in ("__init__.py", "_codebundle.py")]
    for directory, dirs, files in os.walk(os.path.join(package, "runtime")):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        rel = os.path.relpath(directory, root)
        names += [f"{rel}/{n}" for n in sorted(files) if n.endswith(".py")]
    return names


def build_in_tree(root: str) -> int:
    """The development tree's (editable install's) bundle, checked: `make code-bundle`."""
    import os

    return build(root, sources(root), os.path.join(root, "nsbox", FILE_NAME), checked=True)


def _compile(source: bytes, filename: str):
    """SOURCE's code, with `from __future__ import annotations` applied as a
    compiler flag rather than run: the statement imports the __future__
    module at run time (~0.2 ms, its only use in a runtime command) just to
    bind the name `annotations`, which nsbox's code never reads."""
    import __future__

    import ast

    tree = ast.parse(source, filename)
    flags = 0
    body = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__" and \
                [alias.name for alias in node.names] == ["annotations"]:
            flags |= __future__.annotations.compiler_flag
            continue
        body.append(node)
    tree.body = body
    return compile(tree, filename, "exec", flags=flags, dont_inherit=True)


def build(root: str, names: list[str], out: str, checked: bool) -> int:
    """Write the bundle of NAMES (paths relative to ROOT) to OUT; returns its size.

    Used by setup.py.  CHECKED (an editable install): the sources stay
    where they are, so the code objects name them by their full path and
    the loader checks that they have not changed.  Otherwise code objects
    are named by the path relative to ROOT: the installed location is not
    known when a wheel is built, and tracebacks find the source through
    `get_source`.
    """
    import os

    modules: dict[str, tuple] = {}
    blobs: list[bytes] = []
    offset = 0
    for rel in sorted(names):
        with open(os.path.join(root, rel), "rb") as f:
            source = f.read()
        st = os.stat(os.path.join(root, rel))
        filename = os.path.join(root, rel) if checked else rel
        blob = marshal.dumps(_compile(source, filename))
        parts = rel[:-len(".py")].split("/")
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        modules[name] = (rel, is_package, st.st_mtime_ns, st.st_size, offset, len(blob))
        blobs.append(blob)
        offset += len(blob)
    index = marshal.dumps({"checked": checked, "modules": modules})
    tmp = f"{out}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(MAGIC + MAGIC_NUMBER + len(index).to_bytes(4, "little") + index)
        for blob in blobs:
            f.write(blob)
    os.replace(tmp, out)
    return os.path.getsize(out)
