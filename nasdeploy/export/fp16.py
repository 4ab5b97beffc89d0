"""Convert a float32 ONNX model to float16 weights and activations (TensorRT 11 builds FP16 this way)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nasdeploy.errors import ExportError
from nasdeploy.utils.files import atomic_path
from nasdeploy.utils.optional import require

# Inputs that ONNX requires in float32 whatever the data type (kept as they are).
_FLOAT32_ONLY_INPUTS = {"Resize": {1, 2}, "Upsample": {1}}


def _to_fp16_tensor(onnx: Any, tensor: Any) -> Any:
    import numpy as np

    array = onnx.numpy_helper.to_array(tensor)
    if np.isfinite(array).all() and np.abs(array).max(initial=0.0) > 65504.0:
        raise ExportError(f"tensor '{tensor.name}' has values beyond the float16 range; cannot convert to fp16")
    return onnx.numpy_helper.from_array(array.astype(np.float16), tensor.name)


def convert_model_to_fp16(model: Any, keep_io_types: bool = True) -> Any:
    """A float16 copy of an ONNX ModelProto; with keep_io_types the graph inputs/outputs stay float32."""
    onnx = require("onnx", purpose="FP16 conversion")
    FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    converted = onnx.ModelProto()
    converted.CopyFrom(model)
    graph = converted.graph
    if len(graph.node) == 0:
        raise ExportError("cannot convert an empty ONNX graph to fp16")

    keep_fp32 = {node.input[i] for node in graph.node for i in _FLOAT32_ONLY_INPUTS.get(node.op_type, ()) if i < len(node.input)}
    for k, init in enumerate(graph.initializer):
        if init.data_type == FLOAT and init.name not in keep_fp32:
            graph.initializer[k].CopyFrom(_to_fp16_tensor(onnx, init))
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Constant" and attr.name == "value" and attr.t.data_type == FLOAT and node.output[0] not in keep_fp32:
                attr.t.CopyFrom(_to_fp16_tensor(onnx, attr.t))
            elif node.op_type in ("Cast", "CastLike") and attr.name == "to" and attr.i == FLOAT:
                attr.i = FLOAT16
            elif node.op_type in ("ConstantOfShape", "EyeLike", "RandomNormal", "RandomUniform") and attr.name in ("value", "dtype"):
                if attr.name == "value" and attr.t.data_type == FLOAT:
                    attr.t.CopyFrom(_to_fp16_tensor(onnx, attr.t))
                elif attr.name == "dtype" and attr.i == FLOAT:
                    attr.i = FLOAT16
    # Intermediate type annotations are optional; drop them rather than leave stale float32 ones.
    del graph.value_info[:]

    new_nodes = []
    for value in graph.input:
        if value.type.tensor_type.elem_type != FLOAT:
            continue
        if keep_io_types:
            cast_name = f"{value.name}__fp16"
            for node in graph.node:
                node.input[:] = [cast_name if name == value.name else name for name in node.input]
            new_nodes.append(onnx.helper.make_node("Cast", [value.name], [cast_name], to=FLOAT16, name=f"{value.name}_to_fp16"))
        else:
            value.type.tensor_type.elem_type = FLOAT16
    out_nodes = []
    for value in graph.output:
        if value.type.tensor_type.elem_type != FLOAT:
            continue
        if keep_io_types:
            inner = f"{value.name}__fp16"
            for node in graph.node:
                node.output[:] = [inner if name == value.name else name for name in node.output]
                node.input[:] = [inner if name == value.name else name for name in node.input]
            out_nodes.append(onnx.helper.make_node("Cast", [inner], [value.name], to=FLOAT, name=f"{value.name}_to_fp32"))
        else:
            value.type.tensor_type.elem_type = FLOAT16
    nodes = new_nodes + list(graph.node) + out_nodes
    del graph.node[:]
    graph.node.extend(nodes)
    props = {p.key: p.value for p in converted.metadata_props}
    props["precision"] = "fp16"
    del converted.metadata_props[:]
    for key, value in props.items():
        converted.metadata_props.add(key=key, value=value)
    return converted


def convert_onnx_to_fp16(src: str | os.PathLike[str], dst: str | os.PathLike[str], keep_io_types: bool = True) -> Path:
    """Write a float16 version of the ONNX file `src` to `dst` (one file), checked with onnx.checker."""
    onnx = require("onnx", purpose="FP16 conversion")
    model = convert_model_to_fp16(onnx.load(str(src)), keep_io_types=keep_io_types)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"fp16 model fails onnx.checker: {first}") from exc
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))
    return Path(dst)
