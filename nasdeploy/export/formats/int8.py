"""The INT8 step of an export: each asked-for method quantizes its float artifact and scores it against float."""

from __future__ import annotations

from dataclasses import dataclass

from nasdeploy.errors import ConfigError
from nasdeploy.export import quantize
from nasdeploy.export.artifacts import StepContext
from nasdeploy.export.executorch import write_pte_metadata
from nasdeploy.export.formats import INT8_FLOAT_FORMAT, INT8_METHODS
from nasdeploy.export.formats.executorch import pte_metadata
from nasdeploy.utils.files import write_json_atomic
from nasdeploy.utils.runtime import runtime_settings

NO_DATA = "INT8 needs calibration and validation images: give a dataset (--data-dir, or --dataset demo)"


@dataclass(frozen=True)
class _Method:
    """How one INT8 method runs: its quantizer, its output file and how the export names that file."""

    quantizer: quantize.Quantizer
    file: str
    role: str
    what: str
    program: bool = False  # an ExecuTorch program: gets its .pte.json metadata beside it


_METHODS = {
    "ort": _Method(quantize.quantize_with_ort, "model_int8.onnx", "onnx_int8",
                   "INT8 with onnxruntime static quantization (QDQ, per-channel, accuracy and speed guards)"),
    "executorch": _Method(quantize.quantize_with_executorch, "model_int8.pte", "executorch_int8",
                          "INT8 with PT2E (XNNPACKQuantizer) -> .pte", program=True),
}


def write_int8(ctx: StepContext) -> None:
    """model_int8.onnx / model_int8.pte (+ .pte.json) and quantization.json, from the float artifacts in ctx."""
    data = ctx.data
    if data is None or data.validation is None or data.calibration is None:
        raise ConfigError(NO_DATA)
    for name in (m for m in INT8_METHODS if m in ctx.options.int8.methods):
        method, float_path = _METHODS[name], ctx.artifacts[INT8_FLOAT_FORMAT[name]]
        assert float_path is not None
        ctx.say(f"{method.what}, calibrated on {data.calibration.label}")
        # The guard runs the PyTorch model many times: one thread per usable physical core (threads: auto, a
        # function of the machine; torch's default counts hyper-threads, whose OpenMP threads spin-wait).
        with runtime_settings(threads="auto"):
            res = ctx.timed(f"int8_{name}", lambda: method.quantizer(
                ctx.model, float_path, ctx.stage / method.file, data.calibration, data.validation,
                input_shape=ctx.input_shape, options=ctx.options.int8, say=ctx.say,
            ))
        ctx.result.quantization[name] = res
        if res.status == "ok":
            ctx.result.files[method.role] = res.file
            if method.program:
                meta = pte_metadata(ctx, {"scheme": res.scheme, "calibration": res.calibration,
                                          "kept_in_float": list(res.kept_in_float),
                                          "qat": res.qat.to_dict() if res.qat is not None and res.qat.kept == "qat" else None})
                ctx.result.files[f"{method.role}_metadata"] = write_pte_metadata(ctx.stage / res.file, meta).name
        ctx.say(res.summary())
    write_json_atomic(ctx.stage / "quantization.json", {k: v.to_dict() for k, v in ctx.result.quantization.items()})
    ctx.result.files["quantization_report"] = "quantization.json"
