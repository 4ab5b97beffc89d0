"""Triton model repositories: config.pbtxt parsed with Triton's own ModelConfig schema, folder forms."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2 as mc

from nasdeploy.errors import ConfigError
from nasdeploy.export.triton import config_pbtxt, onnx_model_config, tensorrt_model_config, write_triton_model


def _conv_model(path, batch, height, width, external=False):
    """A one-Conv ONNX model (3 -> 6 channels) with the given (possibly symbolic) input dims."""
    weight = numpy_helper.from_array(np.ones((6, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["features"]), helper.make_node("ReduceMean", ["features"], ["logits"], axes=[2, 3], keepdims=0)],
        "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, height, width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 6])], [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if external:
        onnx.save(model, str(path), save_as_external_data=True, location=f"{path.name}.data", size_threshold=0)
    else:
        onnx.save(model, str(path))
    return path


def parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def test_dynamic_onnx_config(tmp_path):
    path = _conv_model(tmp_path / "model.onnx", "batch", "height", "width")
    cfg = parse(config_pbtxt(onnx_model_config(path, "net_a", max_batch_size=64, instance_kind="cpu", instance_count=2)))
    assert (cfg.platform, cfg.max_batch_size) == ("onnxruntime_onnx", 64)
    assert list(cfg.input[0].dims) == [3, -1, -1] and list(cfg.output[0].dims) == [6]
    # No preferred_batch_size: Triton advises it only for TensorRT engines with several profiles.
    assert list(cfg.dynamic_batching.preferred_batch_size) == [] and cfg.HasField("dynamic_batching")
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 100
    assert (cfg.instance_group[0].count, cfg.instance_group[0].kind) == (2, mc.ModelInstanceGroup.KIND_CPU)


def test_static_batch_config_keeps_batch_dim_and_no_batching(tmp_path):
    path = _conv_model(tmp_path / "model.onnx", 1, 32, 32)
    text = config_pbtxt(onnx_model_config(path, "static"))
    cfg = parse(text)
    assert cfg.max_batch_size == 0 and list(cfg.input[0].dims) == [1, 3, 32, 32]
    assert not cfg.HasField("dynamic_batching") and "dynamic_batching" not in text


def test_tensorrt_plan_config(tmp_path):
    path = _conv_model(tmp_path / "model.onnx", "batch", "height", "width")
    cfg = parse(config_pbtxt(tensorrt_model_config(path, "net_a_trt", input_hw=(32, 32), max_batch_size=16)))
    assert (cfg.platform, cfg.max_batch_size) == ("tensorrt_plan", 16)
    assert list(cfg.input[0].dims) == [3, 32, 32]
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    static = parse(config_pbtxt(tensorrt_model_config(path, "static_trt", input_hw=(32, 32), max_batch_size=0)))
    assert static.max_batch_size == 0 and list(static.input[0].dims) == [1, 3, 32, 32]
    assert list(static.output[0].dims) == [1, 6] and not static.HasField("dynamic_batching")


def test_repository_layouts(tmp_path):
    single = _conv_model(tmp_path / "single.onnx", "batch", 8, 8)
    folder = write_triton_model(tmp_path / "repo", onnx_model_config(single, "single"), single)
    assert (folder / "1" / "model.onnx").is_file() and (folder / "config.pbtxt").is_file()
    (tmp_path / "ext").mkdir()
    ext = _conv_model(tmp_path / "ext" / "model.onnx", "batch", 8, 8, external=True)
    folder = write_triton_model(tmp_path / "repo", onnx_model_config(ext, "ext"), ext)
    assert sorted(p.name for p in (folder / "1" / "model.onnx").iterdir()) == ["model.onnx", "model.onnx.data"]
    loaded = onnx.load(str(folder / "1" / "model.onnx" / "model.onnx"))  # the data file is found next to it
    assert numpy_helper.to_array(loaded.graph.initializer[0]).sum() == 18
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"PLAN")
    folder = write_triton_model(tmp_path / "repo", tensorrt_model_config(single, "trt", input_hw=(8, 8), max_batch_size=4), plan)
    assert (folder / "1" / "model.plan").read_bytes() == b"PLAN"
    for model in ("single", "ext", "trt"):
        assert parse((tmp_path / "repo" / model / "config.pbtxt").read_text()).name == model
    with pytest.raises(ConfigError, match="already exists"):
        write_triton_model(tmp_path / "repo", onnx_model_config(single, "single"), single)


def test_invalid_configs(tmp_path):
    path = _conv_model(tmp_path / "model.onnx", "batch", 8, 8)
    with pytest.raises(ConfigError, match="invalid Triton model name"):
        onnx_model_config(path, "../evil")
    with pytest.raises(ConfigError, match="instance kind"):
        onnx_model_config(path, "ok", instance_kind="tpu")


def test_warmup_and_labels_parse_with_tritons_schema(tmp_path):
    path = _conv_model(tmp_path / "model.onnx", "batch", "height", "width")
    cfg = onnx_model_config(path, "net_a", warmup_hw=(24, 20), labels_file="labels.txt")
    parsed = parse(config_pbtxt(cfg))
    assert parsed.output[0].label_filename == "labels.txt"
    (warm,) = parsed.model_warmup
    assert warm.batch_size == 1 and list(warm.inputs["input"].dims) == [3, 24, 20] and warm.inputs["input"].random_data
    labels = [f"c{i}" for i in range(6)]
    folder = write_triton_model(tmp_path / "repo", cfg, path, labels=labels)
    assert (folder / "labels.txt").read_text().splitlines() == labels
    with pytest.raises(ConfigError, match="no labels"):
        write_triton_model(tmp_path / "repo2", cfg, path)
    # Without H/W to fill in, no warm-up is written (Triton needs concrete dims).
    assert not parse(config_pbtxt(onnx_model_config(path, "b"))).model_warmup


def test_tensorrt_config_without_plan_and_readme(tmp_path):
    from nasdeploy.export.triton import repository_readme

    path = _conv_model(tmp_path / "model.onnx", "batch", "height", "width")
    trt = tensorrt_model_config(path, "net_trt", input_hw=(32, 32), max_batch_size=8)
    folder = write_triton_model(tmp_path / "repo", trt, None)
    assert (folder / "1").is_dir() and not any((folder / "1").iterdir())
    assert parse((folder / "config.pbtxt").read_text()).platform == "tensorrt_plan"
    with pytest.raises(ConfigError, match="only a TensorRT"):
        write_triton_model(tmp_path / "repo", onnx_model_config(path, "onnx_a"), None)
    text = repository_readme("triton", [trt], plan_script="trtexec.sh")
    assert "tritonserver --model-repository" in text and "perf_analyzer -m net_trt" in text
    assert "--shape input:3,32,32" in text and "InferenceServerClient" in text and "sh trtexec.sh" in text
