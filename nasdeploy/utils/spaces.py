"""Which search space a search or training config file belongs to (DARTS CNN or Auto-DeepLab)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nasdeploy.errors import ConfigError

CONFIG_SPACES = ("darts_cnn", "autodeeplab")
# Sections only an Auto-DeepLab config has: the supernet (search) and the segmentation net (training).
_ADL_SECTIONS = ("supernet", "net")


def config_space(data: dict[str, Any]) -> str:
    """The space a config names with `space:`, else the one its sections imply."""
    space = data.get("space")
    if space is not None:
        if space not in CONFIG_SPACES:
            raise ConfigError(f"unknown space {space!r} in the config (known: {', '.join(CONFIG_SPACES)}; "
                              f"recurrent cells use `nasdeploy rnn`)")
        return str(space)
    return "autodeeplab" if any(s in data for s in _ADL_SECTIONS) else "darts_cnn"


def without_space(data: dict[str, Any]) -> dict[str, Any]:
    """The config without its `space:` key (the stage config loaders validate the rest)."""
    return {k: v for k, v in data.items() if k != "space"}


def run_config_file(out: Path) -> Path | None:
    """The config a run directory stored (config.yaml of DARTS runs, config.json of Auto-DeepLab runs)."""
    for name in ("config.yaml", "config.json"):
        if (out / name).is_file():
            return out / name
    return None


def set_data_root(data: dict[str, Any], data_dir: str | None) -> dict[str, Any]:
    """A copy whose Cityscapes `data.root` is data_dir (when given); other datasets are left alone."""
    section = dict(data.get("data") or {})
    if data_dir and section.get("dataset") == "cityscapes":
        section["root"] = data_dir
    return {**data, "data": section}
