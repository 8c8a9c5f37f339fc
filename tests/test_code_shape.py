"""The shape rules of docs/architecture.md, checked on the source tree.

- Modules import only downward: no import cycle among nsbox's modules,
  counting imports inside functions too (a lazy import is still a
  dependency), but not `if TYPE_CHECKING:` blocks (never executed).
- No module is much over 600 lines (a module that grows past it is split
  along a concept boundary, not left to grow).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nsbox"
MAX_LINES = 640  # "~600": a little slack, so that a docstring line is not a failure


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


class _Imports(ast.NodeVisitor):
    def __init__(self, name: str, path: Path, modules: dict[str, Path]) -> None:
        self.name, self.modules = name, modules
        self.package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        self.edges: set[str] = set()

    def visit_If(self, node: ast.If) -> None:  # noqa: N802 - ast's visitor names
        if "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:  # noqa: N802
        self.edges.update(a.name for a in node.names if a.name in self.modules)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:  # noqa: N802
        base = node.module or ""
        if node.level:
            parts = self.package.split(".")
            parts = parts[:len(parts) - node.level + 1]
            base = ".".join(parts + ([node.module] if node.module else []))
        for alias in node.names:
            if f"{base}.{alias.name}" in self.modules:
                self.edges.add(f"{base}.{alias.name}")
            elif base in self.modules:
                self.edges.add(base)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        visitor = _Imports(name, path, modules)
        visitor.visit(ast.parse(path.read_text(), str(path)))
        graph[name] = visitor.edges - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_nsbox():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles (a module must import only downward): " + \
        "; ".join(" <-> ".join(c) for c in cycles)


def test_no_module_is_much_over_600_lines():
    too_long = {str(p.relative_to(ROOT)): n for p in sorted(PACKAGE.rglob("*.py"))
                if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not too_long, f"split these modules: {too_long}"
