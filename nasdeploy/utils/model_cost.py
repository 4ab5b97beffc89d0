"""Parameter and MAC counting shared by export reports and the profiler (so export needs no profile import)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

MAC_CONVENTION = (
    "MACs = multiply-accumulates of convolutions and fully connected / matmul layers, per sample "
    "(one MAC per multiply-add; BN folded, activations and pooling not counted)"
)
TORCH_COUNTER = "torch.utils.flop_counter.FlopCounterMode (total FLOPs / 2)"


def is_auxiliary(param_or_module_name: str) -> bool:
    """True for names under an auxiliary head (top-level child whose name starts with 'aux')."""
    return param_or_module_name.split(".", 1)[0].lower().startswith("aux")


def count_params(model: nn.Module, include_aux: bool = False) -> int:
    """Number of parameters; auxiliary heads (top-level children named aux*) excluded unless asked."""
    return sum(p.numel() for n, p in model.named_parameters() if include_aux or not is_auxiliary(n))


def forward_macs(model: nn.Module, *inputs: Any) -> int:
    """Total MACs (FlopCounterMode FLOPs / 2) of one eval-mode, no-grad forward model(*inputs); mode restored."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(*inputs)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2
