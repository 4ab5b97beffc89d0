"""The Auto-DeepLab search loop: weights on half A, alpha/beta on half B (first order), mIoU on a held-out split.

Run directory: config.yaml, log.jsonl (one record per epoch), checkpoint.pt (resumable, weights_only),
genotype.json (decoded each epoch; final at the end), done.json once finished. Only rank 0 writes.

DDP: `torchrun --nproc_per_node 2 -m nasdeploy search --config CONFIG --out OUT` (gloo on CPU, NCCL on
GPU with search.device auto/cuda). search.batch_size is the global batch; each rank trains on its shard
of halves A and B, the architecture gradient is all-reduced (Architect.step), the validation confusion
matrix is summed over ranks, so every rank holds the same alpha/beta and returns the same result.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Subset

from nasdeploy.data.cycle import cycle_loader
from nasdeploy.data.segmentation import (
    IGNORE_INDEX,
    SegDataConfig,
    build_segmentation_dataset,
    dataset_classes,
    with_data_dir,
)
from nasdeploy.errors import ConfigError
from nasdeploy.genotypes import genotype_to_dict, save_genotype
from nasdeploy.search.architect import Architect, ArchitectConfig
from nasdeploy.spaces.autodeeplab_decode import beta_probabilities, decode_genotype, viterbi_path
from nasdeploy.spaces.autodeeplab import ADLSupernetConfig, AutoDeepLabSupernet, upgrade_mixer_key
from nasdeploy.tasks.segmentation import evaluate_miou
from nasdeploy.utils.checkpoint import load_resume_checkpoint, save_checkpoint
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
from nasdeploy.utils.rundir import CONFIG_FILE, DONE_FILE, epoch_limit, open_run_directory, write_run_config
from nasdeploy.utils.rng import seed_everything
from nasdeploy.utils.runtime import runtime_settings
from nasdeploy.utils.yamlconfig import from_dict, to_dict

SPACE = "autodeeplab"  # the name of this loop's entry in nasdeploy.spaces.table (written to config.yaml)
RUN_FILES = ("log.jsonl", "genotype.json", DONE_FILE, "checkpoint.pt", CONFIG_FILE)


@dataclass(frozen=True)
class ADLSearchOptions:
    """Search protocol (paper: 40 epochs, batch 2, SGD 0.025 -> 0.001 cosine, wd 3e-4; Adam 3e-3, wd 1e-3 after epoch 20)."""

    epochs: int = 40
    arch_start_epoch: int = 20  # architecture updates begin once this many epochs are done
    batch_size: int = 2
    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    arch_lr: float = 3e-3
    arch_betas: tuple[float, float] = (0.9, 0.999)
    arch_weight_decay: float = 1e-3
    grad_clip: float = 5.0
    steps_per_epoch: int = 0  # 0: one pass over half A
    seed: int = 0
    threads: int = 0  # 0: leave torch's default
    workers: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        from nasdeploy.utils.checks import check_betas, check_fraction, check_non_negative, check_positive

        if self.epochs < 1 or self.batch_size < 2:
            raise ConfigError("search: epochs must be >= 1 and batch_size >= 2 (BatchNorm needs two samples)")
        if not 0 <= self.arch_start_epoch:
            raise ConfigError("search: arch_start_epoch must be >= 0")
        if not (self.lr > 0 and self.arch_lr > 0 and 0 <= self.lr_min <= self.lr):
            raise ConfigError(f"search: learning rates must be positive and lr_min in [0, lr], got lr={self.lr}, "
                              f"lr_min={self.lr_min}, arch_lr={self.arch_lr}")
        check_positive("search", grad_clip=self.grad_clip)
        check_fraction("search", momentum=self.momentum)
        check_non_negative("search", weight_decay=self.weight_decay, arch_weight_decay=self.arch_weight_decay,
                           steps_per_epoch=self.steps_per_epoch, threads=self.threads, workers=self.workers)
        check_betas("search", "arch_betas", self.arch_betas)


@dataclass(frozen=True)
class ADLSearchConfig:
    """Everything an Auto-DeepLab search run needs."""

    supernet: ADLSupernetConfig = field(default_factory=ADLSupernetConfig)
    data: SegDataConfig = field(default_factory=SegDataConfig)
    search: ADLSearchOptions = field(default_factory=ADLSearchOptions)


def adl_search_config_from_dict(data: dict[str, Any]) -> ADLSearchConfig:
    """Validate a nested dict (e.g. parsed YAML) into an ADLSearchConfig."""
    data = upgrade_mixer_key(data)
    try:
        return from_dict(ADLSearchConfig, data)
    except ConfigError as exc:
        raise ConfigError(f"adl search config: {exc}") from None


@dataclass
class ADLSearchResult:
    """What a finished (or resumed-and-finished) search produced."""

    out_dir: Path
    genotype_path: Path
    epochs_done: int
    val_miou: float
    path: tuple[int, ...]
    path_log_prob: float
    epochs: int = 0
    finished: bool = True

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


def _loaders(cfg: ADLSearchConfig, ctx: DistContext,
             local_batch: int) -> tuple[DataLoader, DataLoader, DataLoader, list[torch.Generator]]:
    """This rank's loaders of halves A and B (shuffles shared by all ranks) and validation, and the shuffle generators."""
    train = build_segmentation_dataset(cfg.data, "train", train=True)
    val = build_segmentation_dataset(cfg.data, "val", train=False)
    a_idx, b_idx = split_halves(len(train), cfg.search.seed)
    if len(a_idx) < cfg.search.batch_size or len(b_idx) < cfg.search.batch_size:
        raise ConfigError(f"search: {len(train)} training images cannot fill two halves of batch {cfg.search.batch_size}")
    g_a, g_b = torch.Generator().manual_seed(cfg.search.seed), torch.Generator().manual_seed(cfg.search.seed + 1)
    opts = {"batch_size": local_batch, "num_workers": cfg.search.workers, "drop_last": True,
            "worker_init_fn": rank_worker_init(ctx)}
    sampler_a, sampler_b = SharedShuffleSampler(len(a_idx), ctx, g_a), SharedShuffleSampler(len(b_idx), ctx, g_b)
    loader_a = DataLoader(Subset(train, a_idx), sampler=sampler_a, generator=g_a, **opts)
    loader_b = DataLoader(Subset(train, b_idx), sampler=sampler_b, generator=g_b, **opts)
    loader_val = DataLoader(val, batch_size=1, sampler=ShardSampler(len(val), ctx), num_workers=cfg.search.workers)
    return loader_a, loader_b, loader_val, [g_a, g_b]


def _with_dataset_classes(cfg: ADLSearchConfig) -> ADLSearchConfig:
    num_classes = len(dataset_classes(cfg.data))
    if cfg.supernet.num_classes == num_classes:
        return cfg
    return ADLSearchConfig(from_dict(ADLSupernetConfig, {**to_dict(cfg.supernet), "num_classes": num_classes}),
                           cfg.data, cfg.search)


@legacy_loop_keywords
def run_adl_search(config: ADLSearchConfig, out_dir: str | os.PathLike[str], *, data_dir: str | None = None,
                   force: bool = False, stop_after_epoch: int | None = None, progress: bool = True,
                   max_epochs: int | None = None) -> ADLSearchResult:
    """Run (or resume) an Auto-DeepLab search into `out_dir`; stop_after_epoch: return once that many are done.

    data_dir: the Cityscapes root (the synthetic data ignores it). max_epochs (deprecated): epochs this call runs.
    Under torchrun every rank calls this (see the module docstring) and gets the same result.
    """
    cfg = replace(config, data=with_data_dir(config.data, data_dir))
    with process_group(cfg.search.device) as ctx, runtime_settings(threads=cfg.search.threads or None), \
            open_run_directory(Path(out_dir), RUN_FILES, main=ctx.is_main):
        return _search(cfg, Path(out_dir), ctx, not force, progress, stop_after_epoch, max_epochs)


def _search(cfg: ADLSearchConfig, out: Path, ctx: DistContext, resume: bool, progress: bool,
            stop_after_epoch: int | None, max_epochs: int | None) -> ADLSearchResult:
    from tqdm import tqdm

    opts = cfg.search
    local_batch = local_batch_size(opts.batch_size, ctx, "search")
    cfg = _with_dataset_classes(cfg)
    num_classes = cfg.supernet.num_classes
    config_dict = to_dict(cfg)
    ckpt_path = out / "checkpoint.pt"
    # Every rank reads the checkpoint before the first collective (DDP's wrap), so before rank 0 can replace it.
    state = None
    if resume and ckpt_path.exists():
        state = load_resume_checkpoint(ckpt_path, "adl_search", config_dict, "an Auto-DeepLab search")
    torch.manual_seed(opts.seed)
    device = ctx.device
    loader_a, loader_b, loader_val, generators = _loaders(cfg, ctx, local_batch)
    model = AutoDeepLabSupernet(cfg.supernet).to(device)
    if ctx.rank:  # same initial model everywhere; then each rank its own augmentation stream
        seed_everything(opts.seed + 1000 * ctx.rank)
    wrapped = wrap_ddp(model, ctx)
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=opts.lr, momentum=opts.momentum, weight_decay=opts.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, T_max=opts.epochs, eta_min=opts.lr_min)
    # Given the DDP wrapper, the architect computes alpha/beta gradients on the bare module and all-reduces them.
    architect = Architect(wrapped, segmentation_loss, w_opt,
                          ArchitectConfig(order="first", lr=opts.arch_lr, betas=opts.arch_betas, weight_decay=opts.arch_weight_decay))
    start_epoch = 0
    if state is not None:
        model.load_state_dict(state["model"])
        w_opt.load_state_dict(state["weight_optimizer"])
        architect.optimizer.load_state_dict(state["arch_optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = int(state["meta"]["epoch"])
        restore_rank_rng(state["rng"], ctx, start_epoch)
    if ctx.is_main:  # (after every check, so a bad config leaves no files behind)
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
        write_run_config(out, config_dict, SPACE)
    steps = opts.steps_per_epoch or len(loader_a)
    metrics: dict[str, float] | None = None
    end_epoch = epoch_limit(opts.epochs, start_epoch, stop_after_epoch, max_epochs)
    for epoch in range(start_epoch, end_epoch):
        t0 = time.time()
        model.train()
        arch_on = epoch >= opts.arch_start_epoch
        lr = scheduler.get_last_lr()[0]
        for k, g in enumerate(generators):  # shuffles depend on (seed, epoch) only: resuming repeats them
            g.manual_seed(opts.seed * 100_003 + 2 * epoch + k)
        total, arch_total, n = 0.0, 0.0, 0
        stream_a, stream_b = cycle_loader(loader_a), cycle_loader(loader_b)
        bar = tqdm(range(steps), desc=f"adl search {epoch + 1}/{opts.epochs}",
                   disable=not (progress and ctx.is_main), leave=False)
        for _ in bar:
            xa, ya = (t.to(device) for t in next(stream_a))
            if arch_on:
                xb, yb = (t.to(device) for t in next(stream_b))
                # The loss the architecture gradient came from: no second forward (which would also move
                # the BN running statistics with half B once more).
                arch_total += float(architect.step((xa, ya), (xb, yb), eta=lr))
            total += _weight_step(wrapped, model, w_opt, (xa, ya), opts.grad_clip)
            n += 1
            bar.set_postfix(loss=f"{total / n:.3f}")
        scheduler.step()
        total, arch_total, n = all_reduce_sum([total, arch_total, n], ctx)
        metrics = evaluate_miou(model, loader_val, num_classes, device, ctx)
        alphas = model.alphas.detach().cpu().numpy()
        betas = model.betas.detach().cpu().numpy()
        genotype = decode_genotype(alphas, betas, cfg.supernet.blocks, name=f"adl_search_epoch{epoch + 1}")
        path, log_prob = viterbi_path(beta_probabilities(betas))
        record = {"epoch": epoch + 1, "lr": lr, "arch_updates": arch_on, "train_loss": total / max(n, 1),
                  "arch_loss": arch_total / n if arch_on and n else None, "val_miou": metrics["miou"],
                  "val_pixel_acc": metrics["pixel_acc"], "path": list(path), "path_log_prob": log_prob,
                  "mixed_op": model.mixer_name, "seconds": round(time.time() - t0, 2)}
        rng = gather_rng_states(ctx)
        if ctx.is_main:
            save_checkpoint(ckpt_path, model.state_dict(), kind="adl_search",
                            meta={"config": config_dict, "epoch": epoch + 1, "genotype": genotype_to_dict(genotype),
                                  "val_miou": metrics["miou"], "world_size": ctx.world_size},
                            weight_optimizer=w_opt.state_dict(), arch_optimizer=architect.optimizer.state_dict(),
                            scheduler=scheduler.state_dict(), rng=rng)
            save_genotype(genotype, out / "genotype.json", meta={"epoch": epoch + 1, "val_miou": metrics["miou"]})
            with open(out / "log.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
        barrier(ctx)
        if progress and ctx.is_main:
            tqdm.write(f"epoch {epoch + 1}: loss {record['train_loss']:.3f}  val mIoU {metrics['miou']:.3f}  path {list(path)}")
    epochs_done = max(start_epoch, end_epoch)
    val_miou = metrics["miou"] if metrics is not None else _stored_val_miou(state, out)
    return _finish(cfg, out, model, epochs_done, val_miou, ctx)


def _weight_step(wrapped: nn.Module, model: AutoDeepLabSupernet, w_opt: torch.optim.Optimizer,
                 batch: tuple[torch.Tensor, torch.Tensor], grad_clip: float) -> float:
    """One clipped SGD step of the weights on a half-A batch (DDP averages the gradients); returns the loss."""
    w_opt.zero_grad(set_to_none=True)
    loss = segmentation_loss(wrapped, batch)
    loss.backward()
    model.alphas.grad = None  # weights step only: alpha/beta move on half B alone
    model.betas.grad = None
    torch.nn.utils.clip_grad_norm_(list(model.weight_parameters()), grad_clip)
    w_opt.step()
    return float(loss.detach())


def _stored_val_miou(state: dict[str, Any] | None, out: Path) -> float:
    """The last evaluated mIoU of a run this call did not advance (checkpoint meta, else log.jsonl)."""
    if state is not None and "val_miou" in state["meta"]:
        return state["meta"]["val_miou"]
    last = _last_record(out / "log.jsonl")
    return last["val_miou"] if last and last.get("val_miou") is not None else math.nan


def _finish(cfg: ADLSearchConfig, out: Path, model: AutoDeepLabSupernet, epochs_done: int, val_miou: float,
            ctx: DistContext) -> ADLSearchResult:
    """Decode the final genotype and path; rank 0 writes genotype.json and summary.json."""
    betas = model.betas.detach().cpu().numpy()
    final = decode_genotype(model.alphas.detach().cpu().numpy(), betas, cfg.supernet.blocks, name="adl_search")
    path, log_prob = viterbi_path(beta_probabilities(betas))
    genotype_path = out / "genotype.json"
    if ctx.is_main:
        save_genotype(final, genotype_path, meta={"epochs": epochs_done, "val_miou": val_miou})
        if epochs_done >= cfg.search.epochs:
            write_json_atomic(out / DONE_FILE, {"finished": True, "genotype": genotype_to_dict(final),
                                                "epochs": epochs_done, "val_miou": val_miou, "path_log_prob": log_prob})
    barrier(ctx)
    return ADLSearchResult(out, genotype_path, epochs_done, float(val_miou) if val_miou is not None else math.nan,
                           tuple(path), log_prob, cfg.search.epochs, epochs_done >= cfg.search.epochs)


def _last_record(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else None
