#!/usr/bin/env python
"""Time the budgeted derivations (DARTS CNN at ImageNet mobile, Auto-DeepLab-S at 1024x2048) and print JSON.

For random architecture weights (near-uniform, as early in a search, and peaked) and budgets 2% to 60%
above the cheapest network: the median and worst time of one derivation, and how often the budget
bound (changed the genotype). Tables come from the cost-table cache ($NASDEPLOY_CACHE_DIR).

    python scripts/bench_budget.py --seeds 5 --out budget.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Callable

import numpy as np
import torch

from nasdeploy.genotypes import CNN_PRIMITIVES
from nasdeploy.profile.autodeeplab_cost_table_build import AutoDeepLabNetSpec, build_or_load_autodeeplab_cost_table
from nasdeploy.profile.cost_table import CellSpace
from nasdeploy.profile.cost_table_build import build_or_load_cost_table
from nasdeploy.spaces.autodeeplab_budget import decode_under_budget, path_groups
from nasdeploy.spaces.autodeeplab_decode import beta_probabilities
from nasdeploy.spaces.cell_knapsack import cheapest_cost
from nasdeploy.spaces.darts_cnn_budget import DartsCnnCellCosts, derive_genotype_under_budget
from nasdeploy.spaces.darts_cnn_derive import softmax_rows

FRACTIONS = (1.02, 1.1, 1.3, 1.6)  # budget = cheapest * fraction, capped below the unconstrained cost


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = call()
    return time.perf_counter() - start, out


def summary(times: list[float], binding: int) -> dict[str, Any]:
    return {"runs": len(times), "binding": binding, "median_ms": round(1e3 * statistics.median(times), 2),
            "max_ms": round(1e3 * max(times), 2)}


def bench_darts(steps: int, seeds: int) -> dict[str, Any]:
    table = build_or_load_cost_table(CellSpace("darts_cnn", CNN_PRIMITIVES, steps, steps), None, net="imagenet")
    costs = DartsCnnCellCosts.from_table(table)
    edges = sum(2 + i for i in range(steps))
    starts = [sum(2 + i for i in range(t)) for t in range(steps + 1)]
    per_node = [c[starts[t]:starts[t + 1]] for c in (costs.normal, costs.reduce) for t in range(steps)]
    cheapest = costs.fixed + cheapest_cost(per_node, range(1, len(CNN_PRIMITIVES)))
    rng = np.random.default_rng(0)
    times, binding = [], 0
    for seed in range(seeds):
        for scale in (1e-3, 2.0):
            weights = [softmax_rows(rng.normal(size=(edges, 8)) * scale) for _ in range(2)]
            for fraction in FRACTIONS:
                dt, r = timed(lambda: derive_genotype_under_budget(*weights, costs, cheapest * fraction,
                                                                   steps=steps, multiplier=steps))
                times.append(dt)
                binding += r.binding
    return {"space": "darts_cnn", "net": "imagenet 224", "steps": steps, **summary(times, binding)}


def bench_autodeeplab(seeds: int) -> dict[str, Any]:
    table = build_or_load_autodeeplab_cost_table(AutoDeepLabNetSpec())
    with np.errstate(divide="ignore"):
        logp = np.log(beta_probabilities(np.zeros((12, 4, 3))))
    cheapest = min(g.fixed for g in path_groups(table, logp))  # pools cost no MACs: the cheapest cell is free
    rng = np.random.default_rng(0)
    times, binding = [], 0
    for seed in range(seeds):
        for scale_a, scale_b in ((1e-3, 1e-3), (1.0, 1e-3), (2.0, 2.0)):
            alphas, betas = rng.normal(size=(20, 8)) * scale_a, rng.normal(size=(12, 4, 3)) * scale_b
            for fraction in FRACTIONS:
                dt, r = timed(lambda: decode_under_budget(alphas, betas, table, cheapest * fraction))
                times.append(dt)
                binding += r.binding
    return {"space": "autodeeplab", "net": "Auto-DeepLab-S 1024x2048", **summary(times, binding)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = [bench_darts(4, args.seeds), bench_darts(5, args.seeds), bench_autodeeplab(args.seeds)]
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
