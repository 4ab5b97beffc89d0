"""One library call per export: model from genotype (+ checkpoint), ONNX + parity, TensorRT, Triton.

The whole output directory is written into a temporary sibling and renamed at the end, so a failure
(bad input, exporter error, failed parity) leaves nothing behind.
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

from torch import nn

from nasdeploy._version import __version__
from nasdeploy.errors import CheckpointError, ConfigError, MissingDependencyError
from nasdeploy.export.onnx import check_opset, export_onnx, read_onnx_metadata
from nasdeploy.export.parity import DEFAULT_ATOL, DEFAULT_BATCH_SIZES, DEFAULT_RTOL, ParityReport, check_onnx_parity
from nasdeploy.utils.files import set_default_permissions, write_json_atomic

FORMATS = ("onnx", "tensorrt", "triton")
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (written as export.json)."""
        import onnx
        import onnxruntime
        import torch

        out = asdict(self)
        out["out_dir"] = str(self.out_dir)
        out["parity"] = {k: v.to_dict() for k, v in self.parity.items()}
        out["versions"] = {"nasdeploy": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                           "onnxruntime": onnxruntime.__version__}
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
    return ExportSource(model, genotype.name, net, str(checkpoint) if checkpoint else None, kwargs)


def _default_name(genotype_name: str | None, net: str) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", genotype_name or "genotype").strip("_") or "model"
    return f"{base}_{net}".lower()


def _complexity(model: nn.Module, input_shape: tuple[int, int, int]) -> tuple[dict[str, Any] | None, str | None]:
    """Params and MACs from the profiler when this build has it (the export does not depend on it)."""
    try:
        from nasdeploy.profile.complexity import model_complexity  # type: ignore[import-not-found]
    except ImportError:
        return None, None
    try:
        c = model_complexity(model, input_shape, activations=False)
        return {"params": c.params, "params_with_aux": c.params_with_aux, "macs": c.macs, "convention": c.convention}, None
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


def _publish(staging: Path, out_dir: Path) -> None:
    """Move the finished staging folder onto out_dir (replacing an old one only after success)."""
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
) -> ExportResult:
    """Export any single-image-input model to `out_dir` in the given formats, verifying each artifact."""
    fmts = tuple(dict.fromkeys(formats))
    unknown = [f for f in fmts if f not in FORMATS]
    if not fmts or unknown:
        raise ConfigError(f"unknown export format(s) {unknown or '(none)'}; choose from: {', '.join(FORMATS)}")
    say = progress or (lambda _msg: None)
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

    final = Path(out_dir)
    staging = _prepare_out_dir(final, options.overwrite)
    result = ExportResult(final, name, fmts, source=dict(source or {}))
    try:
        _export_into(staging, model, result, options, (channels, height, width), metadata or {}, say)
        _relocate_reports(staging, result)
        write_json_atomic(staging / "export.json", result.to_dict())
        result.files["report"] = "export.json"
        set_default_permissions(staging)  # mkdtemp made it 0700
        _publish(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


def _export_into(
    stage: Path, model: nn.Module, result: ExportResult, options: ExportOptions,
    input_shape: tuple[int, int, int], metadata: dict[str, Any], say: Progress,
) -> None:
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
    complexity, note = _complexity(model, input_shape)
    result.complexity = complexity
    if note:
        result.notes.append(note)

    t0 = time.perf_counter()
    say("checking ONNX parity in onnxruntime")
    report = check_onnx_parity(
        model, onnx_path, batch_sizes=options.batch_sizes, rtol=options.rtol, atol=options.atol, seed=options.seed,
        raise_on_failure=False,
    )
    result.timings_s["onnx_parity"] = round(time.perf_counter() - t0, 2)
    result.parity["onnx"] = report
    if not report.passed:
        say(report.format_table())
    report.raise_for_failure()
    report.save(stage / "parity_onnx.json")
    result.files["onnx_parity"] = "parity_onnx.json"

    plan_path = None
    if "tensorrt" in result.formats:
        plan_path = _tensorrt_step(stage, model, onnx_path, result, options, input_shape, say)
    if "triton" in result.formats:
        _triton_step(stage, onnx_path, plan_path, result, options, (height, width), say)


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
        script = trt_export.write_trtexec_script(
            stage / "trtexec.sh", onnx_path.name, profile, fp16=options.fp16, fp16_onnx_file=fp16_file,
            workspace_mib=options.workspace_mib,
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


def _triton_step(
    stage: Path, onnx_path: Path, plan_path: Path | None, result: ExportResult, options: ExportOptions,
    input_hw: tuple[int, int], say: Progress,
) -> None:
    from nasdeploy.export import triton

    say(f"writing Triton model repository in {result.out_dir}")
    cfg = triton.onnx_model_config(
        onnx_path, result.name, max_batch_size=options.max_batch, instance_kind=options.instance_kind,
        instance_count=options.instance_count,
    )
    folder = triton.write_triton_model(stage, cfg, onnx_path)
    result.files["triton_onnx_model"] = f"{folder.name}/config.pbtxt"
    if plan_path is not None:
        trt_cfg = triton.tensorrt_model_config(
            onnx_path, f"{result.name}_trt", input_hw=input_hw,
            max_batch_size=options.max_batch if options.dynamic_batch else 0, instance_count=options.instance_count,
        )
        trt_folder = triton.write_triton_model(stage, trt_cfg, plan_path)
        result.files["triton_tensorrt_model"] = f"{trt_folder.name}/config.pbtxt"


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
) -> ExportResult:
    """Export a genotype's network (fresh or from a checkpoint) as verified ONNX / TensorRT / Triton artifacts."""
    unknown = [f for f in formats if f not in FORMATS]
    if not formats or unknown:
        raise ConfigError(f"unknown export format(s) {unknown or '(none)'}; choose from: {', '.join(FORMATS)}")
    from nasdeploy.genotypes import resolve_genotype
    from nasdeploy.nets import get_net_config

    genotype = resolve_genotype(target, expected_kind=get_net_config(net).genotype_kind)
    name = options.name or _default_name(genotype.name, net)
    out = Path(out_dir) if out_dir is not None else Path("exports") / name
    if out.exists() and not options.overwrite:  # checked again when staging; this one saves building the model
        raise ConfigError(f"output directory already exists: {out} (use overwrite / --overwrite to replace it)")
    src = build_export_model(genotype, net=net, checkpoint=checkpoint, channels=channels, layers=layers, num_classes=num_classes)
    source = {"target": str(target) if not hasattr(target, "kind") else (genotype.name or "genotype object"),
              "genotype": genotype.name, "net": net, "checkpoint": src.checkpoint, "net_kwargs": src.net_kwargs}
    metadata = {"checkpoint": Path(src.checkpoint).name} if src.checkpoint else {}
    return export_model(src.model, out, formats=formats, options=options, name=name, metadata=metadata, source=source,
                        progress=progress)
