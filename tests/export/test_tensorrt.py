"""TensorRT: 10 vs 11 precision logic and the build call sequence (fake module), FP16 ONNX, trtexec, GPU build."""

from __future__ import annotations

import shlex
import subprocess
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from helpers import randomize_bn_
from nasdeploy.errors import ConfigError, ExportError, MissingDependencyError
from nasdeploy.export import tensorrt as trt_export
from nasdeploy.export.fp16 import convert_onnx_to_fp16
from nasdeploy.export.onnx import export_onnx
from nasdeploy.export.parity import compare_with_torch, parity_shapes


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_bn_(_Tiny()).eval()
    return model, export_onnx(model, tmp_path_factory.mktemp("trt") / "model.onnx", input_size=(3, 16, 16), output_names=["logits"])


def fake_tensorrt(version: str, *, fp16_flag: bool, parse_ok: bool = True):
    """A stand-in for the tensorrt module that records the API calls build_engine makes."""
    calls = []

    def rec(name, result=None):
        def f(*args):
            calls.append((name, *args))
            return result
        return f

    flags = {"TF32": "TF32"} | ({"FP16": "FP16"} if fp16_flag else {})
    cache = SimpleNamespace(serialize=rec("cache.serialize", b"CACHE"))
    profile = SimpleNamespace(set_shape=rec("profile.set_shape"))
    config = SimpleNamespace(
        set_memory_pool_limit=rec("config.set_memory_pool_limit"), set_flag=rec("config.set_flag"),
        clear_flag=rec("config.clear_flag"), create_timing_cache=rec("config.create_timing_cache", cache),
        set_timing_cache=rec("config.set_timing_cache"), add_optimization_profile=rec("config.add_optimization_profile"),
        get_timing_cache=rec("config.get_timing_cache", cache),
    )
    builder = SimpleNamespace(
        create_network=rec("builder.create_network", "NETWORK"), create_builder_config=rec("builder.create_builder_config", config),
        create_optimization_profile=rec("builder.create_optimization_profile", profile),
        build_serialized_network=rec("builder.build_serialized_network", b"PLAN"),
    )
    parser = SimpleNamespace(parse_from_file=rec("parser.parse_from_file", parse_ok), num_errors=0 if parse_ok else 1,
                             get_error=lambda i: "In node 3 (Conv): unsupported\nmore detail")
    module = SimpleNamespace(
        __version__=version, Logger=type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None}),
        Builder=lambda logger: builder, OnnxParser=lambda network, logger: parser,
        MemoryPoolType=SimpleNamespace(WORKSPACE="WORKSPACE"), BuilderFlag=SimpleNamespace(**flags),
    )
    return module, calls


PROFILE = trt_export.EngineProfile("input", 3, 16, 16, min_batch=1, opt_batch=4, max_batch=16)


def test_precision_plan_tensorrt_10_and_11():
    trt10, _ = fake_tensorrt("10.13.0.35", fp16_flag=True)
    trt11, _ = fake_tensorrt("11.0.0.1", fp16_flag=False)
    p = trt_export.precision_plan(trt10, fp16=True)
    assert (p.major, p.strongly_typed, p.set_fp16_flag, p.convert_onnx_to_fp16) == (10, False, True, False)
    p = trt_export.precision_plan(trt11, fp16=True)
    assert (p.major, p.strongly_typed, p.set_fp16_flag, p.convert_onnx_to_fp16) == (11, True, False, True)
    assert trt_export.precision_plan(trt10, fp16=False).clear_tf32_flag
    assert not trt_export.precision_plan(trt11, fp16=False).convert_onnx_to_fp16


def test_build_engine_tensorrt_10_call_sequence(tiny_onnx, tmp_path):
    _, onnx_path = tiny_onnx
    trt, calls = fake_tensorrt("10.13.0.35", fp16_flag=True)
    build = trt_export.build_engine(onnx_path, tmp_path / "model.plan", PROFILE, fp16=True, workspace_mib=512,
                                    timing_cache=tmp_path / "timing.cache", trt=trt)
    names = [c[0] for c in calls]
    assert ("parser.parse_from_file", str(onnx_path)) in calls
    assert ("config.set_memory_pool_limit", "WORKSPACE", 512 << 20) in calls
    assert ("config.set_flag", "FP16") in calls and ("config.clear_flag", "TF32") not in calls
    assert ("profile.set_shape", "input", (1, 3, 16, 16), (4, 3, 16, 16), (16, 3, 16, 16)) in calls
    assert ("config.create_timing_cache", b"") in calls  # no cache file yet
    assert names.index("config.add_optimization_profile") < names.index("builder.build_serialized_network")
    assert (tmp_path / "model.plan").read_bytes() == b"PLAN" and (tmp_path / "timing.cache").read_bytes() == b"CACHE"
    assert build.precision == "fp16" and build.onnx_path == onnx_path
    # A second build reads the timing cache back.
    trt, calls = fake_tensorrt("10.13.0.35", fp16_flag=True)
    trt_export.build_engine(onnx_path, tmp_path / "model.plan", PROFILE, timing_cache=tmp_path / "timing.cache", trt=trt)
    assert ("config.create_timing_cache", b"CACHE") in calls and ("config.clear_flag", "TF32") in calls


def test_build_engine_tensorrt_11_fp16_uses_fp16_onnx(tiny_onnx, tmp_path):
    _, onnx_path = tiny_onnx
    trt, calls = fake_tensorrt("11.0.0.1", fp16_flag=False)
    build = trt_export.build_engine(onnx_path, tmp_path / "model.plan", PROFILE, fp16=True, trt=trt)
    assert build.onnx_path == tmp_path / "model_fp16.onnx"
    assert ("parser.parse_from_file", str(tmp_path / "model_fp16.onnx")) in calls
    assert not any(c[0] == "config.set_flag" for c in calls)
    types = {w.name: w.data_type for w in onnx.load(str(build.onnx_path)).graph.initializer}
    assert types["features.0.weight"] == onnx.TensorProto.FLOAT16
    assert onnx.TensorProto.FLOAT not in types.values()  # shape constants stay int64, no float32 weights left


def test_parser_error_is_one_line(tiny_onnx, tmp_path):
    _, onnx_path = tiny_onnx
    trt, _ = fake_tensorrt("10.13.0.35", fp16_flag=True, parse_ok=False)
    with pytest.raises(ExportError, match=r"TensorRT cannot parse .*In node 3 \(Conv\): unsupported$"):
        trt_export.build_engine(onnx_path, tmp_path / "model.plan", PROFILE, trt=trt)
    assert not (tmp_path / "model.plan").exists()


def test_missing_tensorrt_message(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", None)
    with pytest.raises(MissingDependencyError, match=r"'tensorrt' is not installed.*nasdeploy\[tensorrt\]"):
        trt_export.import_tensorrt()


def test_fp16_onnx_runs_close_to_fp32(tiny_onnx, tmp_path):
    model, onnx_path = tiny_onnx
    path = convert_onnx_to_fp16(onnx_path, tmp_path / "model_fp16.onnx")
    proto = onnx.load(str(path))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # I/O kept in float32
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    run = lambda x: session.run(None, {"input": x})  # noqa: E731
    report = compare_with_torch(model, run, parity_shapes(3, [(16, 16), (9, 11)], (1, 5)), runtime="ort fp16",
                                rtol=1e-2, atol=1e-2, seed=0)
    assert report.passed and report.max_abs_err > 1e-6, "fp16 should differ from fp32, within fp16 tolerance"


def test_profile_validation():
    with pytest.raises(ConfigError, match="min <= opt <= max"):
        trt_export.EngineProfile("input", 3, 8, 8, min_batch=1, opt_batch=32, max_batch=16)


def test_trtexec_commands(tmp_path):
    line10 = trt_export.trtexec_command("model.onnx", "model.plan", PROFILE, major=10, fp16=True, workspace_mib=2048)
    assert line10 == ["trtexec", "--onnx=model.onnx", "--saveEngine=model.plan", "--minShapes=input:1x3x16x16",
                      "--optShapes=input:4x3x16x16", "--maxShapes=input:16x3x16x16", "--memPoolSize=workspace:2048M",
                      "--timingCacheFile=timing.cache", "--fp16"]
    line11 = trt_export.trtexec_command("model_fp16.onnx", "model.plan", PROFILE, major=11, fp16=True)
    assert "--fp16" not in line11 and line11[1] == "--onnx=model_fp16.onnx"
    assert trt_export.trtexec_command("m.onnx", "m.plan", PROFILE, major=10)[-1] == "--noTF32"
    script = trt_export.write_trtexec_script(tmp_path / "trtexec.sh", "model.onnx", PROFILE, fp16=True,
                                             fp16_onnx_file="model_fp16.onnx")
    text = script.read_text()
    assert shlex.join(line11[:6]) in text and "--onnx=model.onnx" in text and "--fp16" in text
    # The script picks the command from trtexec's version string; check both branches with a fake trtexec.
    for version, expected in (("v100300", "--fp16"), ("v110000", "--onnx=model_fp16.onnx")):
        bin_dir = tmp_path / f"bin{version}"
        bin_dir.mkdir()
        fake = bin_dir / "trtexec"
        fake.write_text(f'#!/bin/sh\nif [ "$1" = "--version" ]; then echo "[TensorRT {version}]"; else echo "$@"; fi\n')
        fake.chmod(0o755)
        out = subprocess.run(["sh", str(script)], capture_output=True, text=True, check=True,
                             env={"PATH": f"{bin_dir}:/usr/bin:/bin"}).stdout
        assert expected in out and out.startswith("--onnx=")


@pytest.mark.cuda
def test_tensorrt_engine_builds_runs_and_matches(tmp_path):
    pytest.importorskip("tensorrt")
    from nasdeploy.nets import build_network

    model = randomize_bn_(build_network("DARTS_V2", "cifar", channels=8, layers=3, num_classes=7)).eval()
    onnx_path = export_onnx(model, tmp_path / "model.onnx", input_size=(3, 32, 32), output_names=["logits"])
    profile = trt_export.EngineProfile("input", 3, 32, 32, min_batch=1, opt_batch=4, max_batch=8)
    for fp16 in (False, True):
        plan = tmp_path / f"model_{'fp16' if fp16 else 'fp32'}.plan"
        trt_export.build_engine(onnx_path, plan, profile, fp16=fp16, timing_cache=tmp_path / "timing.cache")
        report = trt_export.check_tensorrt_parity(model, plan, profile, fp16=fp16, batch_sizes=(1, 3, 8), seed=0)
        assert report.passed and np.isfinite(report.max_abs_err)


def test_export_model_tensorrt_and_triton_plan(tmp_path, monkeypatch):
    """The export pipeline with a (fake) TensorRT: engine, its parity report and the Triton plan model."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from nasdeploy.export.api import export_model
    from nasdeploy.export.onnx_parity import onnxruntime_runner
    from nasdeploy.export.options import ExportOptions, TensorRTOptions, TritonOptions

    trt, calls = fake_tensorrt("10.13.0.35", fp16_flag=True)
    monkeypatch.setattr(trt_export, "import_tensorrt", lambda: trt)
    # No GPU here: the "engine" runs as the ONNX model it was built from, in onnxruntime.
    monkeypatch.setattr(trt_export, "tensorrt_runner",
                        lambda plan, trt=None: onnxruntime_runner(plan.with_name("model.onnx"))[:2] + ("fake TensorRT",))
    model = randomize_bn_(_Tiny()).eval()
    options = ExportOptions(input_size=(16, 16), seed=0, tensorrt=TensorRTOptions(max_batch=8, opt_batch=4),
                            triton=TritonOptions(max_batch_size=8))
    result = export_model(model, tmp_path / "out", formats=("tensorrt", "triton"), options=options, name="tiny")
    out = tmp_path / "out"
    assert (out / "model.plan").read_bytes() == b"PLAN" and (out / "timing.cache").read_bytes() == b"CACHE"
    assert ("profile.set_shape", "input", (1, 3, 16, 16), (4, 3, 16, 16), (8, 3, 16, 16)) in calls
    assert result.parity["tensorrt"].passed and {c.input_shape[0] for c in result.parity["tensorrt"].cases} == {1, 2, 8}
    assert (out / "parity_tensorrt.json").is_file() and "tensorrt" not in result.skipped
    cfg = text_format.Parse((out / "triton" / "tiny_trt" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert cfg.platform == "tensorrt_plan" and list(cfg.input[0].dims) == [3, 16, 16] and cfg.max_batch_size == 8
    assert (out / "triton" / "tiny_trt" / "1" / "model.plan").is_file()
    assert (out / "triton" / "tiny" / "1" / "model.onnx").is_file()
    assert not list(cfg.dynamic_batching.preferred_batch_size)  # one optimisation profile: no preferred sizes
