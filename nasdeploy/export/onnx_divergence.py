"""Where an ONNX graph stops agreeing with its PyTorch model: module outputs compared inside the graph.

As Polygraphy does with `--onnx-outputs mark all`, the graph is run again with intermediate tensors exposed
as outputs, and the PyTorch model with forward hooks on every module (float32, and float64 for the
yardstick). torch.onnx's exporter records each node's module scope (node metadata
'pkg.torch.onnx.name_scopes'), so a module's output is the first output of the last node in its scope.
Modules are compared in the order their forward returns (children before parents); the first one whose
output is beyond tolerance is the divergence. A module called more than once, one with no node of its own
(Identity) or one whose tensor has another shape in the graph is skipped.
"""

from __future__ import annotations

import ast
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nasdeploy.export.parity import Divergence
from nasdeploy.export.torch_reference import YARDSTICK, effective_atol, float64_twin
from nasdeploy.utils.ort import ort_session

SCOPES_KEY = "pkg.torch.onnx.name_scopes"
FLOAT_TYPES = (1, 10, 11, 16)  # onnx.TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16


def _node_scopes(node: Any) -> list[str]:
    """The module paths a node was exported from, outermost first (the model itself, '', left out)."""
    for prop in node.metadata_props:
        if prop.key == SCOPES_KEY:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return []
            return [s for s in scopes[:-1] if s]  # the last entry names the op, not a module
    return []


def module_tensors(graph: Any) -> dict[str, tuple[str, Any]]:
    """module path -> (tensor name, node) of the last node in that module's scope, in graph order."""
    last: dict[str, tuple[str, Any]] = {}
    for node in graph.node:
        if not node.output or not node.output[0]:
            continue
        for scope in _node_scopes(node):
            last[scope] = (node.output[0], node)
    return last


def _with_outputs(model: Any, names: list[str]) -> Any:
    """A copy of the ONNX model whose graph also outputs the float tensors `names` (typed from value_info)."""
    import onnx

    marked = onnx.ModelProto()
    marked.CopyFrom(model)
    if not any(v.name in names for v in marked.graph.value_info):
        marked = onnx.shape_inference.infer_shapes(marked)
    types = {v.name: v for v in marked.graph.value_info}
    existing = {o.name for o in marked.graph.output}
    for name in names:
        info = types.get(name)
        if name not in existing and info is not None and info.type.tensor_type.elem_type in FLOAT_TYPES:
            marked.graph.output.append(info)
    return marked


def _hooked_outputs(model: nn.Module, x: torch.Tensor) -> tuple[list[str], dict[str, list[torch.Tensor]]]:
    """Every module's tensor outputs on `x`, and module paths in the order their forward returned."""
    order: list[str] = []
    outputs: dict[str, list[torch.Tensor]] = {}

    def hook(name: str):
        def record(_module: nn.Module, _inputs: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                order.append(name)
                outputs.setdefault(name, []).append(out.detach().cpu())
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return order, outputs


def _exceeds(got: np.ndarray, ref: np.ndarray, ref64: np.ndarray | None, rtol: float, atol: float,
             yardstick: float) -> tuple[bool, float, float]:
    """(beyond tolerance, max abs err, largest allowed error) of one intermediate tensor."""
    atol_eff, _ = effective_atol(ref, ref64, atol, yardstick)
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    allowed = atol_eff + rtol * np.abs(ref.astype(np.float64))
    if not np.all(np.isfinite(got)):
        return True, float("nan"), float(allowed.max())
    return bool(np.any(diff > allowed)), float(diff.max()), float(allowed.max())


def first_divergence(model: nn.Module, onnx_path: str | os.PathLike[str], x: np.ndarray, *, rtol: float,
                     atol: float, yardstick: float = YARDSTICK) -> tuple[Divergence | None, str]:
    """The first module whose output the ONNX graph does not reproduce on `x`, or None and why not."""
    import onnx

    proto = onnx.load(str(onnx_path))
    tensors = module_tensors(proto.graph)
    if not tensors:
        return None, "the graph records no module scopes (not exported by torch.onnx's dynamo exporter)"
    was_training = model.training
    try:
        order, ref32 = _hooked_outputs(model, torch.from_numpy(x.copy()))
        twin = float64_twin(model) if yardstick else None
        ref64 = _hooked_outputs(twin, torch.from_numpy(x.astype(np.float64)))[1] if twin is not None else {}
    finally:
        model.train(was_training)
    candidates = [n for n in dict.fromkeys(order) if n in tensors and len(ref32[n]) == 1]
    with tempfile.TemporaryDirectory(prefix="nasdeploy-divergence-") as tmp:
        path = Path(tmp) / "marked.onnx"
        onnx.save(_with_outputs(proto, [tensors[n][0] for n in candidates]), str(path))
        session = ort_session(path, purpose="locating the first diverging node")
        names = [o.name for o in session.get_outputs()]
        got = dict(zip(names, session.run(None, {session.get_inputs()[0].name: x})))
    compared: list[str] = []
    for name in candidates:
        tensor, node = tensors[name]
        ref = ref32[name][0].numpy()
        if tensor not in got or got[tensor].shape != ref.shape:
            continue
        compared.append(name)
        r64 = ref64[name][0].numpy() if len(ref64.get(name, ())) == 1 else None
        bad, err, allowed = _exceeds(got[tensor], ref, r64, rtol, atol, yardstick)
        if bad:
            agreeing = [c for c in compared if c.startswith(name + ".")]
            note = (f"its {len(agreeing)} compared submodules agree: the difference is in its own ops"
                    if agreeing else "")
            module = model.get_submodule(name)
            return Divergence(name, type(module).__name__, node.name, node.op_type, err, allowed, len(compared),
                              note), ""
    return None, (f"none of the {len(compared)} module outputs compared inside the graph is beyond tolerance "
                  "(the error builds up across nodes)")
