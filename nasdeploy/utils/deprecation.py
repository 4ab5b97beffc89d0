"""One-line deprecation warnings for old import paths, config keys and file formats (kept for one release)."""

from __future__ import annotations

import warnings


def warn_deprecated(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn once per call site that `old` is deprecated in favour of `new`."""
    warnings.warn(f"{old} is deprecated; use {new} (the old name goes away in the next release)",
                  DeprecationWarning, stacklevel=stacklevel)


def reexport_moved(namespace: dict, old: str, new: str) -> None:
    """Fill an old module's namespace with everything of the module it moved to, and warn."""
    import importlib

    moved = importlib.import_module(new)
    namespace.update({k: v for k, v in vars(moved).items() if not k.startswith("__")})
    warn_deprecated(old, new, stacklevel=4)
