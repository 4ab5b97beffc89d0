"""The export: and profile: sections of a pipeline file (each space's table entry names the pair it uses)."""

from __future__ import annotations

from dataclasses import dataclass

from nasdeploy.errors import ConfigError
from nasdeploy.export.formats import DEFAULT_QAT_LR, FORMATS, INT8_METHODS, check_qat


@dataclass(frozen=True)
class ExportSection:
    """What the deployment stages produce for an image network.

    export: ONNX always, TensorRT and Triton when asked; executorch: the .pte when formats or int8 name
    executorch; quantize: the int8 paths. A stage the section does not ask for is skipped with one line.
    """

    formats: tuple[str, ...] = ("onnx",)  # onnx, executorch, tensorrt, triton
    opset: int | None = None
    fp16: bool = False
    int8: tuple[str, ...] = ()  # INT8 paths: ort (onnxruntime static QDQ) and/or executorch (PT2E for XNNPACK)
    calibration_images: int = 128  # INT8 calibration images from the run's training split
    validation_images: int = 500  # float vs INT8 accuracy on the run's validation split
    qat_epochs: int = 0  # int8 executorch still over the accuracy guard's limit: PT2E QAT epochs (0: off)

    def __post_init__(self) -> None:
        bad = [f for f in self.formats if f not in FORMATS] + [m for m in self.int8 if m not in INT8_METHODS]
        if bad:
            raise ConfigError(f"pipeline config: unknown export format / int8 method(s) {bad}; formats: "
                              f"{', '.join(FORMATS)}; int8: {', '.join(INT8_METHODS)}")
        if min(self.calibration_images, self.validation_images) < 1:
            raise ConfigError("pipeline config: export.calibration_images and export.validation_images must be positive")
        check_qat(self.qat_epochs, DEFAULT_QAT_LR, where="pipeline config: export.")
        if self.qat_epochs and "executorch" not in self.int8:
            raise ConfigError("pipeline config: export.qat_epochs fine-tunes the PT2E model: list executorch in export.int8")


@dataclass(frozen=True)
class ProfileSection:
    """What the profile stage measures for an image network: the found architecture next to registry genotypes."""

    net: str = "imagenet"  # the mobile setting: ImageNet 224x224
    channels: int | None = None
    layers: int | None = None
    compare: tuple[str, ...] = ("DARTS_V2", "DARTS_V1", "NASNet", "AmoebaNet", "PNAS")
    backends: tuple[str, ...] = ("torch-cpu-1t", "ort-cpu-1t")  # the latency columns (e.g. + executorch-fp32)
    latency_for: tuple[str, ...] = ("found", "DARTS_V2")  # which rows get latency ("found" = ours)
    # The found architecture's INT8 row (DARTS CNN table): ort (under ort-cpu-1t) and/or executorch (under executorch-fp32)
    int8: tuple[str, ...] = ()
    warmup: int = 3
    runs: int = 20
    input_size: tuple[int, int] | None = None  # (H, W) for MACs and latency; None: the family's (segmentation: the crop)
    macs_at: tuple[tuple[int, int], ...] = ()  # further (H, W) sizes counted for MACs only (e.g. 1024x2048)

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.runs < 1:
            raise ConfigError("pipeline config: profile.warmup must be >= 0 and profile.runs >= 1")
        object.__setattr__(self, "backends", _latency_backends(self.backends))
        object.__setattr__(self, "int8", _int8_methods(self.int8))
        sizes = self.macs_at + ((self.input_size,) if self.input_size is not None else ())
        for size in sizes:
            if not (isinstance(size, tuple) and len(size) == 2 and all(isinstance(d, int) and d > 0 for d in size)):
                raise ConfigError(f"pipeline config: profile.input_size/macs_at must hold [height, width] pairs of "
                                  f"positive integers, got {size!r}")


def _names(value: object, key: str) -> tuple[str, ...]:
    """A list of names from the YAML (a tuple by then), or a ConfigError."""
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"pipeline config: profile.{key} must be a list of names, got {value!r}")
    return tuple(value)


def _latency_backends(value: object) -> tuple[str, ...]:
    """profile.backends as backend names (groups expanded); an unknown name is a ConfigError naming it."""
    from nasdeploy.profile.latency import parse_backends

    names = _names(value, "backends")
    try:
        return parse_backends(names)
    except ConfigError as exc:
        raise ConfigError(f"pipeline config: profile.backends: {exc}") from None


def _int8_methods(value: object) -> tuple[str, ...]:
    """profile.int8 as INT8 method names (ort, executorch), without repeats."""
    methods = _names(value, "int8")
    for method in methods:
        if method not in INT8_METHODS:
            raise ConfigError(f"pipeline config: unknown profile.int8 method '{method}' "
                              f"(choose from {', '.join(INT8_METHODS)})")
    return tuple(dict.fromkeys(methods))


@dataclass(frozen=True)
class DartsRnnExportSection:
    """ONNX export of the darts_rnn language model: the fixed sequence length and batch size, and the parity tolerance."""

    seq_len: int = 35
    batch_size: int = 1
    dynamic_batch: bool = False
    opset: int | None = None
    rtol: float = 1e-3
    atol: float = 1e-5
    windows: int = 3

    def __post_init__(self) -> None:
        if self.seq_len < 1 or self.batch_size < 1 or self.windows < 1:
            raise ConfigError("pipeline config: export.seq_len, export.batch_size and export.windows must be positive")


@dataclass(frozen=True)
class DartsRnnProfileSection:
    """Profiling the darts_rnn language model: window, batch, timing runs and CPU threads."""

    seq_len: int = 35
    batch_size: int = 1
    warmup: int = 3
    runs: int = 20
    threads: int = 1

    def __post_init__(self) -> None:
        if min(self.seq_len, self.batch_size, self.runs, self.threads) < 1 or self.warmup < 0:
            raise ConfigError("pipeline config: profile.seq_len, batch_size, runs and threads must be positive, "
                              "warmup not negative")
