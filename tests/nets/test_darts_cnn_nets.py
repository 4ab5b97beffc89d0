"""Static networks from genotypes: published parameter counts, shapes, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nasdeploy.errors import ConfigError, GenotypeError, InputSizeError
from nasdeploy.genotypes import PUBLISHED_COSTS, list_genotypes
from nasdeploy.nets import build_network

CNN_GENOTYPES = list_genotypes("cnn_cell")
# state_dict keys and shapes of the reference implementation's networks (tests/fixtures/README.md).
REFERENCE_KEYS = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "darts_reference_network_keys.json").read_text("utf-8"))


def n_params(model: torch.nn.Module, with_aux: bool = False) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if with_aux or not n.startswith("auxiliary_head"))


def test_darts_v2_cifar_published_counts():
    model = build_network("DARTS_V2", "cifar", channels=36, layers=20, num_classes=10)
    costs = PUBLISHED_COSTS["DARTS_V2"]["cifar"]
    assert n_params(model) == costs["params"] == 3_349_342
    assert n_params(model, with_aux=True) == costs["params_with_aux"] == 3_825_768


def test_darts_v2_imagenet_published_count():
    model = build_network("DARTS_V2", "imagenet", channels=48, layers=14, num_classes=1000)
    assert n_params(model) == PUBLISHED_COSTS["DARTS_V2"]["imagenet"]["params"] == 4_718_752


def test_reference_module_names():
    model = build_network("DARTS_V2", "cifar")
    names = set(dict(model.named_parameters()))
    for expected in (
        "stem.0.weight",
        "cells.0.preprocess0.op.1.weight",
        "cells.0._ops.0.op.1.weight",
        "cells.7.preprocess0.conv_1.weight",  # reduction_prev -> FactorizedReduce
        "auxiliary_head.features.2.weight",
        "auxiliary_head.classifier.weight",
        "classifier.weight",
    ):
        assert expected in names, expected
    imagenet = dict(build_network("DARTS_V2", "imagenet").named_parameters())
    assert "stem0.0.weight" in imagenet and "stem1.1.weight" in imagenet
    assert "cells.0.preprocess0.conv_2.weight" in imagenet


@pytest.mark.parametrize("genotype", CNN_GENOTYPES)
@pytest.mark.parametrize("net, size", [("cifar", 32), ("imagenet", 224)])
def test_every_genotype_builds_and_trains(genotype, net, size):
    # Small widths keep the suite fast; the structure (cells, reductions, heads) is the full one.
    model = build_network(genotype, net, channels=8, layers=8 if net == "cifar" else 6, num_classes=7, drop_path_prob=0.2)
    x = torch.randn(2, 3, size, size)
    model.train()
    logits, aux = model(x)
    assert logits.shape == (2, 7) and aux.shape == (2, 7)
    (logits.sum() + 0.4 * aux.sum()).backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 7)


@pytest.mark.parametrize("size", [192, 256])
def test_imagenet_net_accepts_other_sizes(size):
    model = build_network("DARTS_V2", "imagenet", channels=8, layers=6, num_classes=5)
    model.train()
    logits, aux = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 5) and aux.shape == (2, 5)
    model.eval()
    assert model(torch.randn(1, 3, size, size)).shape == (1, 5)


def test_state_dict_round_trip_strict():
    torch.manual_seed(1)
    a = build_network("NASNet", "cifar", channels=8, layers=5)
    # Move BN statistics away from their defaults so the check covers buffers too.
    a.train()
    with torch.no_grad():
        a(torch.randn(4, 3, 32, 32))
    torch.manual_seed(2)
    b = build_network("NASNet", "cifar", channels=8, layers=5)
    b.load_state_dict(a.state_dict(), strict=True)
    a.eval()
    b.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_drop_path_only_in_training():
    model = build_network("DARTS_V2", "cifar", channels=8, layers=5, drop_path_prob=0.5, auxiliary=False)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    y1 = model(x)
    torch.manual_seed(1)
    y2 = model(x)
    assert not torch.allclose(y1, y2)


def test_bad_inputs_give_clear_errors():
    model = build_network("DARTS_V2", "imagenet", channels=8, layers=6)
    with pytest.raises(InputSizeError, match=r"expects input of shape \(batch, 3, H, W\), got \(2, 1, 64, 64\)"):
        model(torch.randn(2, 1, 64, 64))
    with pytest.raises(InputSizeError, match="needs H and W >= 32"):
        model(torch.randn(1, 3, 16, 16))
    with pytest.raises(ConfigError, match="unknown network 'mobile'"):
        build_network("DARTS_V2", "mobile")
    with pytest.raises(GenotypeError, match="expected 'cnn_cell'"):
        build_network("DARTS_V2_RNN", "cifar")
    with pytest.raises(ConfigError, match="channels must be even"):
        build_network("DARTS_V2", "cifar", channels=15)


def test_default_cfg_is_attached():
    model = build_network("DARTS_V2", "imagenet", channels=16)
    assert model.default_cfg.input_size == (3, 224, 224) and model.default_cfg.channels == 16


def test_reference_key_fixture_covers_every_registry_cnn_genotype():
    assert set(REFERENCE_KEYS["cifar"]) == set(REFERENCE_KEYS["imagenet"]) == set(CNN_GENOTYPES)


@pytest.mark.parametrize("genotype", sorted(REFERENCE_KEYS["cifar"]))
@pytest.mark.parametrize("net", ["cifar", "imagenet"])
def test_reference_checkpoint_of_every_genotype_loads_strictly(genotype, net):
    # A state_dict with exactly the reference network's keys and shapes (as a reference-trained
    # checkpoint has) must load with strict=True, and ours must have no key the reference lacks.
    s = REFERENCE_KEYS["settings"][net]
    model = build_network(genotype, net, channels=s["C"], layers=s["layers"], num_classes=s["num_classes"],
                          auxiliary=s["auxiliary"])
    expected = REFERENCE_KEYS[net][genotype]
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == expected
    g = torch.Generator().manual_seed(0)
    checkpoint = {k: torch.randint(0, 5, shape, generator=g) if k.endswith("num_batches_tracked")
                  else torch.rand(shape, generator=g) + 0.5 for k, shape in expected.items()}
    model.load_state_dict(checkpoint, strict=True)
    assert all(torch.equal(v, checkpoint[k]) for k, v in model.state_dict().items())
