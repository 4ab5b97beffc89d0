"""PT2E quantization-aware fine-tuning: the INT8 path's last resort when the accuracy guard stays over max_drop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from nasdeploy.errors import ConfigError
from nasdeploy.export.formats import MAX_QAT_EPOCHS
from nasdeploy.export.options import Int8Options
from nasdeploy.export.samples import ImageSample
from nasdeploy.pipeline.sections import ExportSection

SHAPE = (3, 8, 8)


class _TwoFragile(nn.Module):
    """conv1 -> conv2 -> conv3 -> linear; conv2 and conv3 each carry one weight per output channel 300x the others
    on an input channel that is always 0 (so float ignores it, while INT8 rounds every other weight to 0)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.fc = nn.Linear(16, 10, bias=False)
        with torch.no_grad():
            self.conv1.weight[0] = 0.0
            self.conv1.bias[0] = -1.0  # channel 0 is always 0 after the ReLU ...
            self.conv2.weight[0] = 0.0  # ... and so is conv2's channel 0, which conv3's outlier reads
            for conv in (self.conv2, self.conv3):
                conv.weight[:, 0, 0, 0] = 300 * conv.weight.abs().max()

    def forward(self, x):
        return self.fc(self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x))))).mean((2, 3)))


def _labelled(model, n_batches, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        x = rng.standard_normal((32, *SHAPE)).astype(np.float32)
        with torch.no_grad():
            out.append((x, model(torch.from_numpy(x)).argmax(1).numpy()))
    return tuple(out)


def test_qat_options_are_checked_at_load():
    assert Int8Options().qat_epochs == 0 and Int8Options(qat_epochs=3).qat_lr == pytest.approx(1e-4)
    for bad in (-1, MAX_QAT_EPOCHS + 1, 1.5, True):
        with pytest.raises(ConfigError, match="qat_epochs"):
            Int8Options(("executorch",), qat_epochs=bad)
    for bad in (0.0, -1e-4, 2.0, float("nan")):
        with pytest.raises(ConfigError, match="qat_lr"):
            Int8Options(("executorch",), qat_epochs=1, qat_lr=bad)
    assert ExportSection(int8=("executorch",), qat_epochs=2).qat_epochs == 2
    with pytest.raises(ConfigError, match="export.qat_epochs"):
        ExportSection(int8=("executorch",), qat_epochs=-1)
    with pytest.raises(ConfigError, match="list executorch in export.int8"):
        ExportSection(int8=("ort",), qat_epochs=1)


def test_qat_pte_runs_in_executorch_like_the_converted_module(tmp_path):
    pytest.importorskip("executorch")
    from nasdeploy.export import executorch as et
    from nasdeploy.export.int8_qat import qat_pt2e_xnnpack

    model = _TwoFragile().eval()
    training = _labelled(model, 1, 2)
    converted, losses = qat_pt2e_xnnpack(model, SHAPE, training, epochs=2, lr=1e-4, seed=0, float_modules=("conv2",))
    assert len(losses) == 2 and all(np.isfinite(losses))
    path = et.lower_quantized_to_pte(converted, tmp_path / "qat.pte", SHAPE)
    run = et.executorch_runner(path)[0]
    x = _labelled(model, 1, 3)[0][0][:4]
    with torch.no_grad():
        reference = converted(torch.from_numpy(x)).numpy()  # the same Q/DQ arithmetic in PyTorch
    np.testing.assert_allclose(run(x)[0], reference, rtol=0.05, atol=0.05 * np.abs(reference).max())


@pytest.mark.slow  # the guard's trials, two lowerings and the QAT export: about 40 s on the shared 2-core machine
def test_qat_follows_a_guard_over_the_limit_and_keeps_the_better_model(tmp_path, monkeypatch):
    pytest.importorskip("executorch")
    from nasdeploy.export import executorch as et
    from nasdeploy.export import int8_qat
    from nasdeploy.export.int8_guard import top1
    from nasdeploy.export.quantize import quantize_with_executorch

    model = _TwoFragile().eval()
    float_pte = et.lower_to_pte(model, tmp_path / "model.pte", SHAPE)
    val = ImageSample(_labelled(model, 2, 1), "64 labelled random images")
    calib = ImageSample(_labelled(model, 1, 2), "32 labelled training images")
    seen = []
    real = int8_qat.train_epochs

    def spy(prepared, batches, **kwargs):
        seen.append((batches, kwargs))
        return real(prepared, batches, **kwargs)

    monkeypatch.setattr(int8_qat, "train_epochs", spy)
    out = tmp_path / "model_int8.pte"
    res = quantize_with_executorch(model, float_pte, out, calib, val, input_shape=SHAPE,
                                   options=Int8Options(("executorch",), max_drop=1.0, max_float_layers=1, qat_epochs=1))
    assert res.status == "ok", res.note
    guard, qat = res.guard, res.qat
    assert not guard.within and len(guard.kept_in_float) <= 1  # one layer in float cannot save the other
    # QAT trained on the training sample only: the very batches given as training data, no validation image.
    assert len(seen) == 1 and seen[0][0] is calib.batches and seen[0][1]["epochs"] == 1
    val_images = {x.tobytes() for x, _ in val.batches}
    assert not any(x.tobytes() in val_images for x, _ in seen[0][0])
    assert qat is not None and qat.note == "" and (qat.epochs, qat.lr, qat.optimizer) == (1, 1e-4, "Adam")
    assert qat.kept_in_float == guard.kept_in_float and qat.drop_before == guard.drop and qat.images == 32
    assert qat.drop_after is not None and len(qat.losses) == 1
    # The better model by validation drop is the file left, and the reported metric is that file's in ExecuTorch.
    assert qat.kept == ("qat" if qat.drop_after < qat.drop_before else "ptq")
    written = top1(et.executorch_runner(out)[0], val.batches)
    assert res.int8_metric == pytest.approx(written)
    assert 100 * (res.float_metric - written) == pytest.approx(min(qat.drop_before, qat.drop_after), abs=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pte", "model_int8.pte"]  # no QAT candidate left
    assert "QAT 1 epoch(s), Adam lr 0.0001" in res.verdict and "model is kept" in res.verdict
    report = res.to_dict()
    assert report["qat"]["kept"] == qat.kept and report["qat"]["line"] == qat.line() and json.dumps(report)


def test_a_better_qat_model_replaces_the_ptq_file_and_a_failed_one_leaves_it(tmp_path, monkeypatch):
    pytest.importorskip("executorch")
    from nasdeploy.export import executorch as et
    from nasdeploy.export import int8_qat
    from nasdeploy.export.int8_guard import AccuracyGuard, top1
    from nasdeploy.export.quantize import QuantizationResult, fine_tune_executorch

    model = _TwoFragile().eval()
    val = ImageSample(_labelled(model, 1, 1), "32 labelled random images")
    train = ImageSample(_labelled(model, 1, 2), "32 labelled training images")
    out = tmp_path / "model_int8.pte"
    out.write_bytes(b"the PTQ program")
    res = QuantizationResult("executorch", "ok", "PT2E", float_metric=1.0, int8_metric=0.0,
                             guard=AccuracyGuard(1.0, 1.0, 100.0, (), 0.0, 100.0, False))
    options = Int8Options(("executorch",), qat_epochs=2, qat_lr=3e-4)

    def fails(*_args, **_kwargs):
        raise RuntimeError("no gradient\nsecond line")

    monkeypatch.setattr(int8_qat, "qat_pt2e_xnnpack", fails)
    failed = fine_tune_executorch(model, res, out, train, val, SHAPE, options, lambda _m: None)
    assert failed.drop_after is None and failed.note == "RuntimeError: no gradient" and failed.kept == "ptq"
    assert "failed (RuntimeError: no gradient); the PTQ model is kept" in failed.line()
    assert out.read_bytes() == b"the PTQ program" and sorted(p.name for p in tmp_path.iterdir()) == ["model_int8.pte"]

    # A "fine-tuned" model that is INT8 except for both fragile layers: it keeps the float model's predictions.
    good = et.quantize_pt2e_xnnpack(model, SHAPE, [torch.from_numpy(x) for x, _ in train.batches],
                                    float_modules=("conv2", "conv3"))
    calls = []

    def better(model_, shape, batches, **kwargs):
        calls.append(kwargs)
        return good, (0.5, 0.25)

    monkeypatch.setattr(int8_qat, "qat_pt2e_xnnpack", better)
    record = fine_tune_executorch(model, res, out, train, val, SHAPE, options, lambda _m: None)
    assert calls == [{"epochs": 2, "lr": 3e-4, "seed": int8_qat.SEED, "float_modules": ()}]
    assert record.kept == "qat" and record.drop_before == 100.0 and record.drop_after < 100.0
    assert record.losses == (0.5, 0.25) and record.images == 32 and record.training == train.label
    assert out.read_bytes() != b"the PTQ program" and sorted(p.name for p in tmp_path.iterdir()) == ["model_int8.pte"]
    assert record.int8_metric == pytest.approx(top1(et.executorch_runner(out)[0], val.batches))
    assert "the QAT model is kept" in record.line()
