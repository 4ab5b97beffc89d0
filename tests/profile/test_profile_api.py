"""Profiler complexity: published DARTS counts, the MAC convention, breakdowns, activation memory."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nasdeploy.errors import ConfigError, InputSizeError
from nasdeploy.genotypes import PUBLISHED_COSTS, get_genotype
from nasdeploy.nets import build_network
from nasdeploy.profile import MOBILE_MAC_LIMIT, model_complexity, mobile_verdict, profile_model

REL_TOL = 1e-3  # "within 0.1%" of the published convention numbers


@pytest.fixture(scope="module")
def imagenet_profile():
    # The full-size network, counted once for every test in this module.
    return profile_model(build_network("DARTS_V2", "imagenet"), name="DARTS_V2", environment={})


@pytest.fixture(scope="module")
def cifar_profile():
    return profile_model(build_network("DARTS_V2", "cifar"), name="DARTS_V2", environment={})


def test_darts_v2_imagenet_matches_published(imagenet_profile):
    costs = PUBLISHED_COSTS["DARTS_V2"]["imagenet"]
    c = imagenet_profile.complexity
    assert c.params == costs["params"] == 4_718_752
    assert abs(c.macs - 529.9e6) / 529.9e6 < REL_TOL
    assert abs(c.macs - costs["macs"]) / costs["macs"] < REL_TOL
    assert c.input_shape == (3, 224, 224)
    assert isinstance(c.macs, int) and isinstance(c.params, int)


def test_darts_v2_cifar_matches_published(cifar_profile):
    costs = PUBLISHED_COSTS["DARTS_V2"]["cifar"]
    c = cifar_profile.complexity
    assert c.params == costs["params"] == 3_349_342
    assert c.params_with_aux == costs["params_with_aux"] == 3_825_768
    assert abs(c.macs - 528.4e6) / 528.4e6 < REL_TOL


def test_mobile_verdict(imagenet_profile, cifar_profile):
    v = imagenet_profile.mobile
    assert v.applies and v.passed
    assert v.margin_macs == MOBILE_MAC_LIMIT - imagenet_profile.macs
    assert v.label().startswith("pass (70.1M under")
    assert not cifar_profile.mobile.applies and cifar_profile.mobile.passed is None
    over = mobile_verdict(612_000_000, (3, 224, 224))
    assert over.applies and not over.passed and over.margin_macs == -12_000_000 and "FAIL (12.0M over)" == over.label()


@pytest.mark.parametrize("which", ["imagenet", "cifar"])
def test_breakdowns_add_up(which, imagenet_profile, cifar_profile):
    c = (imagenet_profile if which == "imagenet" else cifar_profile).complexity
    for items in (c.stages, c.ops):
        assert sum(i.macs for i in items) == c.macs
        assert sum(i.params for i in items) == c.params_with_aux
        assert all(i.name != "(other)" for i in items)  # everything attributed to a named part
    names = [s.name for s in c.stages]
    layers = 14 if which == "imagenet" else 20
    assert names[-2:] == ["auxiliary_head", "head"] or names[-1] == "head"
    assert [n for n in names if n.startswith("cells.")] == [f"cells.{i}" for i in range(layers)]
    kinds = {s.name: s.kind for s in c.stages}
    assert kinds[f"cells.{layers // 3}"] == "cell-reduce" and kinds["cells.0"] == "cell-normal"


def test_op_breakdown_counts_follow_the_genotype(cifar_profile):
    g = get_genotype("DARTS_V2")
    normal_cells, reduce_cells = 18, 2  # 20 layers, reductions at 6 and 13
    ops = {i.name: i for i in cifar_profile.complexity.ops}
    for name in ("sep_conv_3x3", "skip_connect", "dil_conv_3x3", "max_pool_3x3"):
        expected = normal_cells * sum(op == name for op, _ in g.normal) + reduce_cells * sum(op == name for op, _ in g.reduce)
        assert ops[name].count == expected, name
    assert ops["max_pool_3x3"].macs == 0 and ops["skip_connect"].macs == 0  # pooling / identity not counted

    def sep_conv(c, hw):  # two (depthwise 3x3 + pointwise 1x1) pairs at stride 1
        return 2 * (hw * hw * c * 9 + hw * hw * c * c)

    # 5 sep_conv_3x3 per normal cell, 6 normal cells at each of (C=36, 32x32), (72, 16x16), (144, 8x8).
    assert ops["sep_conv_3x3"].macs == 5 * 6 * (sep_conv(36, 32) + sep_conv(72, 16) + sep_conv(144, 8))


class _Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.dw = nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4, bias=False)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn(self.conv(x))))
        return self.fc(self.dw(x).flatten(1))


def test_macs_follow_the_convention_exactly():
    c = model_complexity(_Small(), (3, 8, 8))
    # conv: out 8x8x4, 3*3*3 MACs each; depthwise: out 4x4x4, 3*3 each; fc 64 -> 5. BN, ReLU, pool: 0.
    assert c.macs == 8 * 8 * 4 * 27 + 4 * 4 * 4 * 9 + 64 * 5
    assert c.params == sum(p.numel() for p in _Small().parameters())


def test_macs_do_not_depend_on_the_counting_batch():
    model = build_network("DARTS_V2", "cifar", channels=8, layers=5, num_classes=3)
    one = model_complexity(model, (3, 32, 32), count_batch=1, activations=False)
    three = model_complexity(model, (3, 32, 32), count_batch=3, activations=False)
    assert one.macs == three.macs
    assert [(s.name, s.macs) for s in one.stages] == [(s.name, s.macs) for s in three.stages]


def test_activation_memory_is_exact_on_a_chain():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.Flatten(), nn.Linear(128, 5))
    a = model_complexity(model, (3, 8, 8)).activations
    conv1 = relu = 4 * 8 * 8 * 4  # float32 bytes
    conv2, fc = 2 * 8 * 8 * 4, 5 * 4
    assert a.total_bytes == conv1 + relu + conv2 + fc  # Flatten is a view: no new storage
    assert a.peak_bytes == max(conv1 + relu, relu + conv2)
    assert a.batch == 1


def test_model_mode_is_restored_and_bad_sizes_fail_cleanly():
    model = build_network("DARTS_V2", "imagenet", channels=8, layers=5, num_classes=3)
    model.train()
    model_complexity(model, (3, 64, 64), activations=False)
    assert model.training
    with pytest.raises(InputSizeError):
        model_complexity(model, (3, 16, 16))
    with pytest.raises(ConfigError):
        model_complexity(model, (3, 0, 64))
    with pytest.raises(ConfigError):
        profile_model(nn.Linear(3, 3), environment={})  # no default input size known
