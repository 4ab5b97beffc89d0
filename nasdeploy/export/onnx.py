"""ONNX export of any single-image-input module: eval mode, dynamic axes, metadata, full check, atomic write."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from nasdeploy._version import __version__
from nasdeploy.errors import ConfigError, ExportError
from nasdeploy.utils.optional import require

MIN_OPSET = 18  # the dynamo exporter's minimum (see deploy.md)
MAX_SINGLE_FILE_BYTES = 1_800_000_000  # protobuf caps one file at 2 GiB; keep a margin for the graph
AXIS_NAMES = {0: "batch", 2: "height", 3: "width"}


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode and restore each one's own mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def spatial_blockers(model: nn.Module) -> list[str]:
    """Submodules that forbid dynamic H/W (adaptive pooling to a grid > 1 exports wrong shapes)."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            size = module.output_size
            sizes = size if isinstance(size, (tuple, list)) else (size, size)
            if any(s is not None and s != 1 for s in sizes):
                found.append(f"{name} ({type(module).__name__}({size}))")
    return found


def model_metadata(model: nn.Module) -> dict[str, str]:
    """Metadata read from the model itself: network family, normalisation and genotype when it has them."""
    meta: dict[str, str] = {}
    cfg = getattr(model, "default_cfg", None)
    if cfg is not None:
        meta["net"] = str(cfg.name)
        meta["mean"] = json.dumps(list(cfg.mean))
        meta["std"] = json.dumps(list(cfg.std))
        meta["num_classes"] = str(cfg.num_classes)
    genotype = getattr(model, "genotype", None)
    if genotype is not None and hasattr(genotype, "kind"):
        from nasdeploy.genotypes import genotype_to_dict

        meta["genotype"] = json.dumps(genotype_to_dict(genotype), separators=(",", ":"))
    return meta


def supported_opsets() -> range:
    """The ONNX opsets an export can target: the dynamo exporter's minimum to the installed onnx's newest."""
    onnx = require("onnx", purpose="ONNX export")
    return range(MIN_OPSET, int(onnx.defs.onnx_opset_version()) + 1)


def check_opset(opset: int | None) -> None:
    """ConfigError unless `opset` is None (the exporter's default) or one the installed exporter can write."""
    if opset is not None and (not isinstance(opset, int) or opset < MIN_OPSET):
        raise ConfigError(f"opset must be an integer >= {MIN_OPSET} (the dynamo ONNX exporter's minimum), got {opset!r}")
    supported = supported_opsets()
    if opset is not None and opset not in supported:
        # Beyond its newest opset the exporter's version conversion fails and silently keeps its own default.
        raise ConfigError(f"opset {opset} is newer than the installed onnx supports (opsets {supported.start}.."
                          f"{supported.stop - 1}); upgrade onnx or pick one of those")


def _graph_opset(proto: Any) -> int:
    return int(next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")))


def _check_input_size(input_size: Sequence[int]) -> tuple[int, int, int]:
    size = tuple(input_size)
    if len(size) != 3 or not all(isinstance(s, int) and s >= 1 for s in size):
        raise ConfigError(f"input_size must be (channels, height, width) of positive integers, got {input_size!r}")
    return size  # type: ignore[return-value]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _state_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def _input_dims(model_proto: Any) -> list[int | str]:
    dims = model_proto.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in dims]


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    input_size: Sequence[int],
    dynamic_batch: bool = True,
    dynamic_spatial: bool = True,
    opset: int | None = None,
    metadata: Mapping[str, Any] | None = None,
    simplify: bool = False,
    external_data: bool | None = None,
    input_name: str = "input",
    output_names: Sequence[str] | None = None,
) -> Path:
    """Export `model` (forward takes one image tensor) to ONNX in eval mode; returns the .onnx path.

    Batch and, where the model allows it, H and W are dynamic axes. Metadata (nasdeploy version, opset,
    input shape, dynamic axes, plus `model_metadata(model)` and `metadata`) goes into metadata_props.
    The file is checked with onnx.checker full_check and appears only when everything succeeded.
    """
    onnx = require("onnx", purpose="ONNX export")
    if simplify:  # fail before the (slow) export rather than after it
        require("onnxslim", extra="slim", purpose="ONNX graph simplification (--simplify)")
    check_opset(opset)
    channels, height, width = _check_input_size(input_size)
    target = Path(path)
    if target.suffix != ".onnx":
        raise ConfigError(f"ONNX output path must end in .onnx, got {target}")

    static_reason = ""
    if dynamic_spatial:
        blockers = spatial_blockers(model)
        if blockers:
            dynamic_spatial = False
            static_reason = f"adaptive pooling to a grid > 1 cannot take dynamic H/W: {blockers[0]}"
    else:
        static_reason = "static H/W requested"
    # A batch of 2 when the batch is dynamic keeps the exporter from specialising the axis to 1.
    example = torch.randn(2 if dynamic_batch else 1, channels, height, width)
    if external_data is None:
        external_data = _state_bytes(model) > MAX_SINGLE_FILE_BYTES
    export_kwargs = dict(input_name=input_name, output_names=output_names, opset=opset, external_data=external_data)
    try:
        program = _run_exporter(model, example, _axes(dynamic_batch, dynamic_spatial), **export_kwargs)
    except ExportError as exc:
        if not dynamic_spatial:
            raise
        # Some families cannot take symbolic H/W: export them static on purpose and record why.
        static_reason = f"dynamic H/W export failed ({exc}); exported with static H/W"
        dynamic_spatial = False
        program = _run_exporter(model, example, _axes(dynamic_batch, False), **export_kwargs)

    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        # Write under the final file name so an external data file keeps the name recorded in the model.
        staged = work / target.name
        program.save(staged, external_data=external_data)
        proto = onnx.load(str(staged), load_external_data=False)
        if opset is not None and _graph_opset(proto) != opset:
            raise ExportError(f"the exporter wrote opset {_graph_opset(proto)} instead of the requested {opset} "
                              f"(its version conversion failed); choose another --opset")
        if simplify:
            proto = _simplify(onnx, staged, external_data)
        dims = _input_dims(proto)
        if dynamic_batch and not isinstance(dims[0], str):
            raise ExportError(f"the exporter made the batch axis static (input dims {dims}); cannot export dynamic batch")
        if dynamic_spatial and not (isinstance(dims[2], str) and isinstance(dims[3], str)):
            static_reason = "the exporter specialised H/W to the example size"
            dynamic_spatial = False
        props = {
            "nasdeploy_version": __version__,
            "opset": str(_graph_opset(proto)),
            "input_shape": json.dumps(dims),
            "example_input_shape": json.dumps([1, channels, height, width]),
            "dynamic_axes": json.dumps({"batch": dynamic_batch, "height": dynamic_spatial, "width": dynamic_spatial}),
            **({"static_reason": static_reason} if static_reason else {}),
            **model_metadata(model),
            **{str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()},
        }
        del proto.metadata_props[:]
        for key, value in props.items():
            proto.metadata_props.add(key=key, value=value)
        onnx.save(proto, str(staged))
        try:
            onnx.checker.check_model(str(staged), full_check=True)
        except Exception as exc:
            raise ExportError(f"exported ONNX model fails onnx.checker: {_first_line(exc)}") from exc
        for item in sorted(work.iterdir(), key=lambda p: p.name == target.name):  # the model file last
            os.replace(item, target.parent / item.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _axes(dynamic_batch: bool, dynamic_spatial: bool) -> dict[int, str]:
    return {i: AXIS_NAMES[i] for i in ((0,) if dynamic_batch else ()) + ((2, 3) if dynamic_spatial else ())}


def _run_exporter(
    model: nn.Module, example: torch.Tensor, axes: dict[int, str], *, input_name: str,
    output_names: Sequence[str] | None, opset: int | None, external_data: bool,
) -> Any:
    """torch.onnx.export (dynamo) in eval mode; exporter failures become one-line ExportErrors."""
    with eval_mode(model), torch.no_grad():
        try:
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                # A tuple (not a dict keyed by forward's parameter name) works for any single-input module;
                # named axes become torch.export.Dim.DYNAMIC and keep these names in the ONNX graph.
                dynamic_shapes=(axes,) if axes else None,
                input_names=[input_name],
                output_names=list(output_names) if output_names else None,
                opset_version=opset,
                external_data=external_data,
                verbose=False,
                report=False,
            )
        except Exception as exc:  # the exporter raises many types with long messages
            raise ExportError(f"ONNX export of {type(model).__name__} failed: {_first_line(exc)}") from exc
    if program is None:
        raise ExportError("torch.onnx.export returned no program (the dynamo exporter is required)")
    return program


def _simplify(onnx: Any, staged: Path, external_data: bool) -> Any:
    """Run onnxslim on the staged model and write the result back in place; returns the new proto."""
    onnxslim = require("onnxslim", extra="slim", purpose="ONNX graph simplification (--simplify)")
    try:
        slimmed = onnxslim.slim(onnx.load(str(staged)))
    except Exception as exc:
        raise ExportError(f"onnxslim failed: {_first_line(exc)}") from exc
    for item in staged.parent.iterdir():
        item.unlink()
    if external_data:
        onnx.save(slimmed, str(staged), save_as_external_data=True, location=f"{staged.name}.data")
    else:
        onnx.save(slimmed, str(staged))
    return onnx.load(str(staged), load_external_data=False)


def read_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The metadata_props of an ONNX file as a dict (weights are not loaded)."""
    onnx = require("onnx", purpose="reading ONNX metadata")
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def onnx_io(path: str | os.PathLike[str]) -> dict[str, list[dict[str, Any]]]:
    """Inputs and outputs of an ONNX file: name, ONNX elem type name and dims (str for dynamic axes)."""
    onnx = require("onnx", purpose="reading ONNX inputs/outputs")
    proto = onnx.load(str(path), load_external_data=False)

    def spec(values: Any) -> list[dict[str, Any]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in t.shape.dim]
            out.append({"name": v.name, "dtype": onnx.TensorProto.DataType.Name(t.elem_type), "dims": dims})
        return out

    return {"inputs": spec(proto.graph.input), "outputs": spec(proto.graph.output)}


def onnx_files(path: str | os.PathLike[str]) -> list[Path]:
    """The .onnx file and the external data files it references (for copying the model as a unit)."""
    onnx = require("onnx", purpose="reading ONNX files")
    p = Path(path)
    proto = onnx.load(str(p), load_external_data=False)
    locations = set()
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                locations.add(entry.value)
    return [p] + [p.parent / loc for loc in sorted(locations)]
