"""What the profile stages of the image spaces share: the rows to profile, latency cells, and the INT8 files timed.

The cost table compares the found architecture with published genotypes at the profile section's setting; the
INT8 comparison times the files the export, executorch and quantize stages wrote (the trained network at its
input size): nothing is quantized or lowered again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from nasdeploy.pipeline.results import ExecuTorchStageResult, ExportStageResult, QuantizeStageResult, StageResult
from nasdeploy.pipeline.stages import StageContext, quote_path


@dataclass(frozen=True)
class ProfileTarget:
    """One row of the cost table: the found genotype or a published one, and the latency columns it gets."""

    target: str  # genotype.json or a registry name
    name: str  # the row's name
    found: bool
    backends: tuple[str, ...]


def profile_targets(ctx: StageContext) -> list[ProfileTarget]:
    """The found architecture, then the section's published genotypes; latency where latency_for names them."""
    section = ctx.config.profile
    rows = [("found", str(ctx.path("genotype.json")), f"{ctx.config.name} (found)")]
    rows += [(name, name, name) for name in section.compare]
    return [ProfileTarget(target, name, label == "found",
                          tuple(section.backends) if label in section.latency_for else ())
            for label, target, name in rows]


def latency_config(ctx: StageContext) -> Any:
    """The section's timing protocol (no progress bars: the stage prints its own lines)."""
    from nasdeploy.profile.protocol import LatencyConfig

    return LatencyConfig(warmup=ctx.config.profile.warmup, runs=ctx.config.profile.runs, progress=False)


def latency_summary(results: Mapping[str, Any], backends: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """median/p90/p99/mean (and the file size where the backend wrote one) per backend that ran; only `backends`
    when given. results: backend -> LatencyResult."""
    latency = {}
    for backend, res in results.items():
        if (backends is not None and backend not in backends) or not res.ok:
            continue
        latency[backend] = {"median_ms": res.median_ms, "p90_ms": res.p90_ms, "p99_ms": res.p99_ms,
                            "mean_ms": res.mean_ms, "contended": res.contended,
                            "load": res.load.line() if res.load is not None else None}
        if res.settings.get("model_bytes") is not None:
            latency[backend]["model_bytes"] = res.settings["model_bytes"]
    return latency


# INT8 method -> the earlier stage that wrote its float file, that file's role there, and the INT8 file's role.
_FLOAT_FILES: dict[str, tuple[str, type[StageResult], str, str]] = {
    "ort": ("export", ExportStageResult, "onnx", "onnx_int8"),
    "executorch": ("executorch", ExecuTorchStageResult, "executorch", "executorch_int8"),
}


def _int8_pair(ctx: StageContext, method: str) -> tuple[str, str] | str:
    """The run-relative (float, INT8) files of `method`, or why there are none."""
    stage, kind, float_role, int8_role = _FLOAT_FILES[method]
    floats, quantized = ctx.earlier(stage, kind), ctx.earlier("quantize", QuantizeStageResult)
    if floats is None or float_role not in floats.files:
        return f"the {stage} stage made no float file"
    if quantized is None or int8_role not in quantized.files:
        return "the quantize stage made no INT8 file for this method"
    return floats.files[float_role], quantized.files[int8_role]


def int8_file_timings(ctx: StageContext, net: str) -> dict[str, Any] | None:
    """Float vs INT8 latency of the files this run wrote, per method of profile.int8 (None: no INT8 asked for).

    The float and the INT8 file of a method are timed with the same protocol, one after the other, at the
    trained network's input size (export's record), batch 1.
    """
    from nasdeploy.profile.latency import FLOAT_TWIN, INT8_LATENCY_BACKENDS, measure_latency

    methods = ctx.config.profile.int8
    export = ctx.earlier("export", ExportStageResult)
    if not methods or export is None or not export.input_shape:
        return None
    rows = []
    for method in methods:
        int8_backend = INT8_LATENCY_BACKENDS[method]
        float_backend = FLOAT_TWIN[int8_backend]
        pair = _int8_pair(ctx, method)
        row: dict[str, Any] = {"method": method, "float_backend": float_backend, "int8_backend": int8_backend}
        if isinstance(pair, str):
            rows.append({**row, "note": pair})
            continue
        files = {float_backend: ctx.path(pair[0]), int8_backend: ctx.path(pair[1])}
        results = measure_latency(list(files), tuple(export.input_shape), latency_config(ctx), model_files=files)
        cells = latency_summary(results)
        notes = [f"{b} {r.status}: {r.note}" for b, r in results.items() if not r.ok]
        rows.append({**row, "float_file": pair[0], "int8_file": pair[1], "float": cells.get(float_backend),
                     "int8": cells.get(int8_backend), "note": "; ".join(notes)})
    shape = "x".join(str(d) for d in export.input_shape)
    return {"network": f"the trained {net} network as exported (input {shape}, batch 1)",
            "input_shape": list(export.input_shape), "rows": rows}


def int8_files_command(timings: Mapping[str, Any] | None, ctx: StageContext) -> str | None:
    """The command that times the ONNX pair of the INT8 comparison again (None without one)."""
    row = next((r for r in (timings or {}).get("rows", []) if r["method"] == "ort" and "float_file" in r), None)
    if row is None:
        return None
    prof, q = ctx.config.profile, quote_path
    height, width = timings["input_shape"][1:]  # type: ignore[index]
    return (f"nasdeploy profile {q(ctx.path(row['float_file']))} {q(ctx.path(row['int8_file']))} "
            f"--input-size {height}x{width} --latency ort-cpu-1t --warmup {prof.warmup} --runs {prof.runs}")
