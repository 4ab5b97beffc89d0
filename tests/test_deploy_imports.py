"""Import rules of the deployment packages: profile may use export, export never uses profile; no search code."""

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


def _imported_modules(path: Path) -> set[str]:
    """Every absolute module name that `path` imports, at top level or inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", _sources("export"), ids=lambda p: p.name)
def test_export_modules_never_import_profile(path: Path) -> None:
    bad = sorted(m for m in _imported_modules(path) if m == "nasdeploy.profile" or m.startswith("nasdeploy.profile."))
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}: export must not depend on profile (profile -> export only)"


def test_the_rule_is_not_vacuous() -> None:
    """profile really does import export, so the rule above is what keeps the two out of a cycle."""
    users = [p.name for p in _sources("profile") if any(m.startswith("nasdeploy.export") for m in _imported_modules(p))]
    assert "api.py" in users
    assert _imported_modules(ROOT / "export" / "api.py") & {"nasdeploy.utils.model_cost"}


@pytest.mark.parametrize("package", ["nasdeploy.export", "nasdeploy.profile"])
def test_every_deploy_module_imports(package: str) -> None:
    pkg = importlib.import_module(package)
    for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}."):
        importlib.import_module(info.name)


def test_language_model_deploy_modules_load_no_search_code() -> None:
    code = (
        "import sys, nasdeploy.export.language_model, nasdeploy.profile.language_model;"
        "bad = sorted(m for m in sys.modules if m == 'nasdeploy.search' or m.startswith('nasdeploy.search.'));"
        "assert not bad, bad;"
        "assert 'nasdeploy.export.language_model' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
