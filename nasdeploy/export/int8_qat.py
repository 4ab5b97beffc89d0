"""PT2E quantization-aware fine-tuning for XNNPACK: the INT8 path's last resort when the accuracy guard cannot meet max_drop.

The float model (BatchNorm folded, as the PTQ path quantizes it) is exported with torch.export, prepared with
prepare_qat_pt2e and the XNNPACKQuantizer's QAT config (fake-quantized weights and activations; the guard's
float layers left out), fine-tuned a few epochs with cross-entropy on labelled training-split images, then
converted with convert_pt2e. Adam, not SGD: its step is about `lr` per weight whatever the gradient's scale, so
one small default (1e-4, a fraction of an INT8 weight step) nudges weights across rounding boundaries in a
few dozen steps on any network, where SGD's step would follow each network's gradient scale.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from nasdeploy.errors import ExportError
from nasdeploy.export.batchnorm_fold import fold_batchnorm
from nasdeploy.export.samples import Batch

OPTIMIZER = "Adam"
SEED = 0  # batch order and any random op of the fine-tuning: the same run gives the same INT8 model
MAX_BATCH = 4096  # the exported graph's batch dimension is dynamic up to this


@dataclass(frozen=True)
class QatRecord:
    """What quantization-aware fine-tuning did: epochs, lr, data, drop before (PTQ) and after, and which was kept."""

    epochs: int
    lr: float
    optimizer: str
    seed: int
    max_drop: float  # the accuracy guard's limit (points)
    training: str  # the labelled training-split sample it fine-tuned on, in words
    images: int  # images per epoch
    kept_in_float: tuple[str, ...]  # the accuracy guard's float layers, left out of QAT as well
    drop_before: float  # points lost by PTQ (after the guard)
    drop_after: float | None = None  # points lost by the QAT .pte in ExecuTorch (None: QAT failed)
    int8_metric: float | None = None
    kept: str = "ptq"  # "qat" | "ptq": the model written (the smaller validation drop)
    losses: tuple[float, ...] = ()  # mean training loss per epoch
    note: str = ""  # why QAT failed

    def line(self) -> str:
        """One line: what QAT ran on, the drop before and after, and which model was kept."""
        what = f"QAT {self.epochs} epoch(s), {self.optimizer} lr {self.lr:g}, on {self.training}"
        if self.drop_after is None:
            return f"{what}: failed ({self.note}); the PTQ model is kept"
        kept, drop = ("QAT", self.drop_after) if self.kept == "qat" else ("PTQ", self.drop_before)
        limit = (f"within the {self.max_drop:g}-point limit" if drop <= self.max_drop
                 else "still over the limit, use the float model")
        return f"{what}: drop {self.drop_before:.2f} -> {self.drop_after:.2f} points; the {kept} model is kept, {limit}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with the one-line verdict."""
        return {**asdict(self), "line": self.line()}


def train_epochs(prepared: nn.Module, batches: Sequence[Batch], *, epochs: int, lr: float, seed: int) -> tuple[float, ...]:
    """Fine-tune a prepare_qat_pt2e module with cross-entropy, Adam, batches shuffled by `seed`; mean loss per epoch."""
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

    params = [p for p in prepared.parameters() if p.requires_grad]
    if not params or not batches:
        raise ExportError("QAT has nothing to train (no parameters or no training images)")
    optimizer = torch.optim.Adam(params, lr=lr)
    order = np.random.default_rng(seed)
    losses = []
    move_exported_model_to_train(prepared)
    try:
        for _ in range(epochs):
            total = count = 0.0
            for i in order.permutation(len(batches)):
                x, y = batches[int(i)]
                loss = nn.functional.cross_entropy(prepared(torch.from_numpy(np.ascontiguousarray(x))),
                                                   torch.from_numpy(np.asarray(y, dtype=np.int64)))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total, count = total + float(loss.detach()) * len(y), count + len(y)
            losses.append(total / count)
    finally:
        move_exported_model_to_eval(prepared)
    return tuple(losses)


def qat_pt2e_xnnpack(model: nn.Module, input_shape: tuple[int, int, int], training: Sequence[Batch], *, epochs: int,
                     lr: float, seed: int, float_modules: Sequence[str] = ()) -> tuple[nn.Module, tuple[float, ...]]:
    """PT2E QAT for XNNPACK: export, prepare_qat_pt2e, fine-tune `epochs` on `training`, convert_pt2e; and the losses."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    from nasdeploy.export.executorch import xnnpack_quantizer

    quantizer = xnnpack_quantizer(float_modules=float_modules, is_qat=True)
    torch.manual_seed(seed)
    folded, _ = fold_batchnorm(model)  # the weights PTQ quantizes; no conv-BN QAT pattern to trace
    example = (torch.zeros(2, *input_shape),)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    graph = torch.export.export(folded, example, dynamic_shapes=({0: batch},)).module()
    prepared = prepare_qat_pt2e(graph, quantizer)
    losses = train_epochs(prepared, training, epochs=epochs, lr=lr, seed=seed)
    with torch.no_grad():
        return convert_pt2e(prepared), losses
