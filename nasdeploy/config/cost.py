"""search.cost: the deployment budget of a search, shared by the spaces that have cost tables (see search/cost.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from nasdeploy.errors import ConfigError

COST_FORMS = ("hinge", "fbnet")
COST_VALUES = ("expected", "derived")
COST_DERIVATIONS = ("budget", "unconstrained")
AUTO_TABLE = "auto"  # search.cost.table: auto = built (or read from the cache) for the deployment network


@dataclass(frozen=True)
class CostOptions:
    """A differentiable MAC (or latency) budget on the architecture, and how the genotype is derived under it.

    form hinge: loss = CE + weight * max(0, E[cost] / target - 1);
    form fbnet: loss = CE * weight * log(E[cost] / unit) ** beta (FBNet; unit: 1 ms or 1M MACs).
    value derived: E[cost] is replaced by E + (cost of the unconstrained genotype - E).detach(), so the
    hinge is active exactly while the space's own rule derives a network over the budget (gradient unchanged).
    derive budget: the search publishes the highest-scoring genotype whose table cost is <= target (exact,
    see spaces/darts_cnn_budget.py and spaces/autodeeplab_budget.py); unconstrained: the space's own rule
    (the budget then only steers the search).
    """

    METRICS: ClassVar[tuple[str, ...]] = ("macs",)
    TABLE_HINT: ClassVar[str] = ""  # how to build a table file, for the error message

    table: str = ""  # cost table JSON, or auto
    metric: str = "macs"  # macs (| latency where the space's tables hold it), per sample
    target: float = 600e6  # the budget, in the metric's unit (MACs per sample, or ms)
    weight: float = 1.0
    form: str = "hinge"  # hinge | fbnet
    beta: float = 0.6  # FBNet's exponent
    value: str = "expected"  # expected: E[cost] | derived: the unconstrained genotype's table cost, E[cost]'s gradient
    derive: str = "budget"  # budget: the best genotype within target (exact) | unconstrained: the space's own rule

    def __post_init__(self) -> None:
        if not isinstance(self.table, str) or not self.table.strip():
            raise ConfigError(f"search.cost.table must name a cost table file or be '{AUTO_TABLE}'{self.TABLE_HINT}")
        if self.metric not in self.METRICS:
            raise ConfigError(f"search.cost.metric must be one of {', '.join(self.METRICS)}, got {self.metric!r}")
        if self.form not in COST_FORMS:
            raise ConfigError(f"search.cost.form must be one of {', '.join(COST_FORMS)}, got {self.form!r}")
        if not self.target > 0:
            raise ConfigError(f"search.cost.target must be positive, got {self.target}")
        if not self.weight >= 0:
            raise ConfigError(f"search.cost.weight must be >= 0, got {self.weight}")
        if self.value not in COST_VALUES:
            raise ConfigError(f"search.cost.value must be one of {', '.join(COST_VALUES)}, got {self.value!r}")
        if not self.beta > 0:
            raise ConfigError(f"search.cost.beta must be positive, got {self.beta}")
        if self.derive not in COST_DERIVATIONS:
            raise ConfigError(f"search.cost.derive must be one of {', '.join(COST_DERIVATIONS)}, got {self.derive!r}")

    @property
    def budgeted(self) -> bool:
        """True when the published genotype is derived under the budget."""
        return self.derive == "budget"
