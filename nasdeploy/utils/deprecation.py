"""One-line deprecation warnings for old import paths, config keys and file formats (kept for one release)."""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, TypeVar

T = TypeVar("T")


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


def legacy_loop_keywords(loop: Callable[..., T]) -> Callable[..., T]:
    """Let a search/train loop accept the keyword names of earlier releases (resume=, stop_after_epochs=, echo=)."""

    @functools.wraps(loop)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        if "resume" in kwargs:
            warn_deprecated(f"{loop.__name__}(resume=...)", "force= (force=True starts over)")
            kwargs["force"] = not kwargs.pop("resume")
        if "stop_after_epochs" in kwargs:
            warn_deprecated(f"{loop.__name__}(stop_after_epochs=...)", "stop_after_epoch=")
            kwargs["stop_after_epoch"] = kwargs.pop("stop_after_epochs")
        if "echo" in kwargs:
            warn_deprecated(f"{loop.__name__}(echo=...)", "progress= (messages go to the console when true)")
            kwargs["progress"] = kwargs.pop("echo") is not None
        return loop(*args, **kwargs)

    return wrapper
