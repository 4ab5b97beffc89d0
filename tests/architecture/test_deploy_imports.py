"""Import rules of the deployment packages: profile may use export, export never uses profile; no search code;
no import cycle through export or profile (function-level imports included)."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import nasdeploy

ROOT = Path(nasdeploy.__file__).parent
UPPER_LAYERS = ("nasdeploy.search", "nasdeploy.train", "nasdeploy.pipeline", "nasdeploy.cli")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path) -> set[str]:
    """Every absolute module name that `path` imports, at top level or inside functions (relative ones resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: {m for m in _imported_modules(path) if m in modules and m != name} for name, path in modules.items()}


def _cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path start -> ... -> start in the import graph, if there is one."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in graph[node]:
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


@pytest.mark.parametrize("path", _sources("export"), ids=lambda p: p.name)
def test_export_modules_never_import_profile(path: Path) -> None:
    bad = sorted(m for m in _imported_modules(path) if m == "nasdeploy.profile" or m.startswith("nasdeploy.profile."))
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}: export must not depend on profile (profile -> export only)"


@pytest.mark.parametrize("path", _sources("export") + _sources("profile"), ids=lambda p: str(p.relative_to(ROOT)))
def test_deployment_imports_no_upper_layer(path: Path) -> None:
    bad = sorted(m for m in _imported_modules(path) if m.startswith(UPPER_LAYERS))
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}: deployment code never imports search/train/pipeline/cli"


def test_no_import_cycle_through_export_or_profile() -> None:
    graph = _graph()
    cycles = [c for m in sorted(graph) if m.startswith(("nasdeploy.export", "nasdeploy.profile"))
              if (c := _cycle_through(graph, m)) is not None]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_is_not_vacuous(tmp_path) -> None:
    """A backend importing the dispatcher back (the cycle this layout removed) is found."""
    graph = _graph()
    graph["nasdeploy.profile.backends_ort"].add("nasdeploy.profile.latency")
    assert _cycle_through(graph, "nasdeploy.profile.latency") is not None
    users = [p.name for p in _sources("profile") if any(m.startswith("nasdeploy.export") for m in _imported_modules(p))]
    assert "api.py" in users  # profile really does import export: the first rule keeps the two out of a cycle
    assert _imported_modules(ROOT / "export" / "api.py") & {"nasdeploy.export.formats"}


@pytest.mark.parametrize("package", ["nasdeploy.export", "nasdeploy.profile"])
def test_every_deploy_module_imports(package: str) -> None:
    pkg = importlib.import_module(package)
    for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}."):
        importlib.import_module(info.name)


def test_the_format_lists_load_no_torch() -> None:
    code = ("import sys, nasdeploy.export.formats as f, nasdeploy.pipeline.sections; "
            "assert 'torch' not in sys.modules, 'torch was imported'; print(','.join(f.FORMATS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "onnx,executorch,tensorrt,triton"


def test_language_model_deploy_modules_load_no_search_code() -> None:
    code = (
        "import sys, nasdeploy.export.darts_rnn, nasdeploy.profile.darts_rnn;"
        "bad = sorted(m for m in sys.modules if m.startswith(('nasdeploy.search', 'nasdeploy.train')));"
        "assert not bad, bad;"
        "assert 'nasdeploy.export.darts_rnn' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
