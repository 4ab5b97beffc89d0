"""TensorRT engines from ONNX (TensorRT 10 and 11 Python API), their parity, and the trtexec equivalent.

TensorRT is an optional dependency imported lazily. TensorRT 10 builds FP16 with BuilderFlag.FP16;
TensorRT 11 networks are always strongly typed (BuilderFlag.FP16 was removed), so FP16 there means
building from an ONNX model converted to float16 (nasdeploy.export.fp16).
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

import numpy as np
from torch import nn

from nasdeploy.errors import ConfigError, ExportError
from nasdeploy.export.fp16 import convert_onnx_to_fp16
from nasdeploy.export.parity import Runner, ParityReport, compare_with_torch, parity_shapes
from nasdeploy.utils.files import write_bytes_atomic, write_text_atomic
from nasdeploy.utils.optional import require

DEFAULT_WORKSPACE_MIB = 1024
# FP32 engines are built without TF32 so that their parity check can be as strict as onnxruntime's.
FP32_TOLERANCES = (1e-3, 1e-4)
FP16_TOLERANCES = (1e-2, 1e-2)


def import_tensorrt() -> ModuleType:
    """Import tensorrt or raise MissingDependencyError (one line, with how to install it)."""
    return require("tensorrt", extra="tensorrt", purpose="building TensorRT engines")


def tensorrt_major(trt: Any) -> int:
    """The major version of a tensorrt module (10, 11, ...)."""
    version = str(getattr(trt, "__version__", ""))
    try:
        return int(version.split(".")[0])
    except ValueError:
        raise ExportError(f"cannot read the TensorRT version from {version!r}") from None


@dataclass(frozen=True)
class PrecisionPlan:
    """How a requested precision maps onto one TensorRT API version."""

    major: int
    strongly_typed: bool
    set_fp16_flag: bool
    convert_onnx_to_fp16: bool
    clear_tf32_flag: bool


def precision_plan(trt: Any, fp16: bool) -> PrecisionPlan:
    """TensorRT 10: FP16 builder flag; TensorRT 11 (strongly typed, no BuilderFlag.FP16): an FP16 ONNX model."""
    major = tensorrt_major(trt)
    has_fp16_flag = hasattr(trt.BuilderFlag, "FP16")
    strongly_typed = major >= 11 or not has_fp16_flag
    has_tf32_flag = hasattr(trt.BuilderFlag, "TF32")
    return PrecisionPlan(
        major=major,
        strongly_typed=strongly_typed,
        set_fp16_flag=fp16 and not strongly_typed,
        convert_onnx_to_fp16=fp16 and strongly_typed,
        clear_tf32_flag=not fp16 and has_tf32_flag,
    )


@dataclass(frozen=True)
class EngineProfile:
    """A dynamic-batch optimization profile for one image input of fixed C, H, W."""

    input_name: str
    channels: int
    height: int
    width: int
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ConfigError(
                f"TensorRT profile needs 1 <= min <= opt <= max batch, got {self.min_batch}/{self.opt_batch}/{self.max_batch}"
            )

    def shape(self, batch: int) -> tuple[int, int, int, int]:
        """The input shape at `batch`."""
        return (batch, self.channels, self.height, self.width)


@dataclass(frozen=True)
class EngineBuild:
    """What build_engine produced."""

    plan_path: Path
    onnx_path: Path
    timing_cache: Path | None
    tensorrt_version: str
    precision: str
    plan: PrecisionPlan


def _parser_errors(parser: Any) -> str:
    errors = [str(parser.get_error(i)).strip() for i in range(parser.num_errors)]
    return errors[0].splitlines()[0] if errors and errors[0] else "unknown parser error"


def build_engine(
    onnx_path: str | os.PathLike[str],
    plan_path: str | os.PathLike[str],
    profile: EngineProfile,
    *,
    fp16: bool = False,
    workspace_mib: int = DEFAULT_WORKSPACE_MIB,
    timing_cache: str | os.PathLike[str] | None = None,
    trt: Any = None,
) -> EngineBuild:
    """Build and write a serialized engine (.plan) from an ONNX model with a dynamic-batch profile.

    The timing cache is read if it exists and written back after the build (same TensorRT version only).
    """
    trt = trt if trt is not None else import_tensorrt()
    plan = precision_plan(trt, fp16)
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    source = onnx_path
    if plan.convert_onnx_to_fp16:
        source = convert_onnx_to_fp16(onnx_path, plan_path.with_name(f"{plan_path.stem}_fp16.onnx"))

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in 10.x; 11.x is strongly typed
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        raise ExportError(f"TensorRT cannot parse {source}: {_parser_errors(parser)}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) * (1 << 20))
    if plan.set_fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    if plan.clear_tf32_flag:
        config.clear_flag(trt.BuilderFlag.TF32)
    cache_path = Path(timing_cache) if timing_cache is not None else None
    cache_bytes = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)

    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(
        profile.input_name, profile.shape(profile.min_batch), profile.shape(profile.opt_batch), profile.shape(profile.max_batch)
    )
    config.add_optimization_profile(opt_profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {source} (see the TensorRT log above)")
    write_bytes_atomic(plan_path, bytes(serialized))
    if cache_path is not None:
        write_bytes_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
    return EngineBuild(plan_path, source, cache_path, str(trt.__version__), "fp16" if fp16 else "fp32", plan)


def tensorrt_runner(plan_path: str | os.PathLike[str], trt: Any = None) -> tuple[Runner, list[str], str]:
    """A function running a serialized engine on the GPU (CUDA tensors from torch), its output names, a label."""
    import torch

    trt = trt if trt is not None else import_tensorrt()
    if not torch.cuda.is_available():
        raise ExportError("running a TensorRT engine needs a CUDA device; none is available")
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
    if engine is None:
        raise ExportError(f"TensorRT cannot deserialize {plan_path} (built by another TensorRT version or GPU?)")
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if n not in inputs]
    if len(inputs) != 1:
        raise ExportError(f"expected an engine with one input, {plan_path} has {len(inputs)}")
    dtypes = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT64: torch.int64,
        trt.DataType.BOOL: torch.bool,
    }

    def run(x: np.ndarray) -> list[np.ndarray]:
        stream = torch.cuda.current_stream()
        x_dev = torch.from_numpy(x).to("cuda", dtype=dtypes[engine.get_tensor_dtype(inputs[0])]).contiguous()
        context.set_input_shape(inputs[0], tuple(x.shape))
        context.set_tensor_address(inputs[0], x_dev.data_ptr())
        results = []
        for name in outputs:
            shape = tuple(context.get_tensor_shape(name))
            out = torch.empty(shape, dtype=dtypes[engine.get_tensor_dtype(name)], device="cuda")
            context.set_tensor_address(name, out.data_ptr())
            results.append(out)
        if not context.execute_async_v3(stream.cuda_stream):
            raise ExportError(f"TensorRT execution failed for input shape {x.shape}")
        stream.synchronize()
        return [r.float().cpu().numpy() for r in results]

    return run, outputs, f"TensorRT {trt.__version__}"


def check_tensorrt_parity(
    model: nn.Module,
    plan_path: str | os.PathLike[str],
    profile: EngineProfile,
    *,
    fp16: bool = False,
    batch_sizes: Sequence[int] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    seed: int = 0,
    trt: Any = None,
    raise_on_failure: bool = True,
) -> ParityReport:
    """Run the engine and `model` on the same random inputs at batch sizes inside the profile."""
    default_rtol, default_atol = FP16_TOLERANCES if fp16 else FP32_TOLERANCES
    batches = batch_sizes or sorted({profile.min_batch, profile.opt_batch, profile.max_batch})
    outside = [b for b in batches if not profile.min_batch <= b <= profile.max_batch]
    if outside:
        raise ConfigError(f"batch sizes {outside} are outside the engine profile {profile.min_batch}..{profile.max_batch}")
    run, names, label = tensorrt_runner(plan_path, trt)
    notes = [f"spatial size fixed at {profile.height}x{profile.width} by the optimization profile"]
    report = compare_with_torch(
        model, run, parity_shapes(profile.channels, [(profile.height, profile.width)], batches),
        runtime=f"{label} {'fp16' if fp16 else 'fp32'}", model_path=str(plan_path), output_names=names,
        rtol=default_rtol if rtol is None else rtol, atol=default_atol if atol is None else atol, seed=seed, notes=notes,
    )
    if raise_on_failure:
        report.raise_for_failure()
    return report


def _shape_arg(name: str, shape: Sequence[int]) -> str:
    return f"{name}:{'x'.join(str(s) for s in shape)}"


def trtexec_command(
    onnx_file: str,
    plan_file: str,
    profile: EngineProfile,
    *,
    major: int,
    fp16: bool = False,
    workspace_mib: int = DEFAULT_WORKSPACE_MIB,
    timing_cache_file: str | None = "timing.cache",
) -> list[str]:
    """The trtexec argv equivalent to build_engine for TensorRT `major` (10: --fp16/--noTF32; 11: strongly typed).

    For TensorRT 11 with fp16, `onnx_file` must be the float16 ONNX model (trtexec 11 has no --fp16).
    """
    argv = [
        "trtexec",
        f"--onnx={onnx_file}",
        f"--saveEngine={plan_file}",
        f"--minShapes={_shape_arg(profile.input_name, profile.shape(profile.min_batch))}",
        f"--optShapes={_shape_arg(profile.input_name, profile.shape(profile.opt_batch))}",
        f"--maxShapes={_shape_arg(profile.input_name, profile.shape(profile.max_batch))}",
        f"--memPoolSize=workspace:{int(workspace_mib)}M",
    ]
    if timing_cache_file:
        argv.append(f"--timingCacheFile={timing_cache_file}")
    if major < 11:
        argv.append("--fp16" if fp16 else "--noTF32")
    return argv


def write_trtexec_script(
    path: str | os.PathLike[str],
    onnx_file: str,
    profile: EngineProfile,
    *,
    fp16: bool = False,
    fp16_onnx_file: str | None = None,
    plan_file: str = "model.plan",
    workspace_mib: int = DEFAULT_WORKSPACE_MIB,
) -> Path:
    """Write a shell script with the trtexec command lines (TensorRT 10 and 11) that build the engine."""
    if fp16 and not fp16_onnx_file:
        raise ConfigError("an fp16 trtexec script for TensorRT 11 needs the float16 ONNX model file")
    line10 = shlex.join(trtexec_command(onnx_file, plan_file, profile, major=10, fp16=fp16, workspace_mib=workspace_mib))
    line11 = shlex.join(
        trtexec_command(fp16_onnx_file if fp16 else onnx_file, plan_file, profile, major=11, fp16=fp16, workspace_mib=workspace_mib)
    )
    text = "\n".join([
        "#!/bin/sh",
        "# Build the TensorRT engine nasdeploy would have built (TensorRT was not importable at export time).",
        "# Run from this folder on the GPU that will serve the engine (plans are specific to GPU and TensorRT version).",
        'set -e',
        'cd "$(dirname "$0")"',
        "# trtexec prints its version as vMMmmpp (10.3.0 -> v100300); set TRT_MAJOR=10 or 11 to override.",
        'if [ -z "${TRT_MAJOR:-}" ]; then',
        "  v=$(trtexec --version 2>/dev/null | grep -o 'TensorRT v[0-9]*' | head -n 1 | tr -dc 0-9)",
        '  TRT_MAJOR=$(( ${v:-100000} / 10000 ))',
        'fi',
        'if [ "$TRT_MAJOR" -ge 11 ]; then',
        f"  # TensorRT 11: networks are strongly typed{' and FP16 comes from the float16 ONNX model' if fp16 else ''}.",
        f"  {line11}",
        "else",
        f"  # TensorRT 10: {'FP16 via the builder flag' if fp16 else 'FP32 without TF32, as the parity check expects'}.",
        f"  {line10}",
        "fi",
        "",
    ])
    out = write_text_atomic(path, text)
    out.chmod(0o755)
    return out
