"""Run the pipeline stages in order over one run directory, resuming at the first unfinished stage."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from nasdeploy._version import __version__
from nasdeploy.errors import ConfigError
from nasdeploy.pipeline.config import PipelineConfig
from nasdeploy.pipeline.plots import plot_curves, read_jsonl
from nasdeploy.pipeline.report import write_report
from nasdeploy.pipeline.results import DeriveStageResult, ReportStageResult, SkippedStage, StageResult
from nasdeploy.pipeline.selection_stage import check_selection
from nasdeploy.pipeline.stages import (
    PipelineStages,
    StageContext,
    StageFn,
    StageInterrupted,
    quote_path,
    search_folder,
    source_arg,
)
from nasdeploy.pipeline.state import STATE_FILE, PipelineState
from nasdeploy.pipeline.summary import StageTime, run_summary
from nasdeploy.spaces.table import get_space
from nasdeploy.utils.files import write_text_atomic
from nasdeploy.utils.ownership import claim_folder
from nasdeploy.utils.rundir import open_run_directory, read_json
from nasdeploy.utils.yamlconfig import dump_yaml

STAGE_ORDER: tuple[str, ...] = ("search", "derive", "train", "export", "executorch", "quantize", "profile", "report")
# Stages whose output folder a --force removes first (search/train would resume from their checkpoints; the
# deployment folders of a stage that has become a no-op must not linger).
_CLEARED_WHEN_FORCED = ("search", "train", "export", "executorch", "quantize")


def stages_for(space: str) -> PipelineStages:
    """The pipeline stages of a search space, from its table entry (same names and run-directory contract)."""
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


def _check_same_config(run_dir: Path, config: PipelineConfig, state: PipelineState) -> None:
    """A run directory belongs to one config: refuse to mix stages of two configs."""
    stored = run_dir / "pipeline.yaml"
    record = dump_yaml(config.record())
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
    check_selection(config)
    run_dir = Path(out_dir)
    if (force or only) and not (run_dir / STATE_FILE).is_file():
        option = "--force" if force else "--only"
        raise ConfigError(f"{run_dir} holds no pipeline run ({STATE_FILE} is missing): {option} acts only on a "
                          f"pipeline run directory; run the pipeline without {option} first")
    stages = stages_for(config.space)
    claim_folder(run_dir, "pipeline")  # a folder nasdeploy did not make is refused before it gets a lock
    with open_run_directory(run_dir, (STATE_FILE, "pipeline.yaml", "profile.json", "summary.json", "report.md")):
        return _run_stages(config, run_dir, stages, force, only, progress, stop_after_epoch)


def _run_stages(config: PipelineConfig, run_dir: Path, stages: PipelineStages, force: Sequence[str],
                only: Sequence[str], progress: bool, stop_after_epoch: int | None) -> PipelineResult:
    state = PipelineState.load(run_dir)
    _check_same_config(run_dir, config, state)
    if force:
        first = min(STAGE_ORDER.index(f) for f in force)
        state.invalidate(list(STAGE_ORDER[first:]))
        _clear_forced_outputs(run_dir, STAGE_ORDER[first:])
    ctx = StageContext(config, run_dir, progress, stop_after_epoch)
    functions = stages.stages()
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
            done: StageResult = (write_pipeline_report(ctx, state, stages) if stage == "report"
                                 else _stage_fn(functions, stage, config)(ctx))
        except StageInterrupted as stop:
            result.interrupted = stage
            _log(f"{stage}: {stop}; rerun the same command to resume", progress)
            return result
        state.mark_done(stage, done)
        result.ran.append(stage)
        why = done.skip_reason
        _log(f"{stage}: skipped: {why}" if why else f"{stage}: done in {state.seconds(stage):.1f} s", progress)
    if state.is_done("report"):
        result.summary = read_json(run_dir / "summary.json") or {}
    return result


def _stage_fn(functions: Mapping[str, StageFn], stage: str, config: PipelineConfig) -> StageFn:
    """The space's function for `stage`; a stage set without one (a third-party space) skips it with one line."""
    if stage in functions:
        return functions[stage]
    return lambda _ctx: SkippedStage(reason=f"the {config.space} pipeline has no {stage} stage")


def _clear_forced_outputs(run_dir: Path, stages: Sequence[str]) -> None:
    """Forced search/train must not resume from their old checkpoints; forced deployment stages start empty."""
    import shutil

    for stage in _CLEARED_WHEN_FORCED:
        if stage in stages and (run_dir / stage).is_dir():
            shutil.rmtree(run_dir / stage)


def write_pipeline_report(ctx: StageContext, state: PipelineState, stages: PipelineStages) -> ReportStageResult:
    """Figures, report.md and summary.json from the other stages' results and files."""
    run_dir = ctx.run_dir
    ctx.path("figures").mkdir(exist_ok=True)
    results = {stage: result for stage in STAGE_ORDER if stage != "report" and (result := state.result(stage)) is not None}
    derive = results.get("derive")
    figures = dict(derive.figures) if isinstance(derive, DeriveStageResult) else {}
    figures.update(stages.report_figures(ctx))
    curves = {"search": read_jsonl(run_dir / search_folder(ctx) / "log.jsonl"),
              "train": read_jsonl(run_dir / "train" / "log.jsonl")}
    if plot_curves(curves, ctx.path("figures", "curves.png")):
        figures["curves"] = "figures/curves.png"
    commands = stages.reproduce_commands(ctx)
    commands = {**{s: commands[s] for s in STAGE_ORDER if s in commands}, **commands}  # in stage order
    commands["pipeline"] = f"nasdeploy pipeline{source_arg(ctx.config)} --out {quote_path(run_dir)}"
    times = {stage: StageTime(state.seconds(stage), result.skip_reason) for stage, result in results.items()}
    run = run_summary(results, name=ctx.config.name, space=ctx.config.space, version=__version__,
                      config=ctx.config.source, times=times, profile=read_json(ctx.path("profile.json")) or {},
                      figures=figures, commands=commands)
    write_report(run_dir, run)
    return ReportStageResult(figures=figures)
