"""INT8 that pays or says why not: the CPU's INT8 flags, the speed verdict, the accuracy guard keeping layers in float."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from nasdeploy.export.int8_cpu import cpu_int8_support
from nasdeploy.export.int8_guard import keep_in_float, rank_layers, top1
from nasdeploy.export.int8_speed import speed_verdict
from nasdeploy.export.onnx import export_onnx
from nasdeploy.export.options import Int8Options
from nasdeploy.export.ort_int8 import OrtInt8Options
from nasdeploy.export.samples import ImageSample

SAPPHIRE = "processor : 0\nmodel name : Intel(R) Xeon(R) Platinum 8480+\nflags : fpu sse avx2 avx512bw avx512_vnni amx_int8\n"
EPYC_ROME = "processor : 0\nmodel name : AMD EPYC 7B12\nflags : fpu sse avx2 fma\n"
GRAVITON = "processor : 0\nFeatures : fp asimd asimddp i8mm\nCPU part : 0xd40\n"


def test_cpu_flags_decide_the_int8_kernels_and_activation_type():
    intel = cpu_int8_support(SAPPHIRE, "x86_64")
    assert intel.dot_product and intel.dot_flags == ("amx_int8", "avx512_vnni") and intel.missing == ("avx_vnni",)
    assert intel.activation_type() == "uint8" and "Platinum 8480+" in intel.describe()
    rome = cpu_int8_support(EPYC_ROME, "x86_64")
    assert not rome.dot_product and rome.present == ("avx2",)
    assert set(rome.missing) == {"amx_int8", "avx512_vnni", "avx_vnni"}
    arm = cpu_int8_support(GRAVITON, "aarch64")
    assert arm.dot_product and arm.present == ("asimddp", "i8mm") and arm.activation_type() == "int8"
    # uint8 activations without VNNI: onnxruntime's advice is 7-bit weights (vpmaddubsw saturates otherwise).
    assert OrtInt8Options().resolve(rome) == ("uint8", True) and OrtInt8Options().resolve(intel) == ("uint8", False)
    assert OrtInt8Options(activations="int8").resolve(rome) == ("int8", False)
    assert "UINT8 activations" in OrtInt8Options().scheme(intel) and "Entropy" in OrtInt8Options("entropy").scheme(intel)


def _lat(float_ms, int8_ms, contended=False):
    return {"float ort-cpu-1t": {"median_ms": float_ms, "contended": contended},
            "int8 ort-cpu-1t": {"median_ms": int8_ms, "contended": False}}


def test_speed_verdict_names_the_result_and_the_reason():
    rome = cpu_int8_support(EPYC_ROME, "x86_64")
    slow = speed_verdict("ort", _lat(0.71, 5.26), rome)
    assert slow.outcome == "slower" and slow.ratio == pytest.approx(5.26 / 0.71)
    assert "lacks amx_int8, avx512_vnni, avx_vnni" in slow.reason and "vpmaddubsw" in slow.reason
    assert "deploy the float model" in slow.recommendation
    line = slow.line()
    assert "INT8 slower than float" in line and "5.260 vs 0.710 ms" in line and "why:" in line
    intel = cpu_int8_support(SAPPHIRE, "x86_64")
    same = speed_verdict("executorch", _lat(0.90, 0.93, contended=True), intel, "a profile says so")
    assert same.outcome == "no faster" and "has the INT8 dot-product instructions" in same.reason
    assert "XNNPACK" in same.reason and "a profile says so" in same.reason
    assert same.contended and "quiet machine" in same.reason and "other processes competed" in same.line()
    fast = speed_verdict("ort", _lat(1.0, 0.5), intel)
    assert fast.outcome == "faster" and fast.reason == "" and fast.recommendation == ""
    assert speed_verdict("ort", {"float x": {"note": "no timer"}}, intel).outcome == "not measured"


def test_keep_in_float_stops_once_within_the_limit():
    """A fake quantizer: layer 'b' costs 5 points, 'c' 1 point, the others nothing; scored on 100 labelled images."""
    x = np.arange(100, dtype=np.float32).reshape(100, 1)
    y = np.zeros(100, dtype=np.int64)
    batches = [(x, y)]
    cost = {"a": 0, "b": 5, "c": 1, "d": 0}
    built = []

    def build(kept):
        built.append(kept)
        wrong = sum(v for k, v in cost.items() if k not in kept)

        def run(inp):
            logits = np.zeros((len(inp), 2), dtype=np.float32)
            logits[:, 0] = 1.0
            logits[inp[:, 0] < wrong, 1] = 2.0  # the first `wrong` images misclassified
            return [logits]
        return run

    float_run = build(tuple(cost))
    guard = keep_in_float(["a", "b", "c", "d"], build, float_run, 1.0, top1(build(()), batches), batches, batches,
                          max_drop=1.0, shortlist=3)
    assert guard.first_drop == pytest.approx(6.0)
    assert [name for name, _ in guard.shortlist] == ["b", "c", "a"]  # refined by leave-one-in-float
    assert guard.kept_in_float == ("b",) and guard.within and guard.drop == pytest.approx(1.0)
    assert "1 layer(s) kept in float (b)" in guard.line() and "loses 1.00 points" in guard.line()
    tight = keep_in_float(["a", "b", "c", "d"], build, float_run, 1.0, 0.94, batches, batches, max_drop=0.0,
                          shortlist=2, max_layers=2)
    # Never within: the smallest drop is kept (ties: fewer layers), and its file is the one left behind.
    assert [s.kept for s in tight.steps] == [("b",), ("b", "a")] and tight.kept_in_float == ("b",)
    assert not tight.within and "over the limit" in tight.line() and built[-1] == ("b",)


class _Fragile(nn.Module):
    """conv1 -> conv2 -> linear; conv2's every output channel has one weight 300x the others (INT8 rounds the rest to
    0), on an input channel that conv1 never activates (so in float the outlier changes nothing)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.fc = nn.Linear(16, 10, bias=False)  # no biases: the prediction depends on the input
        with torch.no_grad():
            self.conv2.weight[:, 0, 0, 0] = 300 * self.conv2.weight.abs().max()
            self.conv1.weight[0] = 0.0
            self.conv1.bias[0] = -1.0  # channel 0 is always 0 after the ReLU

    def forward(self, x):
        return self.fc(self.conv2(torch.relu(self.conv1(x))).mean((2, 3)))


def _labelled(model, n_batches, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        x = rng.standard_normal((32, 3, 8, 8)).astype(np.float32)
        with torch.no_grad():
            out.append((x, model(torch.from_numpy(x)).argmax(1).numpy()))
    return tuple(out)


def test_rank_layers_finds_the_fragile_layer():
    model = _Fragile().eval()
    val = _labelled(model, 2, 1)
    ranking = rank_layers(model, [x for x, _ in _labelled(model, 2, 2)], val)
    assert [name for name, _ in ranking][0] == "conv2" and ranking[0][1] > 10 * ranking[1][1]


def test_ort_int8_guard_keeps_the_fragile_layer_in_float(tmp_path):
    from nasdeploy.export.quantize import quantize_with_ort

    model = _Fragile().eval()
    onnx_path = export_onnx(model, tmp_path / "model.onnx", input_size=(3, 8, 8))
    val = ImageSample(_labelled(model, 4, 1), "128 labelled random images")
    calib = ImageSample(_labelled(model, 2, 2), "64 random images")
    res = quantize_with_ort(model, onnx_path, tmp_path / "model_int8.onnx", calib, val, input_shape=(3, 8, 8),
                            options=Int8Options(("ort",), max_drop=3.0))
    assert res.status == "ok", res.note
    assert res.float_metric == 1.0  # labels are the float model's own predictions
    guard = res.guard
    assert guard.first_drop > 10 and guard.kept_in_float[0] == "conv2" and guard.within and guard.drop <= 3.0
    assert res.int8_metric == pytest.approx(1.0 - guard.drop / 100)
    # The file written is the guarded one: conv2 runs in float, the other layers in INT8.
    graph = onnx.load(str(tmp_path / "model_int8.onnx")).graph
    producers = {o: n for n in graph.node for o in n.output}
    conv2 = next(n for n in graph.node if n.op_type == "Conv" and "conv2" in n.input[1])
    assert conv2.input[1] == "conv2.weight" and conv2.input[1] not in producers  # float weight, no DequantizeLinear
    conv1 = next(n for n in graph.node if n.op_type == "Conv" and n is not conv2)
    assert producers[conv1.input[1]].op_type == "DequantizeLinear"
    assert res.speed is not None and res.speed.outcome == "not measured"  # no timer given
    report = res.to_dict()
    assert report["kept_in_float"] == ["conv2"] and report["guard"]["line"].startswith("accuracy: INT8 lost")
    assert report["calibration_method"] == "minmax" and report["calibration_images"] == 64
    assert "conv2" in res.verdict and json.dumps(report)
