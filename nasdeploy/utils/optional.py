"""Lazy import of optional dependencies with an error that says how to install them."""

from __future__ import annotations

import importlib
from types import ModuleType

from nasdeploy.errors import MissingDependencyError


def require(module: str, *, extra: str | None = None, purpose: str = "") -> ModuleType:
    """Import `module` or raise MissingDependencyError naming the package and the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        hint = f"pip install 'nasdeploy[{extra}]'" if extra else f"pip install {module.split('.')[0]}"
        what = f" (needed for {purpose})" if purpose else ""
        raise MissingDependencyError(f"optional dependency '{module}' is not installed{what}; install it with: {hint}") from exc
