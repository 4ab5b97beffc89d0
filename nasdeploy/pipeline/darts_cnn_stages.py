"""The pipeline stages of the DARTS CNN space: search, derive (DARTS rule), train, export, executorch, quantize, profile."""

from __future__ import annotations

from typing import Any

from nasdeploy.genotypes import load_genotype
from nasdeploy.pipeline.stages import (
    StageContext,
    StageFn,
    StageInterrupted,
    environment_line,
    export_trained_model,
    last_log_record,
    latency_summary,
    publish_genotype,
    quote_path,
    source_arg,
)
from nasdeploy.pipeline.plots import plot_alpha_evolution, plot_final_alphas, read_jsonl

_NET_DESCRIPTIONS = {"imagenet": "ImageNet mobile setting (224x224, C=48, 14 cells)", "cifar": "CIFAR (32x32, C=36, 20 cells)"}
from nasdeploy.utils.files import write_json_atomic


def run_search_stage(ctx: StageContext) -> dict[str, Any]:
    """Search the supernet (resuming an interrupted search)."""
    from nasdeploy.config.darts_cnn import DartsCnnSearchConfig
    from nasdeploy.search.darts_cnn_loop import run_search
    from nasdeploy.utils.yamlconfig import from_dict

    config = from_dict(DartsCnnSearchConfig, _with_cost_table(ctx))
    result = run_search(config, ctx.path("search"), **ctx.loop_options())
    if not result.finished:
        raise StageInterrupted(f"search stopped after epoch {result.epochs_done}/{result.epochs}")
    return {"dir": "search", "epochs": result.epochs, "final": result.metrics, "order": config.search.order,
            "mixed_op": last_log_record(ctx.path("search", "log.jsonl")).get("mixed_op", "unknown")}


def _with_cost_table(ctx: StageContext) -> dict[str, Any]:
    """The search section; a budget with `table: auto` gets the (cached) table of the profile's network."""
    section = ctx.config.search
    cost = (section.get("search") or {}).get("cost")
    if not isinstance(cost, dict) or cost.get("table", "auto") != "auto":
        return section
    from nasdeploy.profile.cost_table import save_cost_table
    from nasdeploy.profile.cost_table_build import build_or_load_cost_table
    from nasdeploy.utils.ownership import claim_folder

    prof = ctx.config.profile
    backend = None if cost.get("metric", "macs") == "macs" else cost.get("backend", "ort-cpu-1t")
    path = ctx.path("search", "cost_table.json")
    if not path.is_file():  # a resumed search keeps the table it started with
        table = build_or_load_cost_table(ctx.config.space, backend, net=prof.net, channels=prof.channels,
                                         layers=prof.layers, progress=ctx.progress)
        claim_folder(path.parent, "run")  # the search's run directory: the table is written into it first
        save_cost_table(table, path)
    return {**section, "search": {**section["search"], "cost": {**cost, "table": str(path)}}}


def budget_verdict(ctx: StageContext, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The search budget next to what the found network measures (and the search's last expected cost)."""
    cost = (ctx.config.search.get("search") or {}).get("cost")
    found = next((r for r in rows if r.get("found")), None)
    if not isinstance(cost, dict) or found is None:
        return None
    metric, target = cost.get("metric", "macs"), float(cost.get("target", 600e6))
    if metric == "macs":
        measured, unit = found.get("macs"), "MACs"
    else:
        backend = cost.get("backend", "ort-cpu-1t")
        measured, unit = (found.get("latency") or {}).get(backend, {}).get("median_ms"), f"ms ({backend} median)"
    last = last_log_record(ctx.path("search", "log.jsonl"))
    return {"metric": metric, "target": target, "unit": unit, "measured": measured,
            "meets": bool(measured is not None and measured <= target),
            "expected_at_end": last.get(f"expected_{metric}"), "derived_at_end": last.get(f"derived_{metric}")}


def run_derive_stage(ctx: StageContext) -> dict[str, Any]:
    """Derive the genotype from the final alphas (and PC-DARTS betas) by the DARTS rule and draw its cells."""
    from nasdeploy.spaces.darts_cnn_derive import derive_genotype
    from nasdeploy.search.darts_cnn_loop import load_search_result

    result = load_search_result(ctx.path("search"))
    model_cfg = ctx.config.search.get("model", {})
    genotype = derive_genotype(result.alphas_normal, result.alphas_reduce, steps=model_cfg.get("steps", 4),
                               multiplier=model_cfg.get("multiplier", 4), name=f"{ctx.config.name}_found",
                               betas_normal=result.betas_normal, betas_reduce=result.betas_reduce)
    return publish_genotype(ctx, genotype, {"source": "search", "epochs": result.epochs})


def run_train_stage(ctx: StageContext) -> dict[str, Any]:
    """Train the derived network from scratch (resuming from the training checkpoint)."""
    from nasdeploy.config.darts_cnn import DartsCnnTrainConfig
    from nasdeploy.train.darts_cnn_loop import run_training
    from nasdeploy.utils.yamlconfig import from_dict

    config = from_dict(DartsCnnTrainConfig, ctx.config.train)
    result = run_training(config, load_genotype(ctx.path("genotype.json"), "cnn_cell"), ctx.path("train"),
                          **ctx.loop_options())
    if not result.finished:
        raise StageInterrupted(f"training stopped after epoch {result.epochs_done}/{result.epochs}")
    return {"dir": "train", "epochs": result.epochs, "top1": result.top1, "top5": result.top5,
            "params": result.params, "checkpoint": "train/checkpoint.pt", "net": config.model.net,
            "num_classes": result.metrics.get("dataset", {}).get("num_classes")}


def _trained_net_and_data(ctx: StageContext) -> tuple[str, Any]:
    """The trained network family and the run's dataset config (parity on real images, INT8 calibration/scoring)."""
    from dataclasses import replace

    from nasdeploy.config.darts_cnn import DartsCnnTrainConfig
    from nasdeploy.utils.yamlconfig import from_dict

    train = from_dict(DartsCnnTrainConfig, ctx.config.train)
    return train.model.net, replace(train.data, data_dir=ctx.config.data_dir or train.data.data_dir)


def run_export_stage(ctx: StageContext) -> dict[str, Any]:
    """Export the trained network to ONNX (and TensorRT/Triton when asked) and check parity."""
    net, data = _trained_net_and_data(ctx)
    return export_trained_model(ctx, net, "train/checkpoint.pt", data=data)


def run_executorch_stage(ctx: StageContext) -> dict[str, Any]:
    """Lower the trained network to an ExecuTorch program (XNNPACK) and check it against PyTorch."""
    from nasdeploy.pipeline.stages import executorch_trained_model

    net, data = _trained_net_and_data(ctx)
    return executorch_trained_model(ctx, net, "train/checkpoint.pt", data=data)


def run_quantize_stage(ctx: StageContext) -> dict[str, Any]:
    """INT8 by the section's paths, calibrated on the training split and scored against float on validation images."""
    from nasdeploy.pipeline.stages import quantize_trained_model

    net, data = _trained_net_and_data(ctx)
    return quantize_trained_model(ctx, net, "train/checkpoint.pt", data=data)


def _not_run(results: dict[str, Any], backends: list[str]) -> dict[str, dict[str, str]]:
    """Backends that were asked for but skipped or failed: their status and one-line reason."""
    return {b: {"status": results[b].get("status", "error"), "note": results[b].get("note", "")}
            for b in backends if b in results and results[b].get("status") != "ok"}


def _latency_notes(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (backend, status, reason) over the table, naming the rows it applies to."""
    notes: dict[tuple[str, str, str], list[str]] = {}
    for row in rows:
        for backend, info in (row.get("not_run") or {}).items():
            key = (info.get("backend", backend), info["status"], info["note"])
            notes.setdefault(key, []).append(row["name"])
    return [{"backend": b, "status": st, "note": note, "rows": names} for (b, st, note), names in notes.items()]


def _threads(results: dict[str, Any]) -> dict[str, Any]:
    """The intra-op thread count each backend that ran reports."""
    return {b: (r.get("settings") or {}).get("intra_op_threads") for b, r in results.items()
            if r.get("status") == "ok" and (r.get("settings") or {}).get("intra_op_threads") is not None}


def run_profile_stage(ctx: StageContext) -> dict[str, Any]:
    """Params, MACs (mobile setting) and latency of the found architecture next to registry genotypes.

    With `profile.int8`, the found architecture also gets an INT8 row: each INT8 latency (onnxruntime static
    QDQ, ExecuTorch PT2E) sits under its float twin's column (ort-cpu-1t, executorch-fp32).
    """
    from nasdeploy.profile.api import profile_target
    from nasdeploy.profile.latency import FLOAT_TWIN, INT8_LATENCY_BACKENDS
    from nasdeploy.profile.protocol import LatencyConfig

    section = ctx.config.profile
    int8_backends = [INT8_LATENCY_BACKENDS[m] for m in section.int8]
    columns = list(section.backends) + [FLOAT_TWIN[b] for b in int8_backends if FLOAT_TWIN[b] not in section.backends]
    targets = [("found", str(ctx.path("genotype.json")))] + [(name, name) for name in section.compare]
    rows: list[dict[str, Any]] = []
    environment = None
    threads: dict[str, Any] = {}
    latency_config = LatencyConfig(warmup=section.warmup, runs=section.runs, progress=False)
    for label, target in targets:
        backends = list(section.backends) if label in section.latency_for else []
        extra = [b for b in int8_backends if b not in backends] if label == "found" else []
        result = profile_target(target, net=section.net, channels=section.channels, layers=section.layers,
                                latency=",".join(backends + extra) or "none", latency_config=latency_config)
        data = result.to_dict()
        environment = environment or data.get("environment")
        results = data["latency"]["results"]
        threads.update(_threads(results))
        name = ctx.config.name + " (found)" if label == "found" else label
        rows.append({"name": name, "found": label == "found", "params": data.get("params"), "macs": data.get("macs"),
                     "latency": latency_summary(data, backends), "not_run": _not_run(results, backends)})
        if label == "found" and int8_backends:
            cells = latency_summary(data, int8_backends)
            rows.append({"name": f"{name}, INT8", "found": False, "int8": True, "params": data.get("params"),
                         "macs": data.get("macs"),
                         "latency": {FLOAT_TWIN[b]: {**cell, "backend": b} for b, cell in cells.items()},
                         "not_run": {FLOAT_TWIN[b]: {**info, "backend": b}
                                     for b, info in _not_run(results, int8_backends).items()},
                         "int8_notes": {b: results[b].get("note", "") for b in cells}})
    out = {"net": section.net, "table": "mobile", "net_description": _NET_DESCRIPTIONS.get(section.net, section.net),
           "backends": columns, "int8": {m: {"backend": b, "column": FLOAT_TWIN[b]} for m, b in zip(section.int8, int8_backends)}, "rows": rows,
           "latency_protocol": {"batch": 1, "warmup": section.warmup, "runs": section.runs, "threads": threads},
           "latency_notes": _latency_notes(rows),
           "convention": "multiply-accumulates of convolutions and FC layers, BN folded, activations/pooling not counted",
           "environment": environment_line(environment or {})}
    budget = budget_verdict(ctx, rows)
    if budget is not None:
        out["budget"] = budget
    write_json_atomic(ctx.path("profile.json"), out)
    return {"file": "profile.json"}


STAGES: dict[str, StageFn] = {
    "search": run_search_stage,
    "derive": run_derive_stage,
    "train": run_train_stage,
    "export": run_export_stage,
    "executorch": run_executorch_stage,
    "quantize": run_quantize_stage,
    "profile": run_profile_stage,
}


def report_figures(ctx: StageContext) -> dict[str, str]:
    """The alpha evolution and final alphas figures (the cell diagrams are drawn by derive)."""
    from nasdeploy.genotypes import CNN_PRIMITIVES

    figures: dict[str, str] = {}
    history = read_jsonl(ctx.path("search", "alphas.jsonl"))
    primitives = ctx.config.search.get("model", {}).get("primitives") or CNN_PRIMITIVES
    if plot_alpha_evolution(history, primitives, ctx.path("figures", "alphas.png")):
        figures["alphas"] = "figures/alphas.png"
    if history and plot_final_alphas(history[-1], primitives, ctx.path("figures", "alphas_final.png")):
        figures["alphas_final"] = "figures/alphas_final.png"
    return figures


def _profile_commands(prof: Any, targets: str, genotype: str) -> str:
    """The profile command of the cost table, and a second line for the found architecture's INT8 row."""
    from nasdeploy.profile.latency import INT8_LATENCY_BACKENDS

    sizes = "".join(f" --{k} {v}" for k, v in (("channels", prof.channels), ("layers", prof.layers)) if v is not None)
    lines = [f"nasdeploy profile {targets} --net {prof.net}{sizes} --latency {','.join(prof.backends) or 'none'}"]
    if prof.int8:
        int8 = ",".join(INT8_LATENCY_BACKENDS[m] for m in prof.int8)
        lines.append(f"nasdeploy profile {genotype} --net {prof.net}{sizes} --latency {int8}")
    return "\n".join(lines)


def reproduce_commands(ctx: StageContext) -> dict[str, str]:
    """The exact commands that redo each stage by hand (the stage CLIs over the same files)."""
    from nasdeploy.pipeline.stages import deploy_commands, export_stage_formats

    config, run_dir, q = ctx.config, ctx.run_dir, quote_path
    data = f" --data-dir {q(config.data_dir)}" if config.data_dir else ""
    net = config.train.get("model", {}).get("net", "cifar")
    prof = config.profile
    targets = " ".join([q(run_dir / "genotype.json"), *prof.compare])
    formats = " ".join(f"--format {f}" for f in export_stage_formats(config.export))
    deploy = f"nasdeploy export {q(run_dir / 'genotype.json')} --net {net} --checkpoint {q(run_dir / 'train' / 'checkpoint.pt')}"
    return {  # the runner lists them in stage order
        **deploy_commands(ctx, deploy),
        "search": f"nasdeploy search --config {q(run_dir / 'search' / 'config.yaml')} --out {q(run_dir / 'search')}{data}",
        "derive": f"nasdeploy pipeline{source_arg(config)} --out {q(run_dir)} --only derive",
        "train": f"nasdeploy train --genotype {q(run_dir / 'genotype.json')} --config {q(run_dir / 'train' / 'config.yaml')} --out {q(run_dir / 'train')}{data}",
        "export": f"{deploy} {formats} --out {q(run_dir / 'export')}",
        "profile": _profile_commands(prof, targets, q(run_dir / "genotype.json")),
    }
