"""One call to profile a model, a genotype (registry name or file) or an .onnx file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from nasdeploy.errors import ConfigError
from nasdeploy.profile.complexity import Complexity, model_complexity
from nasdeploy.profile.environment import collect_environment
from nasdeploy.export.onnx import export_onnx
from nasdeploy.export.target import deploy_target, network_for
from nasdeploy.profile.latency import ORT_BACKENDS, LatencySubject, compare_latency, parse_backends
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


def _latency_subject(label: str, model: nn.Module | None, onnx_path: str | os.PathLike[str] | None,
                     shape: tuple[int, ...], backends: Sequence[str], cfg: LatencyConfig,
                     stack: contextlib.ExitStack) -> LatencySubject:
    """What compare_latency times for one model: onnxruntime backends use onnx_path, else a temporary export."""
    if model is not None and onnx_path is None and any(b in ORT_BACKENDS for b in backends):
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="nasdeploy-profile-"))
        if cfg.progress:
            _note(f"exporting {label} to ONNX for onnxruntime timing")
        # onnxruntime fuses Conv+BatchNorm when it loads the model, so folding first times the same graph;
        # it makes the export of a DARTS ImageNet net ~20% faster (measured).
        from nasdeploy.export.batchnorm_fold import fold_batchnorm

        onnx_path = export_onnx(fold_batchnorm(model)[0], Path(tmp) / "model.onnx", input_size=shape,
                                dynamic_spatial=False)
    return LatencySubject(label, tuple(backends), model, onnx_path)


def measure_models(items: Sequence[tuple[str, nn.Module | None, str | os.PathLike[str] | None, tuple[int, ...]]],
                   backends: Sequence[str], cfg: LatencyConfig) -> list[dict[str, LatencyResult]]:
    """Latency of several (label, model, onnx_path, input shape), compared models timed in turns (A B A B ...).

    Models of the same input shape share one alternated window (nasdeploy.profile.latency.compare_latency).
    """
    if not backends:
        return [{} for _ in items]
    labels = [label if [i[0] for i in items].count(label) == 1 else f"{label} #{k + 1}"
              for k, (label, *_rest) in enumerate(items)]
    out: dict[str, dict[str, LatencyResult]] = {}
    with contextlib.ExitStack() as stack:
        subjects = [(shape, _latency_subject(label, model, onnx, shape, backends, cfg, stack))
                    for label, (_, model, onnx, shape) in zip(labels, items)]
        for shape in dict.fromkeys(shape for shape, _ in subjects):
            out.update(compare_latency([s for sh, s in subjects if sh == shape], shape, cfg))
    return [out[label] for label in labels]


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
    result = _complexity_of_model(model, input_size, name, environment, _source, _net, activations)
    return _with_latency([(result, model, onnx_path)], latency, latency_config)[0]


def _complexity_of_model(model: nn.Module, input_size: int | Sequence[int] | None, name: str | None,
                         environment: dict[str, Any] | None, source: str, net: dict[str, Any] | None,
                         activations: bool = True) -> ProfileResult:
    """A ProfileResult without latency: params, MACs, breakdowns, mobile verdict."""
    default = getattr(getattr(model, "default_cfg", None), "input_size", None)
    shape = _input_shape(input_size, default, name or type(model).__name__)
    complexity = model_complexity(model, shape, activations=activations)
    return ProfileResult(name=name or type(model).__name__, source=source, net=net, complexity=complexity,
                         mobile=mobile_verdict(complexity.macs, shape),
                         environment=environment if environment is not None else collect_environment())


def _with_latency(built: Sequence[tuple[ProfileResult, nn.Module | None, str | os.PathLike[str] | None]],
                  latency: str | Sequence[str] | None, cfg: LatencyConfig | None) -> list[ProfileResult]:
    """The results with their latency, every model timed in one alternated measurement per input shape."""
    backends = parse_backends(latency)
    cfg = cfg or LatencyConfig()
    measured = measure_models([(r.name, model, onnx, r.complexity.input_shape) for r, model, onnx in built],
                              backends, cfg)
    return [replace(r, latency=m, latency_config=cfg if backends else None) for (r, _, _), m in zip(built, measured)]


def _complexity_of_onnx(path: str | os.PathLike[str], input_size: int | Sequence[int] | None, name: str | None,
                        environment: dict[str, Any] | None) -> ProfileResult:
    from nasdeploy.profile.onnx_complexity import onnx_complexity

    shape_arg = (3, input_size, input_size) if isinstance(input_size, int) else input_size
    complexity = onnx_complexity(path, shape_arg)
    return ProfileResult(name=name or Path(path).name, source="onnx", net=None, complexity=complexity,
                         mobile=mobile_verdict(complexity.macs, complexity.input_shape),
                         environment=environment if environment is not None else collect_environment())


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
    result = _complexity_of_onnx(path, input_size, name, environment)
    return _with_latency([(result, None, path)], latency, latency_config)[0]


def is_onnx_target(target: object) -> bool:
    """True for a path to an .onnx file (by extension)."""
    return isinstance(target, (str, os.PathLike)) and os.fspath(target).lower().endswith(".onnx")


def _build_target(target: Any, *, net: str | None = None, channels: int | None = None, layers: int | None = None,
                  num_classes: int | None = None, input_size: int | Sequence[int] | None = None,
                  environment: dict[str, Any] | None = None, onnx_path: str | os.PathLike[str] | None = None,
                  ) -> tuple[ProfileResult, nn.Module | None, str | os.PathLike[str] | None]:
    """(result without latency, model or None, the ONNX file onnxruntime backends time) of one target."""
    if is_onnx_target(target):
        return _complexity_of_onnx(target, input_size, None, environment), None, target
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
    return _complexity_of_model(model, input_size, label, environment, "genotype", net_info), model, onnx_path


def profile_target(target: Any, *, latency: str | Sequence[str] | None = None,
                   latency_config: LatencyConfig | None = None, **kwargs: Any) -> ProfileResult:
    """Profile a registry name, a genotype (file or object) or a checkpoint built as network `net`, or an .onnx file.

    Keywords: net (default: a checkpoint's, else the ImageNet mobile setting for DARTS CNN genotypes; a
    checkpoint gives the sizes), channels, layers, num_classes, input_size, environment, onnx_path
    (onnxruntime backends time it when given, else a temporary export).
    """
    return _with_latency([_build_target(target, **kwargs)], latency, latency_config)[0]


def profile_targets(targets: Sequence[Any], *, latency: str | Sequence[str] | None = None,
                    latency_config: LatencyConfig | None = None, **kwargs: Any) -> list[ProfileResult]:
    """profile_target for each target, the environment collected once and the targets' latencies measured
    together, in turns (A B A B ...: a change of load touches every compared model alike)."""
    if not targets:
        raise ConfigError("no targets to profile")
    parse_backends(latency)  # fail on a bad backend name before any work
    kwargs["environment"] = kwargs.get("environment") or collect_environment()
    return _with_latency([_build_target(t, **kwargs) for t in targets], latency, latency_config)


def report_dict(results: Sequence[ProfileResult]) -> dict[str, Any]:
    """The JSON report: format tag, environment once, one object per target."""
    env = results[0].environment if results else collect_environment()
    return {"format": REPORT_FORMAT, "version": REPORT_VERSION, "environment": env,
            "targets": [r.to_dict(include_environment=False) for r in results]}


def write_report_json(path: str | os.PathLike[str], results: Sequence[ProfileResult]) -> Path:
    """Write the JSON report atomically."""
    return write_json_atomic(path, report_dict(results))
