"""Helpers shared by the export tests (not a test module)."""

from __future__ import annotations

import pytest
import torch
from torch import nn


def randomize_bn_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running stats and affine params, as a trained network has.

    With the init values (mean 0, var 1, weight 1, bias 0) an export that used batch statistics or
    dropped BN would go unnoticed more easily; these make eval-mode BN a real transform.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            elif isinstance(m, nn.Linear):
                m.weight.mul_(5.0)  # logits of order 1 make the relative tolerance meaningful
    return model


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Run the PyTorch reference side on one thread: on a shared 2-core machine OpenMP spin-waiting
    made batch-1 forwards of these small nets ~50x slower (measured) than a single thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
