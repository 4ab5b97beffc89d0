"""The INT8 speed guard: is the INT8 model faster than float on this machine, and if not, why not.

Float and INT8 are timed together by the export's timer (alternated turns, same protocol, the machine's load
recorded). The reason for an INT8 model that is not faster comes from the machine: the CPU's INT8 flags
(nasdeploy.export.int8_cpu) and, for onnxruntime, its own per-op profile of both models (where the INT8
model spends its time: conversion nodes, INT8 kernels that are slower than the float ones at these widths).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

from nasdeploy.export.int8_cpu import KERNELS, CpuInt8Support

FASTER_BELOW = 0.95  # INT8 / float median: below this INT8 is faster, above NOT_SLOWER_UP_TO it is slower
NOT_SLOWER_UP_TO = 1.05
CONVERSION_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class SpeedVerdict:
    """INT8 vs float latency on this machine, the outcome, and when INT8 does not pay, why and what to ship."""

    outcome: str  # "faster" | "no faster" | "slower" | "not measured"
    float_ms: float | None
    int8_ms: float | None
    ratio: float | None  # INT8 median / float median
    contended: bool | None  # other processes competed while timing (either record)
    cpu: str  # the CPU's INT8 instructions, one line
    reason: str
    recommendation: str

    def line(self) -> str:
        """One line: the measured speed, the reason when INT8 does not pay, the recommendation."""
        if self.outcome == "not measured":
            return f"speed: not measured ({self.reason})"
        busy = " (measured while other processes competed)" if self.contended else ""
        head = (f"speed: INT8 {self.outcome} than float here, {self.int8_ms:.3f} vs {self.float_ms:.3f} ms median "
                f"(x{self.ratio:.2f}){busy}")
        return head + (f"; why: {self.reason}" if self.reason else "") + (
            f"; {self.recommendation}" if self.recommendation else "")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with the one-line verdict."""
        return {**asdict(self), "line": self.line()}


def profile_reason(float_shares: Sequence[Any], int8_shares: Sequence[Any]) -> str:
    """What onnxruntime's profiles of the two models say (OpShare lists: each op type's share of the kernel time)."""
    conversion = sum(s.share for s in int8_shares if s.op_type in CONVERSION_OPS)
    nodes = sum(s.nodes for s in int8_shares if s.op_type in CONVERSION_OPS)
    top = ", ".join(s.text() for s in int8_shares[:3])
    text = (f"onnxruntime's profile of the INT8 model: {top}; quantize/dequantize conversions {conversion:.0%} in "
            f"{nodes} nodes")
    if float_shares:
        text += "; of the float model: " + ", ".join(s.text() for s in float_shares[:2])
    return text


def speed_verdict(method: str, latency: Mapping[str, Mapping[str, Any]], cpu: CpuInt8Support,
                  diagnosis: str = "") -> SpeedVerdict:
    """The verdict from the timer's float and INT8 records (keys starting 'float' / 'int8') and the CPU's flags."""
    records = {key.split()[0]: value for key, value in latency.items()}
    f, q = records.get("float") or {}, records.get("int8") or {}
    if f.get("median_ms") is None or q.get("median_ms") is None:
        why = f.get("note") or q.get("note") or "no timings"
        return SpeedVerdict("not measured", None, None, None, None, cpu.describe(), why, "")
    ratio = q["median_ms"] / f["median_ms"]
    outcome = "faster" if ratio < FASTER_BELOW else ("slower" if ratio > NOT_SLOWER_UP_TO else "no faster")
    contended = bool(f.get("contended") or q.get("contended"))
    if outcome == "faster":
        return SpeedVerdict(outcome, f["median_ms"], q["median_ms"], ratio, contended, cpu.describe(), "", "")
    kernels = KERNELS[method]
    if cpu.dot_product:
        reason = (f"the CPU has the INT8 dot-product instructions {kernels} use ({', '.join(cpu.dot_flags)}), so "
                  f"the cost is in the graph" + (f": {diagnosis}" if diagnosis else ""))
    else:
        lacks = ", ".join(cpu.missing) or "INT8 dot-product instructions"
        reason = (f"this CPU lacks {lacks}, which {kernels} need for fast INT8; it falls back to "
                  f"{'8-bit multiplies into 16-bit sums (vpmaddubsw)' if cpu.x86 else 'widening multiplies'}, no "
                  "faster than float" + (f"; {diagnosis}" if diagnosis else ""))
    if contended:
        reason += "; other processes competed during the timing: measure again on a quiet machine"
    return SpeedVerdict(outcome, f["median_ms"], q["median_ms"], ratio, contended, cpu.describe(), reason,
                        "recommendation: deploy the float model on this machine")
