"""What each pipeline stage hands on: one small frozen dataclass per stage kind, stored in pipeline_state.json.

A result names what its stage wrote (paths relative to the run directory) and its metrics; to_dict() and
stage_result_from_dict() round-trip it through the state file, so the runner, the later stages and the report
read attributes, never keys of an untyped record.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from nasdeploy.errors import ConfigError
from nasdeploy.export.quantize import QuantizationResult
from nasdeploy.utils.yamlconfig import to_dict


@dataclass(frozen=True, kw_only=True)
class StageResult:
    """The common part of every stage result: its kind (the key of its class in the state file)."""

    kind: ClassVar[str] = ""

    @property
    def skip_reason(self) -> str | None:
        """The one line saying why the stage had nothing to do (None: it did its work)."""
        return None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in pipeline_state.json, headed by the result's kind."""
        return {"kind": self.kind, **to_dict(self)}


@dataclass(frozen=True, kw_only=True)
class SkippedStage(StageResult):
    """A stage with nothing to do in this run, done, with the one line that says why."""

    reason: str
    kind: ClassVar[str] = "skipped"

    @property
    def skip_reason(self) -> str | None:
        """Why the stage did nothing."""
        return self.reason


@dataclass(frozen=True, kw_only=True)
class SeedRow:
    """One seed of a selection: its search's derived genotype and cost, and its short training's metric."""

    seed: int
    genotype: Mapping[str, Any]  # the seed's search/genotype.json (nasdeploy.genotypes.genotype_to_dict)
    metric: float  # the short training's validation metric (SelectionSummary.metric names it)
    derived_macs: float | None = None  # the derived genotype's MACs by the search's cost table (None: no budget)
    normal_skips: int | None = None
    parameter_free_ops: int | None = None
    warnings: tuple[str, ...] = ()  # the search's collapse warnings (done.json)
    search_time_s: float | None = None
    train_time_s: float | None = None
    search_dir: str = ""  # relative to the selection folder (the search stage's dir), e.g. seed-0/search
    chosen: bool = False


@dataclass(frozen=True, kw_only=True)
class SelectionSummary:
    """The selection over seeds the search stage ran: every seed's row, the chosen seed, the metric's spread."""

    metric: str
    higher_is_better: bool
    chosen_seed: int
    mean: float
    std: float  # sample standard deviation over the seeds
    seeds: tuple[SeedRow, ...]  # in seed order


@dataclass(frozen=True, kw_only=True)
class SearchStageResult(StageResult):
    """The finished search: its folder, epochs, architecture-gradient order, mixed-op and last metrics; with
    `selection`, the search folder is a selection over seeds and the rest describes the chosen seed's search."""

    epochs: int
    order: str
    mixed_op: str
    final: Mapping[str, float] = field(default_factory=dict)  # the space's own metric names
    dir: str = "search"
    warnings: tuple[str, ...] = ()  # the (chosen) search's collapse warnings (done.json)
    selection: SelectionSummary | None = None
    kind: ClassVar[str] = "search"

    @property
    def run_folder(self) -> str:
        """The search run whose logs the report draws (run-relative): the chosen seed's under a selection."""
        if self.selection is None:
            return self.dir
        chosen = next(r for r in self.selection.seeds if r.chosen)
        return f"{self.dir}/{chosen.search_dir}"


@dataclass(frozen=True, kw_only=True)
class DeriveStageResult(StageResult):
    """The published genotype (genotype.json, copied from what the search wrote) and the figures drawn of it."""

    genotype: Mapping[str, Any]  # genotype.json's content (nasdeploy.genotypes.genotype_to_dict)
    text: str  # describe_genotype
    source: str = "search/genotype.json"
    file: str = "genotype.json"
    figures: Mapping[str, str] = field(default_factory=dict)  # role -> run-relative file
    kind: ClassVar[str] = "derive"


@dataclass(frozen=True, kw_only=True)
class TrainStageResult(StageResult):
    """The trained network: its folder, epochs, parameters, checkpoint (run-relative) and network family."""

    epochs: int
    params: int
    checkpoint: str
    net: str
    dir: str = "train"

    def metrics(self) -> dict[str, Any]:
        """The space's own numbers under their summary.json names (the fields a subclass adds)."""
        common = {f.name for f in dataclasses.fields(TrainStageResult)}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in common}

    def headline(self, seconds: float) -> str:
        """The report's sentence on the training: epochs, time and the space's outcome."""
        return f"{self.epochs} epochs in {seconds:.0f} s; {self.outcome()}"

    def outcome(self) -> str:
        """The space's headline metric in words."""
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class ClassifierTrainResult(TrainStageResult):
    """An image classifier's training: top-1 / top-5 (fractions) on the test split."""

    top1: float | None
    top5: float | None
    num_classes: int | None = None
    kind: ClassVar[str] = "train_classifier"

    def metrics(self) -> dict[str, Any]:
        """top1 / top5 in percent (the report speaks percent) and the chance level."""
        out = {"top1": _percent(self.top1), "top5": _percent(self.top5), "num_classes": self.num_classes}
        if self.num_classes:
            out["chance"] = 100.0 / self.num_classes
        return out

    def outcome(self) -> str:
        """The final top-1 next to the chance level."""
        if self.top1 is None:
            return "no accuracy recorded"
        chance = f" (chance: {100.0 / self.num_classes:.2f}%)" if self.num_classes else ""
        return f"final top-1 {100.0 * self.top1:.2f}%{chance}"


@dataclass(frozen=True, kw_only=True)
class LanguageModelTrainResult(TrainStageResult):
    """A language model's training: best validation and test perplexity, vocabulary size."""

    best_valid_ppl: float
    test_ppl: float | None
    asgd_epoch: int | None = None
    vocab_size: int | None = None
    kind: ClassVar[str] = "train_language_model"

    def outcome(self) -> str:
        """The perplexities next to what a uniform model would score."""
        test = f", test perplexity {self.test_ppl:.2f}" if self.test_ppl is not None else ""
        vocab = f" (vocabulary {self.vocab_size:,}: a uniform model scores {self.vocab_size:,})" if self.vocab_size else ""
        return f"best validation perplexity {self.best_valid_ppl:.2f}{test}{vocab}"


@dataclass(frozen=True, kw_only=True)
class SegmentationTrainResult(TrainStageResult):
    """A segmentation network's training: validation mIoU next to the majority-class baseline."""

    miou: float
    majority_miou: float | None
    pixel_acc: float | None = None
    filter_multiplier: int | None = None
    kind: ClassVar[str] = "train_segmentation"

    def outcome(self) -> str:
        """The validation mIoU next to the majority-class baseline."""
        baseline = f" (majority-class baseline {self.majority_miou:.3f})" if self.majority_miou is not None else ""
        return f"final validation mIoU {self.miou:.3f}{baseline}"


@dataclass(frozen=True, kw_only=True)
class ParityVerdict:
    """One runtime's parity against PyTorch as the report shows it (the full report is the stage's parity_*.json)."""

    runtime: str
    passed: bool
    max_abs_err: float | None
    max_rel_err: float | None
    rtol: float
    atol: float
    inputs: str = "random normal"
    weights: str | None = None
    top1_agreement: float | None = None

    @classmethod
    def of(cls, report: Any) -> "ParityVerdict":
        """The verdict of a nasdeploy.export.parity.ParityReport."""
        return cls(runtime=report.runtime, passed=report.passed, max_abs_err=_finite(report.max_abs_err),
                   max_rel_err=_finite(report.max_rel_err), rtol=report.rtol, atol=report.atol, inputs=report.inputs,
                   weights=report.weights, top1_agreement=report.top1_agreement)


@dataclass(frozen=True, kw_only=True)
class ExportStageResult(StageResult):
    """export/: the float ONNX model (published at the top level) and the formats asked for, parity-checked."""

    files: Mapping[str, str]  # role -> run-relative file (onnx, onnx_parity, report, ...)
    parity: Mapping[str, ParityVerdict]  # "onnx" (random inputs) first, then e.g. onnx_validation
    opset: int | None = None
    input_shape: tuple[int, ...] = ()  # (C, H, W) of an image network as exported; () for a language model
    skipped: Mapping[str, str] = field(default_factory=dict)  # format -> why it was not written
    published: str = "model.onnx"
    dir: str = "export"
    kind: ClassVar[str] = "export"

    @property
    def onnx(self) -> ParityVerdict | None:
        """The ONNX model's parity on random inputs."""
        return self.parity.get("onnx")


@dataclass(frozen=True, kw_only=True)
class ExecuTorchStageResult(StageResult):
    """executorch/: the float ExecuTorch program (XNNPACK) and its parity reports."""

    files: Mapping[str, str]
    parity: Mapping[str, ParityVerdict]
    dir: str = "executorch"
    kind: ClassVar[str] = "executorch"


@dataclass(frozen=True, kw_only=True)
class QuantizeStageResult(StageResult):
    """quantize/: the INT8 models and float vs INT8 accuracy, size and latency per method."""

    files: Mapping[str, str]
    quantization: Mapping[str, QuantizationResult]  # method (ort, executorch) -> result
    skipped: Mapping[str, str] = field(default_factory=dict)  # e.g. "int8 executorch" -> why
    dir: str = "quantize"
    kind: ClassVar[str] = "quantize"


@dataclass(frozen=True, kw_only=True)
class ProfileStageResult(StageResult):
    """profile.json: the cost table (params, MACs, latency) of the found network next to published ones."""

    table: str  # mobile | segmentation | language_model: how the report lays the table out
    found_params: int | None = None
    found_macs: float | None = None
    file: str = "profile.json"
    kind: ClassVar[str] = "profile"


@dataclass(frozen=True, kw_only=True)
class ReportStageResult(StageResult):
    """report.md and summary.json, and the figures they show."""

    figures: Mapping[str, str] = field(default_factory=dict)
    report: str = "report.md"
    summary: str = "summary.json"
    kind: ClassVar[str] = "report"


RESULT_TYPES: tuple[type[StageResult], ...] = (
    SkippedStage, SearchStageResult, DeriveStageResult, ClassifierTrainResult, LanguageModelTrainResult,
    SegmentationTrainResult, ExportStageResult, ExecuTorchStageResult, QuantizeStageResult, ProfileStageResult,
    ReportStageResult,
)


def stage_result_from_dict(data: Any) -> StageResult:
    """The typed result of a stored record (to_dict's form); a record of another kind is a ConfigError."""
    kinds = {cls.kind: cls for cls in RESULT_TYPES}
    if not isinstance(data, dict) or data.get("kind") not in kinds:
        kind = data.get("kind") if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"not a stage result of this nasdeploy version (kind {kind!r}; known: {', '.join(kinds)})")
    return _decode(kinds[data["kind"]], data)


def _percent(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def _decode(tp: Any, value: Any) -> Any:
    """`value` (JSON form) as type `tp`: dataclasses, Mapping[str, X], tuple[X, ...], X | None, plain values."""
    if value is None:
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return _decode(next(a for a in args if a is not type(None)), value)
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return tp(**{f.name: _decode(hints[f.name], value[f.name]) for f in dataclasses.fields(tp)
                     if f.init and f.name in value})
    if origin is tuple:
        return tuple(_decode(args[0], v) for v in value)
    if origin in (dict, collections.abc.Mapping):
        return {k: _decode(args[1], v) for k, v in value.items()}
    if tp is float and isinstance(value, int):
        return float(value)
    return value
