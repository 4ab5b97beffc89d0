"""The Triton step of an export: a model repository (ONNX model, and the TensorRT model when asked) with a README."""

from __future__ import annotations

from pathlib import Path

from nasdeploy.export import triton
from nasdeploy.export.artifacts import StepContext
from nasdeploy.export.onnx import onnx_io
from nasdeploy.utils.files import write_text_atomic
from nasdeploy.utils.ownership import claim_folder


def write_triton(ctx: StepContext) -> None:
    """triton/<name>/ (onnxruntime_onnx) and triton/<name>_trt/ (tensorrt_plan) with labels; README one level up."""
    onnx_path, opts = ctx.artifacts["onnx"], ctx.options.triton
    assert onnx_path is not None
    repo = claim_folder(ctx.stage / triton.REPOSITORY, "triton")
    ctx.say(f"writing Triton model repository in {ctx.result.out_dir / triton.REPOSITORY}")
    hw = ctx.input_shape[1:]
    labels = ctx.labels
    classes = _num_classes(onnx_path) if labels is None else None
    if labels is None and classes:
        labels = [f"class_{i}" for i in range(classes)]
    labels_file = triton.LABELS_FILE if labels is not None else None
    cfg = triton.onnx_model_config(onnx_path, ctx.result.name, max_batch_size=opts.max_batch_size,
                                   instance_kind=opts.instance_kind, instance_count=opts.instance_count,
                                   warmup_hw=hw, labels_file=labels_file)
    folder = triton.write_triton_model(repo, cfg, onnx_path, labels=labels)
    ctx.result.files["triton_repository"] = triton.REPOSITORY
    ctx.result.files["triton_onnx_model"] = f"{triton.REPOSITORY}/{folder.name}/config.pbtxt"
    models, script = [cfg], None
    if "tensorrt" in ctx.result.formats:
        engine = ctx.options.tensorrt
        trt_cfg = triton.tensorrt_model_config(
            onnx_path, f"{ctx.result.name}_trt", input_hw=hw,
            max_batch_size=engine.max_batch if ctx.options.onnx.dynamic_batch else 0,
            instance_count=opts.instance_count, labels_file=labels_file,
        )
        # Without TensorRT here the config is still written; trtexec.sh builds 1/model.plan in place.
        trt_folder = triton.write_triton_model(repo, trt_cfg, ctx.artifacts.get("tensorrt"), labels=labels)
        ctx.result.files["triton_tensorrt_model"] = f"{triton.REPOSITORY}/{trt_folder.name}/config.pbtxt"
        models.append(trt_cfg)
        script = ctx.result.files.get("trtexec_script")
    write_text_atomic(ctx.stage / triton.README, triton.repository_readme(triton.REPOSITORY, models, plan_script=script))
    ctx.result.files["triton_readme"] = triton.README


def _num_classes(onnx_path: Path) -> int | None:
    outputs = onnx_io(onnx_path)["outputs"]
    dims = outputs[0]["dims"] if outputs else []
    return dims[1] if len(dims) == 2 and isinstance(dims[1], int) and dims[1] > 1 else None
