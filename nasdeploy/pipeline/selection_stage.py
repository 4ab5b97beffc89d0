"""The search stage as a selection over seeds (DARTS, section 3.3): one search per seed into <run>/search, each
derived genotype trained briefly, the best kept (nasdeploy.search.selection); its typed summary for the report."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

from nasdeploy.errors import ConfigError
from nasdeploy.genotypes import genotype_to_dict
from nasdeploy.pipeline.config import PipelineConfig
from nasdeploy.pipeline.results import SearchStageResult, SeedRow, SelectionSummary
from nasdeploy.pipeline.stages import StageContext, last_log_record, numeric_metrics
from nasdeploy.search.selection import run_selection, space_rules
from nasdeploy.search.selection_record import SelectionRecord
from nasdeploy.spaces.table import get_space
from nasdeploy.utils.rundir import read_done
from nasdeploy.utils.yamlconfig import to_dict


def check_selection(config: PipelineConfig) -> None:
    """A one-line error, before anything is written, for a selection the run cannot do (no seeds, no rules)."""
    if config.selection is None:
        return
    space_rules(get_space(config.space))
    if not config.selection.seeds:
        raise ConfigError("the selection protocol needs seeds (--seeds 0,1,2,3 or search.selection.seeds)")


def run_selection_stage(ctx: StageContext, search_config: Any, order: str) -> SearchStageResult:
    """Search once per seed into the search folder (resuming; a finished seed is not redone) and keep the best."""
    config = ctx.config
    assert config.selection is not None
    folder = ctx.path("search")
    # run_selection always prints its per-seed status lines; a quiet pipeline prints nothing (its logs keep them).
    with contextlib.nullcontext() if ctx.progress else contextlib.redirect_stdout(io.StringIO()):
        record = run_selection(get_space(config.space), to_dict(search_config), config.selection, folder,
                               data_dir=config.data_dir, progress=ctx.progress)
    summary = selection_summary(record, folder)
    chosen = folder / record.chosen.search_dir
    done = read_done(chosen) or {}
    last = last_log_record(chosen / "log.jsonl")
    return SearchStageResult(epochs=int(done.get("epochs", 0)), order=order, mixed_op=str(last.get("mixed_op", "unknown")),
                             final=numeric_metrics(last), warnings=tuple(done.get("warnings") or ()), selection=summary)


def selection_summary(record: SelectionRecord, folder: Path) -> SelectionSummary:
    """The typed rows of a finished selection, each with what its search's done.json says of the derived cell."""
    rows = []
    for result in record.seeds:
        done = read_done(folder / result.search_dir) or {}
        rows.append(SeedRow(seed=result.seed, genotype=genotype_to_dict(result.genotype), metric=result.metric,
                            derived_macs=derived_macs(done.get("budget")), normal_skips=done.get("normal_skips"),
                            parameter_free_ops=done.get("parameter_free_ops"),
                            warnings=tuple(done.get("warnings") or ()), search_time_s=result.search_time_s,
                            train_time_s=result.train_time_s, search_dir=result.search_dir,
                            chosen=result.seed == record.chosen_seed))
    return SelectionSummary(metric=record.metric, higher_is_better=record.higher_is_better,
                            chosen_seed=record.chosen_seed, mean=record.mean, std=record.std, seeds=tuple(rows))


def derived_macs(budget: Any) -> float | None:
    """The derived genotype's MACs of a search's budget record (None: the search had no budget)."""
    if not isinstance(budget, dict):
        return None
    value = budget.get("derived") if budget.get("metric") == "macs" else budget.get("derived_macs")
    return float(value) if isinstance(value, (int, float)) else None

