"""When a network may train in channels-last on the CPU (a oneDNN bug rules out some layers)."""

from __future__ import annotations

from torch import nn

# oneDNN's channels-last backward of a 1x1 stride-2 conv (FactorizedReduce) corrupts the heap for 2-7
# input channels on some CPUs (torch 2.14.1 on AMD EPYC without AVX-512: "free(): invalid next size").
MIN_CPU_CHANNELS_LAST = 8


def unsafe_channels_last_convs(model: nn.Module) -> list[str]:
    """The 1x1 strided convolutions with 2-7 input channels whose channels-last CPU backward is unsafe."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and max(m.stride) > 1
            and 1 < m.in_channels < MIN_CPU_CHANNELS_LAST]
