"""The export-side stages of an image network (export, executorch, quantize) over one model and data build.

The trained network is rebuilt from genotype.json + the checkpoint, and the run's images are sampled (parity;
validation and calibration for INT8), once per process: the first of these stages to run builds them on the
stage context and the others reuse them (a resumed run that only quantizes builds them once, then).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Any

from nasdeploy.pipeline.results import (
    ExecuTorchStageResult,
    ExportStageResult,
    ParityVerdict,
    QuantizeStageResult,
    SkippedStage,
)
from nasdeploy.pipeline.stages import StageContext, quote_path, source_arg

MISSING_EXECUTORCH = "executorch is not installed (pip install 'nasdeploy[executorch]')"
NO_INT8 = "the export section lists no int8 methods (int8: [ort, executorch])"
NO_EXECUTORCH = "the export section asks for no ExecuTorch program (neither its formats nor its int8 list executorch)"


@dataclass(frozen=True)
class DeploySpec:
    """What the export-side stages build of a run: the network family, the checkpoint, the input size, the data."""

    net: str
    checkpoint: str  # relative to the run directory
    input_size: tuple[int, int] | None = None  # (H, W); None: the network's default
    data: Any = None  # the run's dataset config (parity on real images, INT8 samples); None: random inputs only


@dataclass(frozen=True)
class TrainedNetwork:
    """The trained network as exported and the samples of the run's data (None without a dataset)."""

    spec: DeploySpec
    model: Any  # torch.nn.Module, eval mode
    data: Any  # nasdeploy.export.samples.ExportData | None

    @property
    def source(self) -> dict[str, str]:
        """Where the exported model came from, as the export records say it."""
        return {"genotype": "genotype.json", "checkpoint": self.spec.checkpoint}


def export_stage_formats(section: Any) -> tuple[str, ...]:
    """What the export stage writes into export/: ONNX always, TensorRT/Triton as asked (ExecuTorch is its own stage)."""
    return ("onnx", *(f for f in section.formats if f not in ("onnx", "executorch")))


def wants_executorch(section: Any) -> bool:
    """Whether the export section asks for an ExecuTorch program (as a format, or as the float side of INT8)."""
    return "executorch" in section.formats or "executorch" in section.int8


def executorch_installed() -> bool:
    """Whether the optional ExecuTorch runtime is importable."""
    import importlib.util

    return importlib.util.find_spec("executorch") is not None


def export_options(ctx: StageContext, input_size: tuple[int, int] | None, int8: tuple[str, ...] = ()) -> Any:
    """The export options of this run's export section (INT8 files timed with the profiler's protocol)."""
    from nasdeploy.export.options import ExportOptions, Int8Options, OnnxOptions, TensorRTOptions
    from nasdeploy.profile.latency import ModelFileTimer

    section = ctx.config.export
    return ExportOptions(input_size=input_size, overwrite=True, onnx=OnnxOptions(opset=section.opset),
                         tensorrt=TensorRTOptions(fp16=section.fp16),
                         int8=Int8Options(int8, timer=ModelFileTimer(), qat_epochs=section.qat_epochs))


def build_trained_network(ctx: StageContext, spec: DeploySpec) -> TrainedNetwork:
    """Rebuild the trained network from genotype.json + the checkpoint and sample the run's images for it."""
    from nasdeploy.export.api import input_shape
    from nasdeploy.export.samples import SampleSizes, prepare_export_data
    from nasdeploy.export.source import build_export_model

    model = build_export_model(ctx.path("genotype.json"), net=spec.net, checkpoint=ctx.path(spec.checkpoint)).model
    section = ctx.config.export
    data = None
    if spec.data is not None:
        sizes = SampleSizes(validation=section.validation_images, calibration=section.calibration_images)
        height = input_shape(model, export_options(ctx, spec.input_size))[1]
        data = prepare_export_data(spec.data, model, height, sizes=sizes, int8=bool(section.int8))
    return TrainedNetwork(spec, model, data)


def _run_relative(stage_dir: str, files: dict[str, str]) -> dict[str, str]:
    return {role: f"{stage_dir}/{name}" for role, name in files.items()}


def _verdicts(parity: dict[str, Any]) -> dict[str, ParityVerdict]:
    return {name: ParityVerdict.of(report) for name, report in parity.items()}


def export_trained(ctx: StageContext, trained: TrainedNetwork) -> ExportStageResult:
    """export/: the ONNX model (always, published at the top level) and the TensorRT/Triton artifacts asked for.

    With the run's data, ONNX parity also runs on its validation images (top-1 agreement).
    """
    from nasdeploy.export.api import export_model, input_shape

    options = export_options(ctx, trained.spec.input_size)
    result = export_model(trained.model, ctx.path("export"), formats=export_stage_formats(ctx.config.export),
                          options=options, data=trained.data, name=ctx.config.name, source=trained.source,
                          progress=ctx.say("export"), weights="trained")
    publish_onnx(ctx)
    return ExportStageResult(files=_run_relative("export", result.files), parity=_verdicts(result.parity),
                             opset=result.onnx.get("opset"), input_shape=input_shape(trained.model, options),
                             skipped=dict(result.skipped))


def executorch_stage_skip(ctx: StageContext) -> SkippedStage | None:
    """Why the executorch stage has nothing to do in this run (None: it lowers the network)."""
    if not wants_executorch(ctx.config.export):
        return SkippedStage(reason=NO_EXECUTORCH)
    if not executorch_installed():
        return SkippedStage(reason=MISSING_EXECUTORCH)
    return None


def executorch_trained(ctx: StageContext, trained: TrainedNetwork) -> ExecuTorchStageResult:
    """executorch/model.pte (XNNPACK) with its metadata and parity reports (the INT8 .pte is scored against it)."""
    from nasdeploy.export.api import export_model

    result = export_model(trained.model, ctx.path("executorch"), formats=("executorch",),
                          options=export_options(ctx, trained.spec.input_size), data=trained.data,
                          name=ctx.config.name, source=trained.source, progress=ctx.say("executorch"),
                          weights="trained")
    return ExecuTorchStageResult(files=_run_relative("executorch", result.files), parity=_verdicts(result.parity))


def int8_methods(ctx: StageContext) -> tuple[tuple[str, ...], dict[str, str]]:
    """The INT8 methods this run can run, and those it cannot with why (ExecuTorch not installed)."""
    methods, skipped = tuple(ctx.config.export.int8), {}
    if "executorch" in methods and not executorch_installed():
        methods = tuple(m for m in methods if m != "executorch")
        skipped["int8 executorch"] = MISSING_EXECUTORCH
    return methods, skipped


def quantize_trained(ctx: StageContext, trained: TrainedNetwork, methods: tuple[str, ...],
                     skipped: dict[str, str]) -> QuantizeStageResult:
    """quantize/: model_int8.onnx / model_int8.pte and quantization.json (float vs INT8 accuracy, size, latency).

    Reads export/model.onnx and executorch/model.pte; written atomically, so a failed quantize leaves export/
    and executorch/ as they were.
    """
    from nasdeploy.export.api import quantize_model

    result = quantize_model(trained.model, ctx.path("quantize"),
                            onnx_path=ctx.path("export", "model.onnx") if "ort" in methods else None,
                            pte_path=ctx.path("executorch", "model.pte") if "executorch" in methods else None,
                            options=export_options(ctx, trained.spec.input_size, methods), data=trained.data,
                            name=ctx.config.name, source=trained.source, progress=ctx.say("quantize"),
                            weights="trained")
    return QuantizeStageResult(files=_run_relative("quantize", result.files), quantization=dict(result.quantization),
                               skipped=skipped)


def deploy_commands(ctx: StageContext, export_command: str) -> dict[str, str]:
    """The reproducing commands of the executorch and quantize stages (only those the export section asks for).

    export_command: `nasdeploy export TARGET --net NET --checkpoint CKPT` of the trained model.
    """
    section, q = ctx.config.export, quote_path
    commands = {}
    if wants_executorch(section):
        commands["executorch"] = f"{export_command} --format executorch --out {q(ctx.path('executorch'))}"
    if section.int8:  # the INT8 paths on the run's own data split, from export/ and executorch/
        commands["quantize"] = f"nasdeploy pipeline{source_arg(ctx.config)} --out {q(ctx.run_dir)} --only quantize"
    return commands


def publish_onnx(ctx: StageContext) -> None:
    """Put the exported model.onnx (and its external data) at the run directory's top level, next to genotype.json."""
    for name in ("model.onnx", "model.onnx.data"):
        src = ctx.path("export", name)
        if src.exists():
            dst = ctx.path(name)
            if dst.exists():
                dst.unlink()
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
