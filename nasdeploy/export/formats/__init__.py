"""The export formats and INT8 methods: the one list of each, and the table of the steps that write them.

Torch-free, so that the CLI and the pipeline's config validation can check names without loading an
exporter. Each step is named as "module:function" and imported only when an export runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from nasdeploy.errors import ConfigError


@dataclass(frozen=True)
class FormatStep:
    """One step of an export: the function that writes its files and the artifacts it builds on."""

    name: str
    run: str  # "module:function" taking a nasdeploy.export.artifacts.StepContext
    needs: tuple[str, ...] = ()  # earlier steps whose artifact this one reads
    is_format: bool = True  # asked for with --format (the int8 step is asked for with --int8 METHOD)


# In the order an export runs them: a step comes after every step it needs.
STEPS: dict[str, FormatStep] = {
    "onnx": FormatStep("onnx", "nasdeploy.export.formats.onnx:write_onnx"),
    "executorch": FormatStep("executorch", "nasdeploy.export.formats.executorch:write_executorch"),
    "int8": FormatStep("int8", "nasdeploy.export.formats.int8:write_int8", is_format=False),
    "tensorrt": FormatStep("tensorrt", "nasdeploy.export.formats.tensorrt:write_tensorrt", needs=("onnx",)),
    "triton": FormatStep("triton", "nasdeploy.export.formats.triton:write_triton", needs=("onnx",)),
}
FORMATS: tuple[str, ...] = tuple(name for name, step in STEPS.items() if step.is_format)  # what --format may name
# INT8 method -> the float artifact it quantizes: onnxruntime static QDQ of model.onnx; PT2E XNNPACKQuantizer
# scored against the float model.pte.
INT8_FLOAT_FORMAT: dict[str, str] = {"ort": "onnx", "executorch": "executorch"}
INT8_METHODS: tuple[str, ...] = tuple(INT8_FLOAT_FORMAT)
# onnxruntime's calibration methods (CalibrationMethod MinMax, Entropy, Percentile) and activation types
# (auto: uint8 on x86, int8 elsewhere; see nasdeploy.export.ort_int8).
INT8_CALIBRATIONS: tuple[str, ...] = ("minmax", "entropy", "percentile")
INT8_ACTIVATIONS: tuple[str, ...] = ("auto", "uint8", "int8")
# PT2E quantization-aware fine-tuning (nasdeploy.export.int8_qat): "a few epochs" on a calibration-sized
# training sample; more is a training run. Adam's lr: a fraction of an INT8 weight step per update.
MAX_QAT_EPOCHS = 50
DEFAULT_QAT_LR = 1e-4


def check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    """The formats without repeats, or a ConfigError naming the unknown ones."""
    unique = tuple(dict.fromkeys(formats))
    unknown = [f for f in unique if f not in FORMATS]
    if not unique or unknown:
        raise ConfigError(f"unknown export format(s) {unknown or '(none)'}; choose from: {', '.join(FORMATS)}")
    return unique


def check_int8_methods(methods: Sequence[str]) -> tuple[str, ...]:
    """The INT8 methods without repeats, or a ConfigError naming the unknown ones."""
    unknown = [m for m in methods if m not in INT8_METHODS]
    if unknown:
        raise ConfigError(f"unknown INT8 method(s) {unknown}; choose from: {', '.join(INT8_METHODS)}")
    return tuple(dict.fromkeys(methods))


def planned_steps(formats: Sequence[str], int8: Sequence[str] = ()) -> tuple[str, ...]:
    """The steps an export of `formats` with INT8 methods `int8` runs, in order (what they need included)."""
    wanted = set(formats) | {INT8_FLOAT_FORMAT[m] for m in int8} | ({"int8"} if int8 else set())
    for name in list(wanted):
        wanted.update(STEPS[name].needs)
    return tuple(name for name in STEPS if name in wanted)


def needs_onnx(formats: Sequence[str], int8: Sequence[str] = ()) -> bool:
    """Whether an export of `formats` with INT8 methods `int8` has to write the ONNX model."""
    return "onnx" in planned_steps(formats, int8)


def check_qat(epochs: object, lr: object, where: str = "INT8 ") -> None:
    """One ConfigError line unless 0 <= epochs <= MAX_QAT_EPOCHS (an int) and 0 < lr <= 1."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or not 0 <= epochs <= MAX_QAT_EPOCHS:
        raise ConfigError(f"{where}qat_epochs must be a whole number from 0 (off) to {MAX_QAT_EPOCHS}, got {epochs!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr <= 1:
        raise ConfigError(f"{where}qat_lr must be a learning rate in (0, 1], got {lr!r}")
