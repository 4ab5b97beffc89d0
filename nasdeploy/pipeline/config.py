"""Pipeline configuration: one YAML file with search, train, export and profile sections."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from nasdeploy.errors import ConfigError
from nasdeploy.utils.yamlconfig import apply_overrides, load_yaml

DEMO_CONFIG = "demo.yaml"
_SECTIONS = ("name", "data_dir", "search", "train", "export", "profile")


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


def _section(cls: type, data: Any, where: str) -> Any:
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"pipeline config: '{where}' must be a mapping, got {type(data).__name__}")
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"pipeline config: unknown key '{where}.{unknown[0]}' (known: {', '.join(sorted(known))})")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**values)


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
    export = _section(ExportSection, data.get("export"), "export")
    profile = _section(ProfileSection, data.get("profile"), "profile")
    if profile.net not in ("cifar", "imagenet"):
        raise ConfigError(f"pipeline config: profile.net must be 'cifar' or 'imagenet', got {profile.net!r}")
    return PipelineConfig(
        name=str(data.get("name") or Path(source).stem),
        search=_stage_dict(data, "search", base_dir),
        train=_stage_dict(data, "train", base_dir),
        export=export,
        profile=profile,
        data_dir=data.get("data_dir"),
        source=source,
    )


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
