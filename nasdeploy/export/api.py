"""One library call per export: model from genotype (+ checkpoint), ONNX + parity, ExecuTorch, INT8, TensorRT, Triton.

export_model / export_target write the float artifacts (ONNX only when a format or INT8 path needs it);
quantize_model runs the INT8 paths on their own from float artifacts exported earlier. Either writes its
whole output directory into a temporary sibling and renames it at the end, so a failure (bad input,
exporter error, failed parity) leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from nasdeploy._version import __version__
from nasdeploy.errors import CheckpointError, ConfigError, MissingDependencyError
from nasdeploy.export.onnx import check_opset, export_onnx, read_onnx_metadata
from nasdeploy.export.parity import DEFAULT_ATOL, DEFAULT_BATCH_SIZES, DEFAULT_RTOL, ParityReport, check_onnx_parity
from nasdeploy.utils.files import set_default_permissions, write_json_atomic, write_text_atomic

FORMATS = ("onnx", "tensorrt", "triton", "executorch")
INT8_METHODS = ("ort", "executorch")  # onnxruntime static QDQ; PT2E XNNPACKQuantizer -> INT8 .pte
ONNX_USERS = ("onnx", "tensorrt", "triton")  # formats built from (or being) the ONNX model; INT8 "ort" needs it too


def needs_onnx(formats: Sequence[str], int8: Sequence[str] = ()) -> bool:
    """Whether an export of `formats` with INT8 paths `int8` has to write the ONNX model."""
    return any(f in ONNX_USERS for f in formats) or "ort" in int8
WEIGHTS = ("trained", "untrained")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class ExportOptions:
    """Everything about an export except the model and where it goes (validated on creation)."""

    input_size: tuple[int, int] | None = None  # (H, W); None = the network's default
    opset: int | None = None
    dynamic_batch: bool = True
    dynamic_spatial: bool = True
    simplify: bool = False
    external_data: bool | None = None  # None = only when the model is too large for one file
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL
    seed: int | None = None
    fp16: bool = False
    max_batch: int = 32  # TensorRT profile max and Triton max_batch_size
    opt_batch: int = 8
    workspace_mib: int = 1024
    instance_kind: str = "gpu"
    instance_count: int = 1
    name: str | None = None
    overwrite: bool = False
    int8: tuple[str, ...] = ()  # INT8 paths to run: "ort" and/or "executorch"; they need `data`
    data: Any = None  # nasdeploy.data.factory.DataConfig: parity on real images, calibration, validation
    calibration_images: int = 128  # from the training split (eval transform, seeded random sample)
    validation_images: int = 500  # from the test split, for float vs INT8 accuracy
    parity_images: int = 64  # validation images compared between PyTorch and each runtime
    latency_warmup: int = 5  # INT8 report latency (batch 1, one thread)
    latency_runs: int = 30
    # Times an exported file: (backend, path, (C, H, W), *, warmup, runs, seed) -> latency dict. The callers (CLI,
    # pipeline) pass nasdeploy.profile.latency.time_model_file; export itself never imports the profiler.
    latency_timer: Any = None

    def __post_init__(self) -> None:
        if self.input_size is not None and (
            len(self.input_size) != 2 or not all(isinstance(s, int) and s >= 1 for s in self.input_size)
        ):
            raise ConfigError(f"input_size must be (height, width) of positive integers, got {self.input_size!r}")
        check_opset(self.opset)
        if not self.batch_sizes or any(not isinstance(b, int) or b < 1 for b in self.batch_sizes):
            raise ConfigError(f"parity batch sizes must be positive integers, got {self.batch_sizes!r}")
        if not 1 <= self.opt_batch <= self.max_batch:
            raise ConfigError(f"need 1 <= opt_batch <= max_batch, got opt_batch={self.opt_batch}, max_batch={self.max_batch}")
        if self.rtol < 0 or self.atol < 0:
            raise ConfigError("parity tolerances must be >= 0")
        if self.instance_kind not in ("gpu", "cpu"):
            raise ConfigError(f"instance_kind must be 'gpu' or 'cpu', got {self.instance_kind!r}")
        if self.workspace_mib < 1 or self.instance_count < 1:
            raise ConfigError("workspace_mib and instance_count must be >= 1")
        bad = [m for m in self.int8 if m not in INT8_METHODS]
        if bad:
            raise ConfigError(f"unknown INT8 method(s) {bad}; choose from: {', '.join(INT8_METHODS)}")
        if min(self.calibration_images, self.validation_images, self.parity_images, self.latency_runs) < 1 or self.latency_warmup < 0:
            raise ConfigError("calibration/validation/parity image counts and latency runs must be >= 1 (warm-up >= 0)")
        if self.name is not None and not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", self.name):
            raise ConfigError(f"invalid model name {self.name!r}: use letters, digits, '_', '-' and '.'")


@dataclass
class ExportResult:
    """What an export produced: files (relative to out_dir), parity reports, skipped formats and notes."""

    out_dir: Path
    name: str
    formats: tuple[str, ...]
    files: dict[str, str] = field(default_factory=dict)
    parity: dict[str, ParityReport] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)
    onnx: dict[str, Any] = field(default_factory=dict)
    complexity: dict[str, Any] | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)  # method -> QuantizationResult
    weights: str | None = None  # "trained" | "untrained" | None (as given)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (written as export.json)."""
        import onnx
        import onnxruntime
        import torch

        out = asdict(self)
        out["out_dir"] = str(self.out_dir)
        out["parity"] = {k: v.to_dict() for k, v in self.parity.items()}
        out["quantization"] = {k: v.to_dict() for k, v in self.quantization.items()}
        out["versions"] = {"nasdeploy": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                           "onnxruntime": onnxruntime.__version__}
        if "executorch" in self.formats or "executorch" in self.quantization:
            from nasdeploy.export.executorch import executorch_version

            out["versions"]["executorch"] = executorch_version()
        return out

    def summary(self) -> str:
        """Human-readable summary: files, parity tables, skipped formats."""
        lines = [f"exported '{self.name}' to {self.out_dir}"]
        lines += [f"  {role:<18} {path}" for role, path in self.files.items()]
        if self.onnx:
            axes = ", ".join(k for k, v in self.onnx.get("dynamic_axes", {}).items() if v) or "none"
            lines.append(f"  ONNX opset {self.onnx.get('opset')}, input {self.onnx.get('input_shape')}, dynamic axes: {axes}")
        if self.complexity:
            lines.append(f"  params {self.complexity['params']:,}, MACs {self.complexity['macs'] / 1e6:.1f}M ({self.complexity['convention']})")
        for report in self.parity.values():
            lines.append(report.format_table())
        lines += [q.summary() for q in self.quantization.values()]
        lines += [f"  skipped {fmt}: {why}" for fmt, why in self.skipped.items()]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


@dataclass(frozen=True)
class ExportSource:
    """A model ready to export and where it came from."""

    model: nn.Module
    genotype_name: str | None
    net: str
    checkpoint: str | None
    net_kwargs: dict[str, Any]
    dataset: dict[str, Any] | None = None  # the checkpoint's meta["dataset"] (name, classes, mean, std), if any


def _same_cells(a: Any, b: Any) -> bool:
    from nasdeploy.genotypes import genotype_to_dict

    da, db = genotype_to_dict(a), genotype_to_dict(b)
    da.pop("name", None)
    db.pop("name", None)
    return da == db


def _strip_module_prefix(state: dict[str, Any]) -> dict[str, Any]:
    # nn.DataParallel checkpoints (the reference ImageNet script) prefix every key with "module.".
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def _saved_net_kwargs(meta: dict[str, Any]) -> dict[str, Any]:
    """The network sizes a training run stored in its checkpoint meta, in build_network's names."""
    saved = dict(meta.get("net_kwargs") or {})
    if "filter_multiplier" in saved:  # Auto-DeepLab's F is the family's `channels`
        saved["channels"] = saved.pop("filter_multiplier")
    if "num_classes" in meta and "num_classes" not in saved:
        saved["num_classes"] = meta["num_classes"]
    return saved


def build_export_model(
    target: Any,
    *,
    net: str = "cifar",
    checkpoint: str | os.PathLike[str] | None = None,
    channels: int | None = None,
    layers: int | None = None,
    num_classes: int | None = None,
) -> ExportSource:
    """Build the network for `target` (registry name, genotype file or object) and load checkpoint weights.

    A nasdeploy checkpoint's meta (genotype, net, net_kwargs) must agree with the target and the given
    sizes; a plain state_dict loads into a network of the given (or default) sizes.
    """
    from nasdeploy.genotypes import genotype_from_dict, resolve_genotype
    from nasdeploy.nets import build_network, get_net_config
    from nasdeploy.utils.checkpoint import load_checkpoint, load_weights_into

    cfg = get_net_config(net)
    genotype = resolve_genotype(target, expected_kind=cfg.genotype_kind)
    requested = {"channels": channels, "layers": layers, "num_classes": num_classes}
    kwargs: dict[str, Any] = {k: v for k, v in requested.items() if v is not None}
    ckpt = None
    if checkpoint is not None:
        ckpt = load_checkpoint(checkpoint)
        meta = ckpt.get("meta") or {}
        where = f"checkpoint {checkpoint}"
        if meta.get("net") not in (None, net):
            raise CheckpointError(f"{where} is for net '{meta['net']}', not '{net}'")
        if meta.get("genotype") is not None:
            try:
                trained = genotype_from_dict(meta["genotype"], expected_kind=cfg.genotype_kind)
            except Exception as exc:
                raise CheckpointError(f"{where} has an unreadable genotype in its meta: {exc}") from None
            if not _same_cells(trained, genotype):
                label = trained.name or "a different genotype"
                raise CheckpointError(f"{where} was trained for {label}, which differs from the target '{genotype.name or 'genotype'}'")
        saved = _saved_net_kwargs(meta)
        for key, value in saved.items():
            if key in kwargs and kwargs[key] != value:
                raise CheckpointError(f"{where} has {key}={value}, but {key}={kwargs[key]} was requested")
            kwargs[key] = value
        ckpt["model"] = _strip_module_prefix(ckpt["model"])
        if cfg.genotype_kind == "cnn_cell":
            has_aux = any(k.startswith("auxiliary_head.") for k in ckpt["model"])
            kwargs["auxiliary"] = bool(saved.get("auxiliary", has_aux))
    elif cfg.genotype_kind == "cnn_cell":
        kwargs["auxiliary"] = False
    model = build_network(genotype, net, **kwargs)
    if ckpt is not None:
        load_weights_into(model, ckpt, source=f"checkpoint {checkpoint}")
    model.eval()
    dataset = (ckpt.get("meta") or {}).get("dataset") if ckpt is not None else None
    return ExportSource(model, genotype.name, net, str(checkpoint) if checkpoint else None, kwargs,
                        dataset=dataset if isinstance(dataset, dict) else None)


def _default_name(genotype_name: str | None, net: str) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", genotype_name or "genotype").strip("_") or "model"
    return f"{base}_{net}".lower()


def _complexity(model: nn.Module, input_shape: tuple[int, int, int]) -> tuple[dict[str, Any] | None, str | None]:
    """Params and per-sample MACs by the profiler's counter (nasdeploy.utils.model_cost: export imports no profile code)."""
    from nasdeploy.utils.model_cost import MAC_CONVENTION, count_params, forward_macs

    try:
        x = torch.randn((1, *input_shape), generator=torch.Generator().manual_seed(0))
        first = next(iter(model.parameters()), None)
        if first is not None:
            x = x.to(first.device, first.dtype if first.is_floating_point() else torch.float32)
        return {"params": count_params(model), "params_with_aux": count_params(model, include_aux=True),
                "macs": forward_macs(model, x), "convention": MAC_CONVENTION}, None
    except Exception as exc:  # a profiler problem must not fail an otherwise verified export
        return None, f"profiler failed: {type(exc).__name__}: {exc}"


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> Path:
    if out_dir.exists() and not overwrite:
        raise ConfigError(f"output directory already exists: {out_dir} (use overwrite / --overwrite to replace it)")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output path exists and is not a directory: {out_dir}")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    except (FileExistsError, NotADirectoryError):
        raise
    except OSError as exc:  # name the folder asked for, not the staging sibling
        raise type(exc)(exc.errno, f"cannot create the output folder: {(exc.strerror or str(exc)).lower()}", str(out_dir)) from None


def _readable_permissions(root: Path) -> None:
    """mkdtemp makes 0700 folders: give the tree the usual modes (0755 dirs, 0644 files, executables kept, less umask)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        if path.is_dir():
            path.chmod(0o777 & ~umask)
        else:
            executable = path.stat().st_mode & 0o100
            path.chmod((0o777 if executable else 0o666) & ~umask)


def _publish(staging: Path, out_dir: Path) -> None:
    """Move the finished staging folder onto out_dir (replacing an old one only after success)."""
    _readable_permissions(staging)
    if out_dir.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, trash / "old")
        os.replace(staging, out_dir)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, out_dir)


def _relocate_reports(stage: Path, result: ExportResult) -> None:
    """Parity reports name their model relative to the export folder, not the staging folder renamed onto it."""
    for role, report in list(result.parity.items()):
        path = Path(report.model_path)
        if path.is_absolute() and path.is_relative_to(stage):
            result.parity[role] = report = replace(report, model_path=str(path.relative_to(stage)))
            saved = result.files.get(f"{role}_parity")
            if saved:
                report.save(stage / saved)


def export_model(
    model: nn.Module,
    out_dir: str | os.PathLike[str],
    *,
    formats: Sequence[str] = ("onnx",),
    options: ExportOptions = ExportOptions(),
    name: str = "model",
    metadata: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
    progress: Progress | None = None,
    weights: str | None = None,
    labels: Sequence[str] | None = None,
) -> ExportResult:
    """Export any single-image-input model to `out_dir` in the given formats, verifying each artifact.

    weights="untrained" (no checkpoint) randomises a copy's BN statistics first so parity means something;
    options.data (a DataConfig) makes parity use validation images (with top-1 agreement) and enables INT8.
    `labels` (class names) go into the Triton labels file.
    """
    if weights is not None and weights not in WEIGHTS:
        raise ConfigError(f"weights must be one of {', '.join(WEIGHTS)} or None, got {weights!r}")
    fmts = tuple(dict.fromkeys(formats))
    unknown = [f for f in fmts if f not in FORMATS]
    if not fmts or unknown:
        raise ConfigError(f"unknown export format(s) {unknown or '(none)'}; choose from: {', '.join(FORMATS)}")
    say = progress or (lambda _msg: None)
    cfg = getattr(model, "default_cfg", None)
    channels, height, width = _input_shape(model, options)
    if options.int8 and options.data is None:
        raise ConfigError("INT8 needs calibration and validation images: give a dataset (--data-dir, or --dataset demo)")
    data = _ExportData.load(options, model, height) if options.data is not None else None
    model = _exported_weights(model, weights, (channels, height, width), options.seed)
    final = Path(out_dir)
    staging = _prepare_out_dir(final, options.overwrite)
    result = ExportResult(final, name, fmts, source=dict(source or {}), weights=weights)
    if weights == "untrained":
        from nasdeploy.export.parity import UNTRAINED_NOTE

        result.notes.append(UNTRAINED_NOTE)
    if labels is None and data is not None:
        labels = data.info.classes
    n_classes = getattr(cfg, "num_classes", 0) if cfg is not None else 0
    if labels is not None and len(labels) != n_classes:
        result.notes.append(f"ignored {len(labels)} class labels: the network has {n_classes} outputs")
        labels = None
    try:
        _export_into(staging, model, result, options, (channels, height, width), metadata or {}, say, data, labels)
        _relocate_reports(staging, result)
        write_json_atomic(staging / "export.json", result.to_dict())
        result.files["report"] = "export.json"
        set_default_permissions(staging)  # mkdtemp made it 0700
        _publish(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


def _input_shape(model: nn.Module, options: ExportOptions) -> tuple[int, int, int]:
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


def _exported_weights(model: nn.Module, weights: str | None, input_shape: tuple[int, int, int],
                      seed: int | None) -> nn.Module:
    """The model as exported: untrained weights get a copy with randomised BN statistics (seeded, so repeatable)."""
    if weights != "untrained":
        return model
    import copy

    from nasdeploy.export.parity import randomize_bn_statistics_

    return randomize_bn_statistics_(copy.deepcopy(model), input_shape, seed=seed or 0).eval()


def quantize_model(
    model: nn.Module,
    out_dir: str | os.PathLike[str],
    *,
    onnx_path: str | os.PathLike[str] | None = None,
    pte_path: str | os.PathLike[str] | None = None,
    options: ExportOptions,
    name: str = "model",
    source: dict[str, Any] | None = None,
    progress: Progress | None = None,
    weights: str | None = None,
) -> ExportResult:
    """The INT8 paths of options.int8 on their own, from float artifacts exported earlier, into `out_dir`.

    "ort" quantizes `onnx_path` (a verified model.onnx), "executorch" re-quantizes `model` with PT2E and
    scores it against the float `pte_path`; options.data gives the calibration and validation images.
    Writes model_int8.onnx / model_int8.pte (+ .pte.json) and quantization.json atomically: a failure
    leaves no `out_dir` (a path that cannot quantize the net is a "failed" entry with one line, not an error).
    """
    if weights is not None and weights not in WEIGHTS:
        raise ConfigError(f"weights must be one of {', '.join(WEIGHTS)} or None, got {weights!r}")
    if not options.int8:
        raise ConfigError("quantize_model needs at least one INT8 path in options.int8 (ort, executorch)")
    if options.data is None:
        raise ConfigError("INT8 needs calibration and validation images: give a dataset (--data-dir, or --dataset demo)")
    floats = {"ort": (onnx_path, "model.onnx"), "executorch": (pte_path, "model.pte")}
    for method in options.int8:
        path, what = floats[method]
        if path is None or not Path(path).is_file():
            raise ConfigError(f"INT8 '{method}' needs the float {what}: "
                              + (f"{path} is missing" if path is not None else "none was given"))
    say = progress or (lambda _msg: None)
    input_shape = _input_shape(model, options)
    data = _ExportData.load(options, model, input_shape[1])
    model = _exported_weights(model, weights, input_shape, options.seed)
    final = Path(out_dir)
    staging = _prepare_out_dir(final, options.overwrite)
    result = ExportResult(final, name, (), source=dict(source or {}), weights=weights)
    try:
        if "executorch" in options.int8:
            from nasdeploy.export.executorch import import_executorch

            import_executorch()
        _int8_step(staging, model, Path(onnx_path) if onnx_path else None, Path(pte_path) if pte_path else None,
                   result, options, input_shape, data, say)
        set_default_permissions(staging)
        _publish(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


@dataclass(frozen=True)
class _ExportData:
    """Real images for an export: validation batches for parity and accuracy, training batches for calibration."""

    info: Any  # DatasetInfo
    label: str
    parity: list[Any]
    validation: list[Any]
    calibration: list[Any]
    calibration_label: str
    validation_label: str

    @staticmethod
    def load(options: ExportOptions, model: nn.Module, height: int) -> "_ExportData":
        from nasdeploy.data.factory import build_dataset
        from nasdeploy.export.quantize import sample_batches

        cfg = options.data
        if not _is_classifier(model):
            raise ConfigError("validation data for the export is supported for classifiers only (segmentation: not yet)")
        _, info = build_dataset(cfg, "test", augment=False)
        classes = model.default_cfg.num_classes
        if info.num_classes != classes:
            raise ConfigError(f"dataset '{info.name}' has {info.num_classes} classes but the network outputs {classes}")
        if cfg.image_size != height:
            raise ConfigError(f"the dataset config's image_size {cfg.image_size} differs from the export input size {height}")
        seed = options.seed or 0
        n_val = max(options.validation_images if options.int8 else 0, options.parity_images)
        validation = sample_batches(cfg, "test", n_val, seed=seed)
        parity = sample_batches(cfg, "test", options.parity_images, seed=seed, batch_size=8)
        calibration = sample_batches(cfg, "train", options.calibration_images, seed=seed + 1) if options.int8 else []
        n_v = sum(len(y) for _, y in validation)
        n_c = sum(len(y) for _, y in calibration)
        where = f" in {cfg.data_dir}" if cfg.data_dir else ""
        return _ExportData(
            info, f"{sum(len(y) for _, y in parity)} validation images of {info.name}{where} (seed {seed})",
            parity, validation, calibration,
            f"{n_c} training-split images of {info.name} (eval transform, seed {seed + 1})",
            f"{n_v} validation images of {info.name} (seed {seed})",
        )


def _export_into(
    stage: Path, model: nn.Module, result: ExportResult, options: ExportOptions,
    input_shape: tuple[int, int, int], metadata: dict[str, Any], say: Progress,
    data: _ExportData | None = None, labels: Sequence[str] | None = None,
) -> None:
    complexity, note = _complexity(model, input_shape)
    result.complexity = complexity
    if note:
        result.notes.append(note)
    onnx_path = None
    if needs_onnx(result.formats, options.int8):
        onnx_path = _onnx_step(stage, model, result, options, input_shape, metadata, say, data)

    pte_path = None
    if "executorch" in result.formats or "executorch" in options.int8:
        pte_path = _executorch_step(stage, model, result, options, input_shape, data, say)
    if options.int8:
        assert data is not None
        _int8_step(stage, model, onnx_path, pte_path, result, options, input_shape, data, say)

    plan_path = None
    if "tensorrt" in result.formats:
        assert onnx_path is not None
        plan_path = _tensorrt_step(stage, model, onnx_path, result, options, input_shape, say)
    if "triton" in result.formats:
        assert onnx_path is not None
        _triton_step(stage, onnx_path, plan_path, result, options, input_shape, labels, say)


def _onnx_step(
    stage: Path, model: nn.Module, result: ExportResult, options: ExportOptions, input_shape: tuple[int, int, int],
    metadata: dict[str, Any], say: Progress, data: _ExportData | None,
) -> Path:
    """model.onnx with its parity report (random inputs at every batch size; validation images when given)."""
    channels, height, width = input_shape
    t0 = time.perf_counter()
    say(f"exporting ONNX ({'dynamic' if options.dynamic_batch else 'static'} batch, input {channels}x{height}x{width})")
    onnx_path = export_onnx(
        model, stage / "model.onnx", input_size=input_shape, dynamic_batch=options.dynamic_batch,
        dynamic_spatial=options.dynamic_spatial, opset=options.opset, simplify=options.simplify,
        external_data=options.external_data, output_names=("logits",) if _is_classifier(model) else None,
        metadata={"model_name": result.name, **metadata},
    )
    result.timings_s["onnx_export"] = round(time.perf_counter() - t0, 2)
    result.files["onnx"] = "model.onnx"
    if (stage / "model.onnx.data").exists():
        result.files["onnx_data"] = "model.onnx.data"
    meta = read_onnx_metadata(onnx_path)
    result.onnx = {
        "opset": int(meta["opset"]), "input_shape": meta["input_shape"], "dynamic_axes": json.loads(meta["dynamic_axes"]),
        "static_reason": meta.get("static_reason"), "simplified": options.simplify,
        "size_bytes": sum(p.stat().st_size for p in stage.glob("model.onnx*")),
    }
    t0 = time.perf_counter()
    say("checking ONNX parity in onnxruntime")
    report = check_onnx_parity(
        model, onnx_path, batch_sizes=options.batch_sizes, rtol=options.rtol, atol=options.atol, seed=options.seed,
        raise_on_failure=False,
    )
    result.timings_s["onnx_parity"] = round(time.perf_counter() - t0, 2)
    report = _with_weights(report, result.weights)
    result.parity["onnx"] = report
    if not report.passed:
        say(report.format_table())
    report.raise_for_failure()
    report.save(stage / "parity_onnx.json")
    result.files["onnx_parity"] = "parity_onnx.json"
    if data is not None:
        from nasdeploy.export.parity import onnxruntime_runner

        say(f"checking ONNX parity on {data.label}")
        run, names, label = onnxruntime_runner(onnx_path)
        _real_image_parity(stage, model, run, names, label, "onnx_validation", str(onnx_path), result, options, data, say)
    return onnx_path


def _with_weights(report: ParityReport, weights: str | None) -> ParityReport:
    import dataclasses

    return dataclasses.replace(report, weights=weights) if weights else report


def _real_image_parity(
    stage: Path, model: nn.Module, run: Any, names: Sequence[str], label: str, key: str, model_path: str,
    result: ExportResult, options: ExportOptions, data: _ExportData, say: Progress,
) -> ParityReport:
    from nasdeploy.export.parity import compare_on_batches

    report = compare_on_batches(
        model, run, [x for x, _ in data.parity], runtime=label, inputs=data.label, model_path=model_path,
        output_names=names, rtol=options.rtol, atol=options.atol, seed=options.seed or 0, weights=result.weights,
    )
    result.parity[key] = report
    if not report.passed:
        say(report.format_table())
    report.raise_for_failure()
    report.save(stage / f"parity_{key}.json")
    result.files[f"{key}_parity"] = f"parity_{key}.json"
    return report


def _executorch_step(
    stage: Path, model: nn.Module, result: ExportResult, options: ExportOptions,
    input_shape: tuple[int, int, int], data: _ExportData | None, say: Progress,
) -> Path:
    from nasdeploy.export import executorch as et
    from nasdeploy.export.parity import compare_on_batches, random_batches

    et.import_executorch()
    t0 = time.perf_counter()
    say(f"lowering to ExecuTorch (XNNPACK, batch 1, input {'x'.join(map(str, input_shape))})")
    pte = et.lower_to_pte(model, stage / "model.pte", input_shape)
    result.timings_s["executorch_export"] = round(time.perf_counter() - t0, 2)
    result.files["executorch"] = pte.name
    run, names, label = et.executorch_runner(pte)
    seed = options.seed if options.seed is not None else 0
    say("checking ExecuTorch parity in ExecuTorch's runtime")
    report = compare_on_batches(
        model, run, random_batches([(1, *input_shape)] * 4, seed), runtime=label,
        inputs=f"4 random-normal inputs of shape 1x{'x'.join(map(str, input_shape))} (seed {seed})",
        model_path=str(pte), output_names=names, rtol=options.rtol, atol=options.atol, seed=seed,
        notes=("batch 1 only: the program is exported at a static batch of 1 (the mobile case)",), weights=result.weights,
    )
    result.parity["executorch"] = report
    if not report.passed:
        say(report.format_table())
    report.raise_for_failure()
    report.save(stage / "parity_executorch.json")
    result.files["executorch_parity"] = "parity_executorch.json"
    if data is not None:
        say(f"checking ExecuTorch parity on {data.label}")
        _real_image_parity(stage, model, run, names, label, "executorch_validation", str(pte), result, options, data, say)
    result.files["executorch_metadata"] = et.write_pte_metadata(pte, _pte_metadata(result, input_shape, data, None)).name
    return pte


def _pte_metadata(result: ExportResult, input_shape: tuple[int, int, int], data: _ExportData | None,
                  quantization: dict[str, Any] | None) -> dict[str, Any]:
    """What an app needs beside the program: input layout, normalisation, classes, genotype and provenance."""
    dataset = result.source.get("dataset") or {}
    if data is not None:
        dataset = data.info.to_dict()
    return {
        "model_name": result.name, "input": {"shape": [1, *input_shape], "dtype": "float32", "layout": "NCHW"},
        "normalisation": ({"mean": list(dataset["mean"]), "std": list(dataset["std"]), "applied_to": "RGB in [0, 1]"}
                          if dataset.get("mean") is not None else None),
        "classes": list(dataset.get("classes") or []) or None, "genotype": result.source.get("genotype_dict"),
        "source": {k: v for k, v in result.source.items() if k not in ("genotype_dict", "dataset")},
        "weights": result.weights, "quantization": quantization, "delegate": "XNNPACK",
    }


def _int8_step(
    stage: Path, model: nn.Module, onnx_path: Path | None, pte_path: Path | None, result: ExportResult,
    options: ExportOptions, input_shape: tuple[int, int, int], data: _ExportData, say: Progress,
) -> None:
    """The INT8 paths of options.int8 into `stage`, from the float model.onnx / model.pte (in `stage` or elsewhere)."""
    from nasdeploy.export import quantize

    warmup, runs, seed, time_file = options.latency_warmup, options.latency_runs, options.seed or 0, options.latency_timer

    def timer(backend: str, path: Path, shape: tuple[int, int, int]) -> dict[str, Any]:
        return time_file(backend, path, shape, warmup=warmup, runs=runs, seed=seed)
    common = dict(input_shape=input_shape, timer=timer if time_file is not None else None, calib_label=data.calibration_label,
                  val_label=data.validation_label)
    if "ort" in options.int8:
        assert onnx_path is not None
        say(f"INT8 with onnxruntime static quantization (QDQ, per-channel), calibrated on {data.calibration_label}")
        res, secs = quantize.timed(lambda: quantize.quantize_with_ort(
            model, onnx_path, stage / "model_int8.onnx", data.calibration, data.validation, **common))
        result.timings_s["int8_ort"] = secs
        result.quantization["ort"] = res
        if res.status == "ok":
            result.files["onnx_int8"] = res.file
        say(res.summary())
    if "executorch" in options.int8:
        assert pte_path is not None
        say(f"INT8 with PT2E (XNNPACKQuantizer) -> .pte, calibrated on {data.calibration_label}")
        res, secs = quantize.timed(lambda: quantize.quantize_with_executorch(
            model, pte_path, stage / "model_int8.pte", data.calibration, data.validation, **common))
        result.timings_s["int8_executorch"] = secs
        result.quantization["executorch"] = res
        if res.status == "ok":
            from nasdeploy.export.executorch import write_pte_metadata

            result.files["executorch_int8"] = res.file
            meta = _pte_metadata(result, input_shape, data, {"scheme": res.scheme, "calibration": res.calibration})
            result.files["executorch_int8_metadata"] = write_pte_metadata(stage / res.file, meta).name
        say(res.summary())
    write_json_atomic(stage / "quantization.json", {k: v.to_dict() for k, v in result.quantization.items()})
    result.files["quantization_report"] = "quantization.json"


def _is_classifier(model: nn.Module) -> bool:
    cfg = getattr(model, "default_cfg", None)
    return cfg is not None and getattr(cfg, "num_classes", 0) > 0


def _tensorrt_step(
    stage: Path, model: nn.Module, onnx_path: Path, result: ExportResult, options: ExportOptions,
    input_shape: tuple[int, int, int], say: Progress,
) -> Path | None:
    from nasdeploy.export import tensorrt as trt_export
    from nasdeploy.export.onnx import onnx_io

    channels, height, width = input_shape
    input_name = onnx_io(onnx_path)["inputs"][0]["name"]
    static_batch = not options.dynamic_batch
    profile = trt_export.EngineProfile(
        input_name, channels, height, width, 1, 1 if static_batch else options.opt_batch, 1 if static_batch else options.max_batch
    )
    try:
        trt = trt_export.import_tensorrt()
    except MissingDependencyError as exc:
        fp16_file = None
        if options.fp16:
            fp16_file = trt_export.convert_onnx_to_fp16(onnx_path, stage / "model_fp16.onnx").name
            result.files["onnx_fp16"] = fp16_file
        plan_file = (f"{TRITON_REPOSITORY}/{result.name}_trt/1/model.plan" if "triton" in result.formats else "model.plan")
        script = trt_export.write_trtexec_script(
            stage / "trtexec.sh", onnx_path.name, profile, fp16=options.fp16, fp16_onnx_file=fp16_file,
            workspace_mib=options.workspace_mib, plan_file=plan_file,
        )
        result.files["trtexec_script"] = script.name
        result.skipped["tensorrt"] = f"{exc}; wrote the equivalent trtexec command to {script.name}"
        say(f"TensorRT is not importable: wrote {script.name} instead")
        return None
    t0 = time.perf_counter()
    say(f"building TensorRT {trt.__version__} engine ({'fp16' if options.fp16 else 'fp32'}, batch 1..{profile.max_batch})")
    build = trt_export.build_engine(
        onnx_path, stage / "model.plan", profile, fp16=options.fp16, workspace_mib=options.workspace_mib,
        timing_cache=stage / "timing.cache", trt=trt,
    )
    result.timings_s["tensorrt_build"] = round(time.perf_counter() - t0, 2)
    result.files["tensorrt_plan"] = "model.plan"
    result.files["timing_cache"] = "timing.cache"
    if build.onnx_path != onnx_path:
        result.files["onnx_fp16"] = build.onnx_path.name
    say("checking TensorRT parity")
    report = trt_export.check_tensorrt_parity(
        model, build.plan_path, profile, fp16=options.fp16, seed=options.seed, trt=trt, raise_on_failure=False,
        batch_sizes=sorted({b for b in (*options.batch_sizes, profile.max_batch) if b <= profile.max_batch}),
    )
    result.parity["tensorrt"] = report
    if not report.passed:
        say(report.format_table())
    report.raise_for_failure()
    report.save(stage / "parity_tensorrt.json")
    result.files["tensorrt_parity"] = "parity_tensorrt.json"
    return build.plan_path


TRITON_REPOSITORY = "triton"  # the repository folder inside the export directory (only model folders in it)
TRITON_README = "TRITON_README.md"  # one level up: Triton's repository root must hold only model folders


def _triton_step(
    stage: Path, onnx_path: Path, plan_path: Path | None, result: ExportResult, options: ExportOptions,
    input_shape: tuple[int, int, int], labels: Sequence[str] | None, say: Progress,
) -> None:
    from nasdeploy.export import triton

    repo = stage / TRITON_REPOSITORY
    repo.mkdir()
    say(f"writing Triton model repository in {result.out_dir / TRITON_REPOSITORY}")
    hw = input_shape[1:]
    classes = _num_classes(onnx_path) if result.onnx and labels is None else None
    if labels is None and classes:
        labels = [f"class_{i}" for i in range(classes)]
    labels_file = triton.LABELS_FILE if labels is not None else None
    cfg = triton.onnx_model_config(
        onnx_path, result.name, max_batch_size=options.max_batch, instance_kind=options.instance_kind,
        instance_count=options.instance_count, warmup_hw=hw, labels_file=labels_file,
    )
    folder = triton.write_triton_model(repo, cfg, onnx_path, labels=labels)
    result.files["triton_repository"] = TRITON_REPOSITORY
    result.files["triton_onnx_model"] = f"{TRITON_REPOSITORY}/{folder.name}/config.pbtxt"
    models = [cfg]
    script = None
    if "tensorrt" in result.formats:
        trt_cfg = triton.tensorrt_model_config(
            onnx_path, f"{result.name}_trt", input_hw=hw, max_batch_size=options.max_batch if options.dynamic_batch else 0,
            instance_count=options.instance_count, labels_file=labels_file,
        )
        # Without TensorRT here the config is still written; trtexec.sh builds 1/model.plan in place.
        trt_folder = triton.write_triton_model(repo, trt_cfg, plan_path, labels=labels)
        result.files["triton_tensorrt_model"] = f"{TRITON_REPOSITORY}/{trt_folder.name}/config.pbtxt"
        models.append(trt_cfg)
        script = result.files.get("trtexec_script")
    write_text_atomic(stage / TRITON_README, triton.repository_readme(TRITON_REPOSITORY, models, plan_script=script))
    result.files["triton_readme"] = TRITON_README


def _num_classes(onnx_path: Path) -> int | None:
    from nasdeploy.export.onnx import onnx_io

    outputs = onnx_io(onnx_path)["outputs"]
    dims = outputs[0]["dims"] if outputs else []
    return dims[1] if len(dims) == 2 and isinstance(dims[1], int) and dims[1] > 1 else None


DEFAULT_DATASETS = {"cifar": "cifar10", "imagenet": "imagefolder"}


def export_target(
    target: Any,
    *,
    net: str = "cifar",
    checkpoint: str | os.PathLike[str] | None = None,
    formats: Sequence[str] = ("onnx",),
    out_dir: str | os.PathLike[str] | None = None,
    channels: int | None = None,
    layers: int | None = None,
    num_classes: int | None = None,
    options: ExportOptions = ExportOptions(),
    progress: Progress | None = None,
    dataset: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> ExportResult:
    """Export a genotype's network (fresh or from a checkpoint) as verified ONNX / ExecuTorch / TensorRT / Triton artifacts.

    dataset / data_dir (default dataset: the checkpoint's, else cifar10 for cifar, imagefolder for imagenet)
    give parity on validation images and calibration data for options.int8; an explicit options.data wins.
    Without a checkpoint the weights are untrained and the parity reports say so.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if not formats or unknown:
        raise ConfigError(f"unknown export format(s) {unknown or '(none)'}; choose from: {', '.join(FORMATS)}")
    if options.int8 and options.data is None and dataset is None and data_dir is None:
        raise ConfigError("INT8 needs calibration and validation images: give a dataset (--data-dir, or --dataset demo)")
    import dataclasses

    from nasdeploy.genotypes import genotype_to_dict, resolve_genotype
    from nasdeploy.nets import get_net_config

    genotype = resolve_genotype(target, expected_kind=get_net_config(net).genotype_kind)
    name = options.name or _default_name(genotype.name, net)
    out = Path(out_dir) if out_dir is not None else Path("exports") / name
    if out.exists() and not options.overwrite:  # checked again when staging; this one saves building the model
        raise ConfigError(f"output directory already exists: {out} (use overwrite / --overwrite to replace it)")
    src = build_export_model(genotype, net=net, checkpoint=checkpoint, channels=channels, layers=layers, num_classes=num_classes)
    if options.data is None and (dataset is not None or data_dir is not None):
        from nasdeploy.export.quantize import dataset_config

        saved = src.dataset or {}
        name_ds = dataset or saved.get("name") or DEFAULT_DATASETS.get(net)
        if name_ds is None:
            raise ConfigError(f"no default dataset for net '{net}'; pass --dataset")
        size = options.input_size[0] if options.input_size else src.model.default_cfg.input_size[1]
        same = saved.get("name") == name_ds
        options = dataclasses.replace(options, data=dataset_config(
            name_ds, data_dir, size, mean=saved.get("mean") if same else None, std=saved.get("std") if same else None))
    source = {"target": str(target) if not hasattr(target, "kind") else (genotype.name or "genotype object"),
              "genotype": genotype.name, "net": net, "checkpoint": src.checkpoint, "net_kwargs": src.net_kwargs,
              "genotype_dict": genotype_to_dict(genotype), "dataset": src.dataset}
    metadata = {"checkpoint": Path(src.checkpoint).name} if src.checkpoint else {}
    labels = (src.dataset or {}).get("classes") or None
    return export_model(src.model, out, formats=formats, options=options, name=name, metadata=metadata, source=source,
                        progress=progress, weights="trained" if src.checkpoint else "untrained", labels=labels)
