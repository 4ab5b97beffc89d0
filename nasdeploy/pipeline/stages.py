"""What every pipeline stage shares: its context, the interruption signal, and the export/profile helpers of image nets.

Each space's stage module (named by its entry in nasdeploy.spaces.table) reads the previous stages'
files from the run directory and writes its own.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

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


def export_trained_model(ctx: StageContext, net: str, checkpoint: str, input_size: tuple[int, int] | None = None,
                         data: Any = None) -> dict[str, Any]:
    """Rebuild the trained `net` from genotype.json + `checkpoint` (run-relative), export it and publish model.onnx.

    data: the run's dataset config; parity then also runs on its validation images (top-1 agreement) and the
    INT8 paths of the export section are calibrated on its training split and scored on its validation split.
    """
    from nasdeploy.export.api import ExportOptions, build_export_model, export_model
    from nasdeploy.profile.latency import time_model_file

    import importlib.util

    source = build_export_model(ctx.path("genotype.json"), net=net, checkpoint=ctx.path(checkpoint))
    section = ctx.config.export
    formats, int8, missing = tuple(section.formats), tuple(section.int8), {}
    if importlib.util.find_spec("executorch") is None and ("executorch" in formats or "executorch" in int8):
        # The demo asks for ExecuTorch; without the optional extra the stage still exports the rest.
        formats, int8 = tuple(f for f in formats if f != "executorch"), tuple(m for m in int8 if m != "executorch")
        missing["executorch"] = "executorch is not installed (pip install 'nasdeploy[executorch]')"
    options = ExportOptions(input_size=input_size, opset=section.opset, fp16=section.fp16, overwrite=True,
                            int8=int8, data=data, calibration_images=section.calibration_images,
                            validation_images=section.validation_images, latency_timer=time_model_file)
    say = (lambda msg: print(f"[export] {msg}", flush=True)) if ctx.progress else None
    result = export_model(source.model, ctx.path("export"), formats=formats, options=options,
                          name=ctx.config.name, source={"genotype": "genotype.json", "checkpoint": checkpoint},
                          progress=say, weights="trained")
    publish_onnx(ctx)
    parity = result.parity["onnx"].to_dict()
    runtimes = {name: report.to_dict() for name, report in result.parity.items() if name != "onnx"}
    return {"dir": "export", "onnx": "model.onnx", "files": result.files, "parity": parity, "runtimes": runtimes,
            "quantization": {k: v.to_dict() for k, v in result.quantization.items()},
            "opset": result.onnx.get("opset"), "skipped": {**result.skipped, **missing}}


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




def latency_summary(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """median/p90/p99/mean per backend that ran, from a profile result's dict."""
    latency = {}
    for backend, res in (data.get("latency", {}).get("results") or {}).items():
        if isinstance(res, dict) and res.get("status", "ok") == "ok":
            latency[backend] = {k: res.get(k) for k in ("median_ms", "p90_ms", "p99_ms", "mean_ms")}
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
