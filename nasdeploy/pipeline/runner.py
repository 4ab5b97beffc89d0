"""Run the pipeline stages in order over one run directory, resuming at the first unfinished stage."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from nasdeploy._version import __version__
from nasdeploy.errors import ConfigError
from nasdeploy.pipeline.config import PipelineConfig
from nasdeploy.pipeline.plots import plot_curves, read_jsonl
from nasdeploy.pipeline.report import write_report
from nasdeploy.pipeline.stages import StageContext, StageFn, StageInterrupted, quote_path, skip_stage, source_arg
from nasdeploy.pipeline.state import STATE_FILE, PipelineState
from nasdeploy.spaces.table import get_space, resolve
from nasdeploy.utils.files import write_text_atomic
from nasdeploy.utils.ownership import claim_folder
from nasdeploy.utils.rundir import open_run_directory
from nasdeploy.utils.yamlconfig import dump_yaml, to_dict

STAGE_ORDER: tuple[str, ...] = ("search", "derive", "train", "export", "executorch", "quantize", "profile", "report")
# Stages whose output folder a --force removes first (search/train would resume from their checkpoints; the
# deployment folders of a stage that has become a no-op must not linger).
_CLEARED_WHEN_FORCED = ("search", "train", "export", "executorch", "quantize")


def stages_for(space: str) -> dict[str, StageFn]:
    """The stage functions of a search space, from its table entry (same names and run-directory contract)."""
    return get_space(space).pipeline_stages()


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
    return {"name": config.name, "space": config.space, "data_dir": config.data_dir, "search": config.search, "train": config.train,
            "export": to_dict(config.export), "profile": to_dict(config.profile)}


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
    """Run (or resume) search -> derive -> train -> export -> executorch -> quantize -> profile -> report in `out_dir`.

    force: stages to redo; every later stage is redone too, since it reads their outputs.
    only: run just these stages (their inputs must already be in the run directory).
    """
    for name in (*force, *only):
        if name not in STAGE_ORDER:
            raise ConfigError(f"unknown pipeline stage '{name}'; stages: {', '.join(STAGE_ORDER)}")
    run_dir = Path(out_dir)
    if (force or only) and not (run_dir / STATE_FILE).is_file():
        option = "--force" if force else "--only"
        raise ConfigError(f"{run_dir} holds no pipeline run ({STATE_FILE} is missing): {option} acts only on a "
                          f"pipeline run directory; run the pipeline without {option} first")
    stages = stages_for(config.space)
    claim_folder(run_dir, "pipeline")  # a folder nasdeploy did not make is refused before it gets a lock
    with open_run_directory(run_dir, (STATE_FILE, "pipeline.yaml", "profile.json", "summary.json", "report.md")):
        return _run_stages(config, run_dir, stages, force, only, progress, stop_after_epoch)


def _run_stages(config: PipelineConfig, run_dir: Path, stages: dict[str, StageFn], force: Sequence[str],
                only: Sequence[str], progress: bool, stop_after_epoch: int | None) -> PipelineResult:
    state = PipelineState.load(run_dir)
    _check_same_config(run_dir, config, state)
    if force:
        first = min(STAGE_ORDER.index(f) for f in force)
        state.invalidate(list(STAGE_ORDER[first:]))
        _clear_forced_outputs(run_dir, STAGE_ORDER[first:])
    ctx = StageContext(config, run_dir, progress, stop_after_epoch)
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
            outputs = write_pipeline_report(ctx, state) if stage == "report" else _stage_fn(stages, stage, config)(ctx)
        except StageInterrupted as stop:
            result.interrupted = stage
            _log(f"{stage}: {stop}; rerun the same command to resume", progress)
            return result
        state.mark_done(stage, outputs)
        result.ran.append(stage)
        why = outputs.get("stage_skipped")
        _log(f"{stage}: skipped: {why}" if why else f"{stage}: done in {state.stages[stage]['seconds']:.1f} s", progress)
    if state.is_done("report"):
        import json

        result.summary = json.loads((run_dir / "summary.json").read_text())
    return result


def _stage_fn(stages: dict[str, StageFn], stage: str, config: PipelineConfig) -> StageFn:
    """The space's function for `stage`; a stage module without one (an older or third-party space) skips it."""
    if stage in stages:
        return stages[stage]
    return lambda _ctx: skip_stage(f"the {config.space} pipeline has no {stage} stage")


def _clear_forced_outputs(run_dir: Path, stages: Sequence[str]) -> None:
    """Forced search/train must not resume from their old checkpoints; forced deployment stages start empty."""
    import shutil

    for stage in _CLEARED_WHEN_FORCED:
        if stage in stages and (run_dir / stage).is_dir():
            shutil.rmtree(run_dir / stage)


def write_pipeline_report(ctx: StageContext, state: PipelineState) -> dict[str, Any]:
    """Figures, report.md and summary.json from the files the other stages left."""
    import json

    run_dir = ctx.run_dir
    stage_module = resolve(get_space(ctx.config.space).pipeline)
    figures_dir = run_dir / "figures"
    figures_dir.mkdir(exist_ok=True)
    figures: dict[str, str] = {}
    for key, name in (("cells", "cells.svg"), ("path", "path.png")):
        if (figures_dir / name).is_file():
            figures[key] = f"figures/{name}"
    figures.update(stage_module.report_figures(ctx))
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
    export = deployment_summary(outputs)
    parity = export.get("parity") or {}
    export["parity"] = {"passed": parity.get("passed"), "max_abs_error": parity.get("max_abs_err"),
                        "max_rel_error": parity.get("max_rel_err"), "rtol": parity.get("rtol"), "atol": parity.get("atol")}
    profile_path = run_dir / "profile.json"
    profile = json.loads(profile_path.read_text()) if profile_path.is_file() else {}
    commands = stage_module.reproduce_commands(ctx)
    commands = {**{s: commands[s] for s in STAGE_ORDER if s in commands}, **commands}  # in stage order
    commands["pipeline"] = f"nasdeploy pipeline{source_arg(ctx.config)} --out {quote_path(run_dir)}"
    summary = {
        "name": ctx.config.name,
        "space": ctx.config.space,
        "nasdeploy_version": __version__,
        "config": ctx.config.source,
        "genotype": outputs.get("derive", {}).get("genotype"),
        "genotype_text": outputs.get("derive", {}).get("text"),
        "search": search,
        "train": train,
        "export": export,
        "profile": profile,
        "figures": figures,
        "commands": commands,
        "stages": {k: _stage_record(state.stages[k]) for k in STAGE_ORDER if k in state.stages and k != "report"},
    }
    write_report(run_dir, summary)
    return {"report": "report.md", "summary": "summary.json", "figures": figures}


def _stage_record(info: dict[str, Any]) -> dict[str, Any]:
    """A stage's time for the report, with its one line when it was skipped."""
    outputs = info.get("outputs") or {}
    record: dict[str, Any] = {"seconds": info.get("seconds", 0.0)}
    if outputs.get("stage_skipped"):
        record["note"] = f"skipped: {outputs['stage_skipped']}"
    return record


def deployment_summary(outputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The report's export record: the export stage's outputs with the executorch and quantize stages' folded in."""
    export = dict(outputs.get("export", {}))
    if not export:
        return {}
    runtimes = dict(export.get("runtimes") or {})
    quantization = dict(export.get("quantization") or {})
    skipped = dict(export.get("skipped") or {})
    dirs, stage_skips = {"export": export.get("dir")}, {}
    for stage in ("executorch", "quantize"):
        out = outputs.get(stage) or {}
        runtimes.update(out.get("runtimes") or {})
        quantization.update(out.get("quantization") or {})
        skipped.update(out.get("skipped") or {})
        if out.get("stage_skipped"):
            stage_skips[stage] = out["stage_skipped"]
        if out.get("dir"):
            dirs[stage] = out["dir"]
    export.update(runtimes=runtimes, quantization=quantization, skipped=skipped,
                  dirs={k: v for k, v in dirs.items() if v}, stage_skips=stage_skips)
    if outputs.get("executorch", {}).get("pte"):
        export["pte"] = f"{outputs['executorch'].get('dir', 'executorch')}/{outputs['executorch']['pte']}"
    return export
