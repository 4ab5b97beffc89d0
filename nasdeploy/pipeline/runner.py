"""Run the pipeline stages in order over one run directory, resuming at the first unfinished stage."""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from nasdeploy._version import __version__
from nasdeploy.errors import ConfigError
from nasdeploy.pipeline.config import PipelineConfig
from nasdeploy.pipeline.plots import plot_alpha_evolution, plot_curves, plot_final_alphas, read_jsonl
from nasdeploy.pipeline.report import write_report
from nasdeploy.pipeline.stages import STAGES, StageContext, StageFn, StageInterrupted
from nasdeploy.pipeline.state import PipelineState
from nasdeploy.utils.files import write_text_atomic
from nasdeploy.utils.yamlconfig import dump_yaml

STAGE_ORDER: tuple[str, ...] = (*STAGES, "report")


def stages_for(space: str) -> dict[str, StageFn]:
    """The stage functions of a search space (same names and run-directory contract for every space)."""
    if space == "autodeeplab":
        from nasdeploy.pipeline.adl_stages import ADL_STAGES

        return ADL_STAGES
    return STAGES


@dataclass
class PipelineResult:
    """Where the run is and what each stage did."""

    run_dir: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    interrupted: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)


def _log(message: str, enabled: bool) -> None:
    if enabled:
        print(f"[pipeline] {message}", file=sys.stderr, flush=True)


def _config_record(config: PipelineConfig) -> dict[str, Any]:
    # The space is recorded only when it is not the default, so run directories of earlier versions still resume.
    space = {"space": config.space} if config.space != "darts_cnn" else {}
    return {"name": config.name, **space, "data_dir": config.data_dir, "search": config.search, "train": config.train,
            "export": {"formats": list(config.export.formats), "opset": config.export.opset, "fp16": config.export.fp16},
            "profile": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(config.profile).items()}}


def _check_same_config(run_dir: Path, config: PipelineConfig, state: PipelineState) -> None:
    """A run directory belongs to one config: refuse to mix stages of two configs."""
    stored = run_dir / "pipeline.yaml"
    record = dump_yaml(_config_record(config))
    if stored.is_file() and state.stages and stored.read_text() != record:
        raise ConfigError(
            f"{run_dir} was started with a different pipeline config (see {stored}); use a new --out directory"
        )
    write_text_atomic(stored, record)


def run_pipeline(config: PipelineConfig, out_dir: str | os.PathLike[str], *, force: Sequence[str] = (),
                 only: Sequence[str] = (), progress: bool = True, stop_after_epoch: int | None = None) -> PipelineResult:
    """Run (or resume) search -> derive -> train -> export -> profile -> report in `out_dir`.

    force: stages to redo; every later stage is redone too, since it reads their outputs.
    only: run just these stages (their inputs must already be in the run directory).
    """
    for name in (*force, *only):
        if name not in STAGE_ORDER:
            raise ConfigError(f"unknown pipeline stage '{name}'; stages: {', '.join(STAGE_ORDER)}")
    run_dir = Path(out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = PipelineState.load(run_dir)
    _check_same_config(run_dir, config, state)
    if force:
        first = min(STAGE_ORDER.index(f) for f in force)
        state.invalidate(list(STAGE_ORDER[first:]))
        _clear_forced_outputs(run_dir, STAGE_ORDER[first:])
    ctx = StageContext(config, run_dir, progress, stop_after_epoch)
    stages = stages_for(config.space)
    result = PipelineResult(run_dir)
    for stage in STAGE_ORDER:
        if only and stage not in only:
            continue
        if state.is_done(stage) and stage not in only:
            result.skipped.append(stage)
            _log(f"{stage}: already done, skipping", progress)
            continue
        _log(f"{stage}: running", progress)
        state.mark_started(stage)
        try:
            outputs = write_pipeline_report(ctx, state) if stage == "report" else stages[stage](ctx)
        except StageInterrupted as stop:
            result.interrupted = stage
            _log(f"{stage}: {stop}; rerun the same command to resume", progress)
            return result
        state.mark_done(stage, outputs)
        result.ran.append(stage)
        _log(f"{stage}: done in {state.stages[stage]['seconds']:.1f} s", progress)
    if state.is_done("report"):
        import json

        result.summary = json.loads((run_dir / "summary.json").read_text())
    return result


def _clear_forced_outputs(run_dir: Path, stages: Sequence[str]) -> None:
    """Forced search/train must not resume from their old checkpoints."""
    import shutil

    for stage in ("search", "train", "export"):
        if stage in stages and (run_dir / stage).is_dir():
            shutil.rmtree(run_dir / stage)


def reproduce_commands(config: PipelineConfig, run_dir: Path) -> dict[str, str]:
    """The exact commands that redo each stage by hand (the stage CLIs over the same files)."""
    q = lambda p: shlex.quote(str(p))  # noqa: E731
    data = f" --data-dir {q(config.data_dir)}" if config.data_dir else ""
    net = config.train.get("model", {}).get("net", "cifar")
    prof = config.profile
    targets = " ".join([q(run_dir / "genotype.json"), *prof.compare])
    formats = " ".join(f"--format {f}" for f in config.export.formats)
    return {
        "search": f"nasdeploy search --config {q(run_dir / 'search' / 'config.yaml')} --out {q(run_dir / 'search')}{data}",
        "derive": f"nasdeploy pipeline {q(config.source) if config.source != '(built-in demo)' else ''} --out {q(run_dir)} --only derive".replace("  ", " "),
        "train": f"nasdeploy train --genotype {q(run_dir / 'genotype.json')} --config {q(run_dir / 'train' / 'config.yaml')} --out {q(run_dir / 'train')}{data}",
        "export": f"nasdeploy export {q(run_dir / 'genotype.json')} --net {net} --checkpoint {q(run_dir / 'train' / 'checkpoint.pt')} {formats} --out {q(run_dir / 'export')}",
        "profile": f"nasdeploy profile {targets} --net {prof.net} --latency {','.join(prof.backends)}",
        "pipeline": f"nasdeploy pipeline {q(config.source) if config.source != '(built-in demo)' else ''} --out {q(run_dir)}".replace("  ", " "),
    }


def write_pipeline_report(ctx: StageContext, state: PipelineState) -> dict[str, Any]:
    """Figures, report.md and summary.json from the files the other stages left."""
    import json

    from nasdeploy.genotypes import CNN_PRIMITIVES

    run_dir = ctx.run_dir
    figures_dir = run_dir / "figures"
    figures_dir.mkdir(exist_ok=True)
    figures: dict[str, str] = {}
    if (figures_dir / "cells.svg").is_file():
        figures["cells"] = "figures/cells.svg"
    if (figures_dir / "path.png").is_file():
        figures["path"] = "figures/path.png"
    history = read_jsonl(run_dir / "search" / "alphas.jsonl")
    primitives = ctx.config.search.get("model", {}).get("primitives") or CNN_PRIMITIVES
    if plot_alpha_evolution(history, primitives, figures_dir / "alphas.png"):
        figures["alphas"] = "figures/alphas.png"
    if history and plot_final_alphas(history[-1], primitives, figures_dir / "alphas_final.png"):
        figures["alphas_final"] = "figures/alphas_final.png"
    curves = {"search": read_jsonl(run_dir / "search" / "log.jsonl"), "train": read_jsonl(run_dir / "train" / "log.jsonl")}
    if plot_curves(curves, figures_dir / "curves.png"):
        figures["curves"] = "figures/curves.png"

    outputs = {name: info.get("outputs", {}) for name, info in state.stages.items()}
    search = dict(outputs.get("search", {}))
    search["seconds"] = state.stages.get("search", {}).get("seconds", 0.0)
    train = dict(outputs.get("train", {}))
    train["seconds"] = state.stages.get("train", {}).get("seconds", 0.0)
    for key in ("top1", "top5"):  # the train loop records fractions; the report speaks percent
        if isinstance(train.get(key), (int, float)):
            train[key] = 100.0 * train[key]
    if train.get("num_classes"):
        train["chance"] = 100.0 / train["num_classes"]
    export = dict(outputs.get("export", {}))
    parity = export.get("parity") or {}
    export["parity"] = {"passed": parity.get("passed"), "max_abs_error": parity.get("max_abs_err"),
                        "max_rel_error": parity.get("max_rel_err"), "rtol": parity.get("rtol"), "atol": parity.get("atol")}
    profile_path = run_dir / "profile.json"
    profile = json.loads(profile_path.read_text()) if profile_path.is_file() else {}
    if profile:
        profile["net_description"] = _net_description(profile)
    summary = {
        "name": ctx.config.name,
        "nasdeploy_version": __version__,
        "config": ctx.config.source,
        "genotype": outputs.get("derive", {}).get("genotype"),
        "genotype_text": outputs.get("derive", {}).get("text"),
        "search": search,
        "train": train,
        "export": export,
        "profile": profile,
        "figures": figures,
        "commands": _commands(ctx.config, run_dir, profile),
        "stages": {k: {"seconds": v.get("seconds", 0.0)} for k, v in state.stages.items() if k != "report"},
    }
    write_report(run_dir, summary)
    return {"report": "report.md", "summary": "summary.json", "figures": figures}


def _net_description(profile: dict[str, Any]) -> str:
    net = profile.get("net")
    if net == "imagenet":
        return "ImageNet mobile setting (224x224, C=48, 14 cells)"
    if net == "segmentation":
        kw = profile.get("net_kwargs") or {}
        sizes = ", ".join(profile.get("sizes") or [])
        return (f"Auto-DeepLab segmentation net as trained (F={kw.get('filter_multiplier')}, ASPP {kw.get('aspp_channels')}, "
                f"decoder {kw.get('decoder_channels')} channels, {profile.get('num_classes')} classes); MACs at {sizes}")
    return "CIFAR (32x32, C=36, 20 cells)"


def _commands(config: PipelineConfig, run_dir: Path, profile: dict[str, Any]) -> dict[str, str]:
    if config.space != "autodeeplab":
        return reproduce_commands(config, run_dir)
    from nasdeploy.pipeline.adl_stages import adl_reproduce_commands

    commands = adl_reproduce_commands(run_dir, config.export.formats, list(profile.get("sizes") or []))
    q = shlex.quote
    source = q(config.source) if config.source != "(built-in demo)" else ""
    commands["pipeline"] = f"nasdeploy pipeline {source} --out {q(str(run_dir))}".replace("  ", " ")
    return commands
