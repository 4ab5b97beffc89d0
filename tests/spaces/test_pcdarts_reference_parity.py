"""PC-DARTS parity with its reference implementation (github.com/yuhuixu1993/PC-DARTS), from committed fixtures.

The fixtures were produced by scripts/make_pcdarts_fixtures.py running the reference code (CPU,
float64, K = 4 partial channels as its MixedOp fixes; see tests/fixtures/README.md). nasdeploy's
supernet with partial_channels=4, on both mixed-op paths, must reproduce the forward output and the
first- and second-order gradients of the alphas AND the betas to 1e-10 relative, and derive the
genotype the reference's genotype() derives.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import relative_error, seeded_tensors
from nasdeploy.kernels.build import compiler_available
from nasdeploy.search.architect import Architect, ArchitectConfig
from nasdeploy.search.step import classification_loss
from nasdeploy.spaces.darts_cnn import DartsCnnSupernet
from nasdeploy.spaces.darts_cnn_derive import derive_genotype

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RTOL = 1e-10
pytestmark = pytest.mark.usefixtures("one_thread")  # float64 fixtures: one thread, as the fixture script ran
ARCH = ("alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce")
_NEEDS_KERNEL = pytest.mark.skipif(not compiler_available(), reason="no C++ compiler for the fused kernels")
# fused+recompute: the fused mixer with model.recompute_op_bodies (SepConv intermediates recomputed in backward).
MIXERS = ["reference", pytest.param("fused", marks=_NEEDS_KERNEL), pytest.param("fused+recompute", marks=_NEEDS_KERNEL)]


@pytest.fixture(scope="module")
def ref() -> dict:
    return torch.load(FIXTURES / "pcdarts_reference_supernet.pt", weights_only=True)


def build(ref: dict, mixed_op: str) -> tuple[DartsCnnSupernet, torch.optim.Optimizer]:
    s = ref["settings"]
    model = DartsCnnSupernet(channels=s["channels"], num_classes=s["num_classes"], layers=s["layers"], steps=s["steps"],
                          multiplier=s["multiplier"], partial_channels=s["partial_channels"],
                          mixed_op=mixed_op.removesuffix("+recompute"),
                          recompute_op_bodies=mixed_op.endswith("+recompute")).double()
    shapes = [(n, list(shape)) for n, shape in ref["parameter_shapes"]]
    weights = seeded_tensors(shapes, **s["weights"])
    momentum = seeded_tensors(shapes, **s["momentum_buffer"])
    arch = seeded_tensors([(n, list(shape)) for n, shape in ref["arch_shapes"]], **s["arch"])
    ours = dict(model.named_weight_parameters())
    assert set(ours) == set(weights), "PC-DARTS supernet parameter names differ from the reference's"
    opt = torch.optim.SGD(model.weight_parameters(), lr=s["lr"], momentum=s["momentum"], weight_decay=s["weight_decay"])
    with torch.no_grad():
        for n, p in ours.items():
            assert list(p.shape) == list(weights[n].shape), n
            p.copy_(weights[n])
            opt.state[p]["momentum_buffer"] = momentum[n].clone()
        for name, p in zip(ARCH, model.arch_parameters()):
            p.copy_(arch[name])
    return model.train(), opt


@pytest.mark.parametrize("mixed_op", MIXERS)
def test_forward_matches_reference(ref, mixed_op):
    model, _ = build(ref, mixed_op)
    assert model.mixed_op == mixed_op.removesuffix("+recompute")
    with torch.no_grad():
        logits = model(ref["x_valid"])
    assert relative_error(logits, ref["logits_valid"]) < RTOL


@pytest.mark.parametrize("mixed_op", MIXERS)
@pytest.mark.parametrize("order", ["first", "second"])
def test_alpha_and_beta_gradients_match_reference(ref, mixed_op, order):
    model, opt = build(ref, mixed_op)
    architect = Architect(model, classification_loss, opt, ArchitectConfig(order=order))
    assert len(architect.arch_params) == 4  # the betas are architecture parameters
    train, val = (ref["x_train"], ref["y_train"]), (ref["x_valid"], ref["y_valid"])
    if order == "first":
        grads = architect.first_order_grad(val)
    else:
        grads = architect.second_order_grad(train, val, ref["settings"]["eta"])
    expected = ref[f"{order}_order"]
    for g, name in zip(grads, ARCH):
        assert expected[name].abs().max() > 0, name
        assert relative_error(g, expected[name]) < RTOL, name


def test_derivation_matches_reference_genotype():
    data = json.loads((FIXTURES / "pcdarts_reference_derive.json").read_text(encoding="utf-8"))
    betas_decided = 0
    for case in data["cases"]:
        arch = {k: torch.tensor(v, dtype=torch.float64) for k, v in case["arch"].items()}
        g = derive_genotype(arch["alphas_normal"], arch["alphas_reduce"], steps=data["steps"],
                            multiplier=data["multiplier"], betas_normal=arch["betas_normal"],
                            betas_reduce=arch["betas_reduce"])
        assert [list(e) for e in g.normal] == case["normal"] and list(g.normal_concat) == case["normal_concat"]
        assert [list(e) for e in g.reduce] == case["reduce"] and list(g.reduce_concat) == case["reduce_concat"]
        plain = derive_genotype(arch["alphas_normal"], arch["alphas_reduce"], steps=data["steps"],
                                multiplier=data["multiplier"])
        betas_decided += plain != g
    assert betas_decided > 0  # the fixtures have cases where the betas change the derived cell


def test_fixture_provenance_is_recorded():
    info = json.loads((FIXTURES / "pcdarts_reference_info.json").read_text(encoding="utf-8"))
    assert len(info["commit"]) == 40 and info["dtype"] == "float64" and info["partial_channels"] == 4
    assert info["commit"] in (FIXTURES / "README.md").read_text(encoding="utf-8")
