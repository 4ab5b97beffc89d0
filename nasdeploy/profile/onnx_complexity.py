"""Params and MACs of an ONNX file: initializers, and a walk over the graph after shape inference."""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from nasdeploy.errors import ConfigError, LimitError
from nasdeploy.profile.activations import ActivationMemory
from nasdeploy.profile.complexity import MAC_CONVENTION, Complexity
from nasdeploy.profile.stages import CostItem, scope_stage
from nasdeploy.utils.limits import literal_eval_bounded
from nasdeploy.utils.optional import require

ONNX_COUNTER = "ONNX graph walk after onnx.shape_inference (Conv, ConvTranspose, Gemm, MatMul)"
# BatchNormalization inputs 3 and 4 (running mean / variance) are statistics, not parameters.
_BN_STAT_INPUTS = (3, 4)


def load_onnx(path: str | os.PathLike[str]) -> Any:
    """onnx.load with a one-line error for a missing or unreadable file."""
    onnx = require("onnx", purpose="reading .onnx files")
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"ONNX file not found: {p}")
    try:
        return onnx.load(str(p))
    except Exception as exc:  # protobuf / external-data errors have many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot read ONNX file {p}: {first}") from None


def graph_inputs(model: Any) -> list[Any]:
    """The graph inputs that are fed at run time (initializers listed as inputs are dropped)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _exported_input_size(model: Any) -> tuple[int, ...] | None:
    """The example input size (C, H, W) that `nasdeploy export` records in the metadata, if any."""
    for prop in getattr(model, "metadata_props", []):
        if prop.key == "example_input_shape":
            try:  # a JSON list is also a Python literal: one bounded parser for every metadata value
                dims = literal_eval_bounded(prop.value, "ONNX metadata example_input_shape")
            except LimitError:
                raise
            except (ValueError, SyntaxError):
                return None
            if not (isinstance(dims, list) and len(dims) > 1 and all(isinstance(d, int) for d in dims)):
                return None
            return tuple(dims[1:])
    return None


def onnx_input_shape(model: Any, input_size: Sequence[int] | None, source: str = "model") -> list[list[int]]:
    """Concrete shapes of every runtime input: symbolic batch -> 1, other symbolic dims from input_size."""
    if input_size is None:
        input_size = _exported_input_size(model)
    shapes = []
    for inp in graph_inputs(model):
        dims = inp.type.tensor_type.shape.dim
        shape = []
        for axis, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > 0:
                value = d.dim_value
                if input_size is not None and axis >= 1 and len(dims) == len(input_size) + 1:
                    if value != input_size[axis - 1]:
                        raise ConfigError(
                            f"input '{inp.name}' of {source} has fixed size {value} at axis {axis}, "
                            f"but the requested input size is {tuple(input_size)}"
                        )
                shape.append(value)
            elif axis == 0:
                shape.append(1)
            elif input_size is not None and len(dims) == len(input_size) + 1:
                shape.append(int(input_size[axis - 1]))
            else:
                name = d.dim_param or "?"
                raise ConfigError(
                    f"input '{inp.name}' of {source} has a symbolic dimension '{name}' at axis {axis}; pass --input-size"
                )
        shapes.append(shape)
    if not shapes:
        raise ConfigError(f"{source} has no runtime inputs")
    return shapes


def onnx_complexity(path: str | os.PathLike[str], input_size: Sequence[int] | None = None) -> Complexity:
    """Per-sample params and MACs of an ONNX file (same convention as the torch counter)."""
    onnx = require("onnx", purpose="reading .onnx files")
    from onnx import numpy_helper, shape_inference

    model = load_onnx(path)
    source = Path(path).name
    shapes_in = onnx_input_shape(model, input_size, source)
    for inp, shape in zip(graph_inputs(model), shapes_in):
        for d, value in zip(inp.type.tensor_type.shape.dim, shape):
            d.Clear()
            d.dim_value = value
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"shape inference failed on {source}: {first}") from None

    shapes, elem_types = _known_shapes(inferred)
    batch = shapes_in[0][0]
    graph = inferred.graph
    stage_of_node = [_node_stage(n) for n in graph.node]

    macs_by_stage: dict[str, int] = defaultdict(int)
    ops: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    total = 0
    for node, stage in zip(graph.node, stage_of_node):
        macs = _node_macs(node, shapes, source)
        if macs is None:
            continue
        total += macs
        macs_by_stage[stage] += macs
        label = _op_label(node, shapes)
        ops[label][1] += macs
        ops[label][2] += 1

    params_by_stage, params_by_label, total_params = _initializer_params(graph, stage_of_node, shapes, numpy_helper, onnx)
    for label, count in params_by_label.items():
        ops[label][0] += count

    order = list(dict.fromkeys(stage_of_node))
    stages = [CostItem(s, _stage_kind(s), params_by_stage.get(s, 0), macs_by_stage.get(s, 0) // batch) for s in order
              if params_by_stage.get(s, 0) or macs_by_stage.get(s, 0)]
    op_items = sorted((CostItem(k, "op", p, m // batch, n) for k, (p, m, n) in ops.items()), key=lambda i: (-i.macs, -i.params, i.name))
    _add_other(stages, total_params, total // batch)
    _add_other(op_items, total_params, total // batch)
    return Complexity(
        params=total_params,
        params_with_aux=total_params,
        macs=total // batch,
        input_shape=tuple(shapes_in[0][1:]),
        stages=tuple(stages),
        ops=tuple(op_items),
        activations=_activation_memory(graph, shapes, elem_types, batch),
        counter=ONNX_COUNTER,
        convention=MAC_CONVENTION,
    )


def _add_other(items: list[CostItem], total_params: int, total_macs: int) -> None:
    rest_p = total_params - sum(i.params for i in items)
    rest_m = total_macs - sum(i.macs for i in items)
    if rest_p or rest_m:
        items.append(CostItem("(other)", "other", rest_p, rest_m, 0))


def _known_shapes(model: Any) -> tuple[dict[str, list[int]], dict[str, int]]:
    shapes: dict[str, list[int]] = {}
    types: dict[str, int] = {}
    graph = model.graph
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        tt = vi.type.tensor_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shapes[vi.name] = [d.dim_value for d in tt.shape.dim]
        types[vi.name] = tt.elem_type
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
        types[init.name] = init.data_type
    return shapes, types


def _shape(shapes: dict[str, list[int]], name: str, node: Any, source: str) -> list[int]:
    if name not in shapes:
        raise ConfigError(f"cannot count MACs of {source}: the shape of '{name}' (input of {node.op_type} node '{node.name}') is unknown after shape inference")
    return shapes[name]


def _attr(node: Any, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            from onnx import helper

            return helper.get_attribute_value(a)
    return default


def _node_macs(node: Any, shapes: dict[str, list[int]], source: str) -> int | None:
    """MACs of one node (None for op types that the convention does not count)."""
    op = node.op_type
    if op == "Conv":
        w = _shape(shapes, node.input[1], node, source)
        y = _shape(shapes, node.output[0], node, source)
        return math.prod(y) * math.prod(w[1:])  # each output element: C_in/group * prod(kernel) MACs
    if op == "ConvTranspose":
        x = _shape(shapes, node.input[0], node, source)
        w = _shape(shapes, node.input[1], node, source)
        return math.prod(x) * math.prod(w[1:])  # each input element scatters into C_out/group * prod(kernel)
    if op == "Gemm":
        a = _shape(shapes, node.input[0], node, source)
        y = _shape(shapes, node.output[0], node, source)
        k = a[0] if _attr(node, "transA", 0) else a[1]
        return math.prod(y) * k
    if op == "MatMul":
        a = _shape(shapes, node.input[0], node, source)
        y = _shape(shapes, node.output[0], node, source)
        return math.prod(y) * a[-1]
    return None


def _op_label(node: Any, shapes: dict[str, list[int]]) -> str:
    if node.op_type != "Conv":
        return node.op_type
    w = shapes.get(node.input[1], [])
    group = _attr(node, "group", 1)
    if len(w) >= 2 and group > 1 and w[1] == 1:
        return "Conv (depthwise)"
    if len(w) >= 3 and all(k == 1 for k in w[2:]) and group == 1:
        return "Conv (1x1)"
    return "Conv"


def _node_stage(node: Any) -> str:
    """The network stage a node came from, read from the torch exporter's name-scope metadata."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = literal_eval_bounded(prop.value, "ONNX node name scopes")
            except LimitError:
                raise
            except (ValueError, SyntaxError):
                return "(graph)"
            if isinstance(scopes, list) and len(scopes) > 1 and scopes[1]:
                return scope_stage(scopes[1])
    return "(graph)"


def _stage_kind(stage: str) -> str:
    if stage == "head":
        return "head"
    if stage.startswith("stem"):
        return "stem"
    if stage.startswith("cells."):
        return "cell"
    return "other"


def _initializer_params(graph: Any, stage_of_node: list[str], shapes: dict[str, list[int]], numpy_helper: Any, onnx: Any):
    """Parameters = elements of floating-point initializers, BN running statistics excluded."""
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
    consumer: dict[str, tuple[str, str]] = {}
    for node, stage in zip(graph.node, stage_of_node):
        for pos, name in enumerate(node.input):
            is_stat = node.op_type == "BatchNormalization" and pos in _BN_STAT_INPUTS
            if name and not is_stat:  # an initializer shared by a weight and a statistic still counts
                consumer.setdefault(name, (stage, _op_label(node, shapes)))
    by_stage: dict[str, int] = defaultdict(int)
    by_label: dict[str, int] = defaultdict(int)
    total = 0
    for init in graph.initializer:
        if init.data_type not in float_types or init.name not in consumer:
            continue
        n = math.prod(init.dims)
        stage, label = consumer[init.name]
        by_stage[stage] += n
        by_label[label] += n
        total += n
    return by_stage, by_label, total


_ELEM_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}


def _activation_memory(graph: Any, shapes: dict[str, list[int]], types: dict[str, int], batch: int) -> ActivationMemory | None:
    """Total bytes of node outputs, and the peak alive if each is freed after its last consumer."""
    sizes: dict[str, int] = {}
    for node in graph.node:
        if node.op_type == "Constant":
            continue
        for out in node.output:
            if out in shapes:
                sizes[out] = math.prod(shapes[out]) * _ELEM_BYTES.get(types.get(out, 1), 4)
    if not sizes:
        return None
    last_use: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            last_use[name] = i
    keep = {o.name for o in graph.output}
    live = peak = 0
    for i, node in enumerate(graph.node):
        for out in node.output:
            live += sizes.get(out, 0)
        peak = max(peak, live)
        for name in set(node.input):
            if name in sizes and last_use.get(name) == i and name not in keep:
                live -= sizes[name]
        for out in node.output:  # outputs nobody reads are dropped at once
            if out in sizes and out not in last_use and out not in keep:
                live -= sizes[out]
    return ActivationMemory(sum(sizes.values()), peak, len(sizes), batch,
                            "ONNX liveness: node outputs freed after their last consumer (shape inference)")
