"""onnxruntime static INT8 (QDQ) through onnxruntime.quantization, and where an INT8 model spends its time.

quantize_static does the work: calibration method (MinMax, Entropy, Percentile), per-channel symmetric INT8
weights, nodes_to_exclude for layers kept in float, and a calibration cache so that the accuracy guard's
re-quantizations (nasdeploy.export.int8_guard) calibrate once. The activation type follows the CPU: uint8 on
x86, whose VNNI instructions multiply unsigned 8-bit activations by signed weights (onnxruntime's S8S8
convolutions ran 2x slower than U8S8 on the demo network here, measured), with reduce_range where the CPU has
no VNNI (vpmaddubsw's 16-bit sums saturate otherwise, onnxruntime's advice); int8 elsewhere.
"""

from __future__ import annotations

import collections
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from nasdeploy.errors import ConfigError
from nasdeploy.export.formats import INT8_ACTIVATIONS, INT8_CALIBRATIONS
from nasdeploy.export.int8_cpu import CpuInt8Support, cpu_int8_support

QUANTIZABLE_OPS = ("Conv", "Gemm", "MatMul")  # the layers the accuracy guard may keep in float
_METHOD_NAMES = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


@dataclass(frozen=True)
class OrtInt8Options:
    """onnxruntime static INT8 settings: calibration method, activation type (auto: from the CPU), per-channel weights."""

    calibration: str = "minmax"
    activations: str = "auto"  # "auto" | "uint8" | "int8"
    per_channel: bool = True

    def __post_init__(self) -> None:
        if self.calibration not in INT8_CALIBRATIONS:
            raise ConfigError(f"unknown calibration method {self.calibration!r}; choose from {', '.join(INT8_CALIBRATIONS)}")
        if self.activations not in INT8_ACTIVATIONS:
            raise ConfigError(f"unknown INT8 activation type {self.activations!r}; choose from {', '.join(INT8_ACTIVATIONS)}")

    def resolve(self, cpu: CpuInt8Support | None = None) -> tuple[str, bool]:
        """(activation type, reduce_range) on this CPU."""
        cpu = cpu or cpu_int8_support()
        activations = cpu.activation_type() if self.activations == "auto" else self.activations
        return activations, activations == "uint8" and cpu.x86 and not cpu.dot_product

    def scheme(self, cpu: CpuInt8Support | None = None) -> str:
        """What the quantized model is, in words."""
        activations, reduce_range = self.resolve(cpu)
        return (f"onnxruntime static QDQ, {'per-channel' if self.per_channel else 'per-tensor'} symmetric INT8 weights"
                f"{' (7-bit: reduce_range)' if reduce_range else ''}, {activations.upper()} activations, "
                f"{_METHOD_NAMES[self.calibration]} calibration")


def ort_static_int8(
    onnx_path: str | os.PathLike[str], out_path: str | os.PathLike[str], calibration: Sequence[np.ndarray], *,
    options: OrtInt8Options = OrtInt8Options(), nodes_to_exclude: Sequence[str] = (),
    cache: str | os.PathLike[str] | None = None,
) -> Path:
    """onnxruntime static INT8 (QDQ) of `onnx_path`, calibrated on `calibration` batches, written atomically.

    `cache`: a calibration cache file (written on the first call, read by later ones: same ranges, no new
    calibration run). `nodes_to_exclude`: node names left in float.
    """
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    from nasdeploy.export.onnx import onnx_io
    from nasdeploy.utils.files import atomic_path

    class Reader(CalibrationDataReader):
        """The calibration batches, one feed dict at a time."""

        def __init__(self, input_name: str):
            self._feeds = iter([{input_name: np.ascontiguousarray(b, dtype=np.float32)} for b in calibration])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    if not calibration:
        raise ConfigError("onnxruntime static quantization needs at least one calibration batch")
    activations, reduce_range = options.resolve()
    reader = Reader(onnx_io(onnx_path)["inputs"][0]["name"])
    with atomic_path(out_path) as tmp:
        quantize_static(
            str(onnx_path), str(tmp), reader, quant_format=QuantFormat.QDQ, per_channel=options.per_channel,
            reduce_range=reduce_range, activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8, nodes_to_exclude=list(nodes_to_exclude) or None,
            calibrate_method=getattr(CalibrationMethod, _METHOD_NAMES[options.calibration]),
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            calibration_cache_path=str(cache) if cache is not None else None,
        )
    return Path(out_path)


def weight_nodes(onnx_path: str | os.PathLike[str]) -> dict[str, str]:
    """Weight initializer name -> the Conv/Gemm/MatMul node that uses it (the exporter keeps '<module>.weight')."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    inits = {t.name for t in graph.initializer}
    return {node.input[1]: node.name for node in graph.node
            if node.op_type in QUANTIZABLE_OPS and len(node.input) > 1 and node.input[1] in inits}


@dataclass(frozen=True)
class OpShare:
    """One op type's part of a model's run time (onnxruntime's own profiler, after graph optimisation)."""

    op_type: str
    share: float  # of the summed kernel time
    nodes: int  # kernels of this type per run

    def text(self) -> str:
        """'QLinearConv 77% (99 nodes)'."""
        return f"{self.op_type} {self.share:.0%} ({self.nodes} nodes)"


def op_profile(path: str | os.PathLike[str], input_shape: tuple[int, ...], runs: int = 20,
               warmup: int = 5) -> list[OpShare]:
    """Op types by their share of the kernel time of `path` in onnxruntime's 1-thread CPU session.

    onnxruntime profiles from the session's start: the events of the first `warmup` runs are left out.
    """
    import onnxruntime as ort

    from nasdeploy.utils.ort import ort_session_options

    with tempfile.TemporaryDirectory(prefix="nasdeploy-ort-profile-") as tmp:
        opts = ort_session_options(ort, threads=1)
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal((1, *input_shape)).astype(np.float32)
        for _ in range(warmup + runs):
            session.run(None, {session.get_inputs()[0].name: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    after = starts[warmup] if len(starts) > warmup else 0
    time_us: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    for event in events:
        if (event.get("cat") == "Node" and str(event.get("name", "")).endswith("_kernel_time")
                and event.get("ts", 0) >= after):
            op = event["args"]["op_name"]
            time_us[op] += event["dur"]
            count[op] += 1
    total = sum(time_us.values())
    return [OpShare(op, us / total, count[op] // runs) for op, us in time_us.most_common()] if total else []
