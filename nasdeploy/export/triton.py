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
from nasdeploy.export.staging import staged_folder
from nasdeploy.utils.files import write_text_atomic
from nasdeploy.utils.ownership import claim_folder

# The repository folder inside an export directory: only model folders in it, and nasdeploy's mark (a file; Triton
# loads every subfolder as a model and ignores files).
REPOSITORY = "triton"
README = "TRITON_README.md"  # one level up: Triton's repository root must hold only model folders

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
    label_filename: str | None = None  # outputs only: a labels file in the model folder (classification extension)


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
    warmup_dims: tuple[tuple[int, ...], ...] = ()  # per input, concrete dims of a one-sample warm-up request

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(f"invalid Triton model name {self.name!r}: use letters, digits, '_', '-' and '.'")
        if self.platform not in (ONNX_PLATFORM, TENSORRT_PLATFORM):
            raise ConfigError(f"unsupported Triton platform {self.platform!r}")
        if self.max_batch_size < 0 or self.instance_count < 1:
            raise ConfigError("max_batch_size must be >= 0 and instance_count >= 1")
        if any(b < 1 or b > max(self.max_batch_size, 1) for b in self.preferred_batch_sizes):
            raise ConfigError(f"preferred batch sizes {list(self.preferred_batch_sizes)} must lie in 1..{self.max_batch_size}")
        if self.warmup_dims and (len(self.warmup_dims) != len(self.inputs) or any(d < 1 for w in self.warmup_dims for d in w)):
            raise ConfigError("warmup_dims must give positive dims for every input")
        if self.instance_kind not in INSTANCE_KINDS.values():
            raise ConfigError(f"instance kind must be one of {', '.join(INSTANCE_KINDS.values())}, got {self.instance_kind!r}")


def _tensor_block(t: TritonTensor) -> str:
    dims = ", ".join(str(d) for d in t.dims)
    label = f'\n    label_filename: "{t.label_filename}"' if t.label_filename else ""
    return f'  {{\n    name: "{t.name}"\n    data_type: {t.data_type}\n    dims: [ {dims} ]{label}\n  }}'


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
    if cfg.warmup_dims:
        entries = []
        for t, dims in zip(cfg.inputs, cfg.warmup_dims):
            d = ", ".join(str(v) for v in dims)
            entries.append(f'    inputs {{\n      key: "{t.name}"\n      value: {{\n        data_type: {t.data_type}\n'
                           f'        dims: [ {d} ]\n        random_data: true\n      }}\n    }}')
        lines.append('model_warmup [\n  {\n    name: "random_sample"\n    batch_size: 1\n' + "\n".join(entries) + "\n  }\n]")
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
    warmup_hw: tuple[int, int] | None = None,
    labels_file: str | None = None,
) -> TritonModelConfig:
    """A Triton config for an ONNX model; a dynamic first axis means batching up to max_batch_size.

    No preferred_batch_size: Triton's docs advise it only where some batch sizes run faster than others
    (TensorRT with several optimisation profiles); dynamic batching then forms the largest batch it can.
    warmup_hw fills symbolic H/W for the model_warmup request; labels_file names the first output's labels.
    """
    io = onnx_io(onnx_path)
    batched = all(isinstance(s["dims"][0], str) for s in io["inputs"] + io["outputs"] if s["dims"])
    mbs = max_batch_size if batched else 0
    inputs = _tensors(io["inputs"], batched)
    return TritonModelConfig(
        name=name, platform=ONNX_PLATFORM, max_batch_size=mbs,
        inputs=inputs, outputs=_with_labels(_tensors(io["outputs"], batched), labels_file),
        max_queue_delay_us=max_queue_delay_us,
        instance_kind=INSTANCE_KINDS.get(instance_kind, instance_kind), instance_count=instance_count,
        warmup_dims=_warmup_dims(inputs, warmup_hw),
    )


def _with_labels(outputs: tuple[TritonTensor, ...], labels_file: str | None) -> tuple[TritonTensor, ...]:
    if not labels_file or not outputs:
        return outputs
    first = outputs[0]
    return (TritonTensor(first.name, first.data_type, first.dims, labels_file), *outputs[1:])


def _warmup_dims(inputs: Sequence[TritonTensor], hw: tuple[int, int] | None) -> tuple[tuple[int, ...], ...]:
    """Concrete dims of each input for a warm-up sample (symbolic trailing H/W from `hw`); () if unknown."""
    out = []
    for t in inputs:
        dims = list(t.dims)
        if -1 in dims[-2:] and hw is not None and len(dims) >= 2:
            dims[-2:] = [hw[0] if dims[-2] == -1 else dims[-2], hw[1] if dims[-1] == -1 else dims[-1]]
        if any(d < 1 for d in dims):
            return ()
        out.append(tuple(dims))
    return tuple(out)


def tensorrt_model_config(
    onnx_path: str | os.PathLike[str],
    name: str,
    *,
    input_hw: tuple[int, int],
    max_batch_size: int,
    instance_count: int = 1,
    max_queue_delay_us: int = 100,
    labels_file: str | None = None,
    preferred_batch_sizes: Sequence[int] = (),
) -> TritonModelConfig:
    """A Triton config for a TensorRT plan built from `onnx_path` with a fixed H, W and dynamic batch.

    preferred_batch_sizes only makes sense for an engine with several optimisation profiles (the fast sizes).
    """
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
        outputs=_with_labels(outputs, labels_file), preferred_batch_sizes=tuple(preferred_batch_sizes),
        max_queue_delay_us=max_queue_delay_us, instance_kind="KIND_GPU", instance_count=instance_count,
        warmup_dims=_warmup_dims(inputs, input_hw),
    )


LABELS_FILE = "labels.txt"


def write_triton_model(
    repository: str | os.PathLike[str], cfg: TritonModelConfig, model_file: str | os.PathLike[str] | None,
    version: int = 1, labels: Sequence[str] | None = None,
) -> Path:
    """Write <repository>/<name>/config.pbtxt and <version>/model.onnx|model.plan; returns the model folder.

    An ONNX model with external data files goes in the folder form <version>/model.onnx/ (model + data).
    model_file None (TensorRT plan still to be built by trtexec.sh) writes the config and an empty version
    folder. `labels` (one class name per output index) go into the labels file the config names. The model
    folder is staged and renamed into the repository only when complete. The repository must be absent, empty
    or one nasdeploy made (its .nasdeploy mark names a Triton repository); it is created and marked when needed.
    """
    folder = Path(repository) / cfg.name
    named = {t.label_filename for t in cfg.outputs if t.label_filename}
    if labels is not None and not named:
        raise ConfigError("labels were given but the config names no label_filename")
    if named and labels is None:
        raise ConfigError(f"the config names {sorted(named)} but no labels were given")
    if model_file is None and cfg.platform != TENSORRT_PLATFORM:
        raise ConfigError("only a TensorRT model may be written without its model file (trtexec.sh builds it)")
    if model_file is not None and cfg.platform == ONNX_PLATFORM and Path(model_file).name != "model.onnx" \
            and len(onnx_files(model_file)) > 1:
        raise ConfigError(f"an ONNX model with external data must be named model.onnx, got {Path(model_file).name}")
    claim_folder(repository, "triton", "Triton repository")
    if folder.exists() or folder.is_symlink():
        raise ConfigError(f"Triton model folder already exists: {folder}")
    with staged_folder(folder, "triton") as staging:
        version_dir = staging / str(version)
        version_dir.mkdir()
        if model_file is not None:
            _copy_model(cfg.platform, Path(model_file), version_dir)
        _write_labels(staging, named, labels)
        write_text_atomic(staging / "config.pbtxt", config_pbtxt(cfg))
    return folder


def _copy_model(platform: str, model_file: Path, version_dir: Path) -> None:
    if platform != ONNX_PLATFORM:
        shutil.copy2(model_file, version_dir / "model.plan")
        return
    files = onnx_files(model_file)
    if len(files) == 1:
        shutil.copy2(files[0], version_dir / "model.onnx")
        return
    # The data file's name is recorded inside the model, so the model keeps its own name in the folder.
    (version_dir / "model.onnx").mkdir()
    for f in files:
        shutil.copy2(f, version_dir / "model.onnx" / f.name)


def _write_labels(folder: Path, names: set[str], labels: Sequence[str] | None) -> None:
    for name in names:
        if any("\n" in str(label) for label in labels or ()):
            raise ConfigError("class labels must not contain line breaks")
        write_text_atomic(folder / name, "".join(f"{label}\n" for label in labels or ()))


def repository_readme(repository: str, models: Sequence[TritonModelConfig], *, plan_script: str | None = None) -> str:
    """Markdown beside the repository: tritonserver and perf_analyzer commands and a tritonclient example."""
    first = models[0]
    inp, out = first.inputs[0], first.outputs[0]
    dims = list(first.warmup_dims[0]) if first.warmup_dims else [d if d > 0 else 224 for d in inp.dims]
    shape = [1, *dims] if first.max_batch_size > 0 else dims
    shape_arg = ",".join(str(d) for d in dims)
    lines = [
        "# Triton model repository", "",
        f"`{repository}/` is a Triton model repository: its root holds only model folders, as Triton's docs require "
        "(this README therefore lives one level up).", "",
        "| model | platform | max_batch_size |", "|---|---|---|",
        *[f"| {m.name} | {m.platform} | {m.max_batch_size} |" for m in models], "",
    ]
    if plan_script:
        lines += [f"The TensorRT model's `1/model.plan` is not built yet: run `sh {plan_script}` on the serving GPU first "
                  "(plans are specific to the GPU model and TensorRT version); until then Triton reports that model "
                  "as unavailable.", ""]
    lines += [
        "## Serve", "", "```sh",
        f'docker run --gpus all --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 -v "$PWD/{repository}:/models" '
        "nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models",
        f"# or, with tritonserver installed: tritonserver --model-repository=$PWD/{repository}", "```", "",
        "## Measure", "", "```sh",
        f"perf_analyzer -m {first.name} -u localhost:8001 -i grpc --shape {inp.name}:{shape_arg} "
        + ("--concurrency-range 1:8 " if first.max_batch_size > 0 else "") + "--percentile=99", "```", "",
        "## Query (pip install 'tritonclient[grpc]')", "", "```python",
        "import numpy as np",
        "import tritonclient.grpc as grpcclient", "",
        'client = grpcclient.InferenceServerClient(url="localhost:8001")',
        f"x = np.random.rand({', '.join(str(d) for d in shape)}).astype(np.float32)  # a preprocessed image batch",
        f'inp = grpcclient.InferInput("{inp.name}", list(x.shape), "FP32")',
        "inp.set_data_from_numpy(x)",
    ]
    if out.label_filename:
        lines += [f'out = grpcclient.InferRequestedOutput("{out.name}", class_count=5)  # top-5 "score:index:label"',
                  f'result = client.infer("{first.name}", [inp], outputs=[out])',
                  f'print(result.as_numpy("{out.name}"))']
    else:
        lines += [f'result = client.infer("{first.name}", [inp])', f'print(result.as_numpy("{out.name}").shape)']
    lines += ["```", ""]
    return "\n".join(lines)
