"""Profiling .onnx files: graph-walk MACs and initializer params against FlopCounterMode, ORT latency, CLI."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from nasdeploy.cli.main import main
from nasdeploy.errors import ConfigError
from nasdeploy.nets import build_network
from nasdeploy.profile import LatencyConfig, measure_latency, model_complexity
from nasdeploy.export.onnx import export_onnx
from nasdeploy.profile.onnx_complexity import onnx_complexity


class _Mixed(nn.Module):
    """Every op type the ONNX walker counts, with nontrivial groups, dilation and transposition."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=2, dilation=2)
        self.dw = nn.Conv2d(8, 8, 5, stride=2, padding=2, groups=8, bias=False)
        self.grp = nn.Conv2d(8, 12, 3, padding=1, groups=4)
        self.up = nn.ConvTranspose2d(12, 6, 4, stride=2, padding=1, groups=3)
        self.proj = nn.Parameter(torch.randn(400, 7))
        self.fc = nn.Linear(6 * 7, 5)

    def forward(self, x):
        y = self.up(torch.relu(self.grp(self.dw(self.conv(x)))))
        return self.fc((y.flatten(2) @ self.proj).flatten(1))


@pytest.fixture(scope="module")
def tiny_darts(tmp_path_factory):
    model = build_network("DARTS_V2", "cifar", channels=8, layers=5, num_classes=10)
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny_darts.onnx", input_size=(3, 32, 32))
    return model, path


def test_onnx_macs_and_params_match_flop_counter_on_all_counted_ops(tmp_path):
    model = _Mixed()
    path = export_onnx(model, tmp_path / "mixed.onnx", input_size=(3, 20, 20), dynamic_spatial=False)
    ref = model_complexity(model, (3, 20, 20))
    got = onnx_complexity(path)
    assert got.macs == ref.macs == 20 * 20 * 8 * 27 + 10 * 10 * 8 * 25 + 10 * 10 * 12 * 18 + 10 * 10 * 12 * 2 * 16 + 6 * 7 * 400 + 42 * 5
    assert got.params == ref.params  # no BatchNorm: the exported initializers are exactly the parameters
    assert {i.name for i in got.ops} >= {"Conv", "Conv (depthwise)", "ConvTranspose", "MatMul", "Gemm"}
    assert got.input_shape == (3, 20, 20)


def test_onnx_darts_macs_and_stages_match_torch(tiny_darts):
    model, path = tiny_darts
    ref = model_complexity(model, (3, 32, 32))
    got = onnx_complexity(path)
    assert got.macs == ref.macs
    ref_stages = {s.name: s.macs for s in ref.stages if s.macs}
    assert {s.name: s.macs for s in got.stages if s.macs} == ref_stages  # stages from exporter name scopes
    assert sum(s.params for s in got.stages) == got.params
    # The exporter folds BatchNorm into the convolutions, so the ONNX count is at most the torch one.
    assert 0 < got.params <= ref.params
    assert got.activations is not None and 0 < got.activations.peak_bytes < got.activations.total_bytes


def _hand_graph(tmp_path, batch_dim="N", spatial=("H", "W")):
    """x(N,4,H,W) -> Conv 1x1 (4->6) -> ReduceMean(H,W) -> Gemm(transA? no, transB=1, 6->3) -> y."""
    w = numpy_helper.from_array(torch.randn(6, 4, 1, 1).numpy(), "w")
    b = numpy_helper.from_array(torch.randn(3, 6).numpy(), "fc_w")
    axes = numpy_helper.from_array(torch.tensor([2, 3]).numpy(), "axes")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("ReduceMean", ["c", "axes"], ["p"], keepdims=0, name="pool"),
        helper.make_node("Gemm", ["p", "fc_w"], ["y"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "hand",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch_dim, 4, *spatial])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch_dim, 3])],
        [w, b, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path / "hand.onnx"
    onnx.save(model, path)
    return path


def test_hand_built_graph_counts_and_liveness(tmp_path):
    path = _hand_graph(tmp_path)
    with pytest.raises(ConfigError, match="symbolic dimension 'H'.*--input-size"):
        onnx_complexity(path)
    c = onnx_complexity(path, (4, 5, 7))
    assert c.macs == 5 * 7 * 6 * 4 + 6 * 3
    assert c.params == 6 * 4 + 3 * 6  # the int64 'axes' initializer is not a parameter
    conv_out, pooled, out = 6 * 35 * 4, 6 * 4, 3 * 4
    assert c.activations.total_bytes == conv_out + pooled + out
    assert c.activations.peak_bytes == conv_out + pooled  # conv output dies after the pool reads it
    with pytest.raises(ConfigError, match="fixed size"):
        onnx_complexity(_hand_graph(tmp_path, spatial=(5, 7)), (4, 6, 6))


def test_missing_or_corrupt_onnx_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        onnx_complexity(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(ConfigError, match="cannot read ONNX file"):
        onnx_complexity(bad)


def test_ort_latency_on_exported_model(tiny_darts):
    model, path = tiny_darts
    cfg = LatencyConfig(batch=2, warmup=1, runs=5)
    res = measure_latency(["ort-cpu-1t", "ort-cpu", "torch-cpu-1t"], (3, 32, 32), cfg, model=None, onnx_path=path)
    r = res["ort-cpu-1t"]
    assert r.ok and r.runs == 5 and r.batch == 2
    assert 0 < r.min_ms <= r.median_ms <= r.p90_ms <= r.p99_ms <= r.max_ms
    assert r.settings["providers"] == ["CPUExecutionProvider"]
    assert r.settings["intra_op_threads"] == 1 and r.settings["allow_spinning"] == "0"
    assert res["ort-cpu"].ok
    assert res["torch-cpu-1t"].status == "skipped" and "PyTorch model" in res["torch-cpu-1t"].note


def test_fixed_batch_model_reports_error_and_others_still_run(tmp_path):
    path = _hand_graph(tmp_path, batch_dim=1, spatial=(5, 7))
    res = measure_latency(["ort-cpu-1t", "ort-cpu"], (4, 5, 7), LatencyConfig(batch=2, warmup=0, runs=2), onnx_path=path)
    assert res["ort-cpu-1t"].status == "error" and "fixed batch of 1" in res["ort-cpu-1t"].note
    ok = measure_latency(["ort-cpu"], (4, 5, 7), LatencyConfig(batch=1, warmup=0, runs=2), onnx_path=path)
    assert ok["ort-cpu"].ok


def test_cli_compares_onnx_and_genotype_targets(tiny_darts, tmp_path, capsys):
    model, path = tiny_darts
    genotype_file = tmp_path / "my_arch.json"
    main(["genotypes", "show", "DARTS_V2", "--json"])
    genotype_file.write_text(capsys.readouterr().out)
    out_json = tmp_path / "cmp.json"
    # One run, both CPU mobile-proxy backends: the genotype is exported for onnxruntime on the fly.
    main(["profile", str(path), str(genotype_file), "--net", "cifar", "--channels", "8", "--layers", "5",
          "--latency", "mobile", "--runs", "3", "--warmup", "1", "--json", str(out_json)])
    text = capsys.readouterr().out
    assert "| Architecture" in text and "ort-cpu-1t median (ms)" in text and "torch-cpu-1t median (ms)" in text
    for col in ("Median (ms)", "p90 (ms)", "p99 (ms)"):
        assert col in text
    report = json.loads(out_json.read_text())
    assert report["format"] == "nasdeploy.profile" and report["environment"]["cpu"]
    onnx_t, geno_t = report["targets"]
    assert onnx_t["name"] == "tiny_darts.onnx" and onnx_t["source"] == "onnx" and geno_t["source"] == "genotype"
    assert onnx_t["macs"] == geno_t["macs"]  # the same architecture, counted by two independent methods
    assert geno_t["params"] == model_complexity(model, (3, 32, 32), activations=False).params
    for t in report["targets"]:
        assert isinstance(t["params"], int) and isinstance(t["macs"], int)
        assert t["latency"]["results"]["ort-cpu-1t"]["status"] == "ok"
    assert geno_t["latency"]["results"]["torch-cpu-1t"]["status"] == "ok"
    assert onnx_t["latency"]["results"]["torch-cpu-1t"]["status"] == "skipped"
