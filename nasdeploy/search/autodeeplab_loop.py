"""The Auto-DeepLab search: weights on half A, alpha/beta on half B (first order), mIoU on a held-out split.

Run directory (the driver's files, nasdeploy.utils.epoch_driver): config.yaml, checkpoint.pt, log.jsonl
(with the decoded genotype and network path of each epoch), done.json; and genotype.json once finished.
With search.cost the architecture loss carries E[cost](alpha, beta), the published genotype is decoded
under the budget, done.json and the genotype's meta hold its `budget` record, and cost_table.json is the
table the search used (search/autodeeplab_cost.py).

DDP: `torchrun --nproc_per_node 2 -m nasdeploy search --config CONFIG --out OUT` (gloo on CPU, NCCL on
GPU with search.device auto/cuda). search.batch_size is the global batch; each rank trains on its shard
of halves A and B, the architecture gradient is all-reduced (Architect.step), the validation confusion
matrix is summed over ranks, so every rank holds the same alpha/beta and returns the same result.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import Subset

from nasdeploy.config.autodeeplab import AutoDeepLabSearchConfig
from nasdeploy.data.cycle import cycle_loader
from nasdeploy.data.segmentation import IGNORE_INDEX, build_segmentation_dataset, dataset_classes, with_data_dir
from nasdeploy.errors import ConfigError
from nasdeploy.genotypes import AutoDeepLabGenotype, genotype_from_dict, genotype_to_dict, save_genotype
from nasdeploy.search.architect import Architect, ArchitectConfig
from nasdeploy.search.autodeeplab_cost import (
    COST_TABLE_FILE,
    AutoDeepLabDerivation,
    build_autodeeplab_cost,
    derive_autodeeplab,
    keep_cost_table,
)
from nasdeploy.spaces.autodeeplab import AutoDeepLabSupernet
from nasdeploy.tasks.segmentation import evaluate_miou
from nasdeploy.utils.distributed import all_reduce_sum, local_batch_size, shard_loader, shared_shuffle_loader, wrap_ddp
from nasdeploy.utils.epoch_driver import EpochBar, EpochLoop, RunOutcome, RunResult, RunSettings, run_epochs
from nasdeploy.utils.rng import seed_everything
from nasdeploy.utils.runlog import format_metrics


@dataclass(kw_only=True)
class AutoDeepLabSearchResult(RunResult):
    """The cell and network path a search reached, with its validation mIoU."""

    genotype: AutoDeepLabGenotype
    genotype_path: Any  # the run's genotype.json (written once finished)
    val_miou: float
    path: tuple[int, ...]
    path_log_prob: float

    def summary(self) -> str:
        """The path found and the mIoU reached, for the console."""
        return (f"searched {self.epochs_done}/{self.epochs} epochs; val mIoU {self.val_miou:.4f}; path {list(self.path)}\n"
                f"genotype: {self.genotype_path}")


def segmentation_loss(forward: Any, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Per-pixel cross entropy with ignored pixels (the loss_fn the architect calls)."""
    x, y = batch
    return F.cross_entropy(forward(x), y, ignore_index=IGNORE_INDEX)


def split_halves(n: int, seed: int) -> tuple[list[int], list[int]]:
    """A fixed random split of range(n) into halves A (weights) and B (architecture)."""
    order = np.random.default_rng(seed).permutation(n).tolist()
    return sorted(order[: n // 2]), sorted(order[n // 2:])


class AutoDeepLabSearch(EpochLoop[AutoDeepLabSearchResult]):
    """The Auto-DeepLab search's alternating step and mIoU evaluation (the driver runs the rest)."""

    kind, space = "search", "autodeeplab"
    run_files = ("genotype.json", COST_TABLE_FILE)
    console_keys = ("lr", "train_loss", "arch_loss", "val_miou", "path")
    checkpointed = {"optimizer": "optimizer", "arch_optimizer": "architect.optimizer", "scheduler": "scheduler"}

    @property
    def settings(self) -> RunSettings:
        s = self.config.search
        return RunSettings(s.epochs, s.device, s.threads or None)

    def setup(self) -> None:
        cfg, opts, ctx = self.config, self.config.search, self.ctx
        local_batch = local_batch_size(opts.batch_size, ctx, "search")
        torch.manual_seed(opts.seed)
        train = build_segmentation_dataset(cfg.data, "train", train=True)
        val = build_segmentation_dataset(cfg.data, "val", train=False)
        a_idx, b_idx = split_halves(len(train), opts.seed)
        if len(a_idx) < opts.batch_size or len(b_idx) < opts.batch_size:
            raise ConfigError(f"search: {len(train)} training images cannot fill two halves of batch {opts.batch_size}")
        # One shuffle of each half shared by all ranks (each loading its share), drawn from (seed, epoch).
        self.generators = [torch.Generator().manual_seed(opts.seed), torch.Generator().manual_seed(opts.seed + 1)]
        self.loaders = [shared_shuffle_loader(Subset(train, idx), local_batch, ctx, g, opts.workers)
                        for idx, g in zip((a_idx, b_idx), self.generators)]
        self.val_loader = shard_loader(val, 1, ctx, opts.workers)
        self.model = AutoDeepLabSupernet(cfg.supernet).to(ctx.device)
        if ctx.rank:  # same initial model everywhere; then each rank its own augmentation stream
            seed_everything(opts.seed + 1000 * ctx.rank)
        self.wrapped = wrap_ddp(self.model, ctx)
        self.optimizer = torch.optim.SGD(self.model.weight_parameters(), lr=opts.lr, momentum=opts.momentum,
                                         weight_decay=opts.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=opts.epochs, eta_min=opts.lr_min)
        # Given the DDP wrapper, the architect computes alpha/beta gradients on the bare module and all-reduces them.
        self.cost = build_autodeeplab_cost(opts.cost, cfg.supernet, self.out)
        self.architect = Architect(self.wrapped, segmentation_loss, self.optimizer,
                                   ArchitectConfig(order="first", lr=opts.arch_lr, betas=opts.arch_betas,
                                                   weight_decay=opts.arch_weight_decay), cost=self.cost)
        self.steps = opts.steps_per_epoch or len(self.loaders[0])
        self.derivation = self._derive()  # an unmeetable budget fails here, before the first epoch

    def describe(self) -> str:
        s = self.config.supernet
        return (f"supernet L={s.layers} F={s.filter_multiplier} B={s.blocks}, mixed op '{self.model.mixer_name}', "
                f"{self.steps} steps an epoch, {self.ctx.world_size} process(es) on {self.ctx.device}")

    def meta(self) -> dict[str, Any]:
        return {"genotype": genotype_to_dict(self.derivation.genotype)}

    def train_epoch(self, epoch: int, bar: EpochBar) -> dict[str, Any]:
        opts, device, model = self.config.search, self.ctx.device, self.model
        if self.ctx.is_main:
            keep_cost_table(self.cost, self.out)
        model.train()
        arch_on = epoch >= opts.arch_start_epoch
        lr = self.scheduler.get_last_lr()[0]
        for k, g in enumerate(self.generators):  # shuffles depend on (seed, epoch) only: resuming repeats them
            g.manual_seed(opts.seed * 100_003 + 2 * epoch + k)
        total, arch_total, n = 0.0, 0.0, 0
        stream_a, stream_b = (cycle_loader(loader) for loader in self.loaders)
        bar.expect(self.steps)
        for _ in range(self.steps):
            xa, ya = (t.to(device) for t in next(stream_a))
            if arch_on:
                xb, yb = (t.to(device) for t in next(stream_b))
                # The loss the architecture gradient came from: no second forward (which would also move
                # the BN running statistics with half B once more).
                arch_total += float(self.architect.step((xa, ya), (xb, yb), eta=lr))
            loss = self._weight_step((xa, ya), opts.grad_clip)
            bar.step(loss)
            total += loss
            n += 1
        self.scheduler.step()
        total, arch_total, n = all_reduce_sum([total, arch_total, n], self.ctx)
        return {"lr": lr, "arch_updates": arch_on, "train_loss": total / max(n, 1),
                "arch_loss": arch_total / n if arch_on and n else None, "mixed_op": model.mixer_name}

    def _weight_step(self, batch: tuple[torch.Tensor, torch.Tensor], grad_clip: float) -> float:
        """One clipped SGD step of the weights on a half-A batch (DDP averages the gradients); returns the loss."""
        model = self.model
        self.optimizer.zero_grad(set_to_none=True)
        loss = segmentation_loss(self.wrapped, batch)
        loss.backward()
        model.alphas.grad = None  # weights step only: alpha/beta move on half B alone
        model.betas.grad = None
        torch.nn.utils.clip_grad_norm_(list(model.weight_parameters()), grad_clip)
        self.optimizer.step()
        return float(loss.detach())

    def evaluate(self, epoch: int) -> dict[str, Any]:
        metrics = evaluate_miou(self.model, self.val_loader, self.config.supernet.num_classes, self.ctx.device, self.ctx)
        self.derivation = self._derive()
        return {"val_miou": metrics["miou"], "val_pixel_acc": metrics["pixel_acc"], **self.derivation.log_record()}

    def epoch_lines(self, record: dict[str, Any]) -> list[str]:
        if self.cost is None:
            return []
        keys = tuple(k for k in record if k.startswith(("expected_", "unconstrained_", "derived_")))
        return ["  cost: " + format_metrics(record, keys + ("cost_target", "budget_binds"))]

    def finish(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        derived = self._derive(name="autodeeplab_search")
        val_miou = history[-1]["val_miou"] if history else float("nan")
        if self.ctx.is_main:
            save_genotype(derived.genotype, self.out / "genotype.json",
                          meta={"epochs": self.settings.epochs, "val_miou": val_miou, "budget": derived.budget})
        return {"genotype": genotype_to_dict(derived.genotype), "val_miou": val_miou,
                "path_log_prob": derived.path_log_prob, "budget": derived.budget}

    def result(self, outcome: RunOutcome) -> AutoDeepLabSearchResult:
        if outcome.done is not None:
            genotype = genotype_from_dict(outcome.done["genotype"], "autodeeplab")
            val_miou, log_prob = outcome.done["val_miou"], outcome.done["path_log_prob"]
        else:
            derived = self._derive(name="autodeeplab_search")
            genotype, log_prob = derived.genotype, derived.path_log_prob
            val_miou = outcome.history[-1]["val_miou"] if outcome.history else float("nan")
        return AutoDeepLabSearchResult(out_dir=outcome.out_dir, epochs_done=outcome.epochs_done, epochs=outcome.epochs,
                                       finished=outcome.finished, was_finished=outcome.was_finished, genotype=genotype,
                                       genotype_path=outcome.out_dir / "genotype.json", val_miou=float(val_miou),
                                       path=tuple(genotype.path), path_log_prob=log_prob)

    def _derive(self, name: str | None = None) -> AutoDeepLabDerivation:
        """The genotype of the current alpha/beta (under the budget when there is one), with its records."""
        return derive_autodeeplab(self.model, self.cost, name=name)


def run_search(config: AutoDeepLabSearchConfig, out_dir: str | os.PathLike[str], *, data_dir: str | None = None,
               force: bool = False, stop_after_epoch: int | None = None, progress: bool = True) -> AutoDeepLabSearchResult:
    """Search cell and network path in `out_dir` (or resume, or report a finished run); data_dir: the Cityscapes root.

    The supernet gets the dataset's number of classes. Under torchrun every rank calls this and gets the same result.
    """
    classes = len(dataset_classes(config.data))
    config = replace(config, data=with_data_dir(config.data, data_dir),
                     supernet=replace(config.supernet, num_classes=classes))
    return run_epochs(AutoDeepLabSearch(config), out_dir, force=force, stop_after_epoch=stop_after_epoch,
                      progress=progress)
