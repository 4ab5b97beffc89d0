"""Export options: a small common part (input size, name, overwrite, seed, parity) and one dataclass per format.

Every dataclass validates itself on creation, so a bad value is one ConfigError before any work starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from nasdeploy.errors import ConfigError
from nasdeploy.export.formats import (
    DEFAULT_QAT_LR,
    INT8_ACTIVATIONS,
    INT8_CALIBRATIONS,
    check_int8_methods,
    check_qat,
)
from nasdeploy.export.onnx import check_opset
from nasdeploy.export.parity import DEFAULT_ATOL, DEFAULT_BATCH_SIZES, DEFAULT_RTOL
from nasdeploy.export.torch_reference import YARDSTICK
from nasdeploy.utils.limits import check_input_size

# Times exported files together, alternated: ({label: (latency backend, path)}, (C, H, W)) -> {label: LatencyResult
# dict}. The callers (CLI, pipeline) pass nasdeploy.profile.latency.ModelFileTimer; export never imports the profiler.
FileTimer = Callable[[Mapping[str, tuple[str, Path]], tuple[int, int, int]], dict[str, dict[str, Any]]]


@dataclass(frozen=True)
class ParityOptions:
    """How exported models are compared with PyTorch: random-input batch sizes and the elementwise tolerances."""

    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL
    yardstick: float = YARDSTICK  # atol_eff = max(atol, yardstick * float64 error); 0 = the plain atol

    def __post_init__(self) -> None:
        if not self.batch_sizes or any(not isinstance(b, int) or b < 1 for b in self.batch_sizes):
            raise ConfigError(f"parity batch sizes must be positive integers, got {self.batch_sizes!r}")
        if self.rtol < 0 or self.atol < 0 or self.yardstick < 0:
            raise ConfigError("parity tolerances and the float64 yardstick must be >= 0")


@dataclass(frozen=True)
class OnnxOptions:
    """The ONNX graph: opset, dynamic axes, onnxslim simplification, external data."""

    opset: int | None = None
    dynamic_batch: bool = True
    dynamic_spatial: bool = True
    simplify: bool = False
    external_data: bool | None = None  # None = only when the model is too large for one file

    def __post_init__(self) -> None:
        check_opset(self.opset)


@dataclass(frozen=True)
class TensorRTOptions:
    """The TensorRT engine: precision, the dynamic-batch profile, the builder workspace."""

    fp16: bool = False
    max_batch: int = 32
    opt_batch: int = 8
    workspace_mib: int = 1024

    def __post_init__(self) -> None:
        if not 1 <= self.opt_batch <= self.max_batch:
            raise ConfigError(f"need 1 <= opt_batch <= max_batch, got opt_batch={self.opt_batch}, max_batch={self.max_batch}")
        if self.workspace_mib < 1:
            raise ConfigError("workspace_mib must be >= 1")


@dataclass(frozen=True)
class TritonOptions:
    """The Triton model repository: the ONNX model's max_batch_size and instance group."""

    max_batch_size: int = 32
    instance_kind: str = "gpu"
    instance_count: int = 1

    def __post_init__(self) -> None:
        if self.instance_kind not in ("gpu", "cpu"):
            raise ConfigError(f"instance_kind must be 'gpu' or 'cpu', got {self.instance_kind!r}")
        if self.instance_count < 1 or self.max_batch_size < 1:
            raise ConfigError("Triton max_batch_size and instance_count must be >= 1")


@dataclass(frozen=True)
class Int8Options:
    """The INT8 methods (ort, executorch), onnxruntime's calibration, the accuracy guard, and what times the files.

    calibration: onnxruntime's method (minmax, entropy, percentile; PT2E uses XNNPACKQuantizer's histogram
    observers); activations: onnxruntime's activation type (auto: uint8 on x86, int8 elsewhere). max_drop: the
    accuracy guard's limit in points of the metric (None: no guard): beyond it, up to max_float_layers of the
    most sensitive layers are kept in float (nasdeploy.export.int8_guard). qat_epochs: when PT2E is still over
    max_drop after that, this many epochs of quantization-aware fine-tuning (0 = off) with Adam at qat_lr
    (nasdeploy.export.int8_qat). timer: None = not timed.
    """

    methods: tuple[str, ...] = ()
    timer: FileTimer | None = None
    calibration: str = "minmax"
    activations: str = "auto"
    max_drop: float | None = 1.0
    max_float_layers: int = 8
    qat_epochs: int = 0
    qat_lr: float = DEFAULT_QAT_LR

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", check_int8_methods(self.methods))
        if self.calibration not in INT8_CALIBRATIONS:
            raise ConfigError(f"unknown INT8 calibration {self.calibration!r}; choose from {', '.join(INT8_CALIBRATIONS)}")
        if self.activations not in INT8_ACTIVATIONS:
            raise ConfigError(f"unknown INT8 activation type {self.activations!r}; choose from {', '.join(INT8_ACTIVATIONS)}")
        if self.max_drop is not None and not self.max_drop >= 0:
            raise ConfigError(f"INT8 max_drop must be >= 0 points (or None for no guard), got {self.max_drop!r}")
        if not isinstance(self.max_float_layers, int) or self.max_float_layers < 1:
            raise ConfigError(f"INT8 max_float_layers must be a positive integer, got {self.max_float_layers!r}")
        check_qat(self.qat_epochs, self.qat_lr)


@dataclass(frozen=True)
class DartsRnnOptions:
    """The recurrent language model's ONNX graph: fixed window, batch, and the windows its parity check chains."""

    seq_len: int | None = None  # None: the model's default_cfg.seq_len
    batch_size: int = 1
    dynamic_batch: bool = False
    windows: int = 3

    def __post_init__(self) -> None:
        if (self.seq_len is not None and self.seq_len < 1) or self.batch_size < 1 or self.windows < 1:
            raise ConfigError(f"sequence length, batch size and parity windows must be positive, got "
                              f"{self.seq_len}, {self.batch_size} and {self.windows}")


@dataclass(frozen=True)
class ExportOptions:
    """Everything about an export except the model, its data and where it goes."""

    input_size: tuple[int, int] | None = None  # (H, W); None = the network's default
    name: str | None = None
    overwrite: bool = False
    seed: int = 0  # parity inputs; untrained weights and BN statistics; data samples (recorded in the reports)
    parity: ParityOptions = field(default_factory=ParityOptions)
    onnx: OnnxOptions = field(default_factory=OnnxOptions)
    tensorrt: TensorRTOptions = field(default_factory=TensorRTOptions)
    triton: TritonOptions = field(default_factory=TritonOptions)
    int8: Int8Options = field(default_factory=Int8Options)
    darts_rnn: DartsRnnOptions = field(default_factory=DartsRnnOptions)

    def __post_init__(self) -> None:
        if self.input_size is not None and (
            len(self.input_size) != 2 or not all(isinstance(s, int) and s >= 1 for s in self.input_size)
        ):
            raise ConfigError(f"input_size must be (height, width) of positive integers, got {self.input_size!r}")
        if self.input_size is not None:
            check_input_size("input_size", *self.input_size)
        if self.name is not None and not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", self.name):
            raise ConfigError(f"invalid model name {self.name!r}: use letters, digits, '_', '-' and '.'")
