"""Training a static Auto-DeepLab segmentation network from scratch: poly lr, random crops, mIoU per epoch.

Run directory (the driver's files, nasdeploy.utils.epoch_driver): config.yaml, checkpoint.pt, log.jsonl,
done.json; and model.pt once finished (final weights with the genotype and net kwargs in meta, so export
and profile rebuild the model).

DDP: `torchrun --nproc_per_node 2 -m nasdeploy train --config CONFIG --out OUT` (gloo on CPU, NCCL on
GPU with train.device auto/cuda). train.batch_size is the global batch; each rank trains on its shard,
DDP averages the gradients, validation sums the ranks' confusion matrices (the single-process mIoU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from nasdeploy.config.autodeeplab import AutoDeepLabTrainConfig
from nasdeploy.data.cycle import cycle_loader
from nasdeploy.data.segmentation import IGNORE_INDEX, build_segmentation_dataset, dataset_classes, with_data_dir
from nasdeploy.errors import CheckpointError, ConfigError
from nasdeploy.genotypes import AutoDeepLabGenotype, genotype_from_dict, genotype_to_dict
from nasdeploy.nets import build_network
from nasdeploy.tasks.segmentation import evaluate_miou, majority_class_miou
from nasdeploy.train.genotype_source import GenotypeSource, genotype_file, genotype_fingerprint, resolve_train_genotype
from nasdeploy.utils.checkpoint import load_checkpoint, load_weights_into, save_checkpoint
from nasdeploy.utils.distributed import all_reduce_sum, local_batch_size, shard_loader, shared_shuffle_loader, wrap_ddp
from nasdeploy.utils.epoch_driver import EpochBar, EpochLoop, RunOutcome, RunResult, RunSettings, run_epochs
from nasdeploy.utils.rng import seed_everything


@dataclass(kw_only=True)
class AutoDeepLabTrainResult(RunResult):
    """The validation mIoU a segmentation training run reached, against the majority-class baseline."""

    model_path: Path
    val_miou: float
    majority_miou: float | None  # None until the run is finished
    params: int

    def summary(self) -> str:
        """The mIoU reached against the majority-class baseline, for the console."""
        baseline = f" (majority-class baseline {self.majority_miou:.4f})" if self.majority_miou is not None else ""
        return (f"val mIoU {self.val_miou:.4f}{baseline}; {self.params:,} parameters "
                f"({self.epochs_done}/{self.epochs} epochs)\nmodel: {self.model_path}")


def load_segmentation_model(path: str | os.PathLike[str]) -> torch.nn.Module:
    """Rebuild a trained segmentation network from its model.pt (weights, genotype and net kwargs)."""
    ckpt = load_checkpoint(path)
    meta = ckpt.get("meta", {})
    if "genotype" not in meta or "net_kwargs" not in meta:
        raise CheckpointError(f"{path} has no genotype/net_kwargs in its meta; it was not written by `nasdeploy train`")
    model = build_network(genotype_from_dict(meta["genotype"]), "segmentation", num_classes=meta["num_classes"],
                          **meta["net_kwargs"])
    load_weights_into(model, ckpt, source=str(path))
    return model.eval()


class AutoDeepLabTraining(EpochLoop[AutoDeepLabTrainResult]):
    """The segmentation net's poly-lr SGD step and mIoU evaluation (the driver runs the rest)."""

    kind, space = "train", "autodeeplab"
    run_files = ("model.pt",)
    console_keys = ("lr", "train_loss", "val_miou", "val_pixel_acc")
    checkpointed = {"optimizer": "optimizer", "scheduler": "scheduler"}

    def __init__(self, config: AutoDeepLabTrainConfig, genotype: AutoDeepLabGenotype):
        super().__init__(config)
        self.genotype = genotype
        self.classes = dataset_classes(config.data)

    @property
    def settings(self) -> RunSettings:
        t = self.config.train
        return RunSettings(t.epochs, t.device, t.threads or None)

    def fingerprint(self) -> dict[str, Any]:
        return genotype_fingerprint(self.genotype)

    def setup(self) -> None:
        cfg, opts, ctx = self.config, self.config.train, self.ctx
        local_batch = local_batch_size(opts.batch_size, ctx, "train")
        torch.manual_seed(opts.seed)
        train_set = build_segmentation_dataset(cfg.data, "train", train=True)
        self.val_set = build_segmentation_dataset(cfg.data, "val", train=False)
        if len(train_set) < opts.batch_size:
            raise ConfigError(f"train: {len(train_set)} training images cannot fill a batch of {opts.batch_size}")
        self.generator = torch.Generator()  # one shuffle shared by all ranks, each loading its share
        self.loader = shared_shuffle_loader(train_set, local_batch, ctx, self.generator, opts.workers)
        self.val_loader = shard_loader(self.val_set, 1, ctx, opts.workers)
        self.model = build_network(self.genotype, "segmentation", num_classes=len(self.classes),
                                   **cfg.net.net_kwargs()).to(ctx.device)
        if ctx.rank:  # same initial model everywhere; then each rank its own augmentation and dropout stream
            seed_everything(opts.seed + 1000 * ctx.rank)
        self.wrapped = wrap_ddp(self.model, ctx)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=opts.lr, momentum=opts.momentum,
                                         weight_decay=opts.weight_decay)
        self.steps = opts.steps_per_epoch or len(self.loader)
        total_steps = self.steps * opts.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda it: max(0.0, 1.0 - it / total_steps) ** opts.poly_power)
        self.params = sum(p.numel() for p in self.model.parameters())

    def describe(self) -> str:
        return (f"segmentation net F={self.config.net.filter_multiplier} ({self.params:,} params), {self.steps} steps "
                f"an epoch, {self.ctx.world_size} process(es) on {self.ctx.device}")

    def meta(self) -> dict[str, Any]:
        return {"genotype": genotype_to_dict(self.genotype)}

    def train_epoch(self, epoch: int, bar: EpochBar) -> dict[str, Any]:
        opts, model, device = self.config.train, self.model, self.ctx.device
        self.generator.manual_seed(opts.seed * 100_003 + epoch)  # shuffles depend on (seed, epoch): resuming repeats them
        model.train()
        total, n = 0.0, 0
        stream = cycle_loader(self.loader)
        bar.expect(self.steps)
        for k in range(self.steps):
            # Scheduled drop path (released model): linear in the iteration, reaching the value at the end.
            model.drop_path_prob = opts.drop_path_prob * (epoch * self.steps + k) / (self.steps * opts.epochs)
            x, y = (t.to(device) for t in next(stream))
            loss = F.cross_entropy(self.wrapped(x), y, ignore_index=IGNORE_INDEX)
            bar.step(float(loss.detach()))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if opts.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.wrapped.parameters(), opts.grad_clip)
            self.optimizer.step()
            self.scheduler.step()  # the poly schedule moves every iteration
            total += float(loss.detach())
            n += 1
        total, n = all_reduce_sum([total, n], self.ctx)
        return {"lr": self.scheduler.get_last_lr()[0], "drop_path_prob": model.drop_path_prob,
                "train_loss": total / max(n, 1)}

    def evaluate(self, epoch: int) -> dict[str, Any]:
        metrics = evaluate_miou(self.model, self.val_loader, len(self.classes), self.ctx.device, self.ctx)
        return {"val_miou": metrics["miou"], "val_pixel_acc": metrics["pixel_acc"]}

    def finish(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        last = history[-1] if history else {}
        if self.ctx.is_main:
            meta = {"genotype": genotype_to_dict(self.genotype), "net": "segmentation",
                    "net_kwargs": self.config.net.net_kwargs(), "num_classes": len(self.classes),
                    "classes": list(self.classes), "mean": list(self.model.default_cfg.mean),
                    "std": list(self.model.default_cfg.std), "val_miou": last.get("val_miou"),
                    "epochs": self.settings.epochs}
            save_checkpoint(self.out / "model.pt", self.model.state_dict(), kind="train", meta=meta)
        return {"val_miou": last.get("val_miou"), "val_pixel_acc": last.get("val_pixel_acc"),
                "majority_class_miou": majority_class_miou(self.val_set, len(self.classes)), "params": self.params,
                "genotype": genotype_to_dict(self.genotype)}

    def result(self, outcome: RunOutcome) -> AutoDeepLabTrainResult:
        done = outcome.done if outcome.done is not None else {
            "val_miou": outcome.history[-1]["val_miou"] if outcome.history else float("nan"),
            "majority_class_miou": None, "params": self.params}
        return AutoDeepLabTrainResult(out_dir=outcome.out_dir, epochs_done=outcome.epochs_done, epochs=outcome.epochs,
                                      finished=outcome.finished, was_finished=outcome.was_finished,
                                      model_path=outcome.out_dir / "model.pt", val_miou=done["val_miou"],
                                      majority_miou=done["majority_class_miou"], params=done["params"])


def run_training(config: AutoDeepLabTrainConfig, genotype: GenotypeSource, out_dir: str | os.PathLike[str], *,
                 data_dir: str | None = None, force: bool = False, stop_after_epoch: int | None = None,
                 progress: bool = True) -> AutoDeepLabTrainResult:
    """Train the segmentation network of `genotype` (None: net.genotype) in `out_dir`; data_dir: the Cityscapes root.

    Under torchrun every rank calls this and gets the same result.
    """
    if isinstance(genotype, (str, os.PathLike)):  # the config names what it trains
        config = replace(config, net=replace(config.net, genotype=os.fspath(genotype_file(genotype))))
    source = genotype if genotype is not None else config.net.genotype
    config = replace(config, data=with_data_dir(config.data, data_dir))
    resolved = resolve_train_genotype(source, Path(out_dir), "autodeeplab")
    return run_epochs(AutoDeepLabTraining(config, resolved), out_dir, force=force, stop_after_epoch=stop_after_epoch,
                      progress=progress)
