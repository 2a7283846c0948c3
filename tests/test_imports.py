"""The import graph of the package runs one way: public API -> checks ->
backend interface, backend modules -> kernels; the tools sit apart.

Module-level imports only (imports inside functions are lazy, like the
``__getattr__`` of ``fastxent/__init__.py`` and the registry's backend
loaders).  The graph must be acyclic, the library must never import
``fastxent.tools``, and nothing but the tools and ``__main__`` may import
the package's front door (``fastxent/__init__.py``).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "fastxent"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _top_level_imports(tree: ast.Module):
    """Import nodes run when the module is imported (not inside functions)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.If, ast.Try)):
            stack.extend(node.body + node.orelse + getattr(node, "finalbody", [])
                         + [n for h in getattr(node, "handlers", []) for n in h.body])


def _edges(name: str, path: Path) -> set:
    out = set()
    for node in _top_level_imports(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            if node.level:  # relative import
                base = name.rsplit(".", node.level)[0]
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in MODULES else module
                       for a in node.names]
        out.update(t for t in targets if t == "fastxent" or t.startswith("fastxent."))
    return out - {name}


GRAPH = {name: _edges(name, path) for name, path in MODULES.items()}


def test_import_graph_is_acyclic():
    state: dict = {}

    def visit(node, trail):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", "import cycle: " + " -> ".join(trail + [node])
        state[node] = "open"
        for nxt in sorted(GRAPH.get(node, ())):
            visit(nxt, trail + [node])
        state[node] = "done"

    for name in sorted(GRAPH):
        visit(name, [])


def test_library_never_imports_tools_or_the_front_door():
    for name, targets in GRAPH.items():
        if name.startswith("fastxent.tools") or name == "fastxent.__main__":
            continue
        assert not any(t.startswith("fastxent.tools") for t in targets), (name, targets)
        if name != "fastxent":
            assert "fastxent" not in targets, f"{name} imports the package's front door"


def test_kernels_import_only_their_own_family():
    """cpu/ and cuda/ kernel modules import nothing from fastxent outside
    their own subpackage; only the backend modules see the interface."""
    for name, targets in GRAPH.items():
        for family in ("fastxent.cpu", "fastxent.cuda"):
            if name.startswith(family + ".") and not name.endswith(".backend"):
                outside = {t for t in targets if not t.startswith(family)}
                if name == "fastxent.cuda._arrays":  # the one answer to "is this a CUDA array"
                    outside -= {"fastxent._backend"}
                assert not outside, (name, outside)
