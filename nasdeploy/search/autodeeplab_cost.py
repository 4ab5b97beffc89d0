"""The Auto-DeepLab search's deployment budget: the cost table of its network, E[cost](alpha, beta) on the
architecture loss, and the budgeted decode of the genotype it publishes.

Table. search.cost describes the static segmentation network the genotype becomes (filter multiplier, heads,
input size; layers and blocks are the supernet's, classes the dataset's). `table: auto` builds its MAC
table (profile/autodeeplab_cost_table_build.py: every cell context, transition, stem and head counted
with the profiler's counter) or reads it from the cache (~/.cache/nasdeploy, keyed by the spec and the
library versions); the run directory keeps a copy, cost_table.json (written with the first epoch, once
the directory is the run's), which a resumed search reads back. A file is such a table (a run's
cost_table.json).

Term. E[cost](alpha, beta) (spaces/autodeeplab_cost_table.py: a forward pass over the path's state
machine under beta's transition probabilities) enters the architecture loss as a hinge or FBNet factor
(search/cost.py), so it acts only while architecture updates run (after search.arch_start_epoch).

Decode. With search.cost.derive: budget the published genotype is the highest-scoring (cell, path) whose
table cost is <= target (spaces/autodeeplab_budget.py: exact); the unconstrained decode (top-2 cell +
Viterbi path) and its cost are logged beside it every epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from nasdeploy.config.autodeeplab import AutoDeepLabCostOptions, AutoDeepLabSupernetConfig
from nasdeploy.config.cost import AUTO_TABLE
from nasdeploy.errors import ConfigError
from nasdeploy.genotypes import AutoDeepLabGenotype, genotype_to_dict
from nasdeploy.profile.autodeeplab_cost_table_build import (
    AutoDeepLabNetSpec,
    build_or_load_autodeeplab_cost_table,
    load_autodeeplab_cost_table,
    save_autodeeplab_cost_table,
)
from nasdeploy.search.cost import CostTerm, budget_log_fields, budget_record
from nasdeploy.spaces.autodeeplab_budget import decode_under_budget
from nasdeploy.spaces.autodeeplab_cost_table import AutoDeepLabCostTable
from nasdeploy.spaces.autodeeplab_decode import beta_probabilities, decode_genotype, path_log_probability

COST_TABLE_FILE = "cost_table.json"  # the run directory's copy of the table the search used
BUDGET_METHOD = ("exact: the highest cell + path log-probability whose table cost fits, by A* over path groups, "
                 "branch and bound and the cell knapsack (spaces/autodeeplab_budget.py)")
UNCONSTRAINED_METHOD = "top-2 cell + Viterbi path (search.cost.derive: unconstrained; the budget only steers the search)"


class AutoDeepLabExpectedCost(CostTerm):
    """E[cost](alpha, beta) of the Auto-DeepLab deployment network from its cost table."""

    def __init__(self, table: AutoDeepLabCostTable, options: AutoDeepLabCostOptions, supernet: AutoDeepLabSupernetConfig):
        if table.layers != supernet.layers or table.blocks != supernet.blocks:
            raise ConfigError(f"the cost table covers {table.layers} layers of {table.blocks}-block cells; the supernet "
                              f"has {supernet.layers} layers of {supernet.blocks}-block cells")
        if table.metric != options.metric:
            raise ConfigError(f"the cost table holds {table.metric}, search.cost.metric asks for {options.metric}")
        self.table, self.options, self.metric = table, options, options.metric
        self.blocks = supernet.blocks

    def expected_cost(self, arch_params: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.table.expected_cost(arch_params[0], arch_params[1])

    def unconstrained_cost(self, arch_params: Sequence[torch.Tensor]) -> float:
        alphas, betas = (p.detach().cpu().double().numpy() for p in arch_params[:2])
        return self.table.genotype_cost(decode_genotype(alphas, betas, self.blocks))


def cost_table_spec(options: AutoDeepLabCostOptions, supernet: AutoDeepLabSupernetConfig) -> AutoDeepLabNetSpec:
    """The deployment network `table: auto` describes: the supernet's lattice, the cost section's widths."""
    return AutoDeepLabNetSpec(layers=supernet.layers, blocks=supernet.blocks, filter_multiplier=options.filter_multiplier,
                              input_size=tuple(options.input_size), num_classes=supernet.num_classes,
                              aspp_channels=options.aspp_channels, decoder_channels=options.decoder_channels,
                              low_level_channels=options.low_level_channels, separable_heads=options.separable_heads)


def build_autodeeplab_cost(options: AutoDeepLabCostOptions | None, supernet: AutoDeepLabSupernetConfig,
                           out: Path) -> AutoDeepLabExpectedCost | None:
    """The cost term a search config asks for (None: no cost section); `auto` reads the run directory's copy first."""
    if options is None:
        return None
    if options.table != AUTO_TABLE:
        return AutoDeepLabExpectedCost(load_autodeeplab_cost_table(options.table), options, supernet)
    copy = out / COST_TABLE_FILE
    if copy.is_file():  # a resumed search keeps the table it started with
        table = load_autodeeplab_cost_table(copy)
    else:
        with torch.random.fork_rng(devices=[]):  # building counts on freshly initialised modules: keep the run's RNG
            table = build_or_load_autodeeplab_cost_table(cost_table_spec(options, supernet))
    return AutoDeepLabExpectedCost(table, options, supernet)


def keep_cost_table(cost: AutoDeepLabExpectedCost | None, out: Path) -> None:
    """Write the run directory's copy of an `auto` table once (rank 0, after the directory is claimed)."""
    if cost is not None and cost.options.table == AUTO_TABLE and not (out / COST_TABLE_FILE).is_file():
        save_autodeeplab_cost_table(cost.table, out / COST_TABLE_FILE)


@dataclass(frozen=True)
class AutoDeepLabDerivation:
    """The published genotype, the unconstrained decode beside it, and the budget record."""

    genotype: AutoDeepLabGenotype
    unconstrained: AutoDeepLabGenotype
    path_log_prob: float  # of the published path under beta
    budget: dict[str, Any] | None

    def log_record(self) -> dict[str, Any]:
        """The epoch's log fields: genotype, path and its log-probability, and the budget's costs."""
        out: dict[str, Any] = {"path": list(self.genotype.path), "path_log_prob": self.path_log_prob,
                               "genotype": genotype_to_dict(self.genotype)}
        if self.unconstrained != self.genotype:
            out["unconstrained_genotype"] = genotype_to_dict(self.unconstrained)
        return {**out, **budget_log_fields(self.budget)}


def derive_autodeeplab(model: Any, cost: AutoDeepLabExpectedCost | None, name: str | None = None) -> AutoDeepLabDerivation:
    """The genotype an Auto-DeepLab supernet publishes now (ConfigError naming the cheapest cost when none fits)."""
    alphas, betas = (p.detach().cpu().double().numpy() for p in (model.alphas, model.betas))
    free = decode_genotype(alphas, betas, model.config.blocks, name=name)
    genotype, budget = free, None
    if cost is not None:
        binding = False
        if cost.options.budgeted:
            found = decode_under_budget(alphas, betas, cost.table, cost.options.target, name=name)
            genotype, binding = found.genotype, found.binding
        with torch.no_grad():
            expected = float(cost.table.expected_cost(model.alphas.detach(), model.betas.detach()))
        budget = budget_record(cost, expected=expected, unconstrained=cost.table.genotype_cost(free),
                               derived=cost.table.genotype_cost(genotype), binding=binding,
                               method=BUDGET_METHOD if cost.options.budgeted else UNCONSTRAINED_METHOD)
    log_prob = path_log_probability(genotype.path, beta_probabilities(betas))
    return AutoDeepLabDerivation(genotype, free, log_prob, budget)
