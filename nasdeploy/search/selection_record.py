"""The outcome of a selection over several seeds (selection.json): every seed's genotype, cost and short-training
metric, the chosen seed, and the metric's mean and standard deviation over the seeds."""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from nasdeploy.errors import CheckpointError
from nasdeploy.genotypes import Genotype, genotype_from_dict, genotype_to_dict
from nasdeploy.utils.files import write_json_atomic

SELECTION_FILE = "selection.json"
FORMAT = "nasdeploy.selection"
VERSION = 1
COST_PREFIXES = ("expected_", "derived_", "cost_")  # the cost keys a search with a budget logs each epoch


@dataclass(frozen=True)
class SeedResult:
    """One seed: the genotype its search derived, what that search logged of its cost, and the short training."""

    seed: int
    genotype: Genotype
    metric: float  # the short training's validation metric (SelectionRecord.metric names it)
    cost: dict[str, float] = field(default_factory=dict)  # the search's last cost record ({}: it had no budget)
    search_dir: str = ""  # relative to the selection folder
    train_dir: str = ""
    search_time_s: float | None = None
    train_time_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (the genotype as its versioned JSON object)."""
        return {"seed": self.seed, "genotype": genotype_to_dict(self.genotype), "metric": self.metric,
                "cost": dict(self.cost), "search_dir": self.search_dir, "train_dir": self.train_dir,
                "search_time_s": self.search_time_s, "train_time_s": self.train_time_s}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SeedResult:
        """The inverse of to_dict."""
        return cls(seed=int(data["seed"]), genotype=genotype_from_dict(data["genotype"]), metric=float(data["metric"]),
                   cost={k: float(v) for k, v in data.get("cost", {}).items()}, search_dir=data.get("search_dir", ""),
                   train_dir=data.get("train_dir", ""), search_time_s=data.get("search_time_s"),
                   train_time_s=data.get("train_time_s"))


def cost_of(final_record: dict[str, Any]) -> dict[str, float]:
    """The cost values in a search's last epoch record (empty when it ran without a budget)."""
    return {k: float(v) for k, v in final_record.items() if k.startswith(COST_PREFIXES) and v is not None}


def best_seed(results: Sequence[SeedResult], higher_is_better: bool) -> SeedResult:
    """The seed with the best metric; a tie goes to the lower seed."""
    if not results:
        raise ValueError("no seeds to select from")
    sign = -1.0 if higher_is_better else 1.0
    return min(results, key=lambda r: (sign * r.metric, r.seed))


@dataclass(frozen=True)
class SelectionRecord:
    """Every seed's result, the chosen seed, and the metric's mean and sample standard deviation over seeds."""

    space: str
    metric: str  # the key of the short training's done.json that was compared
    higher_is_better: bool
    seeds: tuple[SeedResult, ...]  # in seed order
    chosen_seed: int
    mean: float
    std: float  # sample standard deviation (n - 1); 0 for a single seed

    @classmethod
    def from_results(cls, space: str, metric: str, higher_is_better: bool,
                     results: Sequence[SeedResult]) -> SelectionRecord:
        """The record of `results` (in seed order), with the best seed chosen and the statistics computed."""
        ordered = tuple(sorted(results, key=lambda r: r.seed))
        values = [r.metric for r in ordered]
        return cls(space=space, metric=metric, higher_is_better=higher_is_better, seeds=ordered,
                   chosen_seed=best_seed(ordered, higher_is_better).seed, mean=statistics.fmean(values),
                   std=statistics.stdev(values) if len(values) > 1 else 0.0)

    @property
    def chosen(self) -> SeedResult:
        """The chosen seed's result."""
        return next(r for r in self.seeds if r.seed == self.chosen_seed)

    def to_dict(self) -> dict[str, Any]:
        """selection.json's content."""
        return {"format": FORMAT, "version": VERSION, "space": self.space, "metric": self.metric,
                "higher_is_better": self.higher_is_better, "chosen_seed": self.chosen_seed,
                "mean": self.mean, "std": self.std, "seeds": [r.to_dict() for r in self.seeds]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SelectionRecord:
        """The inverse of to_dict."""
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise CheckpointError(f"not a {FORMAT} record of version {VERSION}")
        return cls(space=data["space"], metric=data["metric"], higher_is_better=bool(data["higher_is_better"]),
                   seeds=tuple(SeedResult.from_dict(r) for r in data["seeds"]), chosen_seed=int(data["chosen_seed"]),
                   mean=float(data["mean"]), std=float(data["std"]))

    def summary(self) -> str:
        """One line per seed and the chosen one, for the console."""
        lines = [f"{'seed':>6}  {self.metric:>8}  cost  genotype"]
        for r in self.seeds:
            cost = "  ".join(f"{k} {v:.4g}" for k, v in r.cost.items() if k.startswith("derived_")) or "-"
            mark = " <- chosen" if r.seed == self.chosen_seed else ""
            lines.append(f"{r.seed:>6}  {r.metric:>8.4f}  {cost}  {_genotype_text(r.genotype)}{mark}")
        best = "highest" if self.higher_is_better else "lowest"
        lines.append(f"{self.metric} over {len(self.seeds)} seeds: {self.mean:.4f} +- {self.std:.4f}; chosen: seed "
                     f"{self.chosen_seed} ({best} {self.metric}, ties to the lower seed)")
        return "\n".join(lines)


def _genotype_text(genotype: Genotype) -> str:
    data = genotype_to_dict(genotype)
    cells = {k: v for k, v in data.items() if k in ("normal", "reduce", "recurrent", "cell", "path")}
    return json.dumps(cells, separators=(",", ":"))


def save_selection(record: SelectionRecord, folder: str | os.PathLike[str]) -> Path:
    """Write selection.json into `folder` atomically."""
    if not all(math.isfinite(r.metric) for r in record.seeds):
        raise ValueError("a seed's metric is not finite")
    return write_json_atomic(Path(folder) / SELECTION_FILE, record.to_dict())


def load_selection(folder: str | os.PathLike[str]) -> SelectionRecord:
    """The record a finished selection wrote (selection.json in `folder`)."""
    path = Path(folder) / SELECTION_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise CheckpointError(f"{folder} holds no finished selection ({SELECTION_FILE} missing or unreadable)") from None
    return SelectionRecord.from_dict(data)
