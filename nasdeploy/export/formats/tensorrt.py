"""The TensorRT step of an export: model.plan with its parity report, or trtexec.sh where TensorRT is missing."""

from __future__ import annotations

from nasdeploy.errors import MissingDependencyError
from nasdeploy.export import tensorrt as trt_export
from nasdeploy.export.artifacts import StepContext, record_parity
from nasdeploy.export.onnx import onnx_io
from nasdeploy.export.triton import REPOSITORY


def write_tensorrt(ctx: StepContext) -> None:
    """Build the engine from model.onnx and check it on the GPU; without TensorRT write the trtexec command."""
    opts, onnx_path = ctx.options.tensorrt, ctx.artifacts["onnx"]
    assert onnx_path is not None
    channels, height, width = ctx.input_shape
    static = not ctx.options.onnx.dynamic_batch
    profile = trt_export.EngineProfile(onnx_io(onnx_path)["inputs"][0]["name"], channels, height, width, 1,
                                       1 if static else opts.opt_batch, 1 if static else opts.max_batch)
    try:
        trt = trt_export.import_tensorrt()
    except MissingDependencyError as exc:
        fp16_file = None
        if opts.fp16:
            fp16_file = trt_export.convert_onnx_to_fp16(onnx_path, ctx.stage / "model_fp16.onnx").name
            ctx.result.files["onnx_fp16"] = fp16_file
        plan_file = f"{REPOSITORY}/{ctx.result.name}_trt/1/model.plan" if "triton" in ctx.result.formats else "model.plan"
        script = trt_export.write_trtexec_script(
            ctx.stage / "trtexec.sh", onnx_path.name, profile, fp16=opts.fp16, fp16_onnx_file=fp16_file,
            workspace_mib=opts.workspace_mib, plan_file=plan_file,
        )
        ctx.result.files["trtexec_script"] = script.name
        ctx.result.skipped["tensorrt"] = f"{exc}; wrote the equivalent trtexec command to {script.name}"
        ctx.say(f"TensorRT is not importable: wrote {script.name} instead")
        ctx.artifacts["tensorrt"] = None
        return
    ctx.say(f"building TensorRT {trt.__version__} engine ({'fp16' if opts.fp16 else 'fp32'}, batch 1..{profile.max_batch})")
    build = ctx.timed("tensorrt_build", lambda: trt_export.build_engine(
        onnx_path, ctx.stage / "model.plan", profile, fp16=opts.fp16, workspace_mib=opts.workspace_mib,
        timing_cache=ctx.stage / "timing.cache", trt=trt,
    ))
    ctx.result.files["tensorrt_plan"] = "model.plan"
    ctx.result.files["timing_cache"] = "timing.cache"
    if build.onnx_path != onnx_path:
        ctx.result.files["onnx_fp16"] = build.onnx_path.name
    ctx.say("checking TensorRT parity")
    batch_sizes = sorted({b for b in (*ctx.options.parity.batch_sizes, profile.max_batch) if b <= profile.max_batch})
    report = trt_export.check_tensorrt_parity(model=ctx.model, plan_path=build.plan_path, profile=profile,
                                              fp16=opts.fp16, seed=ctx.seed, trt=trt, raise_on_failure=False,
                                              batch_sizes=batch_sizes)
    record_parity(ctx, "tensorrt", report)
    ctx.artifacts["tensorrt"] = build.plan_path
