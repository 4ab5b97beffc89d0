"""The pipeline stages for the Auto-DeepLab space: hierarchical search, decode, segmentation training, export,
executorch, quantize (not for segmentation yet: skipped with its reason), profile.

Same stage names and run-directory contract as the DARTS CNN stages (search/, genotype.json, train/,
export/, model.onnx, executorch/, profile.json); each reads the previous stages' files.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from nasdeploy.data.segmentation import with_data_dir
from nasdeploy.errors import CheckpointError
from nasdeploy.pipeline.plots import read_jsonl
from nasdeploy.pipeline.stages import (
    StageContext,
    StageFn,
    StageInterrupted,
    environment_line,
    export_trained_model,
    latency_summary,
    publish_genotype,
    quote_path,
    source_arg,
)
from nasdeploy.utils.files import write_json_atomic
from nasdeploy.utils.rundir import read_json


def adl_search_stage(ctx: StageContext) -> dict[str, Any]:
    """Search cell and network level together (resuming an interrupted search)."""
    from nasdeploy.config.autodeeplab import AutoDeepLabSearchConfig
    from nasdeploy.search.autodeeplab_loop import run_search
    from nasdeploy.utils.yamlconfig import from_dict

    cfg = from_dict(AutoDeepLabSearchConfig, ctx.config.search)
    out = ctx.path("search")
    result = run_search(cfg, out, **ctx.loop_options())
    if not result.finished:
        raise StageInterrupted(f"search stopped after epoch {result.epochs_done}/{cfg.search.epochs}")
    last = (read_jsonl(out / "log.jsonl") or [{}])[-1]
    final = {k: last[k] for k in ("train_loss", "arch_loss", "val_miou", "val_pixel_acc") if last.get(k) is not None}
    return {"dir": "search", "epochs": result.epochs_done, "final": final, "order": "first",
            "arch_start_epoch": cfg.search.arch_start_epoch, "mixed_op": last.get("mixed_op", "unknown"),
            "path": list(result.path), "path_log_prob": result.path_log_prob}


def adl_derive_stage(ctx: StageContext) -> dict[str, Any]:
    """Decode the genotype (cell top-2 + Viterbi path) from the final alpha/beta; draw cell and path."""
    from nasdeploy.pipeline.plots import plot_network_path
    from nasdeploy.spaces.autodeeplab_decode import beta_probabilities, decode_genotype, viterbi_path
    from nasdeploy.utils.checkpoint import load_checkpoint

    ckpt_path = ctx.path("search", "checkpoint.pt")
    if not ckpt_path.is_file():
        raise CheckpointError(f"{ckpt_path} is missing: run the search stage first")
    state = load_checkpoint(ckpt_path)
    model = state.get("model") or {}
    if "alphas" not in model or "betas" not in model:
        raise CheckpointError(f"{ckpt_path} has no alphas/betas: not an Auto-DeepLab search checkpoint")
    alphas, betas = model["alphas"].double().numpy(), model["betas"].double().numpy()
    blocks = int(state.get("meta", {}).get("config", {}).get("supernet", {}).get("blocks", 5))
    genotype = decode_genotype(alphas, betas, blocks, name=f"{ctx.config.name}_found")
    probabilities = beta_probabilities(betas)
    path, log_prob = viterbi_path(probabilities)
    outputs = publish_genotype(ctx, genotype, {"source": "search", "path_log_prob": log_prob})
    plot_network_path(probabilities, path, ctx.path("figures", "path.png"))
    return {**outputs, "path": list(path), "path_log_prob": log_prob}


def _train_config(ctx: StageContext) -> Any:
    """The validated train section with this run's data root (for the sizes the export and profile stages read)."""
    from nasdeploy.config.autodeeplab import AutoDeepLabTrainConfig
    from nasdeploy.utils.yamlconfig import from_dict

    cfg = from_dict(AutoDeepLabTrainConfig, ctx.config.train)
    return replace(cfg, data=with_data_dir(cfg.data, ctx.config.data_dir))


def adl_train_stage(ctx: StageContext) -> dict[str, Any]:
    """Train the decoded segmentation network from scratch (resuming from its checkpoint)."""
    from nasdeploy.config.autodeeplab import AutoDeepLabTrainConfig
    from nasdeploy.train.autodeeplab_loop import run_training
    from nasdeploy.utils.yamlconfig import from_dict

    cfg = from_dict(AutoDeepLabTrainConfig, ctx.config.train)
    out = ctx.path("train")
    result = run_training(cfg, ctx.path("genotype.json"), out, **ctx.loop_options())
    if not result.finished:
        raise StageInterrupted(f"training stopped after epoch {result.epochs_done}/{cfg.train.epochs}")
    summary = read_json(out / "done.json") or {}
    return {"dir": "train", "epochs": cfg.train.epochs, "miou": result.val_miou, "majority_miou": result.majority_miou,
            "pixel_acc": summary.get("val_pixel_acc"), "params": result.params, "checkpoint": "train/model.pt",
            "net": "segmentation", "filter_multiplier": cfg.net.filter_multiplier}


def _crop_size(ctx: StageContext) -> tuple[int, int]:
    """The profile's input size, else the training crop (else the synthetic image size)."""
    if ctx.config.profile.input_size is not None:
        return tuple(ctx.config.profile.input_size)  # type: ignore[return-value]
    data = _train_config(ctx).data
    return tuple(data.crop_size or data.image_size)  # type: ignore[return-value]


def adl_export_stage(ctx: StageContext) -> dict[str, Any]:
    """Export the trained segmentation network to ONNX (dynamic batch and H/W), parity-checked at the crop size."""
    return export_trained_model(ctx, "segmentation", "train/model.pt", _crop_size(ctx))


def adl_executorch_stage(ctx: StageContext) -> dict[str, Any]:
    """The ExecuTorch program at the crop size (random-input parity), when the export section asks for one."""
    from nasdeploy.pipeline.stages import NO_EXECUTORCH, executorch_trained_model, skip_stage, wants_executorch

    if not wants_executorch(ctx.config.export):
        return skip_stage(NO_EXECUTORCH)
    return executorch_trained_model(ctx, "segmentation", "train/model.pt", _crop_size(ctx))


def adl_quantize_stage(ctx: StageContext) -> dict[str, Any]:
    """No INT8 path for segmentation yet: the stage says so in one line."""
    from nasdeploy.pipeline.stages import NO_INT8, skip_stage

    if not ctx.config.export.int8:
        return skip_stage(NO_INT8)
    return skip_stage("INT8 calibration and float-vs-INT8 scoring are implemented for classifiers only "
                      "(segmentation: not yet)")


def adl_profile_stage(ctx: StageContext) -> dict[str, Any]:
    """Params, MACs at the crop and at full resolution, and latency of the found net next to the published one."""
    from nasdeploy.data.segmentation import dataset_classes
    from nasdeploy.genotypes import resolve_genotype
    from nasdeploy.nets import build_network
    from nasdeploy.profile.api import profile_model
    from nasdeploy.profile.complexity import model_complexity
    from nasdeploy.profile.protocol import LatencyConfig

    section = ctx.config.profile
    train_cfg = _train_config(ctx)
    net_kwargs = train_cfg.net.net_kwargs()
    if section.channels is not None:
        net_kwargs["filter_multiplier"] = section.channels
    num_classes = len(dataset_classes(train_cfg.data))
    height, width = _crop_size(ctx)
    targets = [("found", str(ctx.path("genotype.json")))] + [(name, name) for name in section.compare]
    rows, environment = [], None
    for label, target in targets:
        genotype = resolve_genotype(target, expected_kind="autodeeplab")
        model = build_network(genotype, "segmentation", num_classes=num_classes, **net_kwargs).eval()
        backends = ",".join(section.backends) if label in section.latency_for else "none"
        result = profile_model(model, (3, height, width), name=label, latency=backends, activations=False,
                               latency_config=LatencyConfig(warmup=section.warmup, runs=section.runs, progress=False))
        data = result.to_dict()
        environment = environment or data.get("environment")
        macs_at = {f"{height}x{width}": data.get("macs")}
        for h, w in section.macs_at:
            macs_at[f"{h}x{w}"] = model_complexity(model, (3, h, w), activations=False).macs
        latency = latency_summary(data)
        rows.append({"name": ctx.config.name + " (found)" if label == "found" else label, "found": label == "found",
                     "params": data.get("params"), "macs": data.get("macs"), "macs_at": macs_at, "latency": latency,
                     "path": list(genotype.path)})
    sizes = list(rows[0]["macs_at"]) if rows else []
    description = (f"Auto-DeepLab segmentation net as trained (F={net_kwargs.get('filter_multiplier')}, ASPP "
                   f"{net_kwargs.get('aspp_channels')}, decoder {net_kwargs.get('decoder_channels')} channels, "
                   f"{num_classes} classes); MACs at {', '.join(sizes)}")
    out = {"net": "segmentation", "table": "segmentation", "net_description": description,
           "backends": list(section.backends), "rows": rows, "input_size": [height, width],
           "sizes": sizes, "net_kwargs": net_kwargs, "num_classes": num_classes,
           "convention": "multiply-accumulates of convolutions and FC layers, BN folded, activations/pooling/resizes not counted",
           "environment": environment_line(environment or {})}
    write_json_atomic(ctx.path("profile.json"), out)
    return {"file": "profile.json"}


STAGES: dict[str, StageFn] = {
    "search": adl_search_stage,
    "derive": adl_derive_stage,
    "train": adl_train_stage,
    "export": adl_export_stage,
    "executorch": adl_executorch_stage,
    "quantize": adl_quantize_stage,
    "profile": adl_profile_stage,
}


def report_figures(ctx: StageContext) -> dict[str, str]:
    """No figures beyond those derive drew (cell diagram, network path)."""
    return {}


def reproduce_commands(ctx: StageContext) -> dict[str, str]:
    """The commands that redo each Auto-DeepLab stage by hand over the same files."""
    from nasdeploy.pipeline.stages import deploy_commands, export_stage_formats

    run_dir, q = ctx.run_dir, quote_path
    fmt = " ".join(f"--format {f}" for f in export_stage_formats(ctx.config.export))
    height, width = _crop_size(ctx)  # the ExecuTorch program is static, at the crop the stage lowers it at
    deploy = f"nasdeploy export {q(run_dir / 'genotype.json')} --net segmentation --checkpoint {q(run_dir / 'train' / 'model.pt')}"
    profile = read_json(ctx.path("profile.json")) or {}
    sizes = list(profile.get("sizes") or [])
    size = sizes[-1] if sizes else "1024x2048"
    data = f" --data-dir {q(ctx.config.data_dir)}" if ctx.config.data_dir else ""
    return {  # the runner lists them in stage order
        **{k: v for k, v in deploy_commands(ctx, f"{deploy} --input-size {height}x{width}").items() if k != "quantize"},
        "search": f"nasdeploy search --config {q(run_dir / 'search' / 'config.yaml')} --out {q(run_dir / 'search')}{data}",
        "derive": f"nasdeploy pipeline{source_arg(ctx.config)} --out {q(run_dir)} --only derive",
        "train": f"nasdeploy train --genotype {q(run_dir / 'genotype.json')} --config {q(run_dir / 'train' / 'config.yaml')} --out {q(run_dir / 'train')}{data}",
        "export": f"{deploy} {fmt} --out {q(run_dir / 'export')}",
        "profile": f"nasdeploy profile {q(run_dir / 'genotype.json')} AutoDeepLab --net segmentation --input-size {size}",
    }
