"""The differentiable deployment-cost term of a search (expected MACs or latency of the architecture weights).

CostTerm holds what every space shares: the loss it adds (hinge on the budget, or FBNet's factor) and
the `value: derived` straight-through estimate. Each space supplies E[cost] of its architecture
parameters and the table cost of the genotype its own rule derives: ExpectedCost below for the DARTS CNN
space, search/autodeeplab_cost.py for Auto-DeepLab.

DARTS CNN expected cost, from a cost table measured on the deployment network (profile/cost_table.py):

    E[cost] = fixed + sum_{cell type t} sum_{node n} 2 / (2 + n) * sum_{edge j -> n} sum_{op k != none}
              softmax_{k != none}(alpha_t[j])[k] * W_t[j, k]

where W_t sums the table entries of edge (j, k) over every cell of type t (normal / reduce) in the
deployment net, because the supernet shares one alpha matrix per cell type across its cells.

Normalisation (the choice, stated): the derivation keeps 2 of the 2 + n incoming edges of node n and
never keeps 'none', so (a) op probabilities are a softmax over the non-'none' columns of alpha (putting
mass on 'none' cannot lower the cost; 'none' gets no cost gradient), and (b) each incoming edge of node
n is weighted 2 / (2 + n): the expectation when the 2 kept edges are drawn uniformly. For one-hot alphas
that pick the same op on every incoming edge of a node whose inputs share a shape (every node of a normal
cell), E[cost] equals the table sum of the derived genotype exactly; the derived genotypes' exact table
costs are logged beside it every epoch. Away from one-hot alphas E[cost] and the derived cost differ (on the
demo, uniform alphas give 475M expected MACs while an unconstrained search derives 568M), so
search.cost.value=derived keeps E[cost]'s gradient but takes the DARTS rule's genotype's table cost as the
value: the hinge is then active exactly while that network is over the budget. (The published genotype is
derived under the budget and always fits: search/darts_cnn_derivation.py.)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import numpy as np
import torch

from nasdeploy.config.cost import AUTO_TABLE, CostOptions
from nasdeploy.config.darts_cnn import DartsCnnCostOptions
from nasdeploy.errors import ConfigError
from nasdeploy.profile.cost_table import CostTable, load_cost_table
from nasdeploy.spaces.darts_cnn_budget import COST_UNITS
from nasdeploy.spaces.darts_cnn_derive import derive_genotype

NONE_OP = "none"
FBNET_UNITS = {"macs": 1e6, "latency": 1.0}  # FBNet's log-latency is in ms; MACs in millions


class CostTerm(ABC):
    """E[cost] of a space's architecture parameters and the loss it adds (hinge on the budget or FBNet's factor)."""

    options: CostOptions
    metric: str

    @abstractmethod
    def expected_cost(self, arch_params: Sequence[torch.Tensor]) -> torch.Tensor:
        """E[cost] (float64 scalar, differentiable) of the architecture parameters (the architect's list)."""

    @abstractmethod
    def unconstrained_cost(self, arch_params: Sequence[torch.Tensor]) -> float:
        """The table cost of the genotype the space's own rule derives from the parameters (no budget)."""

    def combine(self, loss: torch.Tensor, arch_params: Sequence[torch.Tensor]) -> torch.Tensor:
        """The architecture loss with the cost term: hinge (additive) or FBNet (multiplicative)."""
        cost = self.expected_cost(arch_params)
        o = self.options
        if o.value == "derived":  # the derived genotype's value, the expectation's gradient (straight-through)
            cost = cost + (self.unconstrained_cost(arch_params) - cost).detach()
        if o.form == "hinge":
            return loss + (o.weight * torch.relu(cost / o.target - 1.0)).to(loss.dtype)
        factor = o.weight * torch.log(cost / FBNET_UNITS[self.metric]).clamp_min(1e-12) ** o.beta
        return loss * factor.to(loss.dtype)


def budget_record(cost: CostTerm, *, expected: float, unconstrained: float, derived: float, binding: bool,
                  method: str) -> dict[str, Any]:
    """The budget record of a derivation (logs, done.json, the genotype's meta): target, expected, unconstrained
    (the space's own rule) and derived (published) cost, whether the budget changed the result, and how."""
    return {"metric": cost.metric, "unit": COST_UNITS.get(cost.metric, cost.metric), "target": cost.options.target,
            "expected": expected, "unconstrained": unconstrained, "derived": derived, "binding": binding,
            "method": method}


def budget_log_fields(budget: dict[str, Any] | None) -> dict[str, Any]:
    """An epoch's flat log fields of a budget record: expected_M, unconstrained_M, derived_M, cost_target, budget_binds."""
    if budget is None:
        return {}
    m = budget["metric"]
    out = {f"expected_{m}": budget["expected"], f"unconstrained_{m}": budget["unconstrained"],
           f"derived_{m}": budget["derived"], "cost_target": budget["target"], "budget_binds": budget["binding"]}
    if "derived_macs" in budget:
        out["derived_macs"] = budget["derived_macs"]
    return out


class ExpectedCost(CostTerm):
    """E[cost](alphas) of the DARTS CNN space from a cost table, and the loss it adds."""

    def __init__(self, table: CostTable, options: DartsCnnCostOptions, primitives: Sequence[str], steps: int,
                 multiplier: int):
        space = table.space
        if tuple(primitives) != tuple(space.primitives) or steps != space.steps or multiplier != space.multiplier:
            raise ConfigError(
                f"the cost table covers {space.steps} nodes, multiplier {space.multiplier}, primitives "
                f"{list(space.primitives)}; the supernet has {steps} nodes, multiplier {multiplier}, "
                f"primitives {list(primitives)}")
        if not table.has(options.metric):
            table.entries(options.metric)  # raises the one-line reason
        self.table = table
        self.options = options
        self.primitives, self.steps, self.multiplier = tuple(primitives), steps, multiplier
        self.metric = options.metric
        self.fixed = table.fixed_total(options.metric)
        node_weight = np.concatenate([np.full(2 + n, 2.0 / (2 + n)) for n in range(steps)])[:, None]
        normal, reduce = table.cell_type_weights(options.metric)
        keep = [k for k, p in enumerate(primitives) if p != NONE_OP]
        self.columns = torch.tensor(keep, dtype=torch.long)
        self.w_normal = torch.from_numpy(node_weight * normal[:, keep])
        self.w_reduce = torch.from_numpy(node_weight * reduce[:, keep])

    def expected(self, alphas_normal: torch.Tensor, alphas_reduce: torch.Tensor) -> torch.Tensor:
        """E[cost] of the current alphas (float64 scalar, differentiable in the alphas)."""
        total = torch.tensor(self.fixed, dtype=torch.float64, device=alphas_normal.device)
        for alphas, w in ((alphas_normal, self.w_normal), (alphas_reduce, self.w_reduce)):
            probs = torch.softmax(alphas.double().index_select(1, self.columns.to(alphas.device)), dim=-1)
            total = total + (probs * w.to(alphas.device)).sum()
        return total

    def expected_cost(self, arch_params: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.expected(arch_params[0], arch_params[1])

    def unconstrained_cost(self, arch_params: Sequence[torch.Tensor]) -> float:
        betas = arch_params[2:4] if len(arch_params) >= 4 else (None, None)  # PC-DARTS edge normalisation
        return self.derived_cost(derive_genotype(arch_params[0], arch_params[1], self.primitives, self.steps,
                                                 self.multiplier, betas_normal=betas[0], betas_reduce=betas[1]))

    def derived_cost(self, genotype: Any) -> float:
        """The table cost of a derived genotype's deployment network (exact for MACs)."""
        return self.table.genotype_cost(genotype, self.metric)


def build_expected_cost(options: DartsCnnCostOptions | None, model: Any) -> ExpectedCost | None:
    """The cost term a search config asks for, checked against the supernet (None: no cost section)."""
    if options is None:
        return None
    if options.table == AUTO_TABLE:
        raise ConfigError("search.cost.table: auto is built by `nasdeploy pipeline`; for `nasdeploy search` build a "
                          "table with `nasdeploy profile --cost-table darts_cnn --json table.json` and name it")
    core = model.module if hasattr(model, "module") else model
    return ExpectedCost(load_cost_table(options.table), options, core.primitives, core.steps, core.multiplier)
