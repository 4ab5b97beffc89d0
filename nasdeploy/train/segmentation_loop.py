"""Training a static Auto-DeepLab segmentation network from scratch: poly lr, random crops, mIoU per epoch.

Run directory: config.yaml, log.jsonl, checkpoint.pt (resumable), model.pt (final weights with the
genotype and net kwargs in meta, so export/profile rebuild the model), done.json once finished. Only rank 0 writes.

DDP: `torchrun --nproc_per_node 2 -m nasdeploy train --config CONFIG --out OUT` (gloo on CPU, NCCL on
GPU with train.device auto/cuda). train.batch_size is the global batch; each rank trains on its shard,
DDP averages the gradients, validation sums the ranks' confusion matrices (the single-process mIoU).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from nasdeploy.data.cycle import cycle_loader
from nasdeploy.data.segmentation import (
    IGNORE_INDEX,
    SegDataConfig,
    build_segmentation_dataset,
    dataset_classes,
    with_data_dir,
)
from nasdeploy.errors import CheckpointError, ConfigError
from nasdeploy.genotypes import genotype_from_dict, genotype_to_dict, resolve_genotype
from nasdeploy.nets import build_network
from nasdeploy.nets.autodeeplab import check_bn_settings
from nasdeploy.tasks.segmentation import evaluate_miou, majority_class_miou
from nasdeploy.utils.checkpoint import load_checkpoint, load_resume_checkpoint, load_weights_into, save_checkpoint
from nasdeploy.utils.distributed import (
    DistContext,
    ShardSampler,
    SharedShuffleSampler,
    all_reduce_sum,
    barrier,
    gather_rng_states,
    local_batch_size,
    process_group,
    rank_worker_init,
    restore_rank_rng,
    wrap_ddp,
)
from nasdeploy.utils.deprecation import legacy_loop_keywords
from nasdeploy.utils.files import write_json_atomic
from nasdeploy.utils.rng import seed_everything
from nasdeploy.utils.rundir import CONFIG_FILE, DONE_FILE, epoch_limit, open_run_directory, write_run_config
from nasdeploy.utils.runtime import runtime_settings
from nasdeploy.utils.yamlconfig import from_dict, to_dict

SPACE = "autodeeplab"  # the name of this loop's entry in nasdeploy.spaces.table (written to config.yaml)
RUN_FILES = ("log.jsonl", DONE_FILE, "checkpoint.pt", "model.pt", CONFIG_FILE)


@dataclass(frozen=True)
class SegNetOptions:
    """Which network: a genotype (registry name or JSON path) and the segmentation net's sizes."""

    genotype: str = "AutoDeepLab"
    filter_multiplier: int = 20
    aspp_channels: int = 256
    decoder_channels: int = 256
    low_level_channels: int = 48
    separable_heads: bool = False
    dropout: float = 0.1
    bn_momentum: float = 0.1  # PyTorch momentum = 1 - TF decay (released model: decay 0.9997 -> 3e-4)
    bn_eps: float = 1e-5  # released model: 1e-3

    def __post_init__(self) -> None:
        from nasdeploy.utils.checks import check_fraction, check_positive

        check_bn_settings(self.bn_momentum, self.bn_eps)
        check_positive("net", filter_multiplier=self.filter_multiplier, aspp_channels=self.aspp_channels,
                       decoder_channels=self.decoder_channels, low_level_channels=self.low_level_channels)
        check_fraction("net", dropout=self.dropout)

    def net_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of build_network(..., 'segmentation', **kwargs) besides num_classes."""
        return {"filter_multiplier": self.filter_multiplier, "aspp_channels": self.aspp_channels,
                "decoder_channels": self.decoder_channels, "low_level_channels": self.low_level_channels,
                "separable_heads": self.separable_heads, "dropout": self.dropout,
                "bn_momentum": self.bn_momentum, "bn_eps": self.bn_eps}


@dataclass(frozen=True)
class SegTrainOptions:
    """Optimisation: SGD with momentum and DeepLab's poly schedule lr * (1 - it / max_it) ** power."""

    epochs: int = 100
    batch_size: int = 8
    lr: float = 0.05
    poly_power: float = 0.9
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float = 0.0  # 0: off
    drop_path_prob: float = 0.0  # ramped linearly over the iterations: drop_path_prob * it / max_it
    steps_per_epoch: int = 0  # 0: one pass over the training set
    seed: int = 0
    threads: int = 0
    workers: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        from nasdeploy.utils.checks import check_fraction, check_non_negative, check_positive

        if self.epochs < 1 or self.batch_size < 2:
            raise ConfigError("train: epochs must be >= 1 and batch_size >= 2 (BatchNorm needs two samples)")
        check_positive("train", lr=self.lr, poly_power=self.poly_power)
        check_fraction("train", momentum=self.momentum)
        check_non_negative("train", weight_decay=self.weight_decay, grad_clip=self.grad_clip,
                           steps_per_epoch=self.steps_per_epoch, threads=self.threads, workers=self.workers)
        if isinstance(self.drop_path_prob, bool) or not 0 <= self.drop_path_prob < 1:
            raise ConfigError(f"train.drop_path_prob must be in [0, 1), got {self.drop_path_prob}")


@dataclass(frozen=True)
class SegTrainConfig:
    """Everything a segmentation training run needs."""

    net: SegNetOptions = field(default_factory=SegNetOptions)
    data: SegDataConfig = field(default_factory=SegDataConfig)
    train: SegTrainOptions = field(default_factory=SegTrainOptions)


def seg_train_config_from_dict(data: dict[str, Any]) -> SegTrainConfig:
    """Validate a nested dict (e.g. parsed YAML) into a SegTrainConfig."""
    try:
        return from_dict(SegTrainConfig, data)
    except ConfigError as exc:
        raise ConfigError(f"adl train config: {exc}") from None


@dataclass
class SegTrainResult:
    """What a finished training run produced."""

    out_dir: Path
    model_path: Path
    val_miou: float
    majority_miou: float
    params: int
    epochs_done: int = 0
    epochs: int = 0
    finished: bool = True

    def summary(self) -> str:
        """The mIoU reached against the majority-class baseline, for the console."""
        return (f"val mIoU {self.val_miou:.4f} (majority-class baseline {self.majority_miou:.4f}); "
                f"{self.params:,} parameters ({self.epochs_done}/{self.epochs} epochs)\nmodel: {self.model_path}")


def load_segmentation_model(path: str | os.PathLike[str]) -> torch.nn.Module:
    """Rebuild a trained segmentation network from its model.pt (weights, genotype and net kwargs)."""
    ckpt = load_checkpoint(path)
    meta = ckpt.get("meta", {})
    if "genotype" not in meta or "net_kwargs" not in meta:
        raise CheckpointError(f"{path} has no genotype/net_kwargs in its meta; it was not written by `nasdeploy adl train`")
    model = build_network(genotype_from_dict(meta["genotype"]), "segmentation", num_classes=meta["num_classes"],
                          **meta["net_kwargs"])
    load_weights_into(model, ckpt, source=str(path))
    return model.eval()


@legacy_loop_keywords
def run_segmentation_training(config: SegTrainConfig, genotype: str | os.PathLike[str] | None,
                              out_dir: str | os.PathLike[str], *, data_dir: str | None = None, force: bool = False,
                              stop_after_epoch: int | None = None, progress: bool = True,
                              max_epochs: int | None = None) -> SegTrainResult:
    """Train (or resume training) the static segmentation network of `genotype` (None: net.genotype) into `out_dir`.

    data_dir: the Cityscapes root (the synthetic data ignores it); stop_after_epoch: return once that many
    epochs are done; max_epochs (deprecated): epochs this call runs.
    Under torchrun every rank calls this (see the module docstring) and gets the same result.
    """
    net = config.net if genotype is None else replace(config.net, genotype=os.fspath(_genotype_file(genotype)))
    cfg = replace(config, net=net, data=with_data_dir(config.data, data_dir))
    with process_group(cfg.train.device) as ctx, runtime_settings(threads=cfg.train.threads or None), \
            open_run_directory(Path(out_dir), RUN_FILES, main=ctx.is_main):
        return _train(cfg, Path(out_dir), ctx, not force, progress, stop_after_epoch, max_epochs)


def _genotype_file(genotype: str | os.PathLike[str]) -> str | os.PathLike[str]:
    """A search run directory stands for its genotype.json; names and files pass through."""
    path = Path(genotype)
    return path / "genotype.json" if path.is_dir() else genotype


def _train(cfg: SegTrainConfig, out: Path, ctx: DistContext, resume: bool, progress: bool,
           stop_after_epoch: int | None, max_epochs: int | None) -> SegTrainResult:
    from tqdm import tqdm

    opts = cfg.train
    local_batch = local_batch_size(opts.batch_size, ctx, "train")
    classes = dataset_classes(cfg.data)
    genotype = resolve_genotype(cfg.net.genotype, expected_kind="autodeeplab")
    config_dict = to_dict(cfg)
    ckpt_path = out / "checkpoint.pt"
    # Every rank reads the checkpoint before the first collective (DDP's wrap), so before rank 0 can replace it.
    state = None
    if resume and ckpt_path.exists():
        state = load_resume_checkpoint(ckpt_path, "adl_train", config_dict, "a segmentation training run")
    torch.manual_seed(opts.seed)
    device = ctx.device
    train_set = build_segmentation_dataset(cfg.data, "train", train=True)
    val_set = build_segmentation_dataset(cfg.data, "val", train=False)
    if len(train_set) < opts.batch_size:
        raise ConfigError(f"train: {len(train_set)} training images cannot fill a batch of {opts.batch_size}")
    gen = torch.Generator()  # one shuffle shared by all ranks, each loading its share
    loader = DataLoader(train_set, batch_size=local_batch, sampler=SharedShuffleSampler(len(train_set), ctx, gen),
                        drop_last=True, generator=gen, num_workers=opts.workers, worker_init_fn=rank_worker_init(ctx))
    val_loader = DataLoader(val_set, batch_size=1, sampler=ShardSampler(len(val_set), ctx), num_workers=opts.workers)
    model = build_network(genotype, "segmentation", num_classes=len(classes), **cfg.net.net_kwargs()).to(device)
    if ctx.rank:  # same initial model everywhere; then each rank its own augmentation and dropout stream
        seed_everything(opts.seed + 1000 * ctx.rank)
    wrapped = wrap_ddp(model, ctx)
    optimizer = torch.optim.SGD(model.parameters(), lr=opts.lr, momentum=opts.momentum, weight_decay=opts.weight_decay)
    steps = opts.steps_per_epoch or len(loader)
    total_steps = steps * opts.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: max(0.0, 1.0 - it / total_steps) ** opts.poly_power)
    start_epoch = 0
    if state is not None:
        load_weights_into(model, state, source=str(ckpt_path))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = int(state["meta"]["epoch"])
        restore_rank_rng(state["rng"], ctx, start_epoch)
    if ctx.is_main:  # (after every check, so a bad config leaves no files behind)
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
        write_run_config(out, config_dict, SPACE)
    metrics = {"miou": float("nan"), "pixel_acc": float("nan")}
    end_epoch = epoch_limit(opts.epochs, start_epoch, stop_after_epoch, max_epochs)
    for epoch in range(start_epoch, end_epoch):
        t0 = time.time()
        gen.manual_seed(opts.seed * 100_003 + epoch)  # shuffles depend on (seed, epoch): resuming repeats them
        model.train()
        total, n = 0.0, 0
        stream = cycle_loader(loader)
        bar = tqdm(range(steps), desc=f"adl train {epoch + 1}/{opts.epochs}",
                   disable=not (progress and ctx.is_main), leave=False)
        for k in bar:
            # Scheduled drop path (released model): linear in the iteration, reaching the value at the end.
            model.drop_path_prob = opts.drop_path_prob * (epoch * steps + k) / total_steps
            total += _train_step(wrapped, optimizer, scheduler, next(stream), device, opts.grad_clip)
            n += 1
            bar.set_postfix(loss=f"{total / n:.3f}")
        total, n = all_reduce_sum([total, n], ctx)
        metrics = evaluate_miou(model, val_loader, len(classes), device, ctx)
        record = {"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0], "drop_path_prob": model.drop_path_prob,
                  "train_loss": total / max(n, 1),
                  "val_miou": metrics["miou"], "val_pixel_acc": metrics["pixel_acc"], "seconds": round(time.time() - t0, 2)}
        rng = gather_rng_states(ctx)
        if ctx.is_main:
            save_checkpoint(ckpt_path, model.state_dict(), kind="adl_train",
                            meta={"config": config_dict, "epoch": epoch + 1, "world_size": ctx.world_size},
                            optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), rng=rng)
            with open(out / "log.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
        barrier(ctx)
        if progress and ctx.is_main:
            tqdm.write(f"epoch {epoch + 1}: loss {record['train_loss']:.3f}  val mIoU {metrics['miou']:.3f}")
    if start_epoch >= opts.epochs:  # already finished: report the stored evaluation
        metrics = evaluate_miou(model, val_loader, len(classes), device, ctx)
    epochs_done = max(start_epoch, end_epoch)
    return _finish(cfg, out, model, genotype, classes, val_set, metrics, epochs_done, ctx)


def _train_step(wrapped: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                batch: tuple[torch.Tensor, torch.Tensor], device: torch.device, grad_clip: float) -> float:
    """One SGD step (DDP averages the gradients; optional clipping) and one poly-lr step; returns the loss."""
    x, y = batch[0].to(device), batch[1].to(device)
    loss = F.cross_entropy(wrapped(x), y, ignore_index=IGNORE_INDEX)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(wrapped.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    return float(loss.detach())


def _finish(cfg: SegTrainConfig, out: Path, model: nn.Module, genotype: Any, classes: tuple[str, ...],
            val_set: Dataset, metrics: dict[str, float], epochs_done: int, ctx: DistContext) -> SegTrainResult:
    """Rank 0 writes model.pt and, once finished, done.json; every rank returns the same result."""
    params = sum(p.numel() for p in model.parameters())
    baseline = majority_class_miou(val_set, len(classes))
    model_path = out / "model.pt"
    if ctx.is_main:
        meta = {"genotype": genotype_to_dict(genotype), "net": "segmentation", "net_kwargs": cfg.net.net_kwargs(),
                "num_classes": len(classes), "classes": list(classes), "mean": list(model.default_cfg.mean),
                "std": list(model.default_cfg.std), "val_miou": metrics["miou"], "epochs": epochs_done}
        save_checkpoint(model_path, model.state_dict(), kind="train", meta=meta)
        if epochs_done >= cfg.train.epochs:
            write_json_atomic(out / DONE_FILE, {"finished": True, "val_miou": metrics["miou"],
                                                "val_pixel_acc": metrics["pixel_acc"], "majority_class_miou": baseline,
                                                "params": params, "genotype": genotype_to_dict(genotype),
                                                "epochs": epochs_done})
    barrier(ctx)
    return SegTrainResult(out, model_path, metrics["miou"], baseline, params, epochs_done, cfg.train.epochs,
                          epochs_done >= cfg.train.epochs)
