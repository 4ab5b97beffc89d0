"""Parameters, MACs (torch FlopCounterMode total / 2) and their per-stage and per-op breakdowns."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nasdeploy.errors import ConfigError
from nasdeploy.profile.activations import ActivationMemory, ActivationTracker
from nasdeploy.profile.stages import CostItem, is_auxiliary, model_stages, op_units
from nasdeploy.utils.model_cost import MAC_CONVENTION, TORCH_COUNTER, count_params, forward_macs

__all__ = ["MAC_CONVENTION", "TORCH_COUNTER", "Complexity", "count_params", "forward_macs", "model_complexity"]


@dataclass(frozen=True)
class Complexity:
    """Size and cost of a network for one input size, with breakdowns that add up to the totals."""

    params: int  # auxiliary heads excluded (the reference convention)
    params_with_aux: int
    macs: int  # per sample
    input_shape: tuple[int, ...]  # per sample, e.g. (3, 224, 224)
    stages: tuple[CostItem, ...]
    ops: tuple[CostItem, ...]
    activations: ActivationMemory | None
    counter: str
    convention: str = MAC_CONVENTION

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "params": self.params,
            "params_with_aux": self.params_with_aux,
            "macs": self.macs,
            "input_shape": list(self.input_shape),
            "convention": self.convention,
            "counter": self.counter,
            "stages": [_item_dict(i) for i in self.stages],
            "ops": [_item_dict(i) for i in self.ops],
            "activations": self.activations.to_dict() if self.activations else None,
        }


def _item_dict(item: CostItem) -> dict[str, Any]:
    return {"name": item.name, "kind": item.kind, "params": item.params, "macs": item.macs, "count": item.count}


def model_complexity(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    count_batch: int = 1,
    activations: bool = True,
) -> Complexity:
    """Count params and per-sample MACs of `model` (in eval mode) for inputs of `input_shape` (C, H, W)."""
    if count_batch < 1:
        raise ConfigError(f"count_batch must be >= 1, got {count_batch}")
    if not input_shape or any(not isinstance(d, int) or d < 1 for d in input_shape):
        raise ConfigError(f"input shape must be positive integers per sample, got {tuple(input_shape)}")
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    x = torch.randn((count_batch, *input_shape), generator=torch.Generator().manual_seed(0)).to(device, dtype)

    was_training = model.training
    model.eval()
    exclude = [x, *model.parameters(), *model.buffers()]
    tracker = ActivationTracker(exclude) if activations else None
    counter = FlopCounterMode(display=False, depth=None)
    try:
        with torch.no_grad(), counter:
            if tracker is not None:
                with tracker:
                    model(x)
            else:
                model(x)
    finally:
        model.train(was_training)
    del exclude

    flops = _flops_by_path(counter, model)
    total = counter.get_total_flops()
    stages, ops = _breakdowns(model, flops, total, count_batch)
    return Complexity(
        params=count_params(model),
        params_with_aux=count_params(model, include_aux=True),
        macs=_per_sample_macs(total, count_batch),
        input_shape=tuple(input_shape),
        stages=tuple(stages),
        ops=tuple(ops),
        activations=tracker.result(count_batch) if tracker is not None else None,
        counter=TORCH_COUNTER,
    )


def _per_sample_macs(flops: int, batch: int) -> int:
    return int(flops) // (2 * batch)


def _flops_by_path(counter: FlopCounterMode, model: nn.Module) -> dict[str, int]:
    """Total FLOPs per module path (relative to the model), from FlopCounterMode's module hierarchy."""
    root = type(model).__name__
    out: dict[str, int] = {}
    for key, per_op in counter.get_flop_counts().items():
        if key.startswith(root + "."):
            out[key[len(root) + 1 :]] = int(sum(per_op.values()))
    return out


def _params_by_prefix(model: nn.Module) -> dict[str, int]:
    return {name: p.numel() for name, p in model.named_parameters()}


def _sum_under(values: dict[str, int], path: str) -> int:
    prefix = path + "."
    return sum(v for k, v in values.items() if k == path or k.startswith(prefix))


def _breakdowns(model: nn.Module, flops: dict[str, int], total_flops: int, batch: int) -> tuple[list[CostItem], list[CostItem]]:
    """Per-stage and per-op-type costs; a '(other)' row keeps each list summing to the totals."""
    params = _params_by_prefix(model)
    total_params = sum(params.values())

    stages = []
    for name, kind, paths in model_stages(model):
        p = sum(_sum_under(params, path) for path in paths)
        f = sum(flops.get(path, 0) for path in paths)
        stages.append(CostItem(name, kind, p, _per_sample_macs(f, batch)))
    _append_remainder(stages, total_params, _per_sample_macs(total_flops, batch))

    by_label: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    kinds: dict[str, str] = {}
    for path, label in op_units(model):
        acc = by_label[label]
        acc[0] += _sum_under(params, path)
        acc[1] += flops.get(path, 0)
        acc[2] += 1
        kinds.setdefault(label, "auxiliary" if is_auxiliary(path) else "op")
    ops = [CostItem(label, kinds[label], p, _per_sample_macs(f, batch), n) for label, (p, f, n) in by_label.items()]
    ops.sort(key=lambda i: (-i.macs, -i.params, i.name))
    _append_remainder(ops, total_params, _per_sample_macs(total_flops, batch))
    return stages, ops


def _append_remainder(items: list[CostItem], total_params: int, total_macs: int) -> None:
    rest_p = total_params - sum(i.params for i in items)
    rest_m = total_macs - sum(i.macs for i in items)
    if rest_p or rest_m:
        items.append(CostItem("(other)", "other", rest_p, rest_m, 0))
