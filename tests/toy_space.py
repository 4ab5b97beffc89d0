"""A toy fourth search space for the space-table tests (not a test module): trivial stages over the same contract."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from nasdeploy.errors import ConfigError
from nasdeploy.genotypes import genotype_to_dict, get_genotype, save_genotype
from nasdeploy.utils.files import write_json_atomic


@dataclass(frozen=True)
class ToyConfig:
    """The toy's search and training config: only `steps`, which must be given."""

    steps: Optional[int] = None

    def __post_init__(self) -> None:
        if self.steps is None:
            raise ConfigError("toy config: steps is missing")


def _search(ctx: Any) -> dict[str, Any]:
    ctx.path("search").mkdir(exist_ok=True)
    write_json_atomic(ctx.path("search", "done.json"), {"finished": True, "steps": ctx.config.search["steps"]})
    return {"dir": "search", "epochs": 1, "mixed_op": "toy"}


def _derive(ctx: Any) -> dict[str, Any]:
    genotype = get_genotype("DARTS_V2")
    save_genotype(genotype, ctx.path("genotype.json"))
    count_file = ctx.path("derive_count.txt")
    count = int(count_file.read_text()) + 1 if count_file.is_file() else 1
    count_file.write_text(str(count))
    return {"genotype": genotype_to_dict(genotype), "text": "toy"}


def _nothing(ctx: Any) -> dict[str, Any]:
    return {}


STAGES = {"search": _search, "derive": _derive, "train": _nothing, "export": _nothing, "profile": _nothing}


def report_figures(ctx: Any) -> dict[str, str]:
    """No figures."""
    return {}


def reproduce_commands(ctx: Any) -> dict[str, str]:
    """No stage commands."""
    return {}
