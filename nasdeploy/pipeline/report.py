"""report.md and summary.json of a pipeline run, written from one summary dict."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from nasdeploy.utils.files import write_json_atomic, write_text_atomic

MOBILE_MACS_LIMIT = 600e6


def _fmt_int(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"


def _fmt_m(value: Any) -> str:
    return f"{value / 1e6:.1f}M" if isinstance(value, (int, float)) else "-"


def _fmt_e(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) else "-"


def _fmt_ms(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else "-"


def _segmentation_table(rows: list[dict[str, Any]], sizes: list[str], backends: list[str]) -> list[str]:
    header = "| architecture | path (output strides) | params |" + "".join(f" MACs at {s} |" for s in sizes) + "".join(
        f" {b} median / p90 ms |" for b in backends)
    lines = [header, "|" + "---|" * (3 + len(sizes) + len(backends))]
    for row in rows:
        path = "-".join(str(4 * 2 ** j) for j in row.get("path") or [])
        cells = [f"**{row['name']}**" if row.get("found") else row["name"], path or "-", _fmt_int(row.get("params"))]
        cells += [_fmt_g(row.get("macs_at", {}).get(s)) for s in sizes]
        for b in backends:
            lat = (row.get("latency") or {}).get(b) or {}
            cells.append(f"{_fmt_ms(lat.get('median_ms'))} / {_fmt_ms(lat.get('p90_ms'))}" if lat else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _fmt_g(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    return f"{value / 1e9:.2f}G" if value >= 1e9 else f"{value / 1e6:.1f}M"


def _latency_cell(row: dict[str, Any], backend: str) -> str:
    """median / p90 ms of one row under one backend column; an INT8 row adds its file size; else why not."""
    lat = (row.get("latency") or {}).get(backend)
    if lat:
        text = f"{_fmt_ms(lat.get('median_ms'))} / {_fmt_ms(lat.get('p90_ms'))}"
        if row.get("int8") and isinstance(lat.get("model_bytes"), (int, float)):
            text += f" ({_mb(lat['model_bytes'])})"
        return text
    info = (row.get("not_run") or {}).get(backend)
    return str(info.get("status", "-")) if info else "-"


def _profile_table(rows: list[dict[str, Any]], backends: list[str]) -> list[str]:
    header = "| architecture | params | MACs | mobile (< 600M MACs) |" + "".join(
        f" {b} median / p90 ms |" for b in backends
    )
    lines = [header, "|" + "---|" * (4 + len(backends))]
    for row in rows:
        macs = row.get("macs")
        verdict = "-"
        if isinstance(macs, (int, float)):
            margin = (MOBILE_MACS_LIMIT - macs) / 1e6
            verdict = f"{'pass' if macs < MOBILE_MACS_LIMIT else 'FAIL'} ({margin:+.1f}M)"
        cells = [f"**{row['name']}**" if row.get("found") else row["name"], _fmt_int(row.get("params")), _fmt_m(macs), verdict]
        cells += [_latency_cell(row, b) for b in backends]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _cost_notes(profile: dict[str, Any]) -> list[str]:
    """Lines under the cost table: the timing protocol, what the INT8 row is, backends that did not run."""
    lines = []
    protocol = profile.get("latency_protocol") or {}
    if protocol and profile.get("backends"):
        threads = ", ".join(f"{b} {n}" for b, n in (protocol.get("threads") or {}).items())
        lines.append(f"Latency: batch {protocol.get('batch', 1)}, {protocol.get('warmup')} untimed warm-up + "
                     f"{protocol.get('runs')} timed runs per backend, median / p90 ms"
                     + (f"; intra-op threads: {threads}" if threads else "") + ".")
    if any(row.get("int8") for row in profile.get("rows", [])):
        where = ", ".join(f"{i['backend']} under {i['column']}" for i in (profile.get("int8") or {}).values())
        lines.append(f"INT8 row: the found architecture quantized to INT8 ({where}; INT8 file size in brackets), "
                     "calibrated on random-normal images: timing only, INT8 accuracy is in the export section.")
    for note in profile.get("latency_notes") or []:
        lines.append(f"{note['backend']} {note['status']} for {', '.join(note['rows'])}: {note['note']}")
    return lines


def _language_model_table(rows: list[dict[str, Any]], backends: list[str]) -> list[str]:
    header = "| architecture | params | MACs / token |" + "".join(f" {b} median / p90 ms per token |" for b in backends)
    lines = [header, "|" + "---|" * (3 + len(backends))]
    for row in rows:
        cells = [f"**{row['name']}**" if row.get("found") else row["name"], _fmt_int(row.get("params")),
                 _fmt_m(row.get("macs_per_token"))]
        for b in backends:
            lat = (row.get("latency") or {}).get(b) or {}
            cells.append(f"{lat.get('median_ms', float('nan')):.4f} / {lat.get('p90_ms', float('nan')):.4f}" if lat else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _cost_table(profile: dict[str, Any]) -> list[str]:
    """The cost table in the form the profile stage asked for (profile.json's `table`)."""
    kind = profile.get("table", "segmentation" if profile.get("net") == "segmentation" else "mobile")
    backends = profile.get("backends", [])
    if kind == "segmentation":
        return _segmentation_table(profile["rows"], profile.get("sizes", []), backends)
    if kind == "language_model":
        return _language_model_table(profile["rows"], backends)
    notes = _cost_notes(profile)
    return _profile_table(profile["rows"], backends) + ([""] + notes if notes else [])


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) else "-"


def _mb(value: Any) -> str:
    return f"{value / 1e6:.2f} MB" if isinstance(value, (int, float)) else "-"


def _runtime_lines(export: dict[str, Any]) -> list[str]:
    """Parity in the other runtimes, and the float vs INT8 table (accuracy, size, latency)."""
    lines: list[str] = []
    for name, rep in (export.get("runtimes") or {}).items():
        agree = rep.get("top1_agreement")
        lines.append(f"{name}: **{'passed' if rep.get('passed') else 'FAILED'}**, max abs error "
                     f"{_fmt_e(rep.get('max_abs_err'))}" + (f", top-1 agreement {_pct(agree)}" if agree is not None else "")
                     + f" ({rep.get('inputs', 'random inputs')}; {rep.get('weights', '')} weights).")
    quant = export.get("quantization") or {}
    if quant:
        lines += ["", "| model | runtime | validation metric | vs float | size | latency median / p90 ms |",
                  "|---|---|---|---|---|---|"]
        for q in quant.values():
            if q.get("status") != "ok":
                lines.append(f"| INT8 ({q.get('method')}) | {q.get('runtime', '-')} | not quantized: {q.get('note', '')} | | | |")
                continue
            lat = q.get("latency") or {}
            for label, metric, size, key in (("float", q.get("float_metric"), q.get("float_size_bytes"), "float"),
                                             (f"INT8 ({q.get('scheme', '')})", q.get("int8_metric"), q.get("int8_size_bytes"), "int8")):
                timing = next((v for k, v in lat.items() if k.split()[0] == key and isinstance(v, dict)), {})
                delta = f"{100 * q['delta']:+.1f} pts" if key == "int8" and isinstance(q.get("delta"), (int, float)) else ""
                lines.append(f"| {label} | {q.get('runtime', '-')} | {q.get('metric', 'top1')} {_pct(metric)} | {delta} | "
                             f"{_mb(size)} | {_fmt_ms(timing.get('median_ms'))} / {_fmt_ms(timing.get('p90_ms'))} |")
        lines.append("")
        lines.append("INT8: calibrated on " + "; ".join(sorted({q.get('calibration', '') for q in quant.values()}))
                     + "; scored on " + "; ".join(sorted({q.get('validation', '') for q in quant.values()})) + ".")
    return lines


_STAGE_TITLES = {"export": "ONNX", "executorch": "ExecuTorch", "quantize": "INT8"}


def _deployment_lines(export: dict[str, Any]) -> list[str]:
    """Where each deployment stage's files are, and the stages that had nothing to do (one line each)."""
    lines: list[str] = []
    dirs = export.get("dirs") or {}
    if len(dirs) > 1 or any(d != "export" for d in dirs.values()):
        lines += ["", "Files: " + ", ".join(f"{_STAGE_TITLES.get(k, k)} in `{v}/`" for k, v in dirs.items()) + "."]
    lines += [f"{_STAGE_TITLES.get(k, k)} stage ({k}): skipped: {why}." for k, why in (export.get("stage_skips") or {}).items()]
    return lines


def render_report(summary: dict[str, Any]) -> str:
    """The Markdown report of a pipeline run."""
    out: list[str] = [f"# nasdeploy pipeline report: {summary.get('name', 'run')}", ""]
    out.append(f"Created {summary.get('created', '')} with nasdeploy {summary.get('nasdeploy_version', '')}.")
    out.append("")
    figures = summary.get("figures", {})

    genotype = summary.get("genotype_text")
    out += ["## Found architecture", ""]
    if genotype:
        out += ["```", genotype, "```", ""]
    for key, caption in (("cells", "Searched cell(s)"), ("path", "Network level: decoded path over the beta probabilities")):
        if key in figures:
            out += [f"![{caption}]({figures[key]})", ""]

    search = summary.get("search") or {}
    out += ["## Search", ""]
    if search:
        out.append(f"{search.get('epochs', '?')} epochs in {search.get('seconds', 0):.0f} s "
                   f"({search.get('order', 'first')}-order architecture gradient, mixed-op: {search.get('mixed_op', '?')}).")
        if search.get("final"):
            out.append("Final epoch: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in search["final"].items()))
        out.append("")
    for key, caption in (("alphas", "Evolution of the softmaxed architecture weights"),
                         ("alphas_final", "Final softmaxed architecture weights"),
                         ("curves", "Search and training curves")):
        if key in figures:
            out += [f"![{caption}]({figures[key]})", ""]

    train = summary.get("train") or {}
    out += ["## Training", ""]
    if train and isinstance(train.get("miou"), (int, float)):
        baseline = train.get("majority_miou")
        out.append(f"{train.get('epochs', '?')} epochs in {train.get('seconds', 0):.0f} s; final validation mIoU "
                   f"{train['miou']:.3f}" + (f" (majority-class baseline {baseline:.3f})" if isinstance(baseline, (int, float)) else ""))
        out.append("")
    elif train and isinstance(train.get("best_valid_ppl"), (int, float)):
        test = train.get("test_ppl")
        out.append(f"{train.get('epochs', '?')} epochs in {train.get('seconds', 0):.0f} s; best validation perplexity "
                   f"{train['best_valid_ppl']:.2f}" + (f", test perplexity {test:.2f}" if isinstance(test, (int, float)) else "")
                   + (f" (vocabulary {train['vocab_size']:,}: a uniform model scores {train['vocab_size']:,})"
                      if isinstance(train.get("vocab_size"), int) else ""))
        out.append("")
    elif train:
        acc = train.get("top1")
        out.append(f"{train.get('epochs', '?')} epochs in {train.get('seconds', 0):.0f} s; "
                   f"final top-1 {acc:.2f}%" if isinstance(acc, (int, float)) else "no accuracy recorded")
        if isinstance(train.get("chance"), (int, float)):
            out.append(f"(chance: {train['chance']:.2f}%)")
        out.append("")

    export = summary.get("export") or {}
    out += ["## Export", ""]
    parity = export.get("parity") or {}
    if export:
        out.append(f"ONNX model: `{export.get('onnx', 'model.onnx')}` (opset {export.get('opset', '?')}).")
        if parity.get("passed") is not None:
            out.append(f"Parity against PyTorch in onnxruntime: **{'passed' if parity.get('passed') else 'FAILED'}**, "
                       f"max abs error {_fmt_e(parity.get('max_abs_error'))}, max rel error "
                       f"{_fmt_e(parity.get('max_rel_error'))} (rtol {parity.get('rtol')}, atol {parity.get('atol')}).")
        out += _runtime_lines(export)
        out += _deployment_lines(export)
        out += [f"Skipped {fmt}: {why}." for fmt, why in (export.get("skipped") or {}).items()]
        for fmt, info in (export.get("other_formats") or {}).items():
            out.append(f"{fmt}: {info}")
        out.append("")

    profile = summary.get("profile") or {}
    out += ["## Cost", ""]
    if profile.get("rows"):
        out.append(f"Network: {profile.get('net_description', profile.get('net', ''))}. MACs: {profile.get('convention', '')}")
        out.append("")
        out += _cost_table(profile)
        out.append("")
        budget = profile.get("budget")
        if budget:
            scale = 1e6 if budget["metric"] == "macs" else 1.0
            show = (lambda v: f"{v / scale:.1f}M" if isinstance(v, (int, float)) else "-") if scale > 1 else \
                (lambda v: f"{v:.2f}" if isinstance(v, (int, float)) else "-")
            out.append(f"Search budget: {budget['metric']} <= {show(budget['target'])} {budget['unit']}. The found network "
                       f"measures {show(budget['measured'])}: **{'meets the budget' if budget['meets'] else 'OVER the budget'}** "
                       f"(expected cost at the end of the search {show(budget.get('expected_at_end'))}, table cost of "
                       f"its derived cell {show(budget.get('derived_at_end'))}).")
            out.append("")
        if profile.get("environment"):
            out.append(f"Measured on: {profile['environment']}")
            out.append("")

    commands = summary.get("commands") or {}
    if commands:
        out += ["## Reproduce", "", "```bash"] + [f"# {stage}\n{cmd}" for stage, cmd in commands.items()] + ["```", ""]
    stages = summary.get("stages") or {}
    if stages:
        out += ["## Stage times", "", "| stage | seconds | note |", "|---|---|---|"]
        out += [f"| {name} | {info.get('seconds', 0):.1f} | {info.get('note', '')} |" for name, info in stages.items()]
        out.append("")
    return "\n".join(out)


def write_report(run_dir: Path, summary: dict[str, Any]) -> tuple[Path, Path]:
    """Write report.md and summary.json into the run directory (atomically)."""
    summary = {"created": time.strftime("%Y-%m-%d %H:%M:%S"), **summary}
    report = write_text_atomic(run_dir / "report.md", render_report(summary))
    data = write_json_atomic(run_dir / "summary.json", summary)
    return report, data
