"""The pipeline stages. Each reads the previous stages' files from the run directory and writes its own."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from nasdeploy.genotypes import genotype_to_dict, load_genotype, save_genotype
from nasdeploy.genotypes.describe import describe_genotype
from nasdeploy.pipeline.config import PipelineConfig
from nasdeploy.utils.files import write_json_atomic


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


StageFn = Callable[[StageContext], dict[str, Any]]


class StageInterrupted(Exception):
    """A stage stopped early on purpose (stop_after_epoch); rerunning resumes it."""


def _data_dir(ctx: StageContext) -> str | None:
    return ctx.config.data_dir


def run_search_stage(ctx: StageContext) -> dict[str, Any]:
    """Search the supernet (resuming an interrupted search)."""
    from nasdeploy.search.config import search_config_from_dict
    from nasdeploy.search.loop import run_search

    config = search_config_from_dict(ctx.config.search)
    result = run_search(config, ctx.path("search"), _data_dir(ctx), stop_after_epoch=ctx.stop_after_epoch,
                        progress=ctx.progress)
    if not result.finished:
        raise StageInterrupted(f"search stopped after epoch {result.epochs_done}/{result.epochs}")
    return {"dir": "search", "epochs": result.epochs, "final": result.metrics, "order": config.search.order,
            "mixed_op": config.model.mixed_op or os.environ.get("NASDEPLOY_MIXED_OP", "auto")}


def run_derive_stage(ctx: StageContext) -> dict[str, Any]:
    """Derive the genotype from the final alphas (DARTS rule) and draw its cells."""
    from nasdeploy.genotypes.draw import draw_genotype
    from nasdeploy.spaces.darts_cnn_derive import derive_genotype
    from nasdeploy.search.loop import load_search_result

    result = load_search_result(ctx.path("search"))
    model_cfg = ctx.config.search.get("model", {})
    genotype = derive_genotype(result.alphas_normal, result.alphas_reduce, steps=model_cfg.get("steps", 4),
                               multiplier=model_cfg.get("multiplier", 4), name=f"{ctx.config.name}_found")
    save_genotype(genotype, ctx.path("genotype.json"), meta={"source": "search", "epochs": result.epochs})
    ctx.path("figures").mkdir(exist_ok=True)
    draw_genotype(genotype, ctx.path("figures", "cells.svg"))
    draw_genotype(genotype, ctx.path("figures", "cells.png"))
    return {"genotype": genotype_to_dict(genotype), "text": describe_genotype(genotype)}


def run_train_stage(ctx: StageContext) -> dict[str, Any]:
    """Train the derived network from scratch (resuming from the training checkpoint)."""
    from nasdeploy.train.config import train_config_from_dict
    from nasdeploy.train.loop import run_training

    config = train_config_from_dict(ctx.config.train)
    result = run_training(config, load_genotype(ctx.path("genotype.json"), "cnn_cell"), ctx.path("train"),
                          _data_dir(ctx), stop_after_epoch=ctx.stop_after_epoch, progress=ctx.progress)
    if not result.finished:
        raise StageInterrupted(f"training stopped after epoch {result.epochs_done}/{result.epochs}")
    return {"dir": "train", "epochs": result.epochs, "top1": result.top1, "top5": result.top5,
            "params": result.params, "checkpoint": "train/checkpoint.pt", "net": config.model.net,
            "num_classes": result.metrics.get("dataset", {}).get("num_classes")}


def run_export_stage(ctx: StageContext) -> dict[str, Any]:
    """Export the trained network to ONNX (and TensorRT/Triton when asked) and check parity."""
    return export_trained_model(ctx, ctx.config.train.get("model", {}).get("net", "cifar"), "train/checkpoint.pt")


def export_trained_model(ctx: StageContext, net: str, checkpoint: str,
                         input_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Rebuild the trained `net` from genotype.json + `checkpoint` (run-relative), export it and publish model.onnx."""
    from nasdeploy.export.api import ExportOptions, build_export_model, export_model

    source = build_export_model(ctx.path("genotype.json"), net=net, checkpoint=ctx.path(checkpoint))
    section = ctx.config.export
    options = ExportOptions(input_size=input_size, opset=section.opset, fp16=section.fp16, overwrite=True)
    say = (lambda msg: print(f"[export] {msg}", flush=True)) if ctx.progress else None
    result = export_model(source.model, ctx.path("export"), formats=section.formats, options=options,
                          name=ctx.config.name, source={"genotype": "genotype.json", "checkpoint": checkpoint},
                          progress=say)
    publish_onnx(ctx)
    parity = result.parity["onnx"].to_dict()
    return {"dir": "export", "onnx": "model.onnx", "files": result.files, "parity": parity,
            "opset": result.onnx.get("opset"), "skipped": result.skipped}


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


def run_profile_stage(ctx: StageContext) -> dict[str, Any]:
    """Params, MACs (mobile setting) and latency of the found architecture next to registry genotypes."""
    from nasdeploy.profile.api import profile_target
    from nasdeploy.profile.latency import LatencyConfig

    section = ctx.config.profile
    targets = [("found", str(ctx.path("genotype.json")))] + [(name, name) for name in section.compare]
    rows = []
    environment = None
    for label, target in targets:
        backends = ",".join(section.backends) if label in section.latency_for else "none"
        result = profile_target(target, net=section.net, channels=section.channels, layers=section.layers,
                                latency=backends,
                                latency_config=LatencyConfig(warmup=section.warmup, runs=section.runs, progress=False))
        data = result.to_dict()
        environment = environment or data.get("environment")
        latency = {}
        for backend, res in (data.get("latency", {}).get("results") or {}).items():
            if isinstance(res, dict) and res.get("status", "ok") == "ok":
                latency[backend] = {k: res.get(k) for k in ("median_ms", "p90_ms", "p99_ms", "mean_ms")}
        rows.append({"name": ctx.config.name + " (found)" if label == "found" else label, "found": label == "found",
                     "params": data.get("params"), "macs": data.get("macs"), "latency": latency})
    out = {"net": section.net, "backends": list(section.backends), "rows": rows,
           "convention": "multiply-accumulates of convolutions and FC layers, BN folded, activations/pooling not counted",
           "environment": environment_line(environment or {})}
    write_json_atomic(ctx.path("profile.json"), out)
    return {"file": "profile.json"}


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


STAGES: dict[str, StageFn] = {
    "search": run_search_stage,
    "derive": run_derive_stage,
    "train": run_train_stage,
    "export": run_export_stage,
    "profile": run_profile_stage,
}
