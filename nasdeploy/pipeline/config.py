"""Pipeline configuration: one YAML file with search, train, export and profile sections."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

from nasdeploy.config.selection import SECTION as SELECTION
from nasdeploy.config.selection import SelectionOptions
from nasdeploy.errors import ConfigError
from nasdeploy.pipeline.sections import ExportSection, ProfileSection
from nasdeploy.spaces.table import DEFAULT_SPACE, resolve, space_of_pipeline
from nasdeploy.utils.yamlconfig import apply_overrides, from_dict, load_yaml, to_dict

DEMO_CONFIG = "demo.yaml"
_SECTIONS = ("name", "space", "data_dir", "search", "train", "export", "profile")
# A run directory's default is runs/<name>: a name is one path component of these characters.
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


@dataclass(frozen=True)
class PipelineConfig:
    """The whole pipeline, validated: the space's search and train configs and its export and profile sections.

    search / train are the config dataclasses of the space's table entry (e.g. DartsCnnSearchConfig), export /
    profile its section dataclasses (nasdeploy.pipeline.sections); every stage reads their typed fields.
    """

    name: str
    search: Any  # the space's search config dataclass
    train: Any  # the space's train config dataclass
    export: Any = ExportSection()
    profile: Any = ProfileSection()
    data_dir: str | None = None
    source: str = "(built-in demo)"
    space: str = DEFAULT_SPACE
    # The search section's `selection:` block (or --seeds): the search stage runs the selection protocol over seeds.
    selection: SelectionOptions | None = None

    def record(self) -> dict[str, Any]:
        """The plain form stored as the run's pipeline.yaml (and compared to refuse mixing two configs in one run)."""
        search = to_dict(self.search)
        if self.selection is not None:
            search[SELECTION] = to_dict(self.selection)
        return {"name": self.name, "space": self.space, "data_dir": self.data_dir, "search": search,
                "train": to_dict(self.train), "export": to_dict(self.export), "profile": to_dict(self.profile)}


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list) else value


def _section(cls: type, data: Any, where: str, defaults: dict[str, Any] | None = None) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"pipeline config: '{where}' must be a mapping, got {type(data).__name__}")
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"pipeline config: unknown key '{where}.{unknown[0]}' (known: {', '.join(sorted(known))})")
    values = {**(defaults or {}), **{k: _as_tuple(v) for k, v in data.items()}}
    return cls(**values)


def _stage_dict(data: dict[str, Any], key: str, base_dir: Path, space: str) -> dict[str, Any]:
    """A stage section: inline mapping, optionally `config: FILE` (relative to the pipeline file) plus overrides."""
    section = data.get(key)
    if not isinstance(section, dict):
        raise ConfigError(f"pipeline config: section '{key}' is missing or not a mapping")
    section = dict(section)
    ref = section.pop("config", None)
    if ref is None:
        return section
    path = Path(ref)
    if not path.is_absolute():
        path = base_dir / path
    merged = load_yaml(path)
    if merged.pop("space", space) != space:
        raise ConfigError(f"pipeline config: {key}.config {path} is a config of another space than {space!r}")
    for name, value in section.items():
        if isinstance(value, dict) and isinstance(merged.get(name), dict):
            merged[name] = {**merged[name], **value}
        else:
            merged[name] = value
    return merged


def _run_name(data: dict[str, Any], source: str) -> str:
    name = str(data.get("name") or Path(source).stem)
    if not name or name in (".", "..") or not set(name) <= _NAME_CHARS:
        raise ConfigError(f"pipeline config {source}: name {name!r} must be one plain file name (letters, digits, "
                          f"'.', '_', '-'): it names the default run directory runs/<name>")
    return name


def pipeline_config_from_dict(data: dict[str, Any], base_dir: Path, source: str) -> PipelineConfig:
    """Validate a pipeline config mapping into typed configs (its space's loaders check the search and train sections)."""
    space = space_of_pipeline(data)
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"pipeline config {source}: unknown section '{unknown[0]}' (known: {', '.join(_SECTIONS)})")
    export = _section(resolve(space.export_section), data.get("export"), "export")
    profile = _section(resolve(space.profile_section), data.get("profile"), "profile", dict(space.profile_defaults))
    if space.profile_nets and profile.net not in space.profile_nets:
        raise ConfigError(f"pipeline config: profile.net must be one of {', '.join(space.profile_nets)} for the "
                          f"{space.name} space, got {profile.net!r}")
    search = _stage_dict(data, "search", base_dir, space.name)
    selection = search.pop(SELECTION, None)
    return PipelineConfig(
        space=space.name,
        name=_run_name(data, source),
        search=_validated(space.load_search_config, search, "search", source),
        train=_validated(space.load_train_config, _stage_dict(data, "train", base_dir, space.name), "train", source),
        export=export,
        profile=profile,
        data_dir=data.get("data_dir"),
        source=source,
        selection=None if selection is None else _validated(
            lambda block: from_dict(SelectionOptions, block, f"search.{SELECTION}"), selection, "search", source),
    )


def _validated(load: Callable[[dict[str, Any]], Any], section: dict[str, Any], name: str, source: str) -> Any:
    """A stage section validated by its space's loader (errors name the pipeline file and the section)."""
    try:
        return load(section)
    except ConfigError as exc:
        raise ConfigError(f"pipeline config {source}, section {name}: {exc}") from None


def load_pipeline_config(path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()) -> PipelineConfig:
    """Load a pipeline YAML (None: the built-in demo) with dotted overrides such as `train.train.epochs=2`."""
    if path is None:
        ref = resources.files("nasdeploy.pipeline") / "configs" / DEMO_CONFIG
        with resources.as_file(ref) as demo:
            data = apply_overrides(load_yaml(demo), overrides)
            return pipeline_config_from_dict(data, Path(demo).parent, "(built-in demo)")
    p = Path(path)
    data = apply_overrides(load_yaml(p), overrides)
    return pipeline_config_from_dict(data, p.parent, str(p))

