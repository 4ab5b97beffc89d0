"""The report's selection over seeds (one row per seed, the chosen one, the metric's mean +- std) and its collapse
warnings (a derived normal cell with 3+ parameter-free ops, as the searches recorded them in done.json)."""

from __future__ import annotations

from typing import Any, Mapping

from nasdeploy.pipeline.results import SearchStageResult
from nasdeploy.pipeline.summary import RunSummary

_PERCENT_METRICS = ("top1", "top5")  # fractions the report shows in percent
_CELLS = (("normal", "N"), ("reduce", "R"), ("recurrent", "C"))


def selection_lines(run: RunSummary) -> list[str]:
    """The collapse warnings of the searches, then the "Selection over seeds" section when there was one."""
    search = run.search
    if search is None:
        return []
    return collapse_warning_lines(search) + selection_section(search)


def collapse_warning_lines(search: SearchStageResult) -> list[str]:
    """One line per search (the published one, or any seed's) whose done.json recorded warnings."""
    if search.selection is None:
        found = [("the search", w) for w in search.warnings]
    else:
        found = [(f"seed {r.seed}{' (published)' if r.chosen else ''}", w) for r in search.selection.seeds
                 for w in r.warnings]
    lines = [f"**Collapse warning** ({who}): {warning}." for who, warning in found]
    return lines + [""] if lines else []


def selection_section(search: SearchStageResult) -> list[str]:
    """The per-seed table and the mean +- std line ([] without a selection)."""
    selection = search.selection
    if selection is None:
        return []
    metric = selection.metric
    out = ["## Selection over seeds", "",
           f"One search per seed, each derived genotype trained briefly from scratch and scored on held-out training "
           f"images ({metric}); the best one is published and trained in full (DARTS, section 3.3).", "",
           f"| seed | genotype | derived MACs | normal skips | parameter-free ops | short-training {metric} | "
           f"search s | training s | chosen |", "|---|---|---|---|---|---|---|---|---|"]
    for r in selection.seeds:
        out.append(f"| {r.seed} | `{short_genotype(r.genotype)}` | {_macs(r.derived_macs)} | {_count(r.normal_skips)} | "
                   f"{_count(r.parameter_free_ops)} | {_metric(metric, r.metric)} | {_seconds(r.search_time_s)} | "
                   f"{_seconds(r.train_time_s)} | {'**chosen**' if r.chosen else ''} |")
    best = "highest" if selection.higher_is_better else "lowest"
    out += ["", f"{metric} over {len(selection.seeds)} seeds: {_metric(metric, selection.mean)} +- "
                f"{_metric(metric, selection.std)} (sample standard deviation); chosen: seed {selection.chosen_seed} "
                f"({best} {metric}, ties to the lower seed). Its search: `{search.run_folder}/`.", ""]
    return out


def short_genotype(genotype: Mapping[str, Any]) -> str:
    """A genotype's cells in one short line, e.g. `N: sep3<-0 skip<-1 ...; R: max3<-0 ...` (no pipe: it sits in a table cell)."""
    parts = []
    for key, label in _CELLS:
        edges = genotype.get(key)
        if isinstance(edges, list):
            parts.append(f"{label}: " + " ".join(f"{_short_op(str(op))}<-{i}" for op, i in edges))
    return "; ".join(parts) or str(genotype.get("name", "?"))


def _short_op(op: str) -> str:
    """sep_conv_3x3 -> sep3, max_pool_3x3 -> max3, skip_connect -> skip; other names as they are."""
    words = op.split("_")
    if len(words) == 3 and "x" in words[2]:
        return words[0] + words[2].split("x")[0]
    return words[0] if op == "skip_connect" else op


def _metric(name: str, value: float) -> str:
    return f"{100 * value:.2f}%" if name in _PERCENT_METRICS else f"{value:.4g}"


def _macs(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:.1f}M"


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"
