"""Static Auto-DeepLab segmentation network: released shapes, op conventions, any input size, ONNX parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nasdeploy.errors import ConfigError, GenotypeError, InputSizeError
from nasdeploy.genotypes import get_genotype, make_autodeeplab_genotype
from nasdeploy.nets import build_network
from nasdeploy.nets.autodeeplab import AutoDeepLabCell
from nasdeploy.ops import AtrousConv, resize_bilinear, upsample2



pytestmark = pytest.mark.usefixtures("one_thread")  # tiny kernels: threads only add contention


SMALL = {"aspp_channels": 16, "decoder_channels": 16, "low_level_channels": 8}


def test_released_shapes_f10_321():
    model = build_network("AutoDeepLab", "segmentation", filter_multiplier=10).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, 321, 321))
    assert tuple(features[0].shape) == (1, 128, 81, 81)
    channels = [f.shape[1] for f in features[1:]]
    sizes = [f.shape[2] for f in features[1:]]
    assert channels == [50, 50, 50, 100, 200, 100, 200, 200, 400, 400, 200, 100]
    assert sizes == [81, 81, 81, 41, 21, 41, 21, 21, 11, 11, 21, 41]
    assert all(f.shape[2] == f.shape[3] for f in features)


def _sep(c, k):
    return 2 * (c * k * k + c * c + 2 * c)


def _atrous(c, k):
    return c * c * k * k + 2 * c


def test_cell_parameter_count_matches_released_ops():
    # Released ops: 4 sep 3x3, 3 sep 5x5 (two stacked depthwise-separable + BN), 2 DENSE atrous 5x5, 1 atrous 3x3.
    c, c_pp, c_p = 6, 11, 13
    cell = AutoDeepLabCell(get_genotype("AutoDeepLab").cell, c_pp, c_p, c, stride=1)
    expected = 4 * _sep(c, 3) + 3 * _sep(c, 5) + 2 * _atrous(c, 5) + _atrous(c, 3) + (c_pp + 2) * c + (c_p + 2) * c
    assert sum(p.numel() for p in cell.parameters()) == expected
    # H^{l-2} of the same width as the cell's blocks is used as is (the released `prev_1x1` is conditional).
    same = AutoDeepLabCell(get_genotype("AutoDeepLab").cell, c, c_p, c, stride=1)
    assert sum(p.numel() for p in same.parameters()) == expected - (c_pp + 2) * c


def test_atrous_conv_is_dense_rate_two_and_halves_bilinearly():
    op = AtrousConv(4, 4, 5, stride=1)
    assert op.conv.groups == 1 and op.conv.dilation == (2, 2) and op.conv.padding == (4, 4)
    strided = AtrousConv(4, 4, 3, stride=2)
    assert strided.conv.dilation == (1, 1)
    assert strided(torch.randn(1, 4, 81, 64)).shape[-2:] == (41, 32)


def test_resize_conventions():
    x = torch.randn(1, 2, 11, 21, dtype=torch.float64)
    assert upsample2(x).shape[-2:] == (21, 41)
    up = upsample2(x)
    # align_corners=True with (dim - 1) * 2 + 1 keeps every source pixel and averages neighbours in between.
    assert torch.equal(up[..., ::2, ::2], x)
    assert torch.allclose(up[..., 1, ::2], (x[..., 0, :] + x[..., 1, :]) / 2)
    assert torch.equal(resize_bilinear(x, (11, 21)), x)


@pytest.mark.parametrize("size", [(48, 64), (41, 59)])
def test_any_input_size_and_training_step(size):
    g = make_autodeeplab_genotype(get_genotype("AutoDeepLab").cell, [0, 1, 2, 3, 2, 1])
    model = build_network(g, "segmentation", filter_multiplier=2, num_classes=3, **SMALL)
    x = torch.randn(2, 3, *size)
    out = model(x)
    assert out.shape == (2, 3, *size)
    torch.nn.functional.cross_entropy(out, torch.randint(0, 3, (2, *size))).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.default_cfg.layers == 6 and model.default_cfg.extra["filter_multiplier"] == 2


def test_decoder_uses_last_stride4_cell_or_stem():
    g = get_genotype("AutoDeepLab")
    assert build_network(g, "segmentation", filter_multiplier=4, **SMALL)._low_index == 2
    no_stride4 = make_autodeeplab_genotype(g.cell, [1, 2, 2])
    model = build_network(no_stride4, "segmentation", filter_multiplier=4, num_classes=3, **SMALL)
    assert model._low_index == -1 and model.decoder.project_low[0].in_channels == 128
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 33, 33)).shape == (1, 3, 33, 33)


def test_variants_and_errors():
    s = build_network("AutoDeepLab", "segmentation")
    assert s.default_cfg.channels == 20 and s.default_cfg.input_size == (3, 1024, 2048) and s.default_cfg.num_classes == 19
    with pytest.raises(GenotypeError, match="expected 'autodeeplab'"):
        build_network("DARTS_V2", "segmentation")
    with pytest.raises(ConfigError, match="filter_multiplier must be a positive integer"):
        build_network("AutoDeepLab", "segmentation", filter_multiplier=0)
    with pytest.raises(ConfigError, match="does not match the genotype path"):
        build_network("AutoDeepLab", "segmentation", layers=5)
    with pytest.raises(InputSizeError, match=r"expects input of shape \(batch, 3, H, W\)"):
        s(torch.randn(1, 1, 32, 32))


def test_onnx_parity_at_two_sizes_and_batches(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    g = make_autodeeplab_genotype(get_genotype("AutoDeepLab").cell, [0, 1, 2, 1])  # a down and an up move
    model = build_network(g, "segmentation", filter_multiplier=4, num_classes=5, **SMALL).eval()
    path = tmp_path / "autodeeplab.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 65, 97),), str(path), dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 65, 97), (3, 3, 96, 128)]:  # 96 is not 4k+1: the up move rounds differently
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = model(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", ["S", "M", "L"])
def test_published_parameter_counts_and_recomputed_macs(variant):
    from torch.utils.flop_counter import FlopCounterMode

    from nasdeploy.genotypes import PUBLISHED_COSTS

    costs = PUBLISHED_COSTS["AutoDeepLab"]["segmentation"][variant]
    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        model = build_network("AutoDeepLab", "segmentation", filter_multiplier=costs["filter_multiplier"]).eval()
    params = sum(p.numel() for p in model.parameters())
    assert params == costs["params"]
    assert round(params / 1e6, 2) == round(costs["published_params"] / 1e6, 2)  # the paper's 10.15M / 21.62M / 44.42M
    if variant == "S":
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.empty(1, 3, 1024, 2048, device="meta"))
        assert counter.get_total_flops() // 2 == costs["macs"]


def test_segmentation_net_exports_through_the_generic_export_command(tmp_path):
    """`nasdeploy export AutoDeepLab --net segmentation` builds, exports and passes parity at two sizes."""
    import json

    from nasdeploy.cli.main import main

    out = tmp_path / "seg"
    try:
        # Untrained weights get randomised BN statistics; their larger activations take float32 rounding through the
        # resizes to ~1e-4, so the tolerance here is 5e-4 (a trained net passes the default 1e-5).
        main(["export", "AutoDeepLab", "--net", "segmentation", "--channels", "4", "--input-size", "33", "--out", str(out),
              "--atol", "5e-4"])
    except SystemExit as exc:
        assert not exc.code
    parity = json.loads((out / "parity_onnx.json").read_text())
    assert parity["passed"] is True
    assert len({tuple(c["input_shape"][2:]) for c in parity["cases"]}) == 2
