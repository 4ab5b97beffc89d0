"""Pipeline configuration: one YAML file with search, train, export and profile sections."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from nasdeploy.errors import ConfigError
from nasdeploy.utils.yamlconfig import apply_overrides, load_yaml

DEMO_CONFIG = "demo.yaml"
_SECTIONS = ("name", "space", "data_dir", "search", "train", "export", "profile")
SPACES = ("darts_cnn", "autodeeplab")  # recurrent-cell files have their own format (see is_recurrent_pipeline)


@dataclass(frozen=True)
class ExportSection:
    """What the export stage produces (ONNX always; TensorRT and Triton when asked)."""

    formats: tuple[str, ...] = ("onnx",)
    opset: int | None = None
    fp16: bool = False


@dataclass(frozen=True)
class ProfileSection:
    """What the profile stage measures: the found architecture next to registry genotypes."""

    net: str = "imagenet"  # the mobile setting: ImageNet 224x224
    channels: int | None = None
    layers: int | None = None
    compare: tuple[str, ...] = ("DARTS_V2", "DARTS_V1", "NASNet", "AmoebaNet", "PNAS")
    backends: tuple[str, ...] = ("torch-cpu-1t", "ort-cpu-1t")
    latency_for: tuple[str, ...] = ("found", "DARTS_V2")  # which rows get latency ("found" = ours)
    warmup: int = 3
    runs: int = 20
    input_size: tuple[int, int] | None = None  # (H, W) for MACs and latency; None: the family's (segmentation: the crop)
    macs_at: tuple[tuple[int, int], ...] = ()  # further (H, W) sizes counted for MACs only (e.g. 1024x2048)


# Auto-DeepLab runs compare against the published architecture at full Cityscapes resolution too.
_PROFILE_DEFAULTS = {
    "darts_cnn": {},
    "autodeeplab": {"net": "segmentation", "compare": ("AutoDeepLab",), "latency_for": ("found", "AutoDeepLab"),
                    "macs_at": ((1024, 2048),)},
}
_PROFILE_NETS = {"darts_cnn": ("cifar", "imagenet"), "autodeeplab": ("segmentation",)}


@dataclass(frozen=True)
class PipelineConfig:
    """The whole pipeline: raw search/train config dicts (validated by their own loaders) plus sections."""

    name: str
    search: dict[str, Any]
    train: dict[str, Any]
    export: ExportSection = ExportSection()
    profile: ProfileSection = ProfileSection()
    data_dir: str | None = None
    source: str = "(built-in demo)"
    space: str = "darts_cnn"


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


def _check_sizes(sizes: Any, where: str) -> None:
    for size in sizes:
        if not (isinstance(size, tuple) and len(size) == 2 and all(isinstance(d, int) and d > 0 for d in size)):
            raise ConfigError(f"pipeline config: {where} must hold [height, width] pairs of positive integers, got {size!r}")


def _stage_dict(data: dict[str, Any], key: str, base_dir: Path) -> dict[str, Any]:
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
    for name, value in section.items():
        if isinstance(value, dict) and isinstance(merged.get(name), dict):
            merged[name] = {**merged[name], **value}
        else:
            merged[name] = value
    return merged


def pipeline_config_from_dict(data: dict[str, Any], base_dir: Path, source: str) -> PipelineConfig:
    """Validate a pipeline config mapping."""
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"pipeline config {source}: unknown section '{unknown[0]}' (known: {', '.join(_SECTIONS)})")
    space = data.get("space", "darts_cnn")
    if space not in SPACES:
        raise ConfigError(f"pipeline config {source}: unknown space {space!r} (known: {', '.join(SPACES)}; "
                          f"recurrent cells use a file with search_run/train_run sections, e.g. configs/rnn_demo.yaml)")
    export = _section(ExportSection, data.get("export"), "export")
    profile = _section(ProfileSection, data.get("profile"), "profile", _PROFILE_DEFAULTS[space])
    if profile.net not in _PROFILE_NETS[space]:
        raise ConfigError(f"pipeline config: profile.net must be one of {', '.join(_PROFILE_NETS[space])} for the "
                          f"{space} space, got {profile.net!r}")
    _check_sizes(profile.macs_at, "profile.macs_at")
    if profile.input_size is not None:
        _check_sizes((profile.input_size,), "profile.input_size")
    config = PipelineConfig(
        space=space,
        name=str(data.get("name") or Path(source).stem),
        search=_stage_dict(data, "search", base_dir),
        train=_stage_dict(data, "train", base_dir),
        export=export,
        profile=profile,
        data_dir=data.get("data_dir"),
        source=source,
    )
    validate_stage_configs(config)
    return config


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


def is_recurrent_pipeline(path: str | os.PathLike[str]) -> bool:
    """True for a recurrent-cell pipeline file (sections search_run/train_run; run by nasdeploy.rnn_pipeline)."""
    data = load_yaml(Path(path))
    return "search_run" in data or "train_run" in data


def validate_stage_configs(config: PipelineConfig) -> tuple[Any, Any]:
    """The search and train sections validated by their space's own loaders (errors name the section)."""
    if config.space == "autodeeplab":
        from nasdeploy.search.autodeeplab_loop import adl_search_config_from_dict
        from nasdeploy.train.segmentation_loop import seg_train_config_from_dict

        return adl_search_config_from_dict(config.search), seg_train_config_from_dict(config.train)
    from nasdeploy.search.config import search_config_from_dict
    from nasdeploy.train.config import train_config_from_dict

    return search_config_from_dict(config.search), train_config_from_dict(config.train)
