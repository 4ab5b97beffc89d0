"""What every pipeline stage shares: its context, the interruption signal, and the export/profile helpers of image nets.

Each space's stage module (named by its entry in nasdeploy.spaces.table) reads the previous stages'
files from the run directory and writes its own.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from nasdeploy.pipeline.config import PipelineConfig


@dataclass(frozen=True)
class StageContext:
    """What every stage gets: the config, the run directory and whether to show progress."""

    config: PipelineConfig
    run_dir: Path
    progress: bool = True
    stop_after_epoch: int | None = None  # tests: interrupt search/train after this many epochs

    def path(self, *parts: str) -> Path:
        """A path inside the run directory."""
        return self.run_dir.joinpath(*parts)

    def loop_options(self) -> dict[str, Any]:
        """The keyword arguments every search/train loop takes, as this pipeline run sets them."""
        return {"data_dir": self.config.data_dir, "stop_after_epoch": self.stop_after_epoch, "progress": self.progress}


StageFn = Callable[[StageContext], dict[str, Any]]


class StageInterrupted(Exception):
    """A stage stopped early on purpose (stop_after_epoch); rerunning resumes it."""


MISSING_EXECUTORCH = "executorch is not installed (pip install 'nasdeploy[executorch]')"
NO_INT8 = "the export section lists no int8 methods (int8: [ort, executorch])"
NO_EXECUTORCH = "the export section asks for no ExecuTorch program (neither its formats nor its int8 list executorch)"


def export_stage_formats(section: Any) -> tuple[str, ...]:
    """What the export stage writes into export/: ONNX always, TensorRT/Triton as asked (ExecuTorch is its own stage)."""
    return ("onnx", *(f for f in section.formats if f not in ("onnx", "executorch")))


def wants_executorch(section: Any) -> bool:
    """Whether the export section asks for an ExecuTorch program (as a format, or as the float side of INT8)."""
    return "executorch" in section.formats or "executorch" in section.int8


def skip_stage(why: str) -> dict[str, Any]:
    """The outputs of a stage with nothing to do in this run: done, with one line saying why (state and report)."""
    return {"stage_skipped": why}


def _executorch_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("executorch") is not None


def _trained_source(ctx: StageContext, net: str, checkpoint: str) -> Any:
    from nasdeploy.export.source import build_export_model

    return build_export_model(ctx.path("genotype.json"), net=net, checkpoint=ctx.path(checkpoint))


def _export_options(ctx: StageContext, input_size: tuple[int, int] | None, int8: tuple[str, ...] = ()) -> Any:
    from nasdeploy.export.options import ExportOptions, Int8Options, OnnxOptions, TensorRTOptions
    from nasdeploy.profile.latency import ModelFileTimer

    section = ctx.config.export
    return ExportOptions(input_size=input_size, overwrite=True, onnx=OnnxOptions(opset=section.opset),
                         tensorrt=TensorRTOptions(fp16=section.fp16), int8=Int8Options(int8, timer=ModelFileTimer()))


def _export_data(ctx: StageContext, model: Any, options: Any, data: Any) -> Any:
    """The run's dataset sampled for the export (parity images; validation and calibration images for INT8)."""
    from nasdeploy.export.api import input_shape
    from nasdeploy.export.samples import SampleSizes, prepare_export_data

    if data is None:
        return None
    section = ctx.config.export
    sizes = SampleSizes(validation=section.validation_images, calibration=section.calibration_images)
    return prepare_export_data(data, model, input_shape(model, options)[1], sizes=sizes,
                               int8=bool(options.int8.methods))


def _say(ctx: StageContext, stage: str) -> Any:
    return (lambda msg: print(f"[{stage}] {msg}", flush=True)) if ctx.progress else None


def export_trained_model(ctx: StageContext, net: str, checkpoint: str, input_size: tuple[int, int] | None = None,
                         data: Any = None) -> dict[str, Any]:
    """The export stage of an image net: rebuild it from genotype.json + `checkpoint` (run-relative), write export/.

    export/ holds the ONNX model (always) and the TensorRT/Triton artifacts the section asks for; model.onnx is
    published at the top level. data: the run's dataset config; ONNX parity then also runs on its validation
    images (top-1 agreement). ExecuTorch and INT8 are the next two stages.
    """
    from nasdeploy.export.api import export_model

    source = _trained_source(ctx, net, checkpoint)
    formats = export_stage_formats(ctx.config.export)
    options = _export_options(ctx, input_size)
    result = export_model(source.model, ctx.path("export"), formats=formats, options=options,
                          data=_export_data(ctx, source.model, options, data), name=ctx.config.name,
                          source={"genotype": "genotype.json", "checkpoint": checkpoint},
                          progress=_say(ctx, "export"), weights="trained")
    publish_onnx(ctx)
    parity = result.parity["onnx"].to_dict()
    runtimes = {name: report.to_dict() for name, report in result.parity.items() if name != "onnx"}
    return {"dir": "export", "onnx": "model.onnx", "files": result.files, "parity": parity, "runtimes": runtimes,
            "opset": result.onnx.get("opset"), "skipped": dict(result.skipped)}


def executorch_trained_model(ctx: StageContext, net: str, checkpoint: str, input_size: tuple[int, int] | None = None,
                             data: Any = None) -> dict[str, Any]:
    """The executorch stage of an image net: executorch/model.pte (XNNPACK) with its metadata and parity reports.

    Runs when the export section lists executorch among its formats or int8 methods (the INT8 .pte is
    scored against this float program); a stage with nothing to do is skipped with one line.
    """
    from nasdeploy.export.api import export_model

    if not wants_executorch(ctx.config.export):
        return skip_stage(NO_EXECUTORCH)
    if not _executorch_installed():
        return skip_stage(MISSING_EXECUTORCH)
    source = _trained_source(ctx, net, checkpoint)
    options = _export_options(ctx, input_size)
    result = export_model(source.model, ctx.path("executorch"), formats=("executorch",), options=options,
                          data=_export_data(ctx, source.model, options, data), name=ctx.config.name,
                          source={"genotype": "genotype.json", "checkpoint": checkpoint},
                          progress=_say(ctx, "executorch"), weights="trained")
    return {"dir": "executorch", "pte": "model.pte", "files": result.files,
            "runtimes": {name: report.to_dict() for name, report in result.parity.items()}}


def quantize_trained_model(ctx: StageContext, net: str, checkpoint: str, input_size: tuple[int, int] | None = None,
                           data: Any = None) -> dict[str, Any]:
    """The quantize stage of an image net: the section's INT8 paths from export/model.onnx and the float .pte.

    quantize/ gets model_int8.onnx, model_int8.pte (+ .pte.json) and quantization.json (float vs INT8
    accuracy, size, latency), written atomically; a failed quantize leaves export/ and executorch/ as they were.
    """
    from nasdeploy.export.api import quantize_model

    methods = tuple(ctx.config.export.int8)
    if not methods:
        return skip_stage(NO_INT8)
    skipped = {}
    if "executorch" in methods and not _executorch_installed():
        methods = tuple(m for m in methods if m != "executorch")
        skipped["int8 executorch"] = MISSING_EXECUTORCH
    if not methods:
        return skip_stage(MISSING_EXECUTORCH)
    source = _trained_source(ctx, net, checkpoint)
    options = _export_options(ctx, input_size, methods)
    result = quantize_model(source.model, ctx.path("quantize"),
                            onnx_path=ctx.path("export", "model.onnx") if "ort" in methods else None,
                            pte_path=ctx.path("executorch", "model.pte") if "executorch" in methods else None,
                            options=options, data=_export_data(ctx, source.model, options, data), name=ctx.config.name,
                            source={"genotype": "genotype.json", "checkpoint": checkpoint},
                            progress=_say(ctx, "quantize"), weights="trained")
    return {"dir": "quantize", "files": result.files, "skipped": skipped,
            "quantization": {k: v.to_dict() for k, v in result.quantization.items()}}


def deploy_commands(ctx: StageContext, export_command: str) -> dict[str, str]:
    """The reproducing commands of the executorch and quantize stages (only those the export section asks for).

    export_command: `nasdeploy export TARGET --net NET --checkpoint CKPT` of the trained model.
    """
    section, q = ctx.config.export, quote_path
    commands = {}
    if wants_executorch(section):
        commands["executorch"] = f"{export_command} --format executorch --out {q(ctx.path('executorch'))}"
    if section.int8:  # the INT8 paths on the run's own data split, from export/ and executorch/
        commands["quantize"] = f"nasdeploy pipeline{source_arg(ctx.config)} --out {q(ctx.run_dir)} --only quantize"
    return commands


def publish_onnx(ctx: StageContext) -> None:
    """Put the exported model.onnx (and its external data) at the run directory's top level, next to genotype.json."""
    for name in ("model.onnx", "model.onnx.data"):
        src = ctx.path("export", name)
        if src.exists():
            dst = ctx.path(name)
            if dst.exists():
                dst.unlink()
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)


def environment_line(env: dict[str, Any]) -> str:
    """One readable line from the profiler's environment record."""
    parts = []
    for key in ("cpu", "logical_cpus", "gpu"):
        value = env.get(key)
        if value not in (None, "", [], {}):
            parts.append(f"{key} {value}")
    versions = env.get("versions")
    if isinstance(versions, dict):
        parts += [f"{k} {v}" for k, v in versions.items() if k in ("torch", "onnxruntime")]
    return ", ".join(parts) or "unknown machine"




def latency_summary(data: dict[str, Any], backends: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """median/p90/p99/mean (and the file size where the backend wrote one) per backend that ran, from a profile
    result's dict; only `backends` when given."""
    latency = {}
    for backend, res in (data.get("latency", {}).get("results") or {}).items():
        if backends is not None and backend not in backends:
            continue
        if isinstance(res, dict) and res.get("status", "ok") == "ok":
            latency[backend] = {k: res.get(k) for k in ("median_ms", "p90_ms", "p99_ms", "mean_ms")}
            size = (res.get("settings") or {}).get("model_bytes")
            if size is not None:
                latency[backend]["model_bytes"] = size
    return latency


def last_log_record(path: Path) -> dict[str, Any]:
    """The last record of a run's log.jsonl ({} when there is none)."""
    from nasdeploy.utils.runlog import JsonlLog

    records = JsonlLog(path).read() if path.is_file() else []
    return records[-1] if records else {}


def quote_path(path: str | os.PathLike[str]) -> str:
    """A path quoted for a shell command line."""
    import shlex

    return shlex.quote(os.fspath(path))


def source_arg(config: PipelineConfig) -> str:
    """The pipeline file argument of a reproducing command ('' for the built-in demo)."""
    return "" if config.source == "(built-in demo)" else " " + quote_path(config.source)


def publish_genotype(ctx: StageContext, genotype: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """Write the derived genotype.json, draw its cells into figures/ (SVG and PNG); the derive stage's outputs."""
    from nasdeploy.genotypes import genotype_to_dict, save_genotype
    from nasdeploy.genotypes.describe import describe_genotype
    from nasdeploy.genotypes.draw import draw_genotype

    save_genotype(genotype, ctx.path("genotype.json"), meta=meta)
    ctx.path("figures").mkdir(exist_ok=True)
    draw_genotype(genotype, ctx.path("figures", "cells.svg"))
    draw_genotype(genotype, ctx.path("figures", "cells.png"))
    return {"genotype": genotype_to_dict(genotype), "text": describe_genotype(genotype)}
