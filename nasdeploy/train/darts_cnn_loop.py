"""Training a static DARTS CNN network from a genotype: the published recipes, top-1/top-5 (DDP-ready).

Run directory (the driver's files, nasdeploy.utils.epoch_driver): config.yaml, checkpoint.pt (the train
checkpoint contract the exporter reads: meta genotype, net, net_kwargs, dataset), log.jsonl and done.json
(top1/top5, params, epochs, time) once finished.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from nasdeploy.config.darts_cnn import DartsCnnTrainConfig
from nasdeploy.data.factory import build_dataset
from nasdeploy.errors import CheckpointError, ConfigError
from nasdeploy.genotypes import CNNGenotype, genotype_to_dict
from nasdeploy.nets import build_network
from nasdeploy.ops.layout import MIN_CPU_CHANNELS_LAST, unsafe_channels_last_convs
from nasdeploy.train.genotype_source import GenotypeSource, genotype_fingerprint, resolve_train_genotype
from nasdeploy.train.recipes import RecipeLoss, drop_path_at, make_scheduler
from nasdeploy.utils.distributed import DistContext, broadcast_buffers, local_batch_size, shard_loader, train_sampler, wrap_ddp
from nasdeploy.utils.epoch_driver import EpochBar, EpochLoop, RunOutcome, RunResult, RunSettings, run_epochs
from nasdeploy.utils.metrics import Meter
from nasdeploy.utils.rng import seed_everything
from nasdeploy.utils.rundir import DONE_FILE, read_done


@dataclass(kw_only=True)
class DartsCnnTrainResult(RunResult):
    """What a training run reached: test top-1/top-5 (at its last evaluation), parameters, its checkpoint."""

    top1: float | None
    top5: float | None
    params: int
    checkpoint: Path
    metrics: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """What the run reached, in one or two lines for the console."""
        line = (f"top1 {self.top1:.4f}  top5 {self.top5:.4f}  params {self.params:,}  "
                f"({self.epochs_done}/{self.epochs} epochs)\n") if self.top1 is not None else ""
        return f"{line}run directory: {self.out_dir}"


def count_parameters(model: nn.Module, with_auxiliary: bool = False) -> int:
    """Parameter count in the reference convention (auxiliary head excluded unless asked)."""
    return sum(p.numel() for n, p in model.named_parameters() if with_auxiliary or not n.startswith("auxiliary_head"))


def memory_format_for(device: torch.device, channels_last: bool | None, model: nn.Module | None = None) -> torch.memory_format:
    """The training memory format: channels_last when asked, or by default on CPU, unless unsafe for `model` there."""
    use = channels_last if channels_last is not None else device.type == "cpu"
    if use and device.type == "cpu" and model is not None:
        unsafe = unsafe_channels_last_convs(model)
        if unsafe:
            if channels_last:
                warnings.warn(f"training in NCHW, not channels_last: oneDNN's channels-last backward of {unsafe[0]} "
                              f"(a 1x1 strided conv with {MIN_CPU_CHANNELS_LAST - 1} or fewer input channels) corrupts "
                              f"memory on some CPUs", stacklevel=2)
            use = False
    return torch.channels_last if use else torch.contiguous_format


def evaluate(model: nn.Module, loader: DataLoader, ctx: DistContext, criterion: nn.Module | None = None,
             memory_format: torch.memory_format = torch.contiguous_format) -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy (fractions) over a loader, summed across DDP ranks."""
    criterion = criterion or nn.CrossEntropyLoss()
    was_training = model.training
    model.eval()
    meter = Meter(ks=(1, 5))
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(ctx.device, memory_format=memory_format), y.to(ctx.device)
            logits = model(x)
            meter.update(criterion(logits, y), logits, y)
    model.train(was_training)
    return meter.reduce(ctx)


class DartsCnnTraining(EpochLoop[DartsCnnTrainResult]):
    """Training a static DARTS CNN network: the recipe's step and the test evaluation (the driver runs the rest)."""

    kind, space = "train", "darts_cnn"
    console_keys = ("lr", "train_loss", "train_acc", "test_loss", "top1", "top5")
    checkpointed = {"optimizer": "optimizer", "scheduler": "scheduler"}

    def __init__(self, config: DartsCnnTrainConfig, genotype: CNNGenotype, data_dir: str | None = None):
        super().__init__(config)
        self.genotype, self.data_dir = genotype, data_dir

    @property
    def settings(self) -> RunSettings:
        t = self.config.train
        return RunSettings(t.epochs, t.device, t.threads, t.deterministic)

    def fingerprint(self) -> dict[str, Any]:
        return genotype_fingerprint(self.genotype)

    def setup(self) -> None:
        config, opts, ctx = self.config, self.config.train, self.ctx
        local_batch = local_batch_size(opts.batch_size, ctx, "train")
        seed_everything(opts.seed)
        (train_set, self.info), (test_set, _) = (build_dataset(config.data, split, augment=split == "train",
                                                               data_dir=self.data_dir) for split in ("train", "test"))
        if len(train_set) < local_batch:
            raise ConfigError(f"the training set has {len(train_set)} images, fewer than one batch of {opts.batch_size}")
        net_kwargs = {"channels": config.model.channels, "layers": config.model.layers,
                      "num_classes": config.model.num_classes or self.info.num_classes, "auxiliary": config.model.auxiliary}
        model = build_network(self.genotype, config.model.net, drop_path_prob=0.0, **net_kwargs)
        self.fmt = memory_format_for(ctx.device, opts.channels_last, model)
        self.model = model.to(ctx.device, memory_format=self.fmt)
        if ctx.rank:
            seed_everything(opts.seed + 1000 * ctx.rank)
        self.wrapped = wrap_ddp(self.model, ctx)
        self.optimizer = torch.optim.SGD(self.model.parameters(), opts.lr, momentum=opts.momentum,
                                         weight_decay=opts.weight_decay)
        self.scheduler = make_scheduler(opts, self.optimizer)
        self.criterion = RecipeLoss(opts.auxiliary_weight, opts.label_smoothing)
        self.sampler = train_sampler(train_set, ctx, opts.seed)
        self.train_loader = DataLoader(train_set, batch_size=local_batch, sampler=self.sampler, drop_last=True,
                                       num_workers=config.data.num_workers, pin_memory=ctx.device.type == "cuda")
        self.test_loader = shard_loader(test_set, 2 * local_batch, ctx, config.data.num_workers)
        self.params = count_parameters(self.model)
        self.net_meta = {"genotype": genotype_to_dict(self.genotype), "net": config.model.net, "net_kwargs": net_kwargs,
                         "dataset": self.info.to_dict(), "params": self.params}

    def describe(self) -> str:
        m, ctx = self.config.model, self.ctx
        return (f"{m.net} network C={m.channels} L={m.layers} ({self.params / 1e6:.3f}M params) on {self.info.name}, "
                f"{self.settings.epochs} epochs, {ctx.world_size} process(es) on {ctx.device}"
                + (f", {torch.get_num_threads()} CPU thread(s), "
                   f"{'channels_last' if self.fmt == torch.channels_last else 'NCHW'}" if ctx.device.type == "cpu" else ""))

    def meta(self) -> dict[str, Any]:
        return dict(self.net_meta)

    def train_epoch(self, epoch: int, bar: EpochBar) -> dict[str, Any]:
        opts, device, model = self.config.train, self.ctx.device, self.model
        self.sampler.set_epoch(epoch)
        lr = self.scheduler.get_last_lr()[0]
        model.drop_path_prob = drop_path_at(opts.drop_path_prob, epoch, opts.epochs)
        self.wrapped.train()
        meter = Meter()
        bar.expect(len(self.train_loader))
        for x, y in self.train_loader:
            x, y = x.to(device, non_blocking=True, memory_format=self.fmt), y.to(device, non_blocking=True)
            loss, logits = self.criterion(self.wrapped(x), y)
            bar.step(loss.item())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
            self.optimizer.step()
            meter.update(loss, logits, y)
        self.scheduler.step()
        train = meter.reduce(self.ctx)
        return {"epochs": opts.epochs, "lr": lr, "drop_path_prob": model.drop_path_prob, "train_loss": train["loss"],
                "train_acc": train["top1"]}

    def evaluate(self, epoch: int) -> dict[str, Any]:
        if (epoch + 1) % self.config.train.eval_every and epoch + 1 != self.config.train.epochs:
            return {}
        broadcast_buffers(self.model, self.ctx)
        test = evaluate(self.model, self.test_loader, self.ctx, memory_format=self.fmt)
        return {"test_loss": test["loss"], "top1": test["top1"], "top5": test["top5"]}

    def finish(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        last = _last_evaluation(history)
        return {"top1": last.get("top1"), "top5": last.get("top5"), "test_loss": last.get("test_loss"),
                "params": self.params, "params_with_aux": count_parameters(self.model, with_auxiliary=True), **self.net_meta}

    def result(self, outcome: RunOutcome) -> DartsCnnTrainResult:
        if outcome.was_finished:
            return load_train_result(outcome.out_dir, was_finished=True)
        metrics = outcome.done if outcome.done is not None else (outcome.history[-1] if outcome.history else {})
        last = _last_evaluation(outcome.history)
        return DartsCnnTrainResult(out_dir=outcome.out_dir, epochs_done=outcome.epochs_done, epochs=outcome.epochs,
                                   finished=outcome.finished, top1=last.get("top1"), top5=last.get("top5"),
                                   params=self.params, checkpoint=outcome.out_dir / "checkpoint.pt", metrics=metrics)


def run_training(config: DartsCnnTrainConfig, genotype: GenotypeSource, out_dir: str | os.PathLike[str], *,
                 data_dir: str | None = None, force: bool = False, stop_after_epoch: int | None = None,
                 progress: bool = True) -> DartsCnnTrainResult:
    """Train the network of `genotype` (None: config.genotype, else the run's own) in `out_dir`; resumes."""
    source = genotype if genotype is not None else config.genotype
    resolved = resolve_train_genotype(source, Path(out_dir), "cnn_cell")
    return run_epochs(DartsCnnTraining(config, resolved, data_dir), out_dir, force=force,
                      stop_after_epoch=stop_after_epoch, progress=progress)


def _last_evaluation(history: list[dict[str, Any]]) -> dict[str, Any]:
    return next((r for r in reversed(history) if "top1" in r), {})


def load_train_result(out_dir: str | os.PathLike[str], was_finished: bool = False) -> DartsCnnTrainResult:
    """The result recorded in a finished training run directory (done.json)."""
    out = Path(out_dir)
    final = read_done(out)
    if final is None:
        raise CheckpointError(f"{out} holds no finished training run ({DONE_FILE} missing or unreadable)")
    epochs = int(final.get("epochs", 0))
    return DartsCnnTrainResult(out_dir=out, epochs_done=epochs, epochs=epochs, finished=True, was_finished=was_finished,
                               top1=final.get("top1"), top5=final.get("top5"), params=int(final.get("params", 0)),
                               checkpoint=out / "checkpoint.pt", metrics=final)
