"""ExecuTorch .pte export, parity that means something (untrained BN randomisation, real images), INT8 paths."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from nasdeploy.data.factory import DataConfig
from nasdeploy.errors import ConfigError, MissingDependencyError
from nasdeploy.export.api import export_target
from nasdeploy.export.options import ExportOptions, Int8Options
from nasdeploy.export.request import ExportRequest, NetSizes
from nasdeploy.export.int8_guard import top1
from nasdeploy.export.samples import SampleSizes, prepare_export_data, sample_batches
from nasdeploy.export.untrained import randomize_bn_statistics_
from nasdeploy.profile.latency import ModelFileTimer
from nasdeploy.profile.protocol import LatencyConfig
from nasdeploy.genotypes import CNNGenotype, genotype_to_dict
from nasdeploy.nets import build_network
from nasdeploy.utils.checkpoint import save_checkpoint

TINY = CNNGenotype(
    normal=(("sep_conv_3x3", 0), ("skip_connect", 1), ("max_pool_3x3", 0), ("sep_conv_3x3", 2)), normal_concat=(2, 3),
    reduce=(("max_pool_3x3", 0), ("sep_conv_3x3", 1), ("skip_connect", 2), ("avg_pool_3x3", 0)), reduce_concat=(2, 3),
    name="tiny",
)
SIZES = {"channels": 8, "layers": 2, "num_classes": 10}
DEMO = DataConfig(dataset="demo", demo_train_size=512, demo_test_size=256, image_size=32)


def _fresh():
    return build_network(TINY, "cifar", auxiliary=False, **SIZES).eval()


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    """A `nasdeploy train`-format checkpoint of the tiny net after 40 SGD steps on the demo dataset."""
    from nasdeploy.data.factory import build_dataset

    torch.manual_seed(0)
    model = build_network(TINY, "cifar", auxiliary=False, **SIZES)
    train, info = build_dataset(DEMO, "train", augment=False)
    loader = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(3):
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    meta = {"genotype": genotype_to_dict(TINY), "net": "cifar", "net_kwargs": {**SIZES, "auxiliary": False},
            "dataset": info.to_dict()}
    save_checkpoint(path, model.state_dict(), kind="train", meta=meta, epoch=3)
    return path, model.eval()


def test_untrained_network_is_degenerate_until_bn_is_randomised():
    """Why parity without a checkpoint needs the BN randomisation: a fresh DARTS_V2 (C=36, 20 cells) answers
    the same for every input to ~1e-7, so any graph would "pass"; randomised BN statistics fix that."""
    x = torch.randn(8, 3, 32, 32)
    model = build_network("DARTS_V2", "cifar", auxiliary=False).eval()
    with torch.no_grad():
        before = model(x).std(0).max().item()
        after = randomize_bn_statistics_(model, (3, 32, 32), seed=0, batches=2).eval()(x).std(0).max().item()
    assert before < 1e-5 and after > 1e-2, (before, after)
    assert not model.training


def test_executorch_export_untrained_runs_in_executorch(tmp_path):
    pytest.importorskip("executorch")
    from executorch.runtime import Runtime

    out = tmp_path / "out"
    result = export_target(ExportRequest(TINY, net="cifar", formats=("onnx", "executorch"), out_dir=out,
                                         options=ExportOptions(seed=1), sizes=NetSizes(**SIZES)))
    report = result.parity["executorch"]
    assert report.passed and report.weights == "untrained" and report.output_spread > 1e-2
    assert "untrained weights" in result.summary() and "untrained weights" in " ".join(result.notes)
    saved = json.loads((out / "parity_executorch.json").read_text())
    assert saved["weights"] == "untrained" and saved["rtol"] == 1e-3 and saved["inputs"].startswith("4 random-normal")
    # The program runs in ExecuTorch's runtime on its own and agrees with the verified ONNX model.
    method = Runtime.get().load_program(str(out / "model.pte")).load_method("forward")
    import onnxruntime as ort

    x = torch.randn(1, 3, 32, 32)
    got = method.execute([x])[0].numpy()
    ref = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-5)
    meta = json.loads((out / "model.pte.json").read_text())
    assert meta["input"]["shape"] == [1, 3, 32, 32] and meta["genotype"]["normal"] and meta["weights"] == "untrained"


def test_trained_checkpoint_on_data_parity_agreement_and_ort_int8(tmp_path, trained_checkpoint):
    pytest.importorskip("executorch")
    ckpt, model = trained_checkpoint
    out = tmp_path / "out"
    options = ExportOptions(seed=2, int8=Int8Options(("ort",), timer=ModelFileTimer(LatencyConfig(warmup=1, runs=5, seed=2))))
    result = export_target(ExportRequest(TINY, checkpoint=ckpt, net="cifar", formats=("onnx", "executorch"), out_dir=out,
                                         options=options, data=DEMO,
                                         samples=SampleSizes(parity=16, validation=128, calibration=64)))
    for key in ("onnx_validation", "executorch_validation"):
        report = result.parity[key]
        assert report.passed and report.weights == "trained" and report.top1_agreement == 1.0
        assert "validation images of demo" in report.inputs
    q = result.quantization["ort"]
    assert q.status == "ok", q.note
    # Independent reference: the eager model's top-1 on the same validation sample.
    val = sample_batches(DEMO, "test", 128, seed=2)
    with torch.no_grad():
        eager = top1(lambda x: [model(torch.from_numpy(x)).numpy()], val)
    assert q.torch_metric == pytest.approx(eager) and abs(q.float_metric - eager) <= 1 / 128
    # The fixture's top-1 over torch seeds 0-9 in place of its seed 0 (one thread; 2026-12-02): 0.242 0.172 0.164
    # 0.242 0.148 0.156 0.148 0.180 0.188 0.180, mean 0.182 sd 0.034. Mean - 4 sd (0.045) is below chance (0.10),
    # so the threshold is the worst seen, 19/128: the fixture has learned something.
    assert eager >= 19 / 128, "the fixture should have learned something (chance is 0.10)"
    assert q.delta == pytest.approx(q.int8_metric - q.float_metric) and abs(q.delta) < 0.2
    ops = {n.op_type for n in onnx.load(str(out / "model_int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert q.int8_size_bytes > 0 and q.latency["int8 ort-cpu-1t"]["status"] == "ok"
    report = json.loads((out / "quantization.json").read_text())["ort"]
    assert report["delta"] == pytest.approx(q.delta) and "128 validation images" in report["validation"]
    assert "64 training-split images" in report["calibration"]
    meta = json.loads((out / "model.pte.json").read_text())
    assert meta["normalisation"]["mean"] == [0.481, 0.481, 0.481] and len(meta["classes"]) == 10


@pytest.mark.slow  # PT2E prepare + INT8 lowering alone took 38 s on the shared 2-core machine
def test_pt2e_int8_pte(tmp_path, trained_checkpoint):
    pytest.importorskip("executorch")
    ckpt, _ = trained_checkpoint
    out = tmp_path / "out"
    options = ExportOptions(seed=2, int8=Int8Options(("executorch",), timer=ModelFileTimer(LatencyConfig(warmup=1, runs=5, seed=2))))
    result = export_target(ExportRequest(TINY, checkpoint=ckpt, net="cifar", out_dir=out, options=options, data=DEMO,
                                         samples=SampleSizes(parity=8, validation=64, calibration=32)))
    q = result.quantization["executorch"]
    assert q.status == "ok", q.note
    assert (out / "model_int8.pte").is_file() and (out / "model.pte").is_file()
    assert q.float_metric == pytest.approx(q.torch_metric, abs=1 / 64) and abs(q.delta) < 0.2
    assert json.loads((out / "model_int8.pte.json").read_text())["quantization"]["scheme"].startswith("PT2E")


def test_executorch_alone_writes_no_onnx(tmp_path):
    pytest.importorskip("executorch")
    out = tmp_path / "out"
    result = export_target(ExportRequest(TINY, net="cifar", formats=("executorch",), out_dir=out,
                                         options=ExportOptions(seed=1), sizes=NetSizes(**SIZES)))
    assert result.parity["executorch"].passed and "onnx" not in result.parity and result.onnx == {}
    assert sorted(p.name for p in out.iterdir()) == [".nasdeploy", "export.json", "model.pte", "model.pte.json", "parity_executorch.json"]
    assert result.complexity["params"] > 0  # still counted without the ONNX step


def test_quantize_model_runs_int8_on_its_own_from_an_earlier_export(tmp_path, trained_checkpoint):
    from nasdeploy.export.api import export_model, quantize_model
    from nasdeploy.export.source import build_export_model

    ckpt, model = trained_checkpoint
    options = ExportOptions(seed=2, int8=Int8Options(("ort",)), overwrite=True)
    sizes = SampleSizes(parity=8, validation=64, calibration=32)
    float_dir, together = tmp_path / "float", tmp_path / "together"
    combined = export_target(ExportRequest(TINY, checkpoint=ckpt, net="cifar", out_dir=together, options=options,
                                           data=DEMO, samples=sizes))
    # The model built once and the data sampled once, handed to the float export and to the INT8 step.
    source = build_export_model(TINY, net="cifar", checkpoint=ckpt)
    data = prepare_export_data(DEMO, source.model, 32, seed=2, sizes=sizes, int8=True)
    export_model(source.model, float_dir, options=replace(options, int8=Int8Options()), data=data, weights="trained")
    out = tmp_path / "int8"
    alone = quantize_model(source.model, out, onnx_path=float_dir / "model.onnx", options=options, data=data,
                           weights="trained")
    q, ref = alone.quantization["ort"], combined.quantization["ort"]
    assert q.status == "ok" and sorted(p.name for p in out.iterdir()) == [".nasdeploy", "model_int8.onnx", "quantization.json"]
    # The same calibration and validation samples as the all-in-one export: the same INT8 model and scores.
    assert (q.float_metric, q.int8_metric, q.torch_metric) == (ref.float_metric, ref.int8_metric, ref.torch_metric)
    assert q.float_size_bytes == (float_dir / "model.onnx").stat().st_size
    assert json.loads((out / "quantization.json").read_text())["ort"]["delta"] == pytest.approx(q.delta)
    with pytest.raises(ConfigError, match="needs the float model.pte: none was given"):
        quantize_model(source.model, tmp_path / "bad", onnx_path=float_dir / "model.onnx", data=data,
                       options=replace(options, int8=Int8Options(("ort", "executorch"))))
    with pytest.raises(ConfigError, match="at least one INT8 method"):
        quantize_model(source.model, tmp_path / "bad", onnx_path=float_dir / "model.onnx", data=data,
                       options=replace(options, int8=Int8Options()))
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow  # PT2E prepare + INT8 lowering (about 40 s on the shared 2-core machine)
def test_quantize_model_pt2e_from_a_float_pte_exported_without_onnx(tmp_path, trained_checkpoint):
    pytest.importorskip("executorch")
    from nasdeploy.export.api import quantize_model
    from nasdeploy.export.source import build_export_model

    ckpt, _ = trained_checkpoint
    options = ExportOptions(seed=2, int8=Int8Options(timer=ModelFileTimer(LatencyConfig(warmup=1, runs=3, seed=2))))
    sizes = SampleSizes(parity=8, validation=64, calibration=32)
    float_dir = tmp_path / "executorch"
    export_target(ExportRequest(TINY, checkpoint=ckpt, net="cifar", formats=("executorch",), out_dir=float_dir,
                                options=options, data=DEMO, samples=sizes))
    assert not (float_dir / "model.onnx").exists()
    source = build_export_model(TINY, net="cifar", checkpoint=ckpt)
    out = tmp_path / "quantize"
    data = prepare_export_data(DEMO, source.model, 32, seed=2, sizes=sizes, int8=True)
    result = quantize_model(source.model, out, pte_path=float_dir / "model.pte", data=data,
                            options=replace(options, int8=replace(options.int8, methods=("executorch",))),
                            weights="trained")
    q = result.quantization["executorch"]
    assert q.status == "ok", q.note
    assert q.float_size_bytes == (float_dir / "model.pte").stat().st_size and q.int8_size_bytes < q.float_size_bytes
    assert q.float_metric == pytest.approx(q.torch_metric, abs=1 / 64) and abs(q.delta) < 0.2
    assert sorted(p.name for p in out.iterdir()) == [".nasdeploy", "model_int8.pte", "model_int8.pte.json", "quantization.json"]
    assert json.loads((out / "model_int8.pte.json").read_text())["quantization"]["scheme"].startswith("PT2E")


def test_int8_needs_data_and_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="INT8 needs calibration"):
        export_target(ExportRequest(TINY, net="cifar", out_dir=tmp_path / "o", sizes=NetSizes(**SIZES),
                                    options=ExportOptions(int8=Int8Options(("ort",)))))
    with pytest.raises(ConfigError, match="unknown INT8"):
        Int8Options(("tflite",))
    with pytest.raises(ConfigError, match="needs a data directory"):
        export_target(ExportRequest(TINY, net="cifar", out_dir=tmp_path / "o", dataset="cifar10", sizes=NetSizes(**SIZES)))
    with pytest.raises(ConfigError, match="classes"):
        export_target(ExportRequest(TINY, net="cifar", out_dir=tmp_path / "o", dataset="demo", sizes=NetSizes(8, 2, 5)))
    assert not (tmp_path / "o").exists()


def test_missing_executorch_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "executorch", None)  # import executorch -> ImportError
    with pytest.raises(MissingDependencyError, match=r"nasdeploy\[executorch\]") as info:
        export_target(ExportRequest(TINY, net="cifar", formats=("executorch",), out_dir=tmp_path / "o",
                                    sizes=NetSizes(**SIZES)))
    assert "\n" not in str(info.value) and not (tmp_path / "o").exists()


def test_executorch_latency_backend():
    pytest.importorskip("executorch")
    from nasdeploy.profile.latency import measure_latency, parse_backends

    assert parse_backends("executorch") == ("executorch-fp32", "executorch-int8")
    res = measure_latency(["executorch-fp32"], (3, 32, 32), LatencyConfig(warmup=2, runs=10), model=_fresh())
    r = res["executorch-fp32"]
    assert r.ok, r.note
    assert 0 < r.min_ms <= r.median_ms <= r.p90_ms <= r.p99_ms <= r.max_ms and r.runs == 10
    assert r.settings["delegate"] == "XNNPACK" and "executorch" in r.settings["runtime"]
    assert isinstance(r.settings["intra_op_threads"], int) and r.settings["intra_op_threads"] >= 1


def test_cli_int8_without_data_is_one_line(tmp_path, capsys):
    from nasdeploy.cli.main import main

    with pytest.raises(SystemExit) as info:
        main(["export", "DARTS_V2", "--net", "cifar", "--format", "executorch", "--int8", "ort", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and err.startswith("error: INT8 needs calibration") and "\n" not in err
    assert not (tmp_path / "o").exists()
