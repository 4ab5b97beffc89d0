"""A toy fourth search space for the space-table tests (not a test module): trivial stages over the same contract."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from nasdeploy.errors import ConfigError
from nasdeploy.genotypes import genotype_to_dict, get_genotype, save_genotype
from nasdeploy.pipeline.results import DeriveStageResult, SearchStageResult, SkippedStage
from nasdeploy.utils.files import write_json_atomic


@dataclass(frozen=True)
class ToyConfig:
    """The toy's search and training config: only `steps`, which must be given."""

    steps: Optional[int] = None

    def __post_init__(self) -> None:
        if self.steps is None:
            raise ConfigError("toy config: steps is missing")


class ToyStages:
    """Search, derive and three do-nothing stages; it has no executorch or quantize stage."""

    def stages(self) -> dict[str, Any]:
        """The toy's stage functions."""
        return {"search": self._search, "derive": self._derive, "train": self._nothing, "export": self._nothing,
                "profile": self._nothing}

    @staticmethod
    def _search(ctx: Any) -> SearchStageResult:
        ctx.path("search").mkdir(exist_ok=True)
        write_json_atomic(ctx.path("search", "done.json"), {"finished": True, "steps": ctx.config.search.steps})
        return SearchStageResult(epochs=1, order="none", mixed_op="toy")

    @staticmethod
    def _derive(ctx: Any) -> DeriveStageResult:
        genotype = get_genotype("DARTS_V2")
        save_genotype(genotype, ctx.path("genotype.json"))
        count_file = ctx.path("derive_count.txt")
        count = int(count_file.read_text()) + 1 if count_file.is_file() else 1
        count_file.write_text(str(count))
        return DeriveStageResult(genotype=genotype_to_dict(genotype), text="toy")

    @staticmethod
    def _nothing(ctx: Any) -> SkippedStage:
        return SkippedStage(reason="the toy does nothing here")

    def report_figures(self, ctx: Any) -> dict[str, str]:
        """No figures."""
        return {}

    def reproduce_commands(self, ctx: Any) -> dict[str, str]:
        """No stage commands."""
        return {}
