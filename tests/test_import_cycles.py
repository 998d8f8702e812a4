"""No module of `carbench` may take part in an import cycle, and the layers import downwards only.

A cycle hidden behind a function-level import still couples the two modules (neither can be
understood, tested or moved without the other), so the graph is built from *every* `import` and
`from … import` statement in a module's source, wherever it sits, with relative imports resolved.
`if TYPE_CHECKING:` blocks are skipped: they never run, so they cannot form a runtime cycle. An edge
goes to the module named; the parent packages Python initialises on the way are not edges (a
package `__init__` that imports its own submodules would otherwise be a cycle with every one).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "carbench"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE

#: layer → packages it must never import (the project's layering rule, docs/architecture.md).
FORBIDDEN = {
    "carbench.data": ("carbench.engine", "carbench.models"),
    "carbench.metrics": ("carbench.engine", "carbench.models"),
    "carbench.models": ("carbench.engine",),
    "carbench.types": ("carbench",),  # the shared contracts: everyone imports them, they import nobody
}


def module_name(path: Path, root: Path) -> str:
    """Dotted module name of a source file under `root` (the package folder)."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk_runtime(tree: ast.AST):
    """`ast.walk` minus the bodies of `if TYPE_CHECKING:` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def imported_modules(path: Path, name: str, modules: set[str]) -> set[str]:
    """The package modules `path` (module `name`) imports anywhere in its source."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _walk_runtime(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base = ".".join(base_parts[: len(base_parts) - (node.level - 1)])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            # `from pkg import sub` imports the submodule `pkg.sub`; `from pkg import name` imports pkg.
            subs = [f"{mod}.{alias.name}" for alias in node.names]
            targets = subs if all(s in modules for s in subs) else [mod, *subs]
        for target in targets:
            while target and target not in modules:  # `import a.b.c` names c; attributes are not modules
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    """Module → the package modules it imports (every import statement, relative ones resolved)."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    modules = set(files)
    return {name: imported_modules(path, name, modules) for name, path in files.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module, as one cycle path each (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_path(graph, comp) for comp in components]


def _cycle_path(graph: dict[str, set[str]], comp: list[str]) -> list[str]:
    """One concrete cycle a → … → a inside a strongly connected component (breadth-first)."""
    members = set(comp)
    start = comp[0]
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [start]
                    while v != start:
                        path.append(v)
                        v = parents[v]
                    path.append(start)
                    return [path[0]] + path[1:-1][::-1] + [start]
                if w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    return comp


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_detects_cycle_hidden_in_function_and_relative_import(tmp_path: Path) -> None:
    """The walker must see a function-level relative import, or the real test proves nothing."""
    root = tmp_path / PACKAGE
    _write(root, "__init__.py", "")
    _write(root, "a.py", "from carbench.b import f\n")
    _write(root, "b.py", "def f():\n    from . import c\n    return c\n")
    _write(root, "c.py", "def g():\n    from .a import f\n    return f\n")
    _write(root, "sub/__init__.py", "")
    _write(root, "sub/d.py", "from ..a import f\n")
    graph = import_graph(root)
    assert graph["carbench.b"] == {"carbench.c"}
    assert graph["carbench.sub.d"] == {"carbench.a"}
    assert find_cycles(graph) == [["carbench.a", "carbench.b", "carbench.c", "carbench.a"]]


def test_type_checking_imports_are_not_edges(tmp_path: Path) -> None:
    root = tmp_path / PACKAGE
    _write(root, "__init__.py", "")
    _write(root, "a.py", "from carbench import b\n")
    _write(root, "b.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from carbench import a\n")
    assert find_cycles(import_graph(root)) == []


def test_no_import_cycles_in_carbench() -> None:
    cycles = find_cycles(import_graph())
    shown = "\n".join(" -> ".join(c) for c in cycles)
    assert not cycles, f"{len(cycles)} import cycle(s) in src/carbench (break them; see docs/architecture.md):\n{shown}"


def layer_violations(graph: dict[str, set[str]], layer: str, forbidden: tuple[str, ...]) -> list[str]:
    """Edges `module -> dependency` from inside `layer` into any of the `forbidden` packages."""

    def inside(mod: str, pkg: str) -> bool:
        return mod == pkg or mod.startswith(pkg + ".")

    return sorted(
        f"{mod} -> {dep}"
        for mod, deps in graph.items()
        if inside(mod, layer)
        for dep in deps
        if not inside(dep, layer) and any(inside(dep, f) for f in forbidden)
    )


def test_layer_check_sees_an_upward_import_only() -> None:
    graph = {
        "carbench.data.voc": {"carbench.data.base", "carbench.types"},
        "carbench.data.odd": {"carbench.engine.loop"},
        "carbench.engine.loop": {"carbench.data.voc"},
    }
    assert layer_violations(graph, "carbench.data", ("carbench.engine", "carbench.models")) == [
        "carbench.data.odd -> carbench.engine.loop"
    ]
    assert layer_violations(graph, "carbench.engine", ("carbench.models",)) == []


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_downwards_only(layer: str) -> None:
    bad = layer_violations(import_graph(), layer, FORBIDDEN[layer])
    assert not bad, f"{layer} must not import {', '.join(FORBIDDEN[layer])} (docs/architecture.md):\n" + "\n".join(bad)


def test_package_never_imports_the_compatibility_alias() -> None:
    """`carbench.models.clip` only re-exports names for user code; the package imports the owning modules."""
    users = sorted(mod for mod, deps in import_graph().items() if "carbench.models.clip" in deps)
    assert not users, (
        "import from carbench.models.backbones.{checkpoint_io,weights,vit,device,registry} instead of the "
        f"compatibility alias carbench.models.clip in: {', '.join(users)}"
    )
