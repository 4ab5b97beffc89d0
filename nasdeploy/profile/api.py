"""One call to profile a model, a genotype (registry name or file) or an .onnx file."""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from nasdeploy.errors import ConfigError
from nasdeploy.profile.complexity import Complexity, model_complexity
from nasdeploy.profile.environment import collect_environment
from nasdeploy.export.onnx import export_onnx
from nasdeploy.export.target import deploy_target, network_for
from nasdeploy.profile.latency import ORT_BACKENDS, measure_latency, parse_backends
from nasdeploy.profile.mobile import MobileVerdict, mobile_verdict
from nasdeploy.profile.protocol import LatencyConfig, LatencyResult
from nasdeploy.utils.files import write_json_atomic
from nasdeploy.utils.limits import check_input_size

REPORT_FORMAT = "nasdeploy.profile"
REPORT_VERSION = 1


@dataclass(frozen=True)
class ProfileResult:
    """Everything measured about one target: complexity, mobile verdict, latency per backend."""

    name: str
    source: str  # "genotype" | "onnx" | "model"
    net: dict[str, Any] | None  # family and sizes of a built network (None for .onnx / custom models)
    complexity: Complexity
    mobile: MobileVerdict
    latency: dict[str, LatencyResult] = field(default_factory=dict)
    latency_config: LatencyConfig | None = None
    environment: dict[str, Any] | None = None

    @property
    def params(self) -> int:
        """Parameters without auxiliary heads."""
        return self.complexity.params

    @property
    def macs(self) -> int:
        """Per-sample multiply-accumulates (see Complexity.convention)."""
        return self.complexity.macs

    def to_dict(self, include_environment: bool = True) -> dict[str, Any]:
        """JSON-able form: integer params/macs at the top, then breakdowns, latency and environment."""
        c = self.complexity
        out: dict[str, Any] = {
            "name": self.name,
            "source": self.source,
            "net": self.net,
            "input_shape": list(c.input_shape),
            "params": c.params,
            "params_with_aux": c.params_with_aux,
            "macs": c.macs,
            "macs_convention": c.convention,
            "counter": c.counter,
            "mobile_setting": self.mobile.to_dict(),
            "activations": c.activations.to_dict() if c.activations else None,
            "breakdown": {"stages": c.to_dict()["stages"], "ops": c.to_dict()["ops"]},
            "latency": {
                "config": _latency_config_dict(self.latency_config),
                "results": {name: r.to_dict() for name, r in self.latency.items()},
            },
        }
        if include_environment:
            out["environment"] = self.environment
        return out


def _note(message: str) -> None:
    """A progress line on stderr that does not break tqdm bars."""
    import sys

    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def _latency_config_dict(cfg: LatencyConfig | None) -> dict[str, Any] | None:
    if cfg is None:
        return None
    d = asdict(cfg)
    d.pop("progress", None)
    d["unit"] = "ms per batch"
    return d


def _input_shape(input_size: int | Sequence[int] | None, default: Sequence[int] | None, what: str) -> tuple[int, ...]:
    """(C, H, W) from an int S (square, default channels), a full (C, H, W), or the default."""
    if input_size is None:
        if default is None:
            raise ConfigError(f"no input size known for {what}; pass input_size (--input-size)")
        return tuple(int(d) for d in default)
    if isinstance(input_size, int):
        channels = int(default[0]) if default else 3
        shape: tuple[int, ...] = (channels, input_size, input_size)
    else:
        shape = tuple(int(d) for d in input_size)
    if any(d < 1 for d in shape):
        raise ConfigError(f"input size must be positive, got {shape}")
    check_input_size("input size", shape[-2], shape[-1])
    return shape


def profile_model(
    model: nn.Module,
    input_size: int | Sequence[int] | None = None,
    *,
    name: str | None = None,
    latency: str | Sequence[str] | None = None,
    latency_config: LatencyConfig | None = None,
    onnx_path: str | os.PathLike[str] | None = None,
    activations: bool = True,
    environment: dict[str, Any] | None = None,
    _source: str = "model",
    _net: dict[str, Any] | None = None,
) -> ProfileResult:
    """Profile a PyTorch model: params, per-sample MACs, breakdowns, mobile verdict, latency.

    onnxruntime backends use `onnx_path` when given, else a temporary export of the model.
    """
    backends = parse_backends(latency)
    cfg = latency_config or LatencyConfig()
    default = getattr(getattr(model, "default_cfg", None), "input_size", None)
    shape = _input_shape(input_size, default, name or type(model).__name__)
    complexity = model_complexity(model, shape, activations=activations)
    results: dict[str, LatencyResult] = {}
    if backends:
        if onnx_path is None and any(b in ORT_BACKENDS for b in backends):
            with tempfile.TemporaryDirectory(prefix="nasdeploy-profile-") as tmp:
                if cfg.progress:
                    _note(f"exporting {name or type(model).__name__} to ONNX for onnxruntime timing")
                # onnxruntime fuses Conv+BatchNorm when it loads the model, so folding first times the same graph;
                # it makes the export of a DARTS ImageNet net ~20% faster (measured).
                from nasdeploy.export.batchnorm_fold import fold_batchnorm

                exported = export_onnx(fold_batchnorm(model)[0], Path(tmp) / "model.onnx", input_size=shape,
                                       dynamic_spatial=False)
                results = measure_latency(backends, shape, cfg, model=model, onnx_path=exported)
        else:
            results = measure_latency(backends, shape, cfg, model=model, onnx_path=onnx_path)
    return ProfileResult(
        name=name or type(model).__name__,
        source=_source,
        net=_net,
        complexity=complexity,
        mobile=mobile_verdict(complexity.macs, shape),
        latency=results,
        latency_config=cfg if backends else None,
        environment=environment if environment is not None else collect_environment(),
    )


def profile_onnx(
    path: str | os.PathLike[str],
    input_size: int | Sequence[int] | None = None,
    *,
    name: str | None = None,
    latency: str | Sequence[str] | None = None,
    latency_config: LatencyConfig | None = None,
    environment: dict[str, Any] | None = None,
) -> ProfileResult:
    """Profile an .onnx file: params from initializers, MACs from the graph, onnxruntime latency."""
    from nasdeploy.profile.onnx_complexity import onnx_complexity

    backends = parse_backends(latency)
    cfg = latency_config or LatencyConfig()
    shape_arg = (3, input_size, input_size) if isinstance(input_size, int) else input_size
    complexity = onnx_complexity(path, shape_arg)
    results = measure_latency(backends, complexity.input_shape, cfg, onnx_path=path) if backends else {}
    return ProfileResult(
        name=name or Path(path).name,
        source="onnx",
        net=None,
        complexity=complexity,
        mobile=mobile_verdict(complexity.macs, complexity.input_shape),
        latency=results,
        latency_config=cfg if backends else None,
        environment=environment if environment is not None else collect_environment(),
    )


def is_onnx_target(target: object) -> bool:
    """True for a path to an .onnx file (by extension)."""
    return isinstance(target, (str, os.PathLike)) and os.fspath(target).lower().endswith(".onnx")


def profile_target(
    target: Any,
    *,
    net: str | None = None,
    channels: int | None = None,
    layers: int | None = None,
    num_classes: int | None = None,
    input_size: int | Sequence[int] | None = None,
    latency: str | Sequence[str] | None = None,
    latency_config: LatencyConfig | None = None,
    environment: dict[str, Any] | None = None,
    onnx_path: str | os.PathLike[str] | None = None,
) -> ProfileResult:
    """Profile a registry name, a genotype (file or object) or a checkpoint built as network `net`, or an .onnx file.

    `net` defaults to a checkpoint's, else the ImageNet mobile setting for DARTS CNN genotypes; a checkpoint
    gives the sizes. onnxruntime backends time `onnx_path` when given, else a temporary export.
    """
    if is_onnx_target(target):
        return profile_onnx(target, input_size, latency=latency, latency_config=latency_config, environment=environment)
    from nasdeploy.export.source import build_export_model
    from nasdeploy.nets import build_network, get_net_config

    resolved = deploy_target(target)
    net = network_for(resolved, net, prefer="imagenet")
    genotype = resolved.genotype
    hw = None if input_size is None else _input_shape(input_size, None, "the target")[-2:]
    if resolved.checkpoint is not None:
        model = build_export_model(genotype, net=net, checkpoint=resolved.checkpoint, channels=channels, layers=layers,
                                   num_classes=num_classes, input_size=hw).model
    else:
        # Count the auxiliary head separately where the family has one (the DARTS CNN nets).
        extra = {"auxiliary": True} if get_net_config(net).genotype_kind == "cnn_cell" else {}
        model = build_network(genotype, net, channels=channels, layers=layers, num_classes=num_classes,
                              input_size=hw, **extra)
    built = model.default_cfg
    net_info = {"family": built.name, "channels": built.channels, "layers": built.layers, "num_classes": built.num_classes}
    label = genotype.name or ("genotype" if hasattr(target, "kind") else Path(resolved.given).stem)
    return profile_model(model, input_size, name=label, latency=latency, latency_config=latency_config,
                         onnx_path=onnx_path, environment=environment, _source="genotype", _net=net_info)


def profile_targets(targets: Sequence[Any], **kwargs: Any) -> list[ProfileResult]:
    """profile_target for each target, with the environment collected once."""
    if not targets:
        raise ConfigError("no targets to profile")
    parse_backends(kwargs.get("latency"))  # fail on a bad backend name before any work
    env = kwargs.pop("environment", None) or collect_environment()
    return [profile_target(t, environment=env, **kwargs) for t in targets]


def report_dict(results: Sequence[ProfileResult]) -> dict[str, Any]:
    """The JSON report: format tag, environment once, one object per target."""
    env = results[0].environment if results else collect_environment()
    return {"format": REPORT_FORMAT, "version": REPORT_VERSION, "environment": env,
            "targets": [r.to_dict(include_environment=False) for r in results]}


def write_report_json(path: str | os.PathLike[str], results: Sequence[ProfileResult]) -> Path:
    """Write the JSON report atomically."""
    return write_json_atomic(path, report_dict(results))
