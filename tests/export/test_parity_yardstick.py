"""Parity that never fails by chance and still catches a wrong graph: seeds, the float64 yardstick, the first diverging node."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from helpers import randomize_bn_
from nasdeploy.export.api import export_target
from nasdeploy.export.onnx import export_onnx
from nasdeploy.export.onnx_parity import check_onnx_parity
from nasdeploy.export.options import ExportOptions
from nasdeploy.export.parity import ToleranceError, compare_with_torch
from nasdeploy.export.request import ExportRequest, NetSizes
from nasdeploy.nets import build_network


@pytest.fixture(scope="module")
def small_darts(tmp_path_factory):
    """A small DARTS_V2 CIFAR net with realistic BN statistics and its ONNX export."""
    torch.manual_seed(0)
    model = randomize_bn_(build_network("DARTS_V2", "cifar", channels=8, layers=3, num_classes=7)).eval()
    path = export_onnx(model, tmp_path_factory.mktemp("yard") / "model.onnx", input_size=(3, 32, 32),
                       output_names=["logits"])
    return model, path


def _broken(path, tmp_path, edit) -> str:
    proto = onnx.load(str(path))
    edit(proto.graph)
    out = tmp_path / "broken.onnx"
    onnx.save(proto, str(out))
    return str(out)


def test_a_relu_turned_identity_fails_and_is_named(small_darts, tmp_path):
    model, path = small_darts
    assert check_onnx_parity(model, path, batch_sizes=(2,)).passed
    relu = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Relu"][5]

    def edit(graph):
        next(n for n in graph.node if n.name == relu.name).op_type = "Identity"

    with pytest.raises(ToleranceError) as info:
        check_onnx_parity(model, _broken(path, tmp_path, edit), batch_sizes=(2,))
    where = info.value.divergence
    assert where is not None and where.node == relu.name and where.op_type == "Identity"
    # The exporter's own record of the module this node came from, independently of the localiser's mapping.
    scopes = next(p.value for p in relu.metadata_props if p.key == "pkg.torch.onnx.name_scopes")
    assert repr(where.module) in scopes and where.module_type == "ReLU"
    assert where.max_abs_err > where.tolerance and where.compared > 1
    assert f"first diverging node {relu.name} (Identity)" in str(info.value)
    assert info.value.report.to_dict()["first_divergence"].startswith("first diverging node")


def test_one_wrong_conv_weight_fails_and_is_named(small_darts, tmp_path):
    model, path = small_darts
    conv = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"][7]

    def edit(graph):
        init = next(t for t in graph.initializer if t.name == conv.input[1])
        w = numpy_helper.to_array(init).copy()
        w *= -1  # one conv with the wrong sign (a per-channel 10% error moved the logits by only 2e-5 of their scale)
        init.CopyFrom(numpy_helper.from_array(w, init.name))

    report = check_onnx_parity(model, _broken(path, tmp_path, edit), batch_sizes=(1, 2), raise_on_failure=False)
    assert not report.passed and report.divergence is not None
    assert report.divergence.node == conv.name and report.divergence.op_type == "Conv"
    assert conv.input[1].startswith(report.divergence.module + ".")  # the weight is '<that module>.weight'
    # Far beyond the yardstick: the wrong graph is not within float32 rounding noise.
    assert report.max_abs_err > 100 * max(c.atol_eff for c in report.cases)


class _Offset(nn.Module):
    """Logits of size ~1 computed through a large intermediate (+1e5 then -1e5): float32 rounding alone is ~6e-3."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.body = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x):
        return (self.body(x) + 1e5) - 1e5


def test_yardstick_scales_with_the_output_and_still_catches_a_wrong_result():
    model = _Offset().eval()
    twin = _Offset().double().eval()

    def rounded(x):  # an exact computation rounded to float32: as good as any float32 runtime can be
        with torch.no_grad():
            return [twin(torch.from_numpy(x).double()).float().numpy()]

    shapes = [(4, 3, 8, 8)] * 3
    plain = compare_with_torch(model, rounded, shapes, runtime="exact", seed=0, yardstick=0)
    assert not plain.passed and plain.criterion.startswith("|runtime - torch| <= atol + rtol")
    report = compare_with_torch(model, rounded, shapes, runtime="exact", seed=0)
    assert report.passed and report.yardstick == 10
    for case in report.cases:
        assert case.float64_err is not None and case.atol_eff == pytest.approx(max(1e-5, 10 * case.float64_err))
    assert "10 * max|torch float32 - torch float64|" in report.to_dict()["criterion"]

    def wrong(x):  # one logit off by the output's spread
        out = rounded(x)[0].copy()
        out[:, 3] += out.std()
        return [out]

    failed = compare_with_torch(model, wrong, shapes, runtime="wrong", seed=0)
    assert not failed.passed and isinstance(failed.failure(), ToleranceError)


def _weights(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_the_seed_covers_untrained_weights_and_is_recorded(tmp_path):
    def export(seed, out):
        return export_target(ExportRequest("DARTS_V2", net="cifar", out_dir=tmp_path / out,
                                           options=ExportOptions(seed=seed), sizes=NetSizes(channels=4, layers=2)))

    first, again, other = export(3, "a"), export(3, "b"), export(4, "c")
    a, b, c = (_weights(tmp_path / d / "model.onnx") for d in "abc")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)
    assert first.parity["onnx"].seed == 3 and again.seed == 3 and other.seed == 4
    assert json.loads((tmp_path / "a" / "export.json").read_text())["seed"] == 3
    assert ExportOptions().seed == 0  # seeded by default
