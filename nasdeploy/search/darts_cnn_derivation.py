"""What a DARTS CNN search publishes: the genotype its architecture weights give under the budget and the
collapse guards, and the records (per epoch, and in done.json / genotype.json) that say how it was chosen.

One derivation covers both constraints: with search.cost (derive: budget) the budget is search.cost.target,
with search.collapse.p_darts the normal cell holds at most max_skips skip connections, and the published
genotype is the highest-scoring one under both (spaces/darts_cnn_budget.py: exact). Without either it is
the DARTS rule's genotype, unchanged. The unconstrained (DARTS rule) genotype and its cost are recorded
beside it, with the expected cost of the alphas, so the report can show target, expected, derived and
(from the profiler) measured cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from nasdeploy.config.darts_cnn import CollapseGuards
from nasdeploy.genotypes import CNNGenotype, genotype_to_dict
from nasdeploy.search.cost import ExpectedCost, budget_log_fields, budget_record
from nasdeploy.spaces.darts_cnn_budget import DartsCnnCellCosts, derive_genotype_under_budget
from nasdeploy.spaces.darts_cnn_derive import derive_genotype, edge_op_weights
from nasdeploy.spaces.darts_cnn_guards import collapse_warning, parameter_free_ops, skip_connections

BUDGET_METHOD = ("exact: the highest DARTS score (sum of the kept edges' op weights) whose table cost fits, by a "
                 "Pareto-frontier multiple-choice knapsack over both cells' nodes (spaces/cell_knapsack.py)")
UNCONSTRAINED_METHOD = "the DARTS rule (search.cost.derive: unconstrained; the budget only steers the search)"
SOURCES = {"darts_minus": "DARTS- (Chu et al. 2020): auxiliary skip with a linearly decaying weight",
           "darts_plus": "DARTS+ (Liang et al. 2019): early stop at too many skip connections in the normal cell",
           "p_darts": "P-DARTS (Chen et al. 2019): a cap on skip connections in the normal cell at derivation"}


@dataclass(frozen=True)
class DartsCnnDerivation:
    """The published genotype, the DARTS rule's beside it, the budget record and what the guards did."""

    genotype: CNNGenotype
    unconstrained: CNNGenotype
    budget: dict[str, Any] | None  # metric, unit, target, expected, unconstrained, derived, binding, method
    guards: dict[str, dict[str, Any]] = field(default_factory=dict)  # per guard that is on: source, setting, acted
    warnings: tuple[str, ...] = ()

    def summary(self) -> dict[str, Any]:
        """done.json's and genotype.json's record of how the genotype was chosen."""
        return {"budget": self.budget, "guards": self.guards, "warnings": list(self.warnings),
                "normal_skips": skip_connections(self.genotype), "parameter_free_ops": parameter_free_ops(self.genotype)}

    def log_record(self) -> dict[str, Any]:
        """The epoch's flat log fields: the genotype, its skip and parameter-free counts, costs and guard actions."""
        out: dict[str, Any] = {"genotype": genotype_to_dict(self.genotype), "normal_skips": skip_connections(self.genotype),
                               "parameter_free_ops": parameter_free_ops(self.genotype)}
        if self.unconstrained != self.genotype:
            out["unconstrained_genotype"] = genotype_to_dict(self.unconstrained)
        out.update(budget_log_fields(self.budget))
        if "p_darts" in self.guards:
            out["skip_cap_acted"] = self.guards["p_darts"]["acted"]
        if self.warnings:
            out["warning"] = "; ".join(self.warnings)
        return out


class DartsCnnDeriver:
    """Derives the published genotype of a supernet's current architecture weights (the same on every rank)."""

    def __init__(self, cost: ExpectedCost | None, guards: CollapseGuards):
        self.cost, self.guards = cost, guards
        budgeted = cost is not None and cost.options.budgeted
        # The table's entries summed per cell type: what the budgeted derivation weighs (None: no budget).
        self.costs = DartsCnnCellCosts.from_table(cost.table, cost.metric) if budgeted else None

    def derive(self, model: Any) -> DartsCnnDerivation:
        """The genotype to publish now (ConfigError naming the cheapest cost when the budget cannot be met)."""
        core = model.module if hasattr(model, "module") else model
        free = core.genotype()
        budgeted = self.costs is not None
        max_skips = self.guards.max_skips if self.guards.p_darts else None
        genotype, binding, uncapped = free, False, free
        if budgeted or max_skips is not None:
            normal, reduce = edge_op_weights(core.alphas_normal, core.alphas_reduce, core.steps,
                                             core.betas_normal, core.betas_reduce)
            costs = self.costs if self.costs is not None else DartsCnnCellCosts.zeros(core.steps, core.primitives)
            budget = self.cost.options.target if budgeted else math.inf

            def solve(cap: int | None) -> Any:
                return derive_genotype_under_budget(normal, reduce, costs, budget, core.primitives, core.steps,
                                                    core.multiplier, max_skips=cap)

            found = solve(max_skips)
            genotype, binding = found.genotype, budgeted and found.binding
            if budgeted and max_skips is not None:  # did the cap change the budget's choice?
                uncapped = solve(None).genotype
        warning = collapse_warning(genotype)
        return DartsCnnDerivation(genotype, free, self._budget(core, genotype, free, binding),
                                  self._guards(uncapped), (warning,) if warning else ())

    def stop_reason(self, skips: int) -> str | None:
        """DARTS+'s early stop given the derived normal cell's skip connections: why the search ends (None: it goes on)."""
        if not self.guards.darts_plus or skips < self.guards.stop_skips:
            return None
        return (f"DARTS+ early stop: the derived normal cell holds {skips} skip connections "
                f"(search.collapse.stop_skips: {self.guards.stop_skips})")

    def _budget(self, core: Any, genotype: CNNGenotype, free: CNNGenotype, binding: bool) -> dict[str, Any] | None:
        cost = self.cost
        if cost is None:
            return None
        with torch.no_grad():
            expected = float(cost.expected(core.alphas_normal.detach(), core.alphas_reduce.detach()))
        out = budget_record(cost, expected=expected, unconstrained=cost.derived_cost(free),
                            derived=cost.derived_cost(genotype), binding=binding,
                            method=BUDGET_METHOD if cost.options.budgeted else UNCONSTRAINED_METHOD)
        if cost.metric != "macs":
            out["derived_macs"] = cost.table.genotype_cost(genotype, "macs")
        return out

    def _guards(self, uncapped: CNNGenotype) -> dict[str, dict[str, Any]]:
        """The guards that are on; P-DARTS acted when the genotype derived without its cap has too many skips."""
        g, out = self.guards, {}
        if g.darts_minus:
            out["darts_minus"] = {"source": SOURCES["darts_minus"], "aux_skip_weight": g.aux_skip_weight, "acted": True}
        if g.darts_plus:
            out["darts_plus"] = {"source": SOURCES["darts_plus"], "stop_skips": g.stop_skips, "acted": False}
        if g.p_darts:
            skips = skip_connections(uncapped)
            out["p_darts"] = {"source": SOURCES["p_darts"], "max_skips": g.max_skips, "uncapped_skips": skips,
                              "acted": skips > g.max_skips}
        return out
