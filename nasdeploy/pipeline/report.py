"""report.md and summary.json of a pipeline run, written from its RunSummary (the stages' typed results)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nasdeploy.pipeline.report_selection import selection_lines
from nasdeploy.pipeline.report_tables import contention_lines, cost_table, fmt_mb, fmt_ms, int8_files_table
from nasdeploy.pipeline.results import ParityVerdict
from nasdeploy.pipeline.summary import RunSummary
from nasdeploy.utils.files import write_json_atomic, write_text_atomic

_STAGE_TITLES = {"export": "ONNX", "executorch": "ExecuTorch", "quantize": "INT8"}


def _fmt_e(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) else "-"


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) else "-"


def _figure_lines(run: RunSummary, captions: tuple[tuple[str, str], ...]) -> list[str]:
    out: list[str] = []
    for key, caption in captions:
        if key in run.figures:
            out += [f"![{caption}]({run.figures[key]})", ""]
    return out


def _architecture(run: RunSummary) -> list[str]:
    out = ["## Found architecture", ""]
    if run.derive:
        out += ["```", run.derive.text, "```", ""]
    return out + _figure_lines(run, (("cells", "Searched cell(s)"),
                                     ("path", "Network level: decoded path over the beta probabilities")))


def _search(run: RunSummary) -> list[str]:
    out = ["## Search", ""]
    search = run.search
    if search:
        out.append(f"{search.epochs} epochs in {run.seconds('search'):.0f} s ({search.order}-order architecture "
                   f"gradient, mixed-op: {search.mixed_op}).")
        if search.final:
            out.append("Final epoch: " + ", ".join(f"{k} {v:.4g}" for k, v in search.final.items()))
        out.append("")
    return out + _figure_lines(run, (("alphas", "Evolution of the softmaxed architecture weights"),
                                     ("alphas_final", "Final softmaxed architecture weights"),
                                     ("curves", "Search and training curves")))


def _training(run: RunSummary) -> list[str]:
    out = ["## Training", ""]
    if run.train:
        out += [run.train.headline(run.seconds("train")), ""]
    return out


def _runtime_line(name: str, rep: ParityVerdict) -> str:
    agree = f", top-1 agreement {_pct(rep.top1_agreement)}" if rep.top1_agreement is not None else ""
    return (f"{name}: **{'passed' if rep.passed else 'FAILED'}**, max abs error {_fmt_e(rep.max_abs_err)}{agree} "
            f"({rep.inputs}; {rep.weights or ''} weights).")


def _int8_lines(run: RunSummary) -> list[str]:
    """The float vs INT8 table (accuracy, size, latency) of the quantize stage."""
    quant = run.quantize.quantization if run.quantize else {}
    if not quant:
        return []
    lines = ["", "| model | runtime | validation metric | vs float | size | latency median / p90 ms |",
             "|---|---|---|---|---|---|"]
    for q in quant.values():
        if q.status != "ok":
            lines.append(f"| INT8 ({q.method}) | {q.runtime or '-'} | not quantized: {q.note} | | | |")
            continue
        for label, metric, size, key in (("float", q.float_metric, q.float_size_bytes, "float"),
                                         (f"INT8 ({q.scheme})", q.int8_metric, q.int8_size_bytes, "int8")):
            timing = next((v for k, v in q.latency.items() if k.split()[0] == key and isinstance(v, dict)), {})
            delta = f"{100 * q.delta:+.1f} pts" if key == "int8" and q.delta is not None else ""
            lines.append(f"| {label} | {q.runtime or '-'} | {q.metric} {_pct(metric)} | {delta} | {fmt_mb(size)} | "
                         f"{fmt_ms(timing.get('median_ms'))} / {fmt_ms(timing.get('p90_ms'))} |")
    lines += [""] + [f"- {q.verdict}" for q in quant.values()]
    lines += ["", "INT8: calibrated on " + "; ".join(sorted({q.calibration for q in quant.values()}))
              + "; scored on " + "; ".join(sorted({q.validation for q in quant.values()})) + "."]
    return lines


def _deployment_lines(run: RunSummary) -> list[str]:
    """Where each deployment stage's files are, and the stages that had nothing to do (one line each)."""
    dirs = {stage: result.dir for stage, result in (("export", run.export), ("executorch", run.executorch),
                                                    ("quantize", run.quantize)) if result is not None}
    lines: list[str] = []
    if len(dirs) > 1 or any(d != "export" for d in dirs.values()):
        lines += ["", "Files: " + ", ".join(f"{_STAGE_TITLES[k]} in `{v}/`" for k, v in dirs.items()) + "."]
    lines += [f"{_STAGE_TITLES[k]} stage ({k}): skipped: {why}." for k, why in run.deployment_skips().items()]
    skipped = {**run.export.skipped, **(run.quantize.skipped if run.quantize else {})} if run.export else {}
    return lines + [f"Skipped {fmt}: {why}." for fmt, why in skipped.items()]


def _export(run: RunSummary) -> list[str]:
    out = ["## Export", ""]
    export = run.export
    if export is None:
        return out
    out.append(f"ONNX model: `{export.published}` (opset {export.opset if export.opset is not None else '?'}).")
    onnx = export.onnx
    if onnx is not None:
        out.append(f"Parity against PyTorch in onnxruntime: **{'passed' if onnx.passed else 'FAILED'}**, max abs error "
                   f"{_fmt_e(onnx.max_abs_err)}, max rel error {_fmt_e(onnx.max_rel_err)} (rtol {onnx.rtol}, "
                   f"atol {onnx.atol}).")
    out += [_runtime_line(name, rep) for name, rep in run.runtime_parity().items()]
    return out + _int8_lines(run) + _deployment_lines(run) + [""]


def _budget_line(budget: dict[str, Any]) -> str:
    scale = 1e6 if budget["metric"] == "macs" else 1.0

    def show(v: Any) -> str:
        if not isinstance(v, (int, float)):
            return "-"
        return f"{v / scale:.1f}M" if scale > 1 else f"{v:.2f}"

    line = (f"Search budget: {budget['metric']} <= {show(budget['target'])} {budget['unit']}. Expected cost of the "
            f"final architecture weights {show(budget.get('expected'))}, the DARTS rule's genotype "
            f"{show(budget.get('unconstrained'))}, the published (derived) genotype {show(budget.get('derived'))}; the "
            f"profiler measures the found network at {show(budget['measured'])}: "
            f"**{'meets the budget' if budget['meets'] else 'OVER the budget'}**.")
    if budget.get("binding"):
        line += " The budget changed the genotype (the DARTS rule's was over it)."
    if budget.get("method"):
        line += f" Derivation: {budget['method']}."
    return line


def _cost(run: RunSummary) -> list[str]:
    profile = dict(run.profile)
    out = ["## Cost", ""]
    if not profile.get("rows"):
        return out
    out += [f"Network: {profile.get('net_description', profile.get('net', ''))}. MACs: {profile.get('convention', '')}",
            "", *cost_table(profile), ""]
    if profile.get("int8_files"):
        out += [*int8_files_table(profile["int8_files"]), ""]
    contention = contention_lines(profile)
    out += [*contention, ""] if contention else []
    if profile.get("budget"):
        out += [_budget_line(profile["budget"]), ""]
    if profile.get("environment"):
        out += [f"Measured on: {profile['environment']}", ""]
    return out


def render_report(run: RunSummary) -> str:
    """The Markdown report of a pipeline run."""
    out = [f"# nasdeploy pipeline report: {run.name}", "", f"Created {run.created} with nasdeploy {run.version}.", ""]
    out += _architecture(run) + _search(run) + selection_lines(run) + _training(run) + _export(run) + _cost(run)
    if run.commands:
        out += ["## Reproduce", "", "```bash"] + [f"# {stage}\n{cmd}" for stage, cmd in run.commands.items()] + ["```", ""]
    if run.times:
        out += ["## Stage times", "", "| stage | seconds | note |", "|---|---|---|"]
        out += [f"| {name} | {t.seconds:.1f} | {f'skipped: {t.skip_reason}' if t.skip_reason else ''} |"
                for name, t in run.times.items()]
        out.append("")
    return "\n".join(out)


def write_report(run_dir: Path, run: RunSummary) -> tuple[Path, Path]:
    """Write report.md and summary.json into the run directory (atomically)."""
    return (write_text_atomic(run_dir / "report.md", render_report(run)),
            write_json_atomic(run_dir / "summary.json", run.to_json()))
