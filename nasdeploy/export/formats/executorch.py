"""The ExecuTorch step of an export: model.pte (XNNPACK, batch 1), its parity reports and its .pte.json metadata."""

from __future__ import annotations

from typing import Any

from nasdeploy.export import executorch as et
from nasdeploy.export.artifacts import StepContext, check_on_data, record_parity
from nasdeploy.export.parity import compare_on_batches, random_batches

RANDOM_INPUTS = 4  # batch-1 random-normal inputs of the program's parity check


def write_executorch(ctx: StepContext) -> None:
    """model.pte lowered for XNNPACK, checked in ExecuTorch's runtime on random inputs (and validation images)."""
    et.import_executorch()
    shape = "x".join(map(str, ctx.input_shape))
    ctx.say(f"lowering to ExecuTorch (XNNPACK, batch 1, input {shape})")
    pte = ctx.timed("executorch_export", lambda: et.lower_to_pte(ctx.model, ctx.stage / "model.pte", ctx.input_shape))
    ctx.result.files["executorch"] = pte.name
    run, names, label = et.executorch_runner(pte)
    ctx.say("checking ExecuTorch parity in ExecuTorch's runtime")
    report = compare_on_batches(
        ctx.model, run, random_batches([(1, *ctx.input_shape)] * RANDOM_INPUTS, ctx.seed), runtime=label,
        inputs=f"{RANDOM_INPUTS} random-normal inputs of shape 1x{shape} (seed {ctx.seed})", model_path=str(pte),
        output_names=names, rtol=ctx.options.parity.rtol, atol=ctx.options.parity.atol, seed=ctx.seed,
        yardstick=ctx.options.parity.yardstick, notes=("batch 1 only: the program is exported at a static batch of 1 (the mobile case)",),
    )
    record_parity(ctx, "executorch", report)
    if ctx.data is not None:
        check_on_data(ctx, "executorch", "ExecuTorch", run, names, label, pte)
    ctx.result.files["executorch_metadata"] = et.write_pte_metadata(pte, pte_metadata(ctx, None)).name
    ctx.artifacts["executorch"] = pte


def pte_metadata(ctx: StepContext, quantization: dict[str, Any] | None) -> dict[str, Any]:
    """What an app needs beside the program: input layout, normalisation, classes, genotype and provenance."""
    result = ctx.result
    dataset = ctx.data.info.to_dict() if ctx.data is not None else (result.source.get("dataset") or {})
    return {
        "model_name": result.name, "input": {"shape": [1, *ctx.input_shape], "dtype": "float32", "layout": "NCHW"},
        "normalisation": ({"mean": list(dataset["mean"]), "std": list(dataset["std"]), "applied_to": "RGB in [0, 1]"}
                          if dataset.get("mean") is not None else None),
        "classes": list(dataset.get("classes") or []) or None, "genotype": result.source.get("genotype_dict"),
        "source": {k: v for k, v in result.source.items() if k not in ("genotype_dict", "dataset")},
        "weights": result.weights, "quantization": quantization, "delegate": "XNNPACK",
    }
