"""Latency: statistics, backend names, thread settings, skips without a GPU, CUDA paths on a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nasdeploy.errors import ConfigError
from nasdeploy.nets import build_network
from nasdeploy.profile import BACKENDS, LatencyConfig, measure_latency, parse_backends, profile_model
from nasdeploy.profile.protocol import summarize


@pytest.fixture(scope="module")
def tiny():
    return build_network("DARTS_V2", "cifar", channels=4, layers=3, num_classes=3, auxiliary=False)


def test_summary_statistics_match_numpy():
    times = np.arange(1, 101, dtype=float)[::-1]  # 100..1 ms, order must not matter
    r = summarize("x", times, LatencyConfig(batch=4, warmup=2, runs=100), {})
    assert r.median_ms == 50.5 and r.p90_ms == pytest.approx(90.1) and r.p99_ms == pytest.approx(99.01)
    assert r.mean_ms == 50.5 and r.min_ms == 1 and r.max_ms == 100 and r.runs == 100
    assert r.throughput == pytest.approx(4 / 0.0505)  # samples per second at the mean time
    bad = summarize("x", [], LatencyConfig(), {})
    assert bad.status == "error"


def test_backend_names_and_groups():
    assert parse_backends("cpu") == ("torch-cpu", "torch-cpu-1t", "ort-cpu", "ort-cpu-1t")
    assert parse_backends("mobile,torch-cpu-1t,ort-cpu") == ("torch-cpu-1t", "ort-cpu-1t", "ort-cpu")
    assert parse_backends("all") == BACKENDS and parse_backends("none") == () and parse_backends(None) == ()
    with pytest.raises(ConfigError, match="unknown latency backend 'torch-gpu'"):
        parse_backends("torch-cpu,torch-gpu")
    with pytest.raises(ConfigError, match="batch"):
        LatencyConfig(batch=0)
    with pytest.raises(ConfigError, match="warmup"):
        LatencyConfig(warmup=-1)


def test_torch_cpu_backends_time_and_restore_threads(tiny):
    before = torch.get_num_threads()
    one = measure_latency(["torch-cpu-1t"], (3, 16, 16), LatencyConfig(batch=2, warmup=1, runs=4), model=tiny)["torch-cpu-1t"]
    assert torch.get_num_threads() == before
    # All threads: few runs, since a shared, oversubscribed CPU makes multi-threaded runs slow.
    full = measure_latency(["torch-cpu"], (3, 16, 16), LatencyConfig(warmup=0, runs=2), model=tiny)["torch-cpu"]
    assert one.ok and full.ok and one.runs == 4 and one.batch == 2
    assert one.settings["intra_op_threads"] == 1 and full.settings["intra_op_threads"] == before
    assert 0 < one.min_ms <= one.median_ms <= one.p90_ms <= one.p99_ms <= one.max_ms
    assert one.throughput == pytest.approx(2 / (one.mean_ms / 1000))
    assert tiny.training  # the caller's model is not switched to eval (the backend times a copy)


def test_ort_backend_without_onnx_and_torch_without_model_are_skipped(tiny):
    res = measure_latency(["ort-cpu"], (3, 16, 16), LatencyConfig(runs=1), model=tiny)
    assert res["ort-cpu"].status == "skipped" and "ONNX" in res["ort-cpu"].note


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_gpu_backends_skip_with_a_reason_without_cuda(tiny):
    res = measure_latency(["torch-cuda", "torch-cuda-graph"], (3, 16, 16), LatencyConfig(runs=1), model=tiny)
    for r in res.values():
        assert r.status == "skipped" and "no CUDA device" in r.note


def test_profile_model_json_has_a_latency_section(tiny):
    r = profile_model(tiny, (3, 16, 16), latency="torch-cpu-1t", latency_config=LatencyConfig(warmup=0, runs=2), environment={})
    d = r.to_dict(include_environment=False)
    lat = d["latency"]
    assert lat["config"]["runs"] == 2 and lat["results"]["torch-cpu-1t"]["status"] == "ok"
    for key in ("median_ms", "p90_ms", "p99_ms", "mean_ms", "throughput"):
        assert lat["results"]["torch-cpu-1t"][key] > 0
    none = profile_model(tiny, (3, 16, 16), environment={}).to_dict()
    assert none["latency"] == {"config": None, "results": {}}


@pytest.mark.cuda
def test_cuda_backends_run_on_a_gpu(tiny):
    res = measure_latency(["torch-cuda", "torch-cuda-graph"], (3, 32, 32), LatencyConfig(batch=2, warmup=2, runs=5), model=tiny)
    for r in res.values():
        assert r.ok, r.note
        assert r.settings["timer"] == "CUDA events" and r.settings["device"] == torch.cuda.get_device_name(0)
        assert 0 < r.median_ms <= r.p99_ms
    assert next(tiny.parameters()).device.type == "cpu"  # the caller's model stays where it was


@pytest.mark.cuda
def test_ort_gpu_backends_use_the_provider_or_say_why(tiny, tmp_path):
    from nasdeploy.export.onnx import export_onnx

    path = export_onnx(tiny, tmp_path / "tiny.onnx", input_size=(3, 32, 32))
    res = measure_latency(["ort-cuda", "ort-trt"], (3, 32, 32), LatencyConfig(warmup=1, runs=3), onnx_path=path)
    for name, provider in (("ort-cuda", "CUDAExecutionProvider"), ("ort-trt", "TensorrtExecutionProvider")):
        r = res[name]
        assert r.status in ("ok", "skipped"), r.note
        if r.ok:
            assert r.settings["providers"][0] == provider
        else:
            assert provider in r.note
