"""The import graph of ``tvvar`` has no cycle and follows the layers of docs/design.md ("Layers"): a module imports
only modules of its own layer or of a layer below. Every ``import`` statement counts, including those inside
functions (a lazy import is still a dependency); the package module ``tvvar/__init__.py`` is the top layer (it
imports the modules whose members register themselves, :mod:`tvvar.registry`)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "tvvar"

#: bottom to top; a module belongs to the layer of the longest prefix that names it ("tvvar" only itself)
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("tvvar.typing", "tvvar.registry", "tvvar.sharding")),
    ("core", ("tvvar.core",)),
    ("decompositions", ("tvvar.decompositions", "tvvar.testing")),
    ("model", ("tvvar.model", "tvvar.generate", "tvvar.pretrained")),
    ("sources", ("tvvar.sources",)),
    ("training", ("tvvar.train",)),
    ("diffusion", ("tvvar.diffusion",)),
    ("theory", ("tvvar.theory",)),
    ("package", ("tvvar",)),
]


def modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for p in root.rglob("*.py"):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module → the tvvar modules it imports (``from tvvar import x`` is an edge to ``tvvar.x`` when that is a
    module, else to ``tvvar``)."""

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for m, p in mods.items():
        out = set()
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, ast.Import):
                out |= {owner(a.name) for a in node.names if a.name.split(".")[0] == "tvvar"}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "tvvar":
                out |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else owner(node.module)
                        for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level > 0:
                raise AssertionError(f"{p}: relative import; tvvar imports by absolute name")
        graph[m] = out - {m, None}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer_of(module: str) -> int:
    best, depth = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for pre in prefixes:
            matches = module == pre if pre == "tvvar" else (module == pre or module.startswith(pre + "."))
            if matches and pre.count(".") > depth:
                best, depth = i, pre.count(".")
    if best is None:
        raise AssertionError(f"module {module} is in no layer of LAYERS (add it to tests/test_import_graph.py and "
                             f"docs/design.md)")
    return best


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
                  for m, deps in graph.items() for d in deps if layer_of(d) > layer_of(m))


GRAPH = import_graph(modules())


def test_tvvar_has_no_import_cycle():
    assert not cycles(GRAPH), f"import cycles in tvvar: {cycles(GRAPH)}"


def test_every_import_goes_down_the_layers():
    assert not upward_imports(GRAPH)


def test_every_module_has_a_layer():
    for m in GRAPH:
        layer_of(m)


def test_the_walker_sees_cycles_and_upward_imports(tmp_path):
    pkg = tmp_path / "tvvar"
    (pkg / "theory").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from tvvar.core import x\n")
    (pkg / "core.py").write_text("def f():\n    import tvvar.theory.a  # lazy, still an edge\n")
    (pkg / "theory" / "__init__.py").write_text("")
    (pkg / "theory" / "a.py").write_text("from tvvar import core\n")
    g = import_graph(modules(pkg))
    assert g["tvvar.core"] == {"tvvar.theory.a"} and g["tvvar.theory.a"] == {"tvvar.core"}
    assert cycles(g) == [["tvvar.core", "tvvar.theory.a"]]
    assert upward_imports(g) == ["tvvar.core (core) imports tvvar.theory.a (theory)"]
    (pkg / "core.py").write_text("from . import typing\n")
    with pytest.raises(AssertionError, match="relative import"):
        import_graph(modules(pkg))
