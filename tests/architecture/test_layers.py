"""The package's shape: small modules, no import cycles, imports only downward through the layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "nasdeploy"
MAX_LINES = 400

# Top to bottom; a module may import its own layer or a lower one, never a higher one.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli", "__main__"),
    ("pipeline",),
    ("search", "train"),
    ("profile",),
    ("export",),
    ("nets", "spaces", "data", "tasks", "config"),
    ("ops", "kernels", "genotypes"),
    ("utils", "errors", "_version", "__init__"),
)
# Deployment code serves users who never search: it imports no search, training, pipeline or CLI code.
DEPLOYMENT = ("nets", "export", "profile", "genotypes", "ops")
NOT_FOR_DEPLOYMENT = ("search", "train", "pipeline", "cli")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every nasdeploy module `name` imports, at module level or inside functions."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(top: str) -> int:
    for index, names in enumerate(LAYERS):
        if top in names:
            return index
    raise AssertionError(f"nasdeploy.{top} is in no layer of tests/architecture/test_layers.py: add it where it belongs")


def test_no_module_is_over_the_size_limit():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by responsibility): {long}"


def test_every_subpackage_has_a_layer():
    for name in MODULES:
        _layer(_top(name))


def test_imports_go_only_downward():
    upward = sorted(
        f"{name} -> {target}"
        for name, targets in GRAPH.items() for target in targets
        if _layer(_top(target)) < _layer(_top(name))
    )
    assert not upward, "imports from a lower layer back up:\n" + "\n".join(upward)


def test_deployment_never_imports_search_training_or_pipeline():
    bad = sorted(f"{name} -> {target}" for name, targets in GRAPH.items() if _top(name) in DEPLOYMENT
                 for target in targets if _top(target) in NOT_FOR_DEPLOYMENT)
    assert not bad, "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    # A package's __init__ re-exporting its submodules is not a cycle of design: leave those edges out.
    graph = {name: {t for t in targets if not (name.startswith(t + ".") and MODULES[t].name == "__init__.py")}
             for name, targets in GRAPH.items()}
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("graph,expected", [
    ({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
])
def test_the_cycle_finder_finds_cycles(graph, expected):
    assert _cycles(graph) == expected
