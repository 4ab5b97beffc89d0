"""The report's cost tables, laid out as the profile stage asked (profile.json's `table`), and the INT8 file timings."""

from __future__ import annotations

from typing import Any, Mapping

MOBILE_MACS_LIMIT = 600e6


def fmt_ms(value: Any) -> str:
    """Milliseconds with two decimals ('-' when missing)."""
    return f"{value:.2f}" if isinstance(value, (int, float)) else "-"


def fmt_mb(value: Any) -> str:
    """Bytes as MB with two decimals ('-' when missing)."""
    return f"{value / 1e6:.2f} MB" if isinstance(value, (int, float)) else "-"


def _fmt_int(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"


def _fmt_m(value: Any) -> str:
    return f"{value / 1e6:.1f}M" if isinstance(value, (int, float)) else "-"


def _segmentation_table(rows: list[dict[str, Any]], sizes: list[str], backends: list[str]) -> list[str]:
    header = "| architecture | path (output strides) | params |" + "".join(f" MACs at {s} |" for s in sizes) + "".join(
        f" {b} median / p90 ms |" for b in backends)
    lines = [header, "|" + "---|" * (3 + len(sizes) + len(backends))]
    for row in rows:
        path = "-".join(str(4 * 2 ** j) for j in row.get("path") or [])
        cells = [f"**{row['name']}**" if row.get("found") else row["name"], path or "-", _fmt_int(row.get("params"))]
        cells += [_fmt_g(row.get("macs_at", {}).get(s)) for s in sizes]
        cells += [_median_p90((row.get("latency") or {}).get(b)) for b in backends]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _fmt_g(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    return f"{value / 1e9:.2f}G" if value >= 1e9 else f"{value / 1e6:.1f}M"


def _median_p90(cell: Mapping[str, Any] | None) -> str:
    """median / p90 ms, marked when other processes competed during the measurement."""
    if not cell:
        return "-"
    busy = " (busy)" if cell.get("contended") else ""
    return f"{fmt_ms(cell.get('median_ms'))} / {fmt_ms(cell.get('p90_ms'))}{busy}"


def _latency_cell(row: dict[str, Any], backend: str) -> str:
    """median / p90 ms of one row under one backend column; else why it did not run."""
    lat = (row.get("latency") or {}).get(backend)
    if lat:
        return _median_p90(lat)
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
    """Lines under the cost table: the timing protocol and the backends that did not run."""
    lines = []
    protocol = profile.get("latency_protocol") or {}
    if protocol and profile.get("backends"):
        threads = ", ".join(f"{b} {n}" for b, n in (protocol.get("threads") or {}).items())
        lines.append(f"Latency: batch {protocol.get('batch', 1)}, {protocol.get('warmup')} untimed warm-up + "
                     f"{protocol.get('runs')} timed runs per backend, median / p90 ms"
                     + (f"; intra-op threads: {threads}" if threads else "") + ".")
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


def cost_table(profile: dict[str, Any]) -> list[str]:
    """The cost table in the form the profile stage asked for (profile.json's `table`)."""
    kind = profile.get("table", "segmentation" if profile.get("net") == "segmentation" else "mobile")
    backends = profile.get("backends", [])
    if kind == "segmentation":
        return _segmentation_table(profile["rows"], profile.get("sizes", []), backends)
    if kind == "language_model":
        return _language_model_table(profile["rows"], backends)
    notes = _cost_notes(profile)
    return _profile_table(profile["rows"], backends) + ([""] + notes if notes else [])




def int8_files_table(timings: Mapping[str, Any]) -> list[str]:
    """Float vs INT8 latency of the files the run wrote, per INT8 method, with the network they hold."""
    lines = [f"INT8 latency: {timings['network']}, timed from the files the export, executorch and quantize stages "
             "wrote (nothing quantized again; accuracy is in the export section).", "",
             "| method | float file (backend) | INT8 file (backend) | float median / p90 ms | INT8 median / p90 ms "
             "| float size | INT8 size |", "|---|---|---|---|---|---|---|"]
    notes = []
    for row in timings["rows"]:
        if "float_file" not in row:
            lines.append(f"| {row['method']} | - | - | - | - | - | - |")
            notes.append(f"INT8 {row['method']}: not timed: {row['note']}")
            continue
        fp, q = row.get("float") or {}, row.get("int8") or {}
        lines.append(f"| {row['method']} | `{row['float_file']}` ({row['float_backend']}) | `{row['int8_file']}` "
                     f"({row['int8_backend']}) | {_median_p90(fp)} | {_median_p90(q)} | "
                     f"{fmt_mb(fp.get('model_bytes'))} | {fmt_mb(q.get('model_bytes'))} |")
        if row.get("note"):
            notes.append(f"INT8 {row['method']}: {row['note']}")
    return lines + ([""] + notes if notes else [])


def contention_lines(profile: dict[str, Any]) -> list[str]:
    """Whether other processes competed while the cost table's latencies were measured (the load rule stated)."""
    cells = [(row["name"], backend, cell) for row in profile.get("rows", [])
             for backend, cell in (row.get("latency") or {}).items() if isinstance(cell, dict)]
    busy = [(name, backend, cell) for name, backend, cell in cells if cell.get("contended")]
    if not cells or all(cell.get("contended") is None for _, _, cell in cells):
        return []
    if not busy:
        return [f"Machine load during the latency measurements: quiet ({next(c for _, _, c in cells).get('load')})."]
    windows: dict[str, list[str]] = {}  # one load record per measurement window; the cells timed in it
    for name, backend, cell in busy:
        windows.setdefault(str(cell.get("load")), []).append(f"{name} {backend}")
    return ["**Latency measured while other processes competed** (" + "; ".join(
        f"{', '.join(where)}: {load}" for load, where in windows.items()) + "). Rerun the profile stage "
        "(`--force profile`) on a quiet machine before trusting these numbers."]
