"""`nasdeploy export TARGET ...`: a thin layer over the export adapter of TARGET's space (nasdeploy.spaces.table)."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import click

from nasdeploy.errors import ConfigError, MissingDependencyError
from nasdeploy.export.formats import FORMATS, INT8_ACTIVATIONS, INT8_CALIBRATIONS, INT8_METHODS
from nasdeploy.utils.limits import brief, check_input_size

DATASETS = ("demo", "cifar10", "cifar100", "imagefolder")


def parse_input_size(text: str | None) -> tuple[int, int] | None:
    """'224' or '224x192' -> (H, W), each side within the input_side limit."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d{1,9})\s*(?:[xX,]\s*(\d{1,9}))?\s*", text)
    if not match:
        raise ConfigError(f"--input-size must be S or HxW (e.g. 224 or 224x192), got {brief(text)}")
    h = int(match.group(1))
    w = int(match.group(2)) if match.group(2) else h
    check_input_size("--input-size", h, w)
    return h, w


@click.command("export")
@click.argument("target")
@click.option("--net", default=None,
              help="Network family: cifar | imagenet | segmentation [default: the checkpoint's, else cifar for DARTS CNN "
                   "genotypes, the genotype's own family otherwise].")
@click.option("--checkpoint", type=click.Path(dir_okay=False),
              help="nasdeploy train checkpoint or plain state_dict (TARGET may also be a checkpoint itself).")
@click.option("--format", "formats", multiple=True, type=click.Choice(FORMATS), default=("onnx",), show_default=True,
              help="Artifact to produce (repeatable). ONNX is exported and verified first whenever a format or --int8 ort needs it "
                   "(onnx, tensorrt, triton); --format executorch alone writes no ONNX. A language model exports ONNX only.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Output directory [default: exports/<name>].")
@click.option("--opset", type=int, help="ONNX opset (>= 18) [default: the exporter's].")
@click.option("--dynamic-batch/--static", default=None,
              help="Dynamic batch (and H/W where the network allows it), or fully static shapes "
                   "[default: dynamic; a language model: static].")
@click.option("--static-hw", is_flag=True, help="Keep H and W fixed at the input size (batch stays dynamic).")
@click.option("--fp16", is_flag=True, help="Build the TensorRT engine in FP16 (TensorRT 11: from an FP16 ONNX model).")
@click.option("--simplify", is_flag=True, help="Simplify the ONNX graph with onnxslim (extra 'slim').")
@click.option("--input-size", help="Export / check input size S or HxW [default: the network's].")
@click.option("--seq-len", type=int, help="Language model: fixed sequence length of the graph [default: the model's].")
@click.option("--batch-size", type=int, default=1, show_default=True, help="Language model: batch of the graph.")
@click.option("--channels", type=int, help="Initial channels (plain state_dicts / fresh networks; language model: nhid).")
@click.option("--layers", type=int, help="Number of cells (plain state_dicts / fresh networks).")
@click.option("--num-classes", type=int, help="Number of classes (plain state_dicts / fresh networks; language model: vocabulary).")
@click.option("--name", help="Model name (Triton folder, metadata) [default: <genotype>_<net>].")
@click.option("--max-batch", default=32, show_default=True, help="TensorRT profile max batch and Triton max_batch_size.")
@click.option("--opt-batch", default=8, show_default=True, help="TensorRT profile optimum batch.")
@click.option("--workspace", "workspace_mib", default=1024, show_default=True, help="TensorRT workspace limit (MiB).")
@click.option("--instance-kind", type=click.Choice(["gpu", "cpu"]), default="gpu", show_default=True,
              help="Triton instance group kind of the ONNX model.")
@click.option("--instances", "instance_count", default=1, show_default=True, help="Triton instances per model.")
@click.option("--rtol", default=1e-3, show_default=True, help="Parity relative tolerance (ONNX).")
@click.option("--atol", default=1e-5, show_default=True, help="Parity absolute tolerance (ONNX).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the parity inputs, the data samples and, without a checkpoint, the untrained weights.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory (only once the export succeeded).")
@click.option("--int8", "int8", multiple=True, type=click.Choice(INT8_METHODS),
              help="INT8 method (repeatable): ort = onnxruntime static QDQ; executorch = PT2E XNNPACK -> int8 .pte. Needs data.")
@click.option("--calibration", type=click.Choice(INT8_CALIBRATIONS), default="minmax", show_default=True,
              help="onnxruntime INT8 calibration method (PT2E uses XNNPACKQuantizer's histogram observers).")
@click.option("--int8-activations", type=click.Choice(INT8_ACTIVATIONS), default="auto", show_default=True,
              help="onnxruntime INT8 activation type (auto: uint8 on x86, whose VNNI kernels take it; int8 elsewhere).")
@click.option("--max-drop", type=float, default=1.0, show_default=True,
              help="INT8 accuracy guard: beyond this many points lost, keep the most sensitive layers in float.")
@click.option("--max-float-layers", type=int, default=8, show_default=True,
              help="INT8 accuracy guard: the most layers it may keep in float.")
@click.option("--qat-epochs", type=int, default=0, show_default=True,
              help="--int8 executorch: epochs of quantization-aware fine-tuning (PT2E QAT, Adam) on the training-split "
                   "sample when the guard still loses more than --max-drop; the better of PTQ and QAT is kept (0: off).")
@click.option("--dataset", type=click.Choice(DATASETS),
              help="Dataset for parity on real images, calibration and validation [default: the checkpoint's, else cifar10 / imagefolder].")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Dataset directory (not needed for --dataset demo).")
@click.option("--calibration-images", default=128, show_default=True, help="INT8 calibration images (training split).")
@click.option("--val-images", "validation_images", default=500, show_default=True, help="Validation images for float vs INT8 top-1.")
@click.option("--parity-images", default=64, show_default=True, help="Validation images compared between PyTorch and each runtime.")
@click.option("--json", "as_json", is_flag=True, help="Print export.json instead of the summary.")
def export(target: str, net: str | None, checkpoint: str | None, formats: tuple[str, ...], out_dir: str | None,
           opset: int | None, dynamic_batch: bool | None, static_hw: bool, fp16: bool, simplify: bool,
           input_size: str | None, seq_len: int | None, batch_size: int, channels: int | None, layers: int | None,
           num_classes: int | None, name: str | None, max_batch: int, opt_batch: int, workspace_mib: int,
           instance_kind: str, instance_count: int, rtol: float, atol: float, seed: int, overwrite: bool,
           int8: tuple[str, ...], calibration: str, int8_activations: str, max_drop: float, max_float_layers: int, qat_epochs: int,
           dataset: str | None, data_dir: str | None, calibration_images: int,
           validation_images: int, parity_images: int, as_json: bool) -> None:
    """Export TARGET (registry name, genotype file or checkpoint) as verified ONNX, ExecuTorch, INT8, TensorRT and/or Triton artifacts."""
    from nasdeploy.export import options as opts
    from nasdeploy.export.request import ExportRequest, NetSizes
    from nasdeploy.export.samples import SampleSizes
    from nasdeploy.export.target import deploy_target
    from nasdeploy.profile.latency import FILE_TIMING, ModelFileTimer

    if qat_epochs and "executorch" not in int8:
        raise ConfigError("--qat-epochs fine-tunes the PT2E model: add --int8 executorch")
    dynamic = dynamic_batch is not False
    options = opts.ExportOptions(
        input_size=parse_input_size(input_size), name=name, overwrite=overwrite, seed=seed,
        parity=opts.ParityOptions(rtol=rtol, atol=atol),
        onnx=opts.OnnxOptions(opset=opset, dynamic_batch=dynamic, dynamic_spatial=dynamic and not static_hw,
                              simplify=simplify),
        tensorrt=opts.TensorRTOptions(fp16=fp16, max_batch=max_batch if dynamic else 1,
                                      opt_batch=min(opt_batch, max_batch) if dynamic else 1, workspace_mib=workspace_mib),
        triton=opts.TritonOptions(max_batch_size=max_batch if dynamic else 1, instance_kind=instance_kind,
                                  instance_count=instance_count),
        int8=opts.Int8Options(tuple(int8), timer=ModelFileTimer(replace(FILE_TIMING, seed=seed)), calibration=calibration,
                              activations=int8_activations, max_drop=max_drop, max_float_layers=max_float_layers,
                              qat_epochs=qat_epochs),
        darts_rnn=opts.DartsRnnOptions(seq_len=seq_len, batch_size=batch_size, dynamic_batch=bool(dynamic_batch)),
    )
    resolved = deploy_target(target, checkpoint)
    request = ExportRequest(resolved, net=net, formats=formats, out_dir=out_dir,
                            sizes=NetSizes(channels, layers, num_classes), options=options, dataset=dataset,
                            data_dir=data_dir, samples=SampleSizes(parity_images, validation_images, calibration_images))
    result = resolved.space.load("export_target")(request, lambda msg: click.echo(msg, err=True))
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.summary())
    if "tensorrt" in result.skipped:
        raise MissingDependencyError(
            f"TensorRT engine not built: tensorrt is not importable (pip install 'nasdeploy[tensorrt]'); "
            f"the verified ONNX model and {result.files.get('trtexec_script', 'trtexec.sh')} are in {result.out_dir}"
        )
