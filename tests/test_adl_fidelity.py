"""Fidelity of the Auto-DeepLab search and retraining to the paper and the released code (issue 15)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nasdeploy.spaces.autodeeplab import ADLSupernetConfig, AutoDeepLabSupernet

pytestmark = pytest.mark.usefixtures("one_thread")


def _conv_widths(head: nn.Module) -> set[int]:
    """Output widths of every conv inside a search head's ASPP (branches and projection)."""
    return {m.out_channels for m in head[0].modules() if isinstance(m, nn.Conv2d)}


@pytest.mark.parametrize("layers", [3, 4])
def test_search_heads_are_as_wide_as_their_nodes(layers):
    # Paper: each ASPP branch at stride s has B * F * s / 4 filters (F=2, B=2: 4, 8, 16, 32).
    model = AutoDeepLabSupernet(ADLSupernetConfig(layers=layers, filter_multiplier=2, blocks=2, num_classes=3,
                                                  stem_channels=4, mixer="reference"))
    expected = {j: 2 * 2 * 2**j for j in range(min(layers, 3) + 1)}
    assert {int(j): _conv_widths(h) for j, h in model.heads.items()} == {j: {c} for j, c in expected.items()}
    assert {int(j): h[0].branches[0][0].in_channels for j, h in model.heads.items()} == expected


def test_search_heads_fixed_width_override():
    model = AutoDeepLabSupernet(ADLSupernetConfig(layers=3, filter_multiplier=2, blocks=2, num_classes=3,
                                                  stem_channels=4, aspp_channels=6, mixer="reference"))
    assert all(_conv_widths(h) == {6} for h in model.heads.values())
