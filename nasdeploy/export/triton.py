"""NVIDIA Triton Inference Server model repositories: config.pbtxt text and the version folder layout."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from nasdeploy.errors import ConfigError
from nasdeploy.export.onnx import onnx_files, onnx_io
from nasdeploy.utils.files import write_text_atomic

ONNX_PLATFORM = "onnxruntime_onnx"
TENSORRT_PLATFORM = "tensorrt_plan"
INSTANCE_KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
_ONNX_TO_TRITON = {
    "FLOAT": "TYPE_FP32", "FLOAT16": "TYPE_FP16", "DOUBLE": "TYPE_FP64", "BFLOAT16": "TYPE_BF16",
    "INT8": "TYPE_INT8", "INT16": "TYPE_INT16", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64",
    "UINT8": "TYPE_UINT8", "BOOL": "TYPE_BOOL",
}  # fmt: skip
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class TritonTensor:
    """One input or output: name, Triton data type, dims (without the batch dim when batching; -1 = any)."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class TritonModelConfig:
    """The fields of a config.pbtxt that nasdeploy writes."""

    name: str
    platform: str
    max_batch_size: int
    inputs: tuple[TritonTensor, ...]
    outputs: tuple[TritonTensor, ...]
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 100
    instance_kind: str = "KIND_GPU"
    instance_count: int = 1

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(f"invalid Triton model name {self.name!r}: use letters, digits, '_', '-' and '.'")
        if self.platform not in (ONNX_PLATFORM, TENSORRT_PLATFORM):
            raise ConfigError(f"unsupported Triton platform {self.platform!r}")
        if self.max_batch_size < 0 or self.instance_count < 1:
            raise ConfigError("max_batch_size must be >= 0 and instance_count >= 1")
        if any(b < 1 or b > max(self.max_batch_size, 1) for b in self.preferred_batch_sizes):
            raise ConfigError(f"preferred batch sizes {list(self.preferred_batch_sizes)} must lie in 1..{self.max_batch_size}")
        if self.instance_kind not in INSTANCE_KINDS.values():
            raise ConfigError(f"instance kind must be one of {', '.join(INSTANCE_KINDS.values())}, got {self.instance_kind!r}")


def _tensor_block(t: TritonTensor) -> str:
    dims = ", ".join(str(d) for d in t.dims)
    return f'  {{\n    name: "{t.name}"\n    data_type: {t.data_type}\n    dims: [ {dims} ]\n  }}'


def config_pbtxt(cfg: TritonModelConfig) -> str:
    """The config.pbtxt text (protobuf text format of Triton's ModelConfig)."""
    lines = [f'name: "{cfg.name}"', f'platform: "{cfg.platform}"', f"max_batch_size: {cfg.max_batch_size}"]
    lines.append("input [\n" + ",\n".join(_tensor_block(t) for t in cfg.inputs) + "\n]")
    lines.append("output [\n" + ",\n".join(_tensor_block(t) for t in cfg.outputs) + "\n]")
    if cfg.max_batch_size > 0:
        block = ["dynamic_batching {"]
        if cfg.preferred_batch_sizes:
            block.append(f"  preferred_batch_size: [ {', '.join(str(b) for b in cfg.preferred_batch_sizes)} ]")
        block.append(f"  max_queue_delay_microseconds: {cfg.max_queue_delay_us}")
        block.append("}")
        lines.append("\n".join(block))
    lines.append(f"instance_group [\n  {{\n    count: {cfg.instance_count}\n    kind: {cfg.instance_kind}\n  }}\n]")
    return "\n".join(lines) + "\n"


def default_preferred_batch_sizes(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two from 4 up to max_batch_size (what dynamic batching should aim for)."""
    sizes, b = [], 4
    while b <= max_batch_size:
        sizes.append(b)
        b *= 2
    return tuple(sizes) or ((max_batch_size,) if max_batch_size > 0 else ())


def _tensors(specs: Sequence[dict], batched: bool) -> tuple[TritonTensor, ...]:
    out = []
    for spec in specs:
        if spec["dtype"] not in _ONNX_TO_TRITON:
            raise ConfigError(f"tensor '{spec['name']}' has type {spec['dtype']}, which Triton configs here do not map")
        dims = [d if isinstance(d, int) and d > 0 else -1 for d in spec["dims"]]
        out.append(TritonTensor(spec["name"], _ONNX_TO_TRITON[spec["dtype"]], tuple(dims[1:] if batched else dims)))
    return tuple(out)


def onnx_model_config(
    onnx_path: str | os.PathLike[str],
    name: str,
    *,
    max_batch_size: int = 32,
    instance_kind: str = "gpu",
    instance_count: int = 1,
    max_queue_delay_us: int = 100,
) -> TritonModelConfig:
    """A Triton config for an ONNX model; a dynamic first axis means batching up to max_batch_size."""
    io = onnx_io(onnx_path)
    batched = all(isinstance(s["dims"][0], str) for s in io["inputs"] + io["outputs"] if s["dims"])
    mbs = max_batch_size if batched else 0
    return TritonModelConfig(
        name=name, platform=ONNX_PLATFORM, max_batch_size=mbs,
        inputs=_tensors(io["inputs"], batched), outputs=_tensors(io["outputs"], batched),
        preferred_batch_sizes=default_preferred_batch_sizes(mbs), max_queue_delay_us=max_queue_delay_us,
        instance_kind=INSTANCE_KINDS.get(instance_kind, instance_kind), instance_count=instance_count,
    )


def tensorrt_model_config(
    onnx_path: str | os.PathLike[str],
    name: str,
    *,
    input_hw: tuple[int, int],
    max_batch_size: int,
    instance_count: int = 1,
    max_queue_delay_us: int = 100,
) -> TritonModelConfig:
    """A Triton config for a TensorRT plan built from `onnx_path` with a fixed H, W and dynamic batch."""
    io = onnx_io(onnx_path)
    batched = max_batch_size > 0  # 0: a batch-1 engine whose dims include the batch axis
    inputs = []
    for t in _tensors(io["inputs"], batched=batched):
        dims = t.dims if batched else t.dims[1:]
        dims = (dims[0], *input_hw) if len(dims) == 3 else dims
        inputs.append(TritonTensor(t.name, t.data_type, tuple(dims) if batched else (1, *dims)))
    outputs = tuple(
        TritonTensor(t.name, t.data_type, t.dims if batched else (1, *t.dims[1:])) for t in _tensors(io["outputs"], batched)
    )
    return TritonModelConfig(
        name=name, platform=TENSORRT_PLATFORM, max_batch_size=max_batch_size, inputs=tuple(inputs),
        outputs=outputs, preferred_batch_sizes=default_preferred_batch_sizes(max_batch_size),
        max_queue_delay_us=max_queue_delay_us, instance_kind="KIND_GPU", instance_count=instance_count,
    )


def write_triton_model(
    repository: str | os.PathLike[str], cfg: TritonModelConfig, model_file: str | os.PathLike[str], version: int = 1
) -> Path:
    """Write <repository>/<name>/config.pbtxt and <version>/model.onnx|model.plan; returns the model folder.

    An ONNX model with external data files goes in the folder form <version>/model.onnx/ (model + data).
    """
    model_file = Path(model_file)
    folder = Path(repository) / cfg.name
    if cfg.platform == ONNX_PLATFORM and model_file.name != "model.onnx" and len(onnx_files(model_file)) > 1:
        raise ConfigError(f"an ONNX model with external data must be named model.onnx, got {model_file.name}")
    if folder.exists():
        raise ConfigError(f"Triton model folder already exists: {folder}")
    version_dir = folder / str(version)
    version_dir.mkdir(parents=True)
    if cfg.platform == ONNX_PLATFORM:
        files = onnx_files(model_file)
        if len(files) == 1:
            shutil.copy2(files[0], version_dir / "model.onnx")
        else:
            # The data file's name is recorded inside the model, so the model keeps its own name in the folder.
            (version_dir / "model.onnx").mkdir()
            for f in files:
                shutil.copy2(f, version_dir / "model.onnx" / f.name)
    else:
        shutil.copy2(model_file, version_dir / "model.plan")
    write_text_atomic(folder / "config.pbtxt", config_pbtxt(cfg))
    return folder
