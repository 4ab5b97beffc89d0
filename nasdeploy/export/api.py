"""One library call per export: model from genotype (+ checkpoint) -> the format steps of the table, verified.

export_model writes the float artifacts (ONNX only when a format or INT8 method needs it) and, with
options.int8, the INT8 ones; quantize_model runs the INT8 methods on their own from float artifacts exported
earlier. Either builds its whole output directory in a staging folder (nasdeploy.export.staging), so a
failure (bad input, exporter error, failed parity) leaves nothing behind.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from nasdeploy.data.factory import DataConfig
from nasdeploy.errors import ConfigError
from nasdeploy.export.artifacts import ExportResult, Progress, StepContext, write_export_report
from nasdeploy.export.formats import INT8_FLOAT_FORMAT, STEPS, check_formats, planned_steps
from nasdeploy.export.formats.int8 import NO_DATA, write_int8
from nasdeploy.export.options import ExportOptions
from nasdeploy.export.request import ExportRequest
from nasdeploy.export.samples import ExportData, dataset_config, prepare_export_data
from nasdeploy.export.source import build_export_model, default_name
from nasdeploy.export.staging import check_out_dir, staged_folder
from nasdeploy.export.target import deploy_target, network_for
from nasdeploy.export.untrained import UNTRAINED_NOTE, randomize_bn_statistics_
from nasdeploy.spaces.table import resolve

WEIGHTS = ("trained", "untrained")
DEFAULT_DATASETS = {"cifar": "cifar10", "imagenet": "imagefolder"}


def _check_weights(weights: str | None) -> None:
    if weights is not None and weights not in WEIGHTS:
        raise ConfigError(f"weights must be one of {', '.join(WEIGHTS)} or None, got {weights!r}")


def input_shape(model: nn.Module, options: ExportOptions) -> tuple[int, int, int]:
    """(C, H, W) of the export: options.input_size, else the network's default; checked against its minimum."""
    cfg = getattr(model, "default_cfg", None)
    if options.input_size is not None:
        height, width = options.input_size
    elif cfg is not None:
        height, width = cfg.input_size[1:]
    else:
        raise ConfigError("the model has no default_cfg; pass options.input_size=(H, W)")
    channels = cfg.input_size[0] if cfg is not None else 3
    min_size = getattr(model, "min_input_size", 1)
    if min(height, width) < min_size:
        raise ConfigError(f"input size {height}x{width} is below the network's minimum {min_size}")
    return channels, height, width


def _exported_weights(model: nn.Module, weights: str | None, shape: tuple[int, int, int], seed: int) -> nn.Module:
    """The model as exported: untrained weights get a copy with randomised BN statistics (seeded, so repeatable)."""
    if weights != "untrained":
        return model
    return randomize_bn_statistics_(copy.deepcopy(model), shape, seed=seed).eval()


def _complexity(model: nn.Module, shape: tuple[int, int, int]) -> tuple[dict[str, Any] | None, str | None]:
    """Params and per-sample MACs by the profiler's counter (nasdeploy.utils.model_cost: export imports no profile code)."""
    from nasdeploy.utils.model_cost import MAC_CONVENTION, count_params, forward_macs

    try:
        x = torch.randn((1, *shape), generator=torch.Generator().manual_seed(0))
        first = next(iter(model.parameters()), None)
        if first is not None:
            x = x.to(first.device, first.dtype if first.is_floating_point() else torch.float32)
        return {"params": count_params(model), "params_with_aux": count_params(model, include_aux=True),
                "macs": forward_macs(model, x), "convention": MAC_CONVENTION}, None
    except Exception as exc:  # a profiler problem must not fail an otherwise verified export
        return None, f"profiler failed: {type(exc).__name__}: {exc}"


def export_model(
    model: nn.Module,
    out_dir: str | os.PathLike[str],
    *,
    formats: Sequence[str] = ("onnx",),
    options: ExportOptions = ExportOptions(),
    data: ExportData | None = None,
    name: str = "model",
    metadata: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
    progress: Progress | None = None,
    weights: str | None = None,
    labels: Sequence[str] | None = None,
) -> ExportResult:
    """Export any single-image-input model to `out_dir` in the given formats, verifying each artifact.

    weights="untrained" (no checkpoint) randomises a copy's BN statistics first so parity means something;
    `data` (prepare_export_data) makes parity also run on validation images (with top-1 agreement) and is what
    options.int8 calibrates and scores on. `labels` (class names) go into the Triton labels file.
    """
    _check_weights(weights)
    fmts = check_formats(formats)
    shape = input_shape(model, options)
    if options.int8.methods and (data is None or data.calibration is None):
        raise ConfigError(NO_DATA)
    if data is not None:
        data.check_fits(model, shape[1])
    model = _exported_weights(model, weights, shape, options.seed)
    result = ExportResult(Path(out_dir), name, fmts, source=dict(source or {}), weights=weights, seed=options.seed)
    if weights == "untrained":
        result.notes.append(UNTRAINED_NOTE)
    if labels is None and data is not None:
        labels = data.info.classes
    n_classes = getattr(getattr(model, "default_cfg", None), "num_classes", 0)
    if labels is not None and len(labels) != n_classes:
        result.notes.append(f"ignored {len(labels)} class labels: the network has {n_classes} outputs")
        labels = None
    with staged_folder(out_dir, "export", overwrite=options.overwrite) as stage:
        ctx = StepContext(stage, model, result, options, shape, progress or (lambda _msg: None), data,
                          metadata or {}, labels)
        result.complexity, note = _complexity(model, shape)
        if note:
            result.notes.append(note)
        for step in planned_steps(fmts, options.int8.methods):
            resolve(STEPS[step].run)(ctx)
        write_export_report(stage, result)
    return result


def quantize_model(
    model: nn.Module,
    out_dir: str | os.PathLike[str],
    *,
    onnx_path: str | os.PathLike[str] | None = None,
    pte_path: str | os.PathLike[str] | None = None,
    options: ExportOptions,
    data: ExportData,
    name: str = "model",
    source: dict[str, Any] | None = None,
    progress: Progress | None = None,
    weights: str | None = None,
) -> ExportResult:
    """The INT8 methods of options.int8 on their own, from float artifacts exported earlier, into `out_dir`.

    "ort" quantizes `onnx_path` (a verified model.onnx), "executorch" re-quantizes `model` with PT2E and
    scores it against the float `pte_path`; `data` gives the calibration and validation images. Writes
    model_int8.onnx / model_int8.pte (+ .pte.json) and quantization.json atomically: a failure leaves no
    `out_dir` (a method that cannot quantize the net is a "failed" entry with one line, not an error).
    """
    _check_weights(weights)
    if not options.int8.methods:
        raise ConfigError("quantize_model needs at least one INT8 method in options.int8.methods (ort, executorch)")
    floats = {"onnx": (onnx_path, "model.onnx"), "executorch": (pte_path, "model.pte")}
    artifacts: dict[str, Path | None] = {}
    for method in options.int8.methods:
        path, what = floats[INT8_FLOAT_FORMAT[method]]
        if path is None or not Path(path).is_file():
            raise ConfigError(f"INT8 '{method}' needs the float {what}: "
                              + (f"{path} is missing" if path is not None else "none was given"))
        artifacts[INT8_FLOAT_FORMAT[method]] = Path(path)
    shape = input_shape(model, options)
    if data.calibration is None:
        raise ConfigError(NO_DATA)
    data.check_fits(model, shape[1])
    model = _exported_weights(model, weights, shape, options.seed)
    result = ExportResult(Path(out_dir), name, (), source=dict(source or {}), weights=weights, seed=options.seed)
    with staged_folder(out_dir, "export", overwrite=options.overwrite) as stage:
        if "executorch" in options.int8.methods:
            from nasdeploy.export.executorch import import_executorch

            import_executorch()
        write_int8(StepContext(stage, model, result, options, shape, progress or (lambda _msg: None), data,
                               artifacts=artifacts))
    return result


def export_target(request: ExportRequest, progress: Progress | None = None) -> ExportResult:
    """Export a genotype's network (fresh or from a checkpoint) as verified ONNX / ExecuTorch / TensorRT / Triton artifacts.

    The export adapter of the image spaces (darts_cnn, autodeeplab) in the table of spaces. request.net
    defaults to a checkpoint target's, else cifar; the dataset (default: the checkpoint's, else cifar10 for
    cifar, imagefolder for imagenet) gives parity on validation images and the INT8 samples. Without a
    checkpoint the weights are untrained and the parity reports say so.
    """
    options, int8 = request.options, request.options.int8.methods
    if int8 and not request.wants_data:
        raise ConfigError(NO_DATA)
    from nasdeploy.genotypes import genotype_to_dict

    resolved = deploy_target(request.target, request.checkpoint)
    net = network_for(resolved, request.net, prefer="cifar")
    name = options.name or default_name(resolved.genotype.name, net)
    out = Path(request.out_dir) if request.out_dir is not None else Path("exports") / name
    check_out_dir(out, options.overwrite)  # checked again when staging; this one saves building the model
    sizes = request.sizes
    src = build_export_model(resolved.genotype, net=net, checkpoint=resolved.checkpoint, channels=sizes.channels,
                             layers=sizes.layers, num_classes=sizes.num_classes, input_size=options.input_size,
                             seed=options.seed)
    prepared = None
    if request.wants_data:
        height = input_shape(src.model, options)[1]
        config = request.data or _dataset_config(src.dataset or {}, net, request.dataset, request.data_dir, height)
        prepared = prepare_export_data(config, src.model, height, seed=options.seed, sizes=request.samples,
                                       int8=bool(int8))
    source = {"target": resolved.given, "genotype": resolved.genotype.name, "net": net, "checkpoint": src.checkpoint,
              "net_kwargs": src.net_kwargs, "genotype_dict": genotype_to_dict(resolved.genotype), "dataset": src.dataset}
    metadata = {"checkpoint": Path(src.checkpoint).name} if src.checkpoint else {}
    labels = (src.dataset or {}).get("classes") or None
    return export_model(src.model, out, formats=request.formats, options=options, data=prepared, name=name,
                        metadata=metadata, source=source, progress=progress,
                        weights="trained" if src.checkpoint else "untrained", labels=labels)


def _dataset_config(saved: dict[str, Any], net: str, dataset: str | None, data_dir: str | os.PathLike[str] | None,
                    size: int) -> DataConfig:
    """The dataset to check and calibrate on: the one asked for, else the checkpoint's, else the net's default."""
    name = dataset or saved.get("name") or DEFAULT_DATASETS.get(net)
    if name is None:
        raise ConfigError(f"no default dataset for net '{net}'; pass --dataset")
    same = saved.get("name") == name
    return dataset_config(name, data_dir, size, mean=saved.get("mean") if same else None,
                          std=saved.get("std") if same else None)
