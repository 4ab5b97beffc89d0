"""The ONNX step of an export: model.onnx (metadata, dynamic axes, full check) and its onnxruntime parity reports."""

from __future__ import annotations

from nasdeploy.export.artifacts import StepContext, check_on_data, record_parity
from nasdeploy.export.onnx import export_onnx, read_onnx_metadata
from nasdeploy.export.onnx_parity import check_onnx_parity, onnxruntime_runner
from nasdeploy.export.samples import is_classifier
from nasdeploy.utils.limits import loads_json


def write_onnx(ctx: StepContext) -> None:
    """model.onnx with its parity report (random inputs at every batch size; validation images when given)."""
    opts, parity = ctx.options.onnx, ctx.options.parity
    channels, height, width = ctx.input_shape
    ctx.say(f"exporting ONNX ({'dynamic' if opts.dynamic_batch else 'static'} batch, input {channels}x{height}x{width})")
    path = ctx.timed("onnx_export", lambda: export_onnx(
        ctx.model, ctx.stage / "model.onnx", input_size=ctx.input_shape, dynamic_batch=opts.dynamic_batch,
        dynamic_spatial=opts.dynamic_spatial, opset=opts.opset, simplify=opts.simplify,
        external_data=opts.external_data, output_names=("logits",) if is_classifier(ctx.model) else None,
        metadata={"model_name": ctx.result.name, **ctx.metadata},
    ))
    ctx.result.files["onnx"] = path.name
    if (ctx.stage / "model.onnx.data").exists():
        ctx.result.files["onnx_data"] = "model.onnx.data"
    meta = read_onnx_metadata(path)
    ctx.result.onnx = {
        "opset": int(meta["opset"]), "input_shape": meta["input_shape"],
        "dynamic_axes": loads_json(meta["dynamic_axes"], "ONNX metadata dynamic_axes"),
        "static_reason": meta.get("static_reason"), "simplified": opts.simplify,
        "size_bytes": sum(p.stat().st_size for p in ctx.stage.glob("model.onnx*")),
    }
    ctx.say("checking ONNX parity in onnxruntime")
    report = ctx.timed("onnx_parity", lambda: check_onnx_parity(
        ctx.model, path, batch_sizes=parity.batch_sizes, rtol=parity.rtol, atol=parity.atol, seed=ctx.seed,
        yardstick=parity.yardstick, raise_on_failure=False,
    ))
    record_parity(ctx, "onnx", report)
    if ctx.data is not None:
        check_on_data(ctx, "onnx", "ONNX", *onnxruntime_runner(path), path)
    ctx.artifacts["onnx"] = path
