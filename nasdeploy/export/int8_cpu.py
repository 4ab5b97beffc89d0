"""What this CPU offers INT8 kernels: the instruction-set flags that onnxruntime's and XNNPACK's INT8 kernels use.

INT8 pays on a CPU only where 8-bit dot products are single instructions: x86 AVX512-VNNI / AVX-VNNI
(vpdpbusd: unsigned 8-bit activations x signed 8-bit weights) or AMX-INT8 tiles, Arm dotprod (sdot/udot) or
i8mm (smmla). Without them onnxruntime's MLAS falls back to AVX2/AVX-512BW vpmaddubsw (u8 x s8 into 16-bit
sums, which can saturate: onnxruntime advises reduce_range there) and XNNPACK to widening multiplies, which
are often no faster than float. The flags are read from /proc/cpuinfo ('flags' on x86, 'Features' on Arm).
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")
# flag -> what it gives INT8 kernels; the first group is what makes INT8 dot products one instruction.
X86_DOT_FLAGS = {
    "amx_int8": "AMX-INT8 tile multiplies",
    "avx512_vnni": "AVX512-VNNI vpdpbusd (u8 x s8 dot products, 512-bit)",
    "avx_vnni": "AVX-VNNI vpdpbusd (256-bit)",
}
X86_FALLBACK_FLAGS = {
    "avx512bw": "AVX-512BW vpmaddubsw (8-bit multiplies into 16-bit sums)",
    "avx2": "AVX2 vpmaddubsw (8-bit multiplies into 16-bit sums)",
}
ARM_DOT_FLAGS = {"asimddp": "dotprod sdot/udot", "i8mm": "i8mm smmla"}
KERNELS = {
    "ort": "onnxruntime's MLAS INT8 convolution/GEMM kernels (QLinearConv, u8 activations x s8 weights on x86)",
    "executorch": "XNNPACK's QS8 convolution/GEMM kernels",
}


@dataclass(frozen=True)
class CpuInt8Support:
    """The CPU's INT8-relevant flags: present ones, missing dot-product ones, and the architecture."""

    arch: str  # "x86_64" | "aarch64" | another platform.machine()
    model: str
    present: tuple[str, ...]
    missing: tuple[str, ...]  # dot-product flags this architecture could have but this CPU lacks
    source: str  # where the flags were read

    @property
    def x86(self) -> bool:
        """Whether this is an x86 CPU."""
        return self.arch in ("x86_64", "amd64", "i686", "i386")

    @property
    def dot_flags(self) -> tuple[str, ...]:
        """The present flags that make INT8 dot products single instructions (VNNI / AMX / dotprod / i8mm)."""
        table = X86_DOT_FLAGS if self.x86 else ARM_DOT_FLAGS
        return tuple(flag for flag in self.present if flag in table)

    @property
    def dot_product(self) -> bool:
        """Whether INT8 dot products are single instructions here."""
        return bool(self.dot_flags)

    def activation_type(self) -> str:
        """onnxruntime's activation type for this CPU: uint8 on x86 (what vpdpbusd multiplies), int8 elsewhere."""
        return "uint8" if self.x86 else "int8"

    def describe(self) -> str:
        """One line: the CPU and its INT8 instructions."""
        table = {**X86_DOT_FLAGS, **X86_FALLBACK_FLAGS} if self.x86 else ARM_DOT_FLAGS
        have = ", ".join(self.present) or "none"
        lacks = f"; lacks {', '.join(self.missing)}" if self.missing else ""
        what = "; ".join(table[f] for f in self.present if f in table)
        return f"{self.model} ({self.arch}): INT8 flags {have}{lacks}" + (f" ({what})" if what else "")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with the one-line description."""
        return {**asdict(self), "dot_product": self.dot_product, "line": self.describe()}


def _cpuinfo_fields(text: str) -> tuple[str, set[str]]:
    """(model name, flags) of the first processor in /proc/cpuinfo text."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


def cpu_int8_support(cpuinfo: str | None = None, machine: str | None = None) -> CpuInt8Support:
    """The INT8 support of this CPU (or of the given /proc/cpuinfo text and platform.machine() value)."""
    machine = (machine or platform.machine() or "unknown").lower()
    source = "given text" if cpuinfo is not None else str(CPUINFO)
    if cpuinfo is None:
        cpuinfo = CPUINFO.read_text(errors="replace") if CPUINFO.is_file() else ""
        if not cpuinfo:
            source = "not available (no /proc/cpuinfo)"
    model, flags = _cpuinfo_fields(cpuinfo)
    x86 = machine in ("x86_64", "amd64", "i686", "i386")
    dot = X86_DOT_FLAGS if x86 else ARM_DOT_FLAGS
    known = list(dot) + (list(X86_FALLBACK_FLAGS) if x86 else [])
    present = tuple(f for f in known if f in flags)
    missing = tuple(f for f in dot if f not in flags) if cpuinfo else ()
    return CpuInt8Support(machine, model or platform.processor() or machine, present, missing, source)
