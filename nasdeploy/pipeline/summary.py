"""What the report stage reads: the stages' typed results and times gathered into one RunSummary (summary.json's source)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from nasdeploy.pipeline.results import (
    DeriveStageResult,
    ExecuTorchStageResult,
    ExportStageResult,
    QuantizeStageResult,
    SearchStageResult,
    StageResult,
    TrainStageResult,
)
from nasdeploy.utils.yamlconfig import to_dict


@dataclass(frozen=True)
class StageTime:
    """How long a stage took, and its one line when it had nothing to do."""

    seconds: float
    skip_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """summary.json's record of the stage."""
        out: dict[str, Any] = {"seconds": self.seconds}
        if self.skip_reason:
            out["note"] = f"skipped: {self.skip_reason}"
        return out


@dataclass(frozen=True)
class RunSummary:
    """A pipeline run as the report shows it: the typed stage results, the cost table, figures, commands, times."""

    name: str
    space: str
    version: str
    config: str  # the pipeline file, or "(built-in demo)"
    times: Mapping[str, StageTime]  # the finished stages, in stage order
    derive: DeriveStageResult | None = None
    search: SearchStageResult | None = None
    train: TrainStageResult | None = None
    export: ExportStageResult | None = None
    executorch: ExecuTorchStageResult | None = None  # None also when the stage was skipped (see times)
    quantize: QuantizeStageResult | None = None
    profile: Mapping[str, Any] = field(default_factory=dict)  # profile.json (the cost table)
    figures: Mapping[str, str] = field(default_factory=dict)
    commands: Mapping[str, str] = field(default_factory=dict)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S"))

    def seconds(self, stage: str) -> float:
        """How long `stage` took (0 when it never finished)."""
        return self.times[stage].seconds if stage in self.times else 0.0

    def deployment_skips(self) -> dict[str, str]:
        """The deployment stages (executorch, quantize) that had nothing to do, with why."""
        return {stage: why for stage in ("executorch", "quantize")
                if stage in self.times and (why := self.times[stage].skip_reason) is not None}

    def runtime_parity(self) -> dict[str, Any]:
        """Every parity verdict except the ONNX model's on random inputs (its validation images, ExecuTorch)."""
        verdicts = dict(self.export.parity) if self.export else {}
        verdicts.pop("onnx", None)
        return {**verdicts, **(self.executorch.parity if self.executorch else {})}

    def to_json(self) -> dict[str, Any]:
        """summary.json."""
        derive, search, train = self.derive, self.search, self.train
        return {
            "created": self.created, "name": self.name, "space": self.space, "nasdeploy_version": self.version,
            "config": self.config,
            "genotype": dict(derive.genotype) if derive else None,
            "genotype_text": derive.text if derive else None,
            "search": ({"dir": search.dir, "epochs": search.epochs, "final": dict(search.final), "order": search.order,
                        "mixed_op": search.mixed_op, "seconds": self.seconds("search"), "warnings": list(search.warnings),
                        "selection": to_dict(search.selection)} if search else {}),
            "train": ({"dir": train.dir, "epochs": train.epochs, "params": train.params, "checkpoint": train.checkpoint,
                       "net": train.net, **train.metrics(), "seconds": self.seconds("train")} if train else {}),
            "export": self._deployment_json(),
            "profile": dict(self.profile),
            "figures": dict(self.figures),
            "commands": dict(self.commands),
            "stages": {stage: t.to_dict() for stage, t in self.times.items()},
        }

    def _deployment_json(self) -> dict[str, Any]:
        """The export record: the export stage's files and parity with the executorch and quantize stages' folded in."""
        export = self.export
        if export is None:
            return {}
        onnx = export.onnx
        parity = ({"passed": onnx.passed, "max_abs_error": onnx.max_abs_err, "max_rel_error": onnx.max_rel_err,
                   "rtol": onnx.rtol, "atol": onnx.atol} if onnx else {})
        dirs = {stage: r.dir for stage, r in (("export", export), ("executorch", self.executorch),
                                              ("quantize", self.quantize)) if r is not None}
        files = {**export.files, **(self.executorch.files if self.executorch else {}),
                 **(self.quantize.files if self.quantize else {})}
        return {"dir": export.dir, "onnx": export.published, "opset": export.opset, "files": files, "parity": parity,
                "runtimes": {name: to_dict(v) for name, v in self.runtime_parity().items()},
                "quantization": {m: q.to_dict() for m, q in (self.quantize.quantization if self.quantize else {}).items()},
                "skipped": {**export.skipped, **(self.quantize.skipped if self.quantize else {})},
                "dirs": dirs, "stage_skips": self.deployment_skips()}


def run_summary(results: Mapping[str, StageResult], **parts: Any) -> RunSummary:
    """The RunSummary of the stages' stored results (a skipped stage's result only shows in its time's line)."""
    def typed(stage: str, kind: type) -> Any:
        result = results.get(stage)
        return result if isinstance(result, kind) else None

    return RunSummary(derive=typed("derive", DeriveStageResult), search=typed("search", SearchStageResult),
                      train=typed("train", TrainStageResult), export=typed("export", ExportStageResult),
                      executorch=typed("executorch", ExecuTorchStageResult),
                      quantize=typed("quantize", QuantizeStageResult), **parts)
