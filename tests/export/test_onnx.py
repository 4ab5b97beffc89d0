"""ONNX export: every registry genotype on both networks, parity in onnxruntime, eval mode, metadata."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from helpers import randomize_bn_
from nasdeploy._version import __version__
from nasdeploy.errors import ConfigError, ExportError, MissingDependencyError
from nasdeploy.export.onnx import export_onnx, onnx_files, onnx_io, read_onnx_metadata
from nasdeploy.export.onnx_parity import check_onnx_parity, second_spatial_size
from nasdeploy.export.parity import OutputShapeError, ToleranceError
from nasdeploy.genotypes import genotype_from_dict, get_genotype, list_genotypes
from nasdeploy.nets import build_network

CNN_GENOTYPES = list_genotypes("cnn_cell")
# layers=3 is the smallest stack with a normal cell, a reduction cell and a FactorizedReduce preprocess.
SMALL = {"cifar": dict(channels=8, layers=3, size=32), "imagenet": dict(channels=8, layers=3, size=64)}


def small_net(genotype: str, net: str, **kwargs) -> nn.Module:
    cfg = SMALL[net]
    model = build_network(genotype, net, channels=cfg["channels"], layers=cfg["layers"], num_classes=7, **kwargs)
    return randomize_bn_(model)


@pytest.fixture(scope="module")
def darts_cifar_onnx(tmp_path_factory):
    """A small DARTS_V2 CIFAR network and its ONNX export, shared by the cheap tests below."""
    torch.manual_seed(0)
    model = small_net("DARTS_V2", "cifar").eval()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx", input_size=(3, 32, 32), output_names=["logits"])
    return model, path


@pytest.mark.parametrize("net", ["cifar", "imagenet"])
@pytest.mark.parametrize("genotype", CNN_GENOTYPES)
def test_every_genotype_exports_in_eval_mode_with_parity(genotype, net, tmp_path):
    # The network is left in train mode with drop-path and an auxiliary head: the export must still be
    # the eval-mode network (one output, no drop-path) and the module's own modes must be restored.
    model = small_net(genotype, net, auxiliary=True, drop_path_prob=0.3)
    model.train()
    size = SMALL[net]["size"]
    path = export_onnx(model, tmp_path / "model.onnx", input_size=(3, size, size), output_names=["logits"])
    assert model.training and all(m.training for m in model.modules())

    io = onnx_io(path)
    assert [o["name"] for o in io["outputs"]] == ["logits"], "auxiliary output leaked into the export"
    assert io["inputs"][0]["dims"] == ["batch", 3, "height", "width"]
    assert io["outputs"][0]["dims"] == ["batch", 7]

    report = check_onnx_parity(model, path)  # compares against the eval-mode network
    assert model.training, "parity check must restore the train mode too"
    second = second_spatial_size(size, size, model.min_input_size)
    assert {c.input_shape for c in report.cases} == {(b, 3, h, w) for b in (1, 2, 8) for h, w in [(size, size), second]}
    assert report.passed and report.max_abs_err <= 1e-3 and (report.rtol, report.atol) == (1e-3, 1e-5)


def test_metadata(darts_cifar_onnx):
    model, path = darts_cifar_onnx
    meta = read_onnx_metadata(path)
    assert meta["nasdeploy_version"] == __version__
    assert genotype_from_dict(json.loads(meta["genotype"])) == get_genotype("DARTS_V2")
    assert json.loads(meta["mean"]) == list(model.default_cfg.mean)
    assert json.loads(meta["std"]) == list(model.default_cfg.std)
    assert json.loads(meta["input_shape"]) == ["batch", 3, "height", "width"]
    assert json.loads(meta["dynamic_axes"]) == {"batch": True, "height": True, "width": True}
    proto = onnx.load(str(path))
    assert int(meta["opset"]) == next(o.version for o in proto.opset_import if o.domain == "")
    assert onnx_files(path) == [path], "a small model must be one file"


def test_no_shape_guards_left_in_graph(darts_cifar_onnx):
    # The input check in forward() is skipped while exporting; nothing that pins sizes may remain.
    model, path = darts_cifar_onnx
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not ops & {"Assert", "If", "Loop"}, ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(3, 3, 8, 8), (1, 3, 41, 29), (5, 3, 64, 48)]:  # sizes far from the traced one, odd ones too
        x = torch.randn(shape)
        with torch.no_grad():
            expected = model(x).numpy()
        np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], expected, rtol=1e-3, atol=1e-5)


def test_parity_detects_a_changed_model(darts_cifar_onnx):
    model, path = darts_cifar_onnx
    changed = build_network("DARTS_V2", "cifar", channels=8, layers=3, num_classes=7)
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        changed.classifier.bias[3] += 1e-2
    with pytest.raises(ToleranceError, match=r"max abs err 1\.0\d*e-02.*rtol=0\.001, atol=1e-05") as info:
        check_onnx_parity(changed, path, batch_sizes=(1,))
    assert not info.value.report.passed and info.value.report.max_abs_err == pytest.approx(1e-2, rel=1e-3)
    other = build_network("DARTS_V2", "cifar", channels=8, layers=3, num_classes=5)
    with pytest.raises(OutputShapeError, match="logits"):
        check_onnx_parity(other, path, batch_sizes=(2,))
    report = check_onnx_parity(changed, path, batch_sizes=(1,), raise_on_failure=False)
    assert not report.passed and "FAIL" in report.format_table()
    # The error carries each output's worst errors and the tolerances (the caller decides what to do with them).
    (logits,) = info.value.outputs
    assert logits.name == "logits" and not logits.ok and logits.max_abs_err == pytest.approx(1e-2, rel=1e-3)
    assert (info.value.rtol, info.value.atol) == (1e-3, 1e-5)


def test_typed_parity_errors_shape_nan_tolerance():
    """Each kind of failure raises its own ParityError subclass; a NaN is not hidden behind a small max()."""
    from nasdeploy.export.parity import NonFiniteOutputError, ParityError, compare_with_torch

    model = nn.Sequential(nn.Conv2d(3, 2, 1)).eval()

    def report(run):
        return compare_with_torch(model, run, [(2, 3, 4, 4)], runtime="fake", output_names=("y",), seed=0)

    def exact(x):
        with torch.no_grad():
            return [model(torch.from_numpy(x)).numpy()]

    assert report(exact).failure() is None
    nan = report(lambda x: [np.where(np.arange(exact(x)[0].size).reshape(exact(x)[0].shape) == 3, np.nan, exact(x)[0])])
    off = report(lambda x: [exact(x)[0] + 1e-2])
    wrong = report(lambda x: [exact(x)[0][:, :1]])
    for rep, kind in ((nan, NonFiniteOutputError), (off, ToleranceError), (wrong, OutputShapeError)):
        error = rep.failure()
        assert type(error) is kind and isinstance(error, ParityError) and error.report is rep
        assert [o.name for o in error.outputs] == ["y"] and not error.outputs[0].ok
        with pytest.raises(kind):
            rep.raise_for_failure()
    assert np.isnan(nan.outputs[0].max_abs_err) and not nan.cases[0].finite and "NaN or inf" in str(nan.failure())
    assert off.outputs[0].max_abs_err == pytest.approx(1e-2, rel=1e-4) and off.cases[0].finite
    saved = nan.to_dict()
    assert saved["passed"] is False and saved["outputs"][0]["name"] == "y" and saved["cases"][0]["finite"] is False


class _PoolTo2(nn.Module):
    """Not a DARTS net: adaptive pooling to 2x2 cannot take dynamic H/W, and a tuple output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)

    def forward(self, x):
        y = self.pool(self.conv(x))
        return y.flatten(1), y.mean(dim=(2, 3))


def test_any_module_and_static_hw_on_purpose(tmp_path):
    model = _PoolTo2()
    path = export_onnx(model, tmp_path / "pool.onnx", input_size=(3, 12, 10))
    meta = read_onnx_metadata(path)
    assert json.loads(meta["dynamic_axes"]) == {"batch": True, "height": False, "width": False}
    assert "AdaptiveAvgPool2d(2)" in meta["static_reason"]
    assert onnx_io(path)["inputs"][0]["dims"] == ["batch", 3, 12, 10]
    report = check_onnx_parity(model, path)
    assert report.passed and len(report.cases) == 3 * 2  # 3 batch sizes x 2 outputs, one spatial size
    assert any("static H/W" in n for n in report.notes)


def test_static_export_with_external_data(tmp_path):
    model = small_net("DARTS_V1", "cifar").eval()
    path = export_onnx(
        model, tmp_path / "model.onnx", input_size=(3, 32, 32), dynamic_batch=False, dynamic_spatial=False,
        external_data=True,
    )
    assert [p.name for p in onnx_files(path)] == ["model.onnx", "model.onnx.data"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]  # no temp leftovers
    assert onnx_io(path)["inputs"][0]["dims"] == [1, 3, 32, 32]
    report = check_onnx_parity(model, path)
    assert report.passed and {c.input_shape for c in report.cases} == {(1, 3, 32, 32)}


@pytest.mark.slow
def test_imagenet_full_size_224(tmp_path):
    """DARTS_V2 ImageNet at its real size: batch 1 and 8, at 224x224 and at a second input size."""
    model = randomize_bn_(build_network("DARTS_V2", "imagenet")).eval()
    path = export_onnx(model, tmp_path / "model.onnx", input_size=(3, 224, 224), output_names=["logits"])
    report = check_onnx_parity(model, path, batch_sizes=(1, 8), seed=0)
    assert {c.input_shape for c in report.cases} == {
        (1, 3, 224, 224), (8, 3, 224, 224), (1, 3, 113, 115), (8, 3, 113, 115)
    }
    assert report.passed
    assert all(c.output_shape[1] == 1000 for c in report.cases)


def test_bad_arguments_fail_before_exporting(tmp_path, monkeypatch):
    model = nn.Conv2d(3, 3, 1)
    with pytest.raises(ConfigError, match="opset"):
        export_onnx(model, tmp_path / "m.onnx", input_size=(3, 8, 8), opset=17)
    with pytest.raises(ConfigError, match="input_size"):
        export_onnx(model, tmp_path / "m.onnx", input_size=(8, 8))
    with pytest.raises(ConfigError, match=r"\.onnx"):
        export_onnx(model, tmp_path / "m.bin", input_size=(3, 8, 8))
    monkeypatch.setitem(sys.modules, "onnxslim", None)  # makes `import onnxslim` fail
    with pytest.raises(MissingDependencyError, match=r"onnxslim.*nasdeploy\[slim\]"):
        export_onnx(model, tmp_path / "m.onnx", input_size=(3, 8, 8), simplify=True)
    assert list(tmp_path.iterdir()) == []


def test_exporter_failure_is_one_line(tmp_path):
    class DataDependent(nn.Module):
        def forward(self, x):
            return x[x > 0].sum().reshape(1) if x.sum() > 0 else x.flatten()[:1]

    with pytest.raises(ExportError) as info:
        export_onnx(DataDependent(), tmp_path / "m.onnx", input_size=(3, 4, 4), dynamic_spatial=False)
    assert "\n" not in str(info.value) and "DataDependent" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_simplify_keeps_parity(darts_cifar_onnx, tmp_path):
    pytest.importorskip("onnxslim")
    model, _ = darts_cifar_onnx
    path = export_onnx(model, tmp_path / "slim.onnx", input_size=(3, 32, 32), simplify=True)
    assert check_onnx_parity(model, path, batch_sizes=(1, 4)).passed
    assert read_onnx_metadata(path)["nasdeploy_version"] == __version__
