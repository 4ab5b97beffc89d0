"""Markdown tables: a DARTS Table-3-style comparison, latency percentiles, and cost breakdowns."""

from __future__ import annotations

from typing import Any, Sequence

from nasdeploy.profile.api import ProfileResult
from nasdeploy.profile.stages import CostItem


def _md(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[bool] | None = None) -> str:
    """A Markdown table with columns padded for reading in a terminal."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    right = right or [False] * len(headers)

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right)) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if r else ("-" * (w + 2)) for w, r in zip(widths, right)) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def _m(value: int | float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value / 1e6:.{digits}f}"


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _net_label(r: ProfileResult) -> str:
    if r.net is None:
        return r.source
    return f"{r.net['family']} C={r.net['channels']} L={r.net['layers']}"


def comparison_table(results: Sequence[ProfileResult]) -> str:
    """One row per target: params, MACs, mobile verdict and the median latency of each backend."""
    backends: list[str] = []  # only backends that ran somewhere: skipped ones are listed per target
    for r in results:
        backends.extend(b for b, res in r.latency.items() if res.ok and b not in backends)
    headers = ["Architecture", "Network", "Input", "Params (M)", "+aux (M)", "MACs (M)", "Mobile (<600M)"]
    headers += [f"{b} median (ms)" for b in backends]
    rows = []
    for r in results:
        c = r.complexity
        row = [r.name, _net_label(r), "x".join(str(d) for d in c.input_shape), _m(c.params), _m(c.params_with_aux),
               _m(c.macs, 1), r.mobile.label()]
        for b in backends:
            res = r.latency.get(b)
            row.append("" if res is None else (_ms(res.median_ms) if res.ok else res.status))
        rows.append(row)
    right = [False, False, False, True, True, True, False] + [True] * len(backends)
    return _md(headers, rows, right)


def _settings_text(settings: dict[str, Any]) -> str:
    parts = []
    for key in ("intra_op_threads", "providers", "device"):
        if key in settings:
            value = settings[key]
            if isinstance(value, list):
                value = "+".join(str(v).replace("ExecutionProvider", "") for v in value)
            parts.append(f"{key.replace('intra_op_threads', 'threads')}={value}")
    return ", ".join(parts)


def latency_table(result: ProfileResult) -> str:
    """Median / p90 / p99 / mean per backend (ms per batch) and throughput; skipped backends say why."""
    headers = ["Backend", "Status", "Batch", "Runs", "Median (ms)", "p90 (ms)", "p99 (ms)", "Mean (ms)",
               "Throughput (/s)", "Settings / note"]
    rows = []
    for name, r in result.latency.items():
        note = _settings_text(r.settings) if r.ok else r.note
        if r.ok and r.note:
            note = f"{note}; {r.note}"
        rows.append([name, r.status, r.batch, r.runs or "", _ms(r.median_ms), _ms(r.p90_ms), _ms(r.p99_ms),
                     _ms(r.mean_ms), "" if r.throughput is None else f"{r.throughput:.1f}", note])
    return _md(headers, rows, [False, False, True, True, True, True, True, True, True, False])


def _cost_table(items: Sequence[CostItem], first: str, total_macs: int, second: str) -> str:
    headers = [first, second.capitalize(), "Params", "MACs (M)", "MACs %"]
    rows = []
    for i in items:
        share = 100.0 * i.macs / total_macs if total_macs else 0.0
        rows.append([i.name, getattr(i, second), f"{i.params:,}", _m(i.macs, 2), f"{share:.1f}"])
    right = [False, second == "count", True, True, True]
    return _md(headers, rows, right)


def stage_table(result: ProfileResult) -> str:
    """Params and MACs per stage (stem, each cell, head, auxiliary head)."""
    return _cost_table(result.complexity.stages, "Stage", result.complexity.macs, "kind")


def op_table(result: ProfileResult) -> str:
    """Params and MACs per op type (candidate ops of the genotype, preprocessing, stem, head)."""
    return _cost_table(result.complexity.ops, "Op type", result.complexity.macs, "count")


def _summary(r: ProfileResult) -> list[str]:
    c = r.complexity
    lines = [f"## {r.name} ({_net_label(r)}, input {'x'.join(str(d) for d in c.input_shape)})", ""]
    aux = f" ({c.params_with_aux:,} with auxiliary head)" if c.params_with_aux != c.params else ""
    lines.append(f"- params: {c.params:,}{aux}")
    lines.append(f"- MACs: {c.macs:,} = {c.macs / 1e6:.1f}M per sample (convention above; counter: {c.counter})")
    if r.mobile.applies:
        lines.append(f"- mobile setting (< 600M MACs at 224x224): {r.mobile.label()}, margin {r.mobile.margin_pct:+.1f}%")
    else:
        lines.append(f"- mobile setting: n/a ({r.mobile.note})")
    a = c.activations
    if a is not None:
        lines.append(f"- activation memory at batch {a.batch}: peak {a.peak_bytes / 2**20:.2f} MiB alive, "
                     f"{a.total_bytes / 2**20:.2f} MiB written in total ({a.tensors} tensors; {a.method})")
    return lines


def _environment_line(env: dict[str, Any] | None) -> str:
    if not env:
        return ""
    v = env.get("versions", {})
    libs = ", ".join(f"{k} {v[k]}" for k in ("torch", "onnxruntime", "onnxruntime-gpu", "tensorrt") if v.get(k))
    gpu = env["gpu"]["name"] if env.get("gpu") else "none"
    return (f"Environment: CPU {env.get('cpu')} ({env.get('logical_cpus')} logical CPUs, "
            f"{env.get('physical_cores')} physical cores, torch threads {env.get('torch_threads')}); GPU {gpu}; {libs}")


def _load_lines(result: ProfileResult) -> list[str]:
    """How the latencies were taken: in turns with which others, and the machine's load (contended or quiet)."""
    timed = [r for r in result.latency.values() if r.load is not None]
    if not timed:
        return []
    keys = {r.backend for r in timed}
    others = sorted({o for r in timed for o in r.alternated_with if o not in keys})
    turns = f"Timed in turns (A B A B ...) with {', '.join(others)}. " if others else ""
    return [f"{turns}Machine: {timed[0].load.line()}.", ""]


def render_report(results: Sequence[ProfileResult], breakdown: bool | None = None) -> str:
    """The full text report; breakdown tables by default only for a single target."""
    breakdown = len(results) == 1 if breakdown is None else breakdown
    parts = ["# Profile", "", comparison_table(results), ""]
    if results:
        parts += [f"Convention: {results[0].complexity.convention}.", ""]
    for r in results:
        parts += _summary(r) + [""]
        if breakdown:
            parts += ["### Per stage", "", stage_table(r), "", "### Per op type", "", op_table(r), ""]
        if r.latency:
            cfg = r.latency_config
            how = f" (warm-up {cfg.warmup}, {cfg.runs} timed runs, batch {cfg.batch})" if cfg else ""
            parts += [f"### Latency{how}", "", latency_table(r), ""] + _load_lines(r)
        else:
            parts += ["Latency: not measured (use --latency cpu, gpu, mobile, all or backend names).", ""]
    env = _environment_line(results[0].environment if results else None)
    if env:
        parts += [env, ""]
    return "\n".join(parts)
