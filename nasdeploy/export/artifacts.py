"""What every export step shares: the result record, the step context and the one verify-and-save path."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

from torch import nn

from nasdeploy._version import __version__
from nasdeploy.export.options import ExportOptions
from nasdeploy.export.parity import ParityReport, Runner, compare_on_batches
from nasdeploy.export.samples import ExportData
from nasdeploy.utils.ownership import report_path

Progress = Callable[[str], None]
REPORT_FILE = "export.json"
T = TypeVar("T")


@dataclass
class ExportResult:
    """What an export produced: files (relative to out_dir), parity reports, skipped formats and notes."""

    out_dir: Path
    name: str
    formats: tuple[str, ...]
    files: dict[str, str] = field(default_factory=dict)
    parity: dict[str, ParityReport] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)
    onnx: dict[str, Any] = field(default_factory=dict)
    complexity: dict[str, Any] | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)  # method -> QuantizationResult
    weights: str | None = None  # "trained" | "untrained" | None (as given)
    seed: int = 0  # parity inputs, untrained weights and BN statistics, data samples

    def to_dict(self, report: Path | None = None) -> dict[str, Any]:
        """JSON-ready dict; with `report` (where it is written: out_dir/export.json) its paths are relative to it."""
        import onnx
        import onnxruntime
        import torch

        out = asdict(self)
        out["out_dir"] = str(self.out_dir) if report is None else report_path(self.out_dir, report)
        for key in ("target", "checkpoint") if report is not None else ():
            value = out["source"].get(key)
            if isinstance(value, str) and Path(value).is_file():  # a registry name stays a name
                out["source"][key] = report_path(value, report)
        out["parity"] = {k: v.to_dict() for k, v in self.parity.items()}
        out["quantization"] = {k: v.to_dict() for k, v in self.quantization.items()}
        out["versions"] = {"nasdeploy": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                           "onnxruntime": onnxruntime.__version__}
        if "executorch" in self.formats or "executorch" in self.quantization:
            from nasdeploy.export.executorch import executorch_version

            out["versions"]["executorch"] = executorch_version()
        return out

    def summary(self) -> str:
        """Human-readable summary: files, parity tables, skipped formats."""
        lines = [f"exported '{self.name}' to {self.out_dir}"]
        lines += [f"  {role:<18} {path}" for role, path in self.files.items()]
        if self.onnx:
            axes = ", ".join(k for k, v in self.onnx.get("dynamic_axes", {}).items() if v) or "none"
            lines.append(f"  ONNX opset {self.onnx.get('opset')}, input {self.onnx.get('input_shape')}, dynamic axes: {axes}")
        if self.complexity:
            lines.append(f"  params {self.complexity['params']:,}, MACs {self.complexity['macs'] / 1e6:.1f}M ({self.complexity['convention']})")
        for report in self.parity.values():
            lines.append(report.format_table())
        lines += [q.summary() for q in self.quantization.values()]
        lines += [f"  skipped {fmt}: {why}" for fmt, why in self.skipped.items()]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def write_export_report(stage: Path, result: ExportResult) -> Path:
    """export.json in the staging folder, naming files relative to where it is published (result.out_dir)."""
    from nasdeploy.utils.files import write_json_atomic

    result.files["report"] = REPORT_FILE
    return write_json_atomic(stage / REPORT_FILE, result.to_dict(report=result.out_dir / REPORT_FILE))


@dataclass
class StepContext:
    """What every format step gets: the staging folder, the model as exported, the options and data, the result.

    `artifacts` maps a step's name to the file it wrote ("onnx" -> model.onnx, "executorch" -> model.pte,
    "tensorrt" -> model.plan or None when only trtexec.sh could be written); later steps read them.
    """

    stage: Path
    model: nn.Module
    result: ExportResult
    options: ExportOptions
    input_shape: tuple[int, int, int]
    say: Progress
    data: ExportData | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    labels: Sequence[str] | None = None
    artifacts: dict[str, Path | None] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        """The export's seed."""
        return self.options.seed

    def timed(self, key: str, fn: Callable[[], T]) -> T:
        """fn(), its wall time recorded in result.timings_s[key] (seconds, two decimals)."""
        t0 = time.perf_counter()
        out = fn()
        self.result.timings_s[key] = round(time.perf_counter() - t0, 2)
        return out


def record_parity(ctx: StepContext, key: str, report: ParityReport) -> ParityReport:
    """The one verify-and-save path: keep the report, show its table and raise its typed error if it failed, else save it.

    The report names its model relative to itself (the staging folder is renamed whole, so the path stays true) and
    carries the export's weights label.
    """
    name = f"parity_{key}.json"
    model_path = report_path(report.model_path, ctx.stage / name) if report.model_path else ""
    report = replace(report, model_path=model_path, weights=report.weights or ctx.result.weights)
    ctx.result.parity[key] = report
    if not report.passed:
        ctx.say(report.format_table())
    report.raise_for_failure()
    report.save(ctx.stage / name)
    ctx.result.files[f"{key}_parity"] = name
    return report


def check_on_data(ctx: StepContext, key: str, what: str, run: Runner, names: Sequence[str], label: str,
                  model_path: Path) -> None:
    """Parity of `what` on the export's validation images (top-1 agreement included), when it was given data."""
    if ctx.data is None:
        return
    ctx.say(f"checking {what} parity on {ctx.data.parity.label}")
    report = compare_on_batches(
        ctx.model, run, ctx.data.parity.images, runtime=label, inputs=ctx.data.parity.label, model_path=str(model_path),
        output_names=names, rtol=ctx.options.parity.rtol, atol=ctx.options.parity.atol, seed=ctx.seed,
        weights=ctx.result.weights, yardstick=ctx.options.parity.yardstick,
    )
    record_parity(ctx, f"{key}_validation", report)
