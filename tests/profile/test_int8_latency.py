"""INT8 latency in the profiler: ort-int8-cpu-1t, and existing INT8 files timed as they are."""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import onnx
import torch
from torch import nn

from nasdeploy.cli.main import main
from nasdeploy.errors import ConfigError
from nasdeploy.export.onnx import export_onnx
from nasdeploy.profile.latency import measure_latency, parse_backends
from nasdeploy.profile.protocol import LatencyConfig
from nasdeploy.utils.ort import ort_session


def _convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).eval()


def test_ort_int8_backend_times_a_qdq_per_channel_model(tmp_path, monkeypatch):
    import nasdeploy.export.ort_int8 as quantize

    model = _convnet()
    float_path = export_onnx(model, tmp_path / "model.onnx", input_size=(3, 16, 16), dynamic_spatial=False)
    kept = tmp_path / "kept.int8.onnx"
    real = quantize.ort_static_int8

    def spy(onnx_path, out_path, calibration, **kw):
        spy.calibration = calibration
        out = real(onnx_path, out_path, calibration, **kw)
        shutil.copy(out, kept)
        return out

    monkeypatch.setattr(quantize, "ort_static_int8", spy)
    cfg = LatencyConfig(warmup=1, runs=5, seed=3)
    res = measure_latency(["ort-cpu-1t", "ort-int8-cpu-1t"], (3, 16, 16), cfg, onnx_path=float_path)
    fp, q = res["ort-cpu-1t"], res["ort-int8-cpu-1t"]
    assert q.ok, q.note
    assert q.runs == 5 and q.warmup == 1 and 0 < q.min_ms <= q.median_ms <= q.p90_ms <= q.p99_ms <= q.max_ms
    assert q.settings["intra_op_threads"] == 1 and q.settings["inter_op_threads"] == 1
    assert "random-normal" in q.note and "timing only" in q.note
    # Calibrated on 8 seeded random-normal images (deterministic given the seed).
    assert sum(len(b) for b in spy.calibration) == 8
    assert np.array_equal(spy.calibration[0], np.random.default_rng(3).standard_normal((1, 3, 16, 16)).astype(np.float32))
    graph = onnx.load(str(kept)).graph
    ops = [n.op_type for n in graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    # Per-channel weights: the first conv's weight DequantizeLinear has one scale per output channel.
    inits = {t.name: t for t in graph.initializer}
    conv = next(n for n in graph.node if n.op_type == "Conv")
    weight_dq = next(n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] == conv.input[1])
    assert list(inits[weight_dq.input[1]].dims) == [64]
    assert inits[weight_dq.input[0]].data_type == onnx.TensorProto.INT8
    # INT8 weights: the file is far smaller than the float one (37k float weights -> ~4x smaller).
    assert q.settings["model_bytes"] < 0.5 * fp.settings["model_bytes"]
    # And it still computes the same network (loosely: random calibration, so only the ranking-level agreement).
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    want = model(torch.from_numpy(x)).detach().numpy()
    sess = ort_session(kept, threads=1, providers=["CPUExecutionProvider"], error=ConfigError, purpose="test")
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert np.corrcoef(want.ravel(), got.ravel())[0, 1] > 0.95


def test_int8_group_and_cli(tmp_path):
    assert parse_backends("int8") == ("ort-int8-cpu-1t", "executorch-int8")
    assert "ort-int8-cpu-1t" in parse_backends("all")
    out = tmp_path / "p.json"
    main(["profile", "DARTS_V2", "--net", "cifar", "--channels", "4", "--layers", "1", "--latency", "ort-int8-cpu-1t",
          "--warmup", "0", "--runs", "2", "--json", str(out)])
    (target,) = json.loads(out.read_text())["targets"]
    res = target["latency"]["results"]["ort-int8-cpu-1t"]
    assert res["status"] == "ok" and res["runs"] == 2 and res["median_ms"] > 0


def test_existing_model_files_are_timed_not_rebuilt(tmp_path, monkeypatch):
    """The profiler times the files an export made (INT8 ONNX, .pte) as they are: nothing is quantized or lowered again."""
    import nasdeploy.export.ort_int8 as quantize

    model = _convnet()
    float_path = export_onnx(model, tmp_path / "model.onnx", input_size=(3, 16, 16), dynamic_spatial=False)
    calibration = [np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)]
    int8_path = quantize.ort_static_int8(float_path, tmp_path / "model_int8.onnx", calibration)
    files = {"ort-int8-cpu-1t": int8_path}
    if importlib.util.find_spec("executorch") is not None:
        from nasdeploy.export import executorch as et

        files["executorch-fp32"] = et.lower_to_pte(model, tmp_path / "model.pte", (3, 16, 16))
        monkeypatch.setattr(et, "lower_to_pte", _refuse)
        monkeypatch.setattr(et, "quantize_pt2e_xnnpack", _refuse)
    monkeypatch.setattr(quantize, "ort_static_int8", _refuse)
    res = measure_latency(["ort-cpu-1t", *files], (3, 16, 16), LatencyConfig(warmup=0, runs=3), onnx_path=float_path,
                          model_files=files)
    for backend, path in files.items():
        r = res[backend]
        assert r.ok and r.runs == 3, r.note
        assert r.settings["model_bytes"] == path.stat().st_size and r.settings["program"] == path.name
    assert res["ort-int8-cpu-1t"].settings["intra_op_threads"] == 1 and res["ort-cpu-1t"].ok
    wrong = measure_latency(["torch-cpu"], (3, 16, 16), LatencyConfig(warmup=0, runs=1), model=model,
                            model_files={"torch-cpu": float_path})["torch-cpu"]
    assert wrong.status == "error" and "times a PyTorch model, not a model file" in wrong.note


def _refuse(*args, **kwargs):
    raise AssertionError("an existing model file was rebuilt instead of timed")
