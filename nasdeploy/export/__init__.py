"""Export: ONNX with onnxruntime parity, ExecuTorch programs, INT8, TensorRT engines, Triton model repositories (one call each)."""

from nasdeploy.export.api import ExportOptions, ExportResult, build_export_model, export_model, export_target, needs_onnx, quantize_model
from nasdeploy.export.onnx import export_onnx, onnx_io, read_onnx_metadata
from nasdeploy.export.parity import OutputShapeError, ParityError, ParityReport, ToleranceError, check_onnx_parity

__all__ = [
    "ExportOptions",
    "ExportResult",
    "OutputShapeError",
    "ParityError",
    "ParityReport",
    "ToleranceError",
    "build_export_model",
    "check_onnx_parity",
    "export_model",
    "export_onnx",
    "export_target",
    "needs_onnx",
    "onnx_io",
    "quantize_model",
    "read_onnx_metadata",
]
