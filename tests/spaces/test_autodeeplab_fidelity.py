"""Fidelity of the Auto-DeepLab search and retraining to the paper and the released code (issue 15)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nasdeploy.config.autodeeplab import AutoDeepLabSupernetConfig, AutoDeepLabTrainConfig
from nasdeploy.spaces.autodeeplab import AutoDeepLabSupernet
from nasdeploy.utils.yamlconfig import from_dict

pytestmark = pytest.mark.usefixtures("one_thread")


def _conv_widths(head: nn.Module) -> set[int]:
    """Output widths of every conv inside a search head's ASPP (branches and projection)."""
    return {m.out_channels for m in head[0].modules() if isinstance(m, nn.Conv2d)}


@pytest.mark.parametrize("layers", [3, 4])
def test_search_heads_are_as_wide_as_their_nodes(layers):
    # Paper: each ASPP branch at stride s has B * F * s / 4 filters (F=2, B=2: 4, 8, 16, 32).
    model = AutoDeepLabSupernet(AutoDeepLabSupernetConfig(layers=layers, filter_multiplier=2, blocks=2, num_classes=3,
                                                  stem_channels=4, mixed_op="reference"))
    expected = {j: 2 * 2 * 2**j for j in range(min(layers, 3) + 1)}
    assert {int(j): _conv_widths(h) for j, h in model.heads.items()} == {j: {c} for j, c in expected.items()}
    assert {int(j): h[0].branches[0][0].in_channels for j, h in model.heads.items()} == expected


def test_search_heads_fixed_width_override():
    model = AutoDeepLabSupernet(AutoDeepLabSupernetConfig(layers=3, filter_multiplier=2, blocks=2, num_classes=3,
                                                  stem_channels=4, aspp_channels=6, mixed_op="reference"))
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


def _small_net(**kwargs):
    from nasdeploy.genotypes import resolve_genotype
    from nasdeploy.nets import build_network

    return build_network(resolve_genotype("AutoDeepLab", expected_kind="autodeeplab"), "segmentation",
                         filter_multiplier=2, num_classes=3, aspp_channels=4, decoder_channels=4,
                         low_level_channels=4, **kwargs)


def test_bn_momentum_and_eps_reach_every_batchnorm():
    bns = [m for m in _small_net(bn_momentum=3e-4, bn_eps=1e-3).modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) > 50 and {(m.momentum, m.eps) for m in bns} == {(3e-4, 1e-3)}
    assert {(m.momentum, m.eps) for m in _small_net().modules() if isinstance(m, nn.BatchNorm2d)} == {(0.1, 1e-5)}


def test_scheduled_drop_path_is_layer_scaled_and_off_in_eval(monkeypatch):
    import nasdeploy.nets.autodeeplab as autodeeplab_net

    calls: list[float] = []
    real = autodeeplab_net.drop_path
    monkeypatch.setattr(autodeeplab_net, "drop_path", lambda x, p: calls.append(p) or real(x, p))
    torch.manual_seed(0)
    net = _small_net()
    net.drop_path_prob = 0.24
    net.train()
    net(torch.randn(2, 3, 33, 33))
    # The published cell has 10 ops, none a skip: each is dropped, cell i of 12 at 0.24 * (i + 1) / 12.
    expected = [0.24 * (i + 1) / 12 for i in range(12) for _ in range(10)]
    assert calls == pytest.approx(expected)
    calls.clear()
    net.eval()
    with torch.no_grad():
        net(torch.randn(1, 3, 33, 33))
    assert calls == []


def test_training_ramps_drop_path_and_stores_bn_settings(tmp_path, monkeypatch):
    import json

    import nasdeploy.nets.autodeeplab as autodeeplab_net
    from nasdeploy.train.autodeeplab_loop import load_segmentation_model, run_training

    seen: list[float] = []
    real = autodeeplab_net.drop_path
    monkeypatch.setattr(autodeeplab_net, "drop_path", lambda x, p: seen.append(p) or real(x, p))
    cfg = from_dict(AutoDeepLabTrainConfig, {
        "net": {"filter_multiplier": 2, "aspp_channels": 4, "decoder_channels": 4, "low_level_channels": 4,
                "bn_momentum": 3e-4, "bn_eps": 1e-3},
        "data": {"dataset": "synthetic", "image_size": [32, 32], "num_train": 2, "num_val": 1, "crop_size": [32, 32]},
        "train": {"epochs": 2, "batch_size": 2, "steps_per_epoch": 2, "threads": 1, "drop_path_prob": 0.4},
    })
    result = run_training(cfg, None, tmp_path, progress=False)
    # Linear in the iteration over 4 steps: 0 (no drop), 0.1, 0.2, 0.3; 12 cells x 10 ops per forward,
    # the last cell at the full value.
    assert len(seen) == 3 * 120
    assert [max(seen[i:i + 120]) for i in range(0, 360, 120)] == pytest.approx([0.1, 0.2, 0.3])
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["drop_path_prob"] for r in records] == pytest.approx([0.1, 0.3])
    model = load_segmentation_model(result.model_path)
    assert {(m.momentum, m.eps) for m in model.modules() if isinstance(m, nn.BatchNorm2d)} == {(3e-4, 1e-3)}


@pytest.mark.parametrize("section, key, value, match", [
    ("train", "drop_path_prob", 1.0, "drop_path_prob must be in"),
    ("net", "bn_momentum", 0.0, "bn_momentum must be in"),
    ("net", "bn_eps", -1e-3, "bn_eps must be positive"),
])
def test_recipe_options_are_validated(section, key, value, match):
    from nasdeploy.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        from_dict(AutoDeepLabTrainConfig, {section: {key: value}})


def test_cityscapes_train_config_carries_the_published_recipe():
    from pathlib import Path

    import yaml


    root = Path(__file__).resolve().parents[2]
    cfg = from_dict(AutoDeepLabTrainConfig, yaml.safe_load((root / "configs" / "autodeeplab_cityscapes_train.yaml").read_text()))
    assert (cfg.net.bn_momentum, cfg.net.bn_eps) == (pytest.approx(1 - 0.9997), 1e-3)
    assert cfg.train.epochs * cfg.train.steps_per_epoch == 1_500_000 and cfg.train.drop_path_prob > 0
    demo = from_dict(AutoDeepLabTrainConfig, yaml.safe_load((root / "configs" / "autodeeplab_demo_train.yaml").read_text()))
    assert demo.train.drop_path_prob == 0 and demo.net.bn_momentum == 0.1  # the demo stays quick to converge


class _TinyArchModel(nn.Module):
    """y = (w x) * softmax(alpha)[0]: one weight and one architecture parameter, for Architect.step."""

    def __init__(self):
        super().__init__()
        self.w = nn.Linear(3, 1, bias=False)
        self.alpha = nn.Parameter(torch.tensor([0.3, -0.2]))

    def arch_parameters(self):
        return [self.alpha]

    def weight_parameters(self):
        return iter([self.w.weight])

    def forward(self, x):
        return self.w(x) * torch.softmax(self.alpha, 0)[0]


@pytest.mark.parametrize("order", ["first", "second"])
def test_architect_step_returns_the_architecture_loss(order):
    from nasdeploy.search.architect import Architect, ArchitectConfig

    torch.manual_seed(0)
    model = _TinyArchModel()
    loss_fn = lambda forward, batch: ((forward(batch[0]) - batch[1]) ** 2).mean()  # noqa: E731
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=0.1, momentum=0.9)
    architect = Architect(model, loss_fn, w_opt, ArchitectConfig(order=order, lr=0.1))
    train, val = (torch.randn(4, 3), torch.randn(4, 1)), (torch.randn(4, 3), torch.randn(4, 1))
    if order == "first":
        with torch.no_grad():
            expected = loss_fn(model, val)
    else:  # L_val at the unrolled weights w' = w - eta * grad_w L_train (no momentum buffer, no wd yet)
        g = torch.autograd.grad(loss_fn(model, train), [model.w.weight])[0]
        with torch.no_grad():
            w_unrolled = model.w.weight - 0.05 * g
            expected = (((val[0] @ w_unrolled.T) * torch.softmax(model.alpha, 0)[0] - val[1]) ** 2).mean()
    alpha_before = model.alpha.detach().clone()
    loss = architect.step(train, val, eta=0.05)
    assert not loss.requires_grad and loss.dim() == 0
    torch.testing.assert_close(loss, expected)
    assert not torch.equal(model.alpha.detach(), alpha_before)  # it still steps


def test_search_logs_the_arch_loss_without_an_extra_forward(tmp_path, monkeypatch):
    import json

    from nasdeploy.config.autodeeplab import AutoDeepLabSearchConfig
    from nasdeploy.search.autodeeplab_loop import run_search
    from nasdeploy.utils.checkpoint import load_checkpoint

    training_forwards = []
    real_forward = AutoDeepLabSupernet.forward

    def counting_forward(self, x):
        if self.training:
            training_forwards.append(x.shape[0])
        return real_forward(self, x)

    monkeypatch.setattr(AutoDeepLabSupernet, "forward", counting_forward)
    cfg = from_dict(AutoDeepLabSearchConfig, {
        "supernet": {"layers": 2, "filter_multiplier": 2, "blocks": 2, "stem_channels": 4, "mixed_op": "reference"},
        "data": {"dataset": "synthetic", "image_size": [32, 32], "num_train": 4, "num_val": 1, "crop_size": [32, 32]},
        "search": {"epochs": 1, "arch_start_epoch": 0, "batch_size": 2, "steps_per_epoch": 2, "threads": 1},
    })
    run_search(cfg, tmp_path, progress=False)
    # Per step: one architecture forward on half B and one weight forward on half A, nothing else.
    assert len(training_forwards) == 2 * 2
    state = load_checkpoint(tmp_path / "checkpoint.pt")["model"]
    tracked = {k: int(v) for k, v in state.items() if k.endswith("num_batches_tracked")}
    assert tracked and set(tracked.values()) == {4}  # BN statistics moved by those 4 batches only
    (record,) = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert record["arch_loss"] is not None and record["arch_loss"] > 0
