"""The mixed-op modules import one way: mixing <- fused_mixer <- mixer_table (function-level imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import nasdeploy

ROOT = Path(nasdeploy.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    """module -> the nasdeploy modules it imports anywhere in its body (a package import counts as the package)."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            for t in targets:
                if t in modules:
                    deps.add(t)
        deps.discard(name)
        graph[name] = deps
    return graph


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m == goal:
            return True
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, ()))
    return False


def test_mixing_does_not_reach_the_fused_mixer_or_the_table():
    graph = _graph()
    assert "nasdeploy.spaces.mixing" in graph["nasdeploy.spaces.fused_mixer"]  # the rule below is not vacuous
    for upper in ("nasdeploy.spaces.fused_mixer", "nasdeploy.spaces.mixer_table"):
        assert not _reaches(graph, "nasdeploy.spaces.mixing", upper), f"nasdeploy.spaces.mixing reaches {upper}"
    assert not _reaches(graph, "nasdeploy.spaces.fused_mixer", "nasdeploy.spaces.mixer_table")


def test_no_import_cycle_through_the_search_space_modules():
    graph = _graph()
    spaces = sorted(m for m in graph if m.startswith("nasdeploy.spaces.") or m.startswith("nasdeploy.kernels"))
    cyclic = [m for m in spaces if any(_reaches(graph, d, m) for d in graph[m])]
    assert not cyclic, f"modules on an import cycle: {cyclic}"
