"""Deprecated: which space a config names now comes from the table of spaces (nasdeploy.spaces.table)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nasdeploy.utils.deprecation import warn_deprecated

warn_deprecated("nasdeploy.utils.spaces", "nasdeploy.spaces.table (space_of_config, without_space) and "
                "nasdeploy.utils.rundir.run_config_file", stacklevel=2)


def config_space(data: dict[str, Any]) -> str:
    """The name of the space a config belongs to (see nasdeploy.spaces.table.space_of_config)."""
    from nasdeploy.spaces.table import space_of_config

    return space_of_config(data).name


def without_space(data: dict[str, Any]) -> dict[str, Any]:
    """The config without its `space:` key."""
    from nasdeploy.spaces.table import without_space as strip

    return strip(data)


def run_config_file(out: Path) -> Path | None:
    """The config a run directory stored."""
    from nasdeploy.utils.rundir import run_config_file as find

    return find(out)
