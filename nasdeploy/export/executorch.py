"""ExecuTorch: lower a model to an XNNPACK .pte program (float or PT2E INT8) and run it in ExecuTorch's runtime.

`executorch` is an optional extra (pip install 'nasdeploy[executorch]'), imported only inside these functions.
Programs are exported at a static batch of 1 (the mobile case); the runner splits larger batches into
single images so validation and parity code can feed batches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from nasdeploy.errors import ExportError
from nasdeploy.export.batchnorm_fold import fold_batchnorm
from nasdeploy.utils.files import write_bytes_atomic, write_json_atomic
from nasdeploy.utils.optional import require

EXTRA = "executorch"
PTE_METADATA_SUFFIX = ".json"  # model.pte -> model.pte.json

Runner = Callable[[np.ndarray], list[np.ndarray]]


def import_executorch() -> Any:
    """The executorch package, or a one-line MissingDependencyError naming the extra."""
    return require("executorch", extra=EXTRA, purpose="ExecuTorch export")


def executorch_version() -> str:
    """The installed executorch version (from the package metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("executorch")
    except PackageNotFoundError:
        return "unknown"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _lower_to_buffer(exported: Any) -> bytes:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()
    return bytes(program.buffer)


def lower_to_pte(model: nn.Module, path: str | os.PathLike[str], input_shape: tuple[int, int, int]) -> Path:
    """torch.export `model` (eval, batch 1) -> XNNPACK-lowered ExecuTorch program written to `path`."""
    import_executorch()
    example = (torch.zeros(1, *input_shape),)
    try:
        folded, _ = fold_batchnorm(model)  # XNNPACK would fuse them anyway; fewer nodes lower faster
        with torch.no_grad():
            exported = torch.export.export(folded, example)
        data = _lower_to_buffer(exported)
    except Exception as exc:
        raise ExportError(f"ExecuTorch lowering failed: {_first_line(exc)}") from exc
    return write_bytes_atomic(path, data)


def xnnpack_quantizer(*, per_channel: bool = True, float_modules: Sequence[str] = (), is_qat: bool = False) -> Any:
    """ExecuTorch's XNNPACKQuantizer, symmetric INT8 (QAT: fake-quantize nodes), with `float_modules` left in float.

    XNNPACKQuantizer.set_module_name cannot take None yet, so a filter function skips every node the
    float modules exported (with torchao's own module-name filter).
    """
    import_executorch()
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantizer import get_module_name_filter

    quantizer = XNNPACKQuantizer()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=per_channel, is_qat=is_qat))
    in_float = [get_module_name_filter(name) for name in float_modules]
    if in_float:
        quantizer.set_filter_function(lambda node: not any(f(node) for f in in_float))
    return quantizer


def quantize_pt2e_xnnpack(
    model: nn.Module, input_shape: tuple[int, int, int], calibration: Iterable[torch.Tensor], *, per_channel: bool = True,
    float_modules: Sequence[str] = (),
) -> nn.Module:
    """PT2E INT8 (XNNPACKQuantizer, symmetric, per-channel weights) calibrated on `calibration` batches of 1..N images.

    `float_modules` (module paths) stay in float (see xnnpack_quantizer).
    """
    import_executorch()
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = xnnpack_quantizer(per_channel=per_channel, float_modules=float_modules)
    example = (torch.zeros(1, *input_shape),)
    # Folded first, as PTQ does anyway: with no BatchNorm node left, convert_pt2e skips its conv-BN QAT
    # pattern matching, which took 23 s of a 31 s quantization of the demo network (measured).
    folded, _ = fold_batchnorm(model)
    with torch.no_grad():
        graph = torch.export.export(folded, example).module()
        prepared = prepare_pt2e(graph, quantizer)
        seen = 0
        for batch in calibration:
            for image in batch:  # the graph was exported at batch 1
                prepared(image.unsqueeze(0))
                seen += 1
        if seen == 0:
            raise ExportError("PT2E calibration got no images")
        return convert_pt2e(prepared)


def lower_quantized_to_pte(quantized: nn.Module, path: str | os.PathLike[str], input_shape: tuple[int, int, int]) -> Path:
    """Re-export a convert_pt2e module and lower it (its Q/DQ pairs become XNNPACK INT8 kernels)."""
    example = (torch.zeros(1, *input_shape),)
    try:
        exported = torch.export.export(quantized, example)
        data = _lower_to_buffer(exported)
    except Exception as exc:
        raise ExportError(f"ExecuTorch INT8 lowering failed: {_first_line(exc)}") from exc
    return write_bytes_atomic(path, data)


@dataclass(frozen=True)
class PteProgram:
    """A loaded ExecuTorch program's forward method and what it expects."""

    path: Path
    method: Any
    input_shape: tuple[int, ...]  # including the batch dim, as exported
    label: str


def load_pte(path: str | os.PathLike[str]) -> PteProgram:
    """Load a .pte in ExecuTorch's Python runtime (its forward method, input shape, a runtime label)."""
    import_executorch()
    from executorch.runtime import Runtime

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"no ExecuTorch program at {path}")
    try:
        program = Runtime.get().load_program(str(path))
        method = program.load_method("forward")
        meta = method.metadata
        shape = tuple(int(d) for d in meta.input_tensor_meta(0).sizes())
    except Exception as exc:
        raise ExportError(f"ExecuTorch runtime cannot load {path.name}: {_first_line(exc)}") from exc
    return PteProgram(path, method, shape, f"executorch {executorch_version()} (XNNPACK)")


def executorch_runner(path: str | os.PathLike[str]) -> tuple[Runner, list[str], str]:
    """A function running the .pte in ExecuTorch on a float32 batch (one image at a time for batch-1 programs)."""
    prog = load_pte(path)
    fixed_batch = prog.input_shape[0] if prog.input_shape else 1

    def run_one(x: np.ndarray) -> list[np.ndarray]:
        try:
            outs = prog.method.execute([torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))])
        except Exception as exc:
            raise ExportError(f"ExecuTorch failed on input {x.shape}: {_first_line(exc)}") from exc
        return [o.detach().numpy().copy() for o in outs]

    def run(x: np.ndarray) -> list[np.ndarray]:
        if x.shape[0] == fixed_batch:
            return run_one(x)
        if x.shape[0] % fixed_batch:
            raise ExportError(f"the program takes batches of {fixed_batch}; got {x.shape[0]}")
        parts = [run_one(x[i:i + fixed_batch]) for i in range(0, x.shape[0], fixed_batch)]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]

    return run, ["output0"], prog.label


def write_pte_metadata(pte_path: str | os.PathLike[str], metadata: dict[str, Any]) -> Path:
    """Write `<model>.pte.json` beside the program (genotype, input size, normalisation, quantization)."""
    path = Path(str(pte_path) + PTE_METADATA_SUFFIX)
    return write_json_atomic(path, {"format": "nasdeploy.executorch", "program": Path(pte_path).name, **metadata})


def executorch_thread_count() -> int | None:
    """The current size of ExecuTorch's CPU threadpool (None where the build does not expose it)."""
    try:
        from executorch.extension.pybindings import portable_lib
    except ImportError:
        return None
    count = getattr(portable_lib, "_threadpool_get_thread_count", None)
    return int(count()) if count is not None else None
