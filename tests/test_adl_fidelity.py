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


class _RecordingThreshold(nn.Module):
    """A per-pixel 'network': class 1 where channel 0 > 0.5; records each input it is given."""

    def __init__(self):
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        fg = (x[:, :1] > 0.5).float()
        return torch.cat([1 - fg, fg], dim=1)


def _border_lines(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A normalised image and labels with one-pixel lines of class 1 on the last row and last column."""
    label = torch.zeros(h, w, dtype=torch.int64)
    label[-1, :] = 1
    label[:, -1] = 1
    label[0, 0] = 255  # an ignored pixel stays ignored
    image = torch.full((3, h, w), -1.0)
    image[:, label == 1] = 1.0
    return image, label


def test_validation_runs_at_32k_plus_1_and_crops_logits_back():
    from nasdeploy.tasks.segmentation import evaluate_miou

    sizes = [(64, 64), (40, 97), (33, 65)]
    data = [_border_lines(h, w) for h, w in sizes]
    model = _RecordingThreshold()
    metrics = evaluate_miou(model, torch.utils.data.DataLoader(data, batch_size=1), 2, torch.device("cpu"))
    seen = [tuple(x.shape[-2:]) for x in model.inputs]
    assert seen == [(65, 65), (65, 97), (33, 65)]  # the smallest 32k + 1 at or above each size
    for x, (image, _) in zip(model.inputs, data):
        h, w = image.shape[-2:]
        assert torch.equal(x[0, :, :h, :w], image)  # the image sits top-left, unmoved
        assert (x[0, :, h:, :] == 0).all() and (x[0, :, :, w:] == 0).all()  # padded with the normalised mean
    # The one-pixel lines at the bottom and right border are predicted exactly where they are labelled.
    assert metrics == {"miou": 1.0, "pixel_acc": 1.0}
    unpadded = _RecordingThreshold()
    evaluate_miou(unpadded, torch.utils.data.DataLoader(data, batch_size=1), 2, torch.device("cpu"), pad_multiple=0)
    assert [tuple(x.shape[-2:]) for x in unpadded.inputs] == sizes


def test_padded_eval_makes_the_static_net_see_exact_sizes():
    # At 32k+1 every stride level of the static net is (dim - 1) / 2^k + 1: the ASPP output resized to the
    # stride-4 grid (align_corners) puts coarse pixel i exactly on fine pixel 8 i.
    from nasdeploy.genotypes import resolve_genotype
    from nasdeploy.nets import build_network
    from nasdeploy.tasks.segmentation import padded_logits

    torch.manual_seed(0)
    net = build_network(resolve_genotype("AutoDeepLab", expected_kind="autodeeplab"), "segmentation",
                        filter_multiplier=2, num_classes=3, aspp_channels=4, decoder_channels=4,
                        low_level_channels=4).eval()
    shapes = []
    net.cells[-1].register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[-2:])))
    with torch.no_grad():
        out = padded_logits(net, torch.randn(1, 3, 40, 70))
    assert out.shape == (1, 3, 40, 70)
    (h8, w8), = shapes  # the last cell is at stride 8 on the published path; padded input 65 x 97
    assert ((h8 - 1) * 8 + 1, (w8 - 1) * 8 + 1) == (65, 97)
