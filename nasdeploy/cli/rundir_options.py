"""Shared bits of the run-directory commands (search, train): the default --out."""

from __future__ import annotations

from pathlib import Path

from nasdeploy.errors import ConfigError


def default_out_dir(out_dir: str | None, config_path: str | None, kind: str) -> Path:
    """--out as given, else runs/<kind>-<config file stem>."""
    if out_dir is not None:
        return Path(out_dir)
    if config_path is None:
        raise ConfigError(f"give --config FILE (and optionally --out DIR) for a {kind} run")
    return Path("runs") / f"{kind}-{Path(config_path).stem}"
