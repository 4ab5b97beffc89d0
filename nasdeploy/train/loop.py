"""Training a static network from a genotype: published recipes, top-1/top-5, checkpoints, resume, DDP.

Run directory: config.yaml, checkpoint.pt (the train checkpoint contract the exporter reads),
log.jsonl (per-epoch metrics) and done.json (top1/top5, params, epochs, time) once finished.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from nasdeploy.data.factory import DatasetInfo, build_dataset
from nasdeploy.errors import CheckpointError, ConfigError
from nasdeploy.genotypes import CNNGenotype, Genotype, genotype_from_dict, genotype_to_dict, resolve_genotype
from nasdeploy.nets import build_network
from nasdeploy.train.config import RESUMABLE_CHANGES, TrainConfig
from nasdeploy.train.recipes import RecipeLoss, drop_path_at, make_scheduler
from nasdeploy.ops.layout import MIN_CPU_CHANNELS_LAST, unsafe_channels_last_convs
from nasdeploy.utils.checkpoint import load_checkpoint, save_checkpoint
from nasdeploy.utils.distributed import (
    DistContext,
    ShardSampler,
    barrier,
    broadcast_buffers,
    gather_rng_states,
    process_group,
    restore_rank_rng,
    train_sampler,
    wrap_ddp,
)
from nasdeploy.utils.files import write_json_atomic
from nasdeploy.utils.metrics import Meter
from nasdeploy.utils.rng import seed_everything
from nasdeploy.utils.deprecation import legacy_loop_keywords
from nasdeploy.utils.rundir import CONFIG_FILE, DONE_FILE, check_resume_config, clear_run_files, open_run_directory, read_done, read_json, write_run_config
from nasdeploy.utils.runlog import JsonlLog, console, format_metrics
from nasdeploy.utils.runtime import runtime_settings
from nasdeploy.utils.yamlconfig import to_dict

SPACE = "darts_cnn"  # the name of this loop's entry in nasdeploy.spaces.table (written to config.yaml)
RUN_FILES = (CONFIG_FILE, "checkpoint.pt", "log.jsonl", DONE_FILE)


@dataclass
class TrainResult:
    """What a training run produced."""

    out_dir: Path
    top1: float | None
    top5: float | None
    params: int
    epochs_done: int
    epochs: int
    finished: bool
    checkpoint: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    was_finished: bool = False  # True when this call found a finished run and did nothing

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


@legacy_loop_keywords
def run_training(config: TrainConfig, genotype: Genotype | str | os.PathLike[str] | None, out_dir: str | os.PathLike[str],
                 *, data_dir: str | None = None, force: bool = False, stop_after_epoch: int | None = None,
                 progress: bool = True) -> TrainResult:
    """Train the network of `genotype` (None: config.genotype) in `out_dir`, resuming or reporting a finished run."""
    resolved = _resolve_genotype(genotype if genotype is not None else config.genotype, Path(out_dir))
    with process_group(config.train.device) as ctx, runtime_settings(config.train.deterministic, config.train.threads), \
            open_run_directory(Path(out_dir), RUN_FILES, main=ctx.is_main):
        return _run(config, resolved, Path(out_dir), data_dir, ctx, force, stop_after_epoch, progress)


def _resolve_genotype(source: Genotype | str | os.PathLike[str] | None, out: Path) -> CNNGenotype:
    """A genotype object, registry name, JSON file or search run directory; None: the run's own checkpoint."""
    if source is None:
        for name in ("checkpoint.pt", DONE_FILE, "final.json"):
            if (out / name).is_file():
                data = load_checkpoint(out / name)["meta"] if name == "checkpoint.pt" else read_json(out / name)
                if data and data.get("genotype"):
                    return resolve_genotype(genotype_from_dict(data["genotype"]), expected_kind="cnn_cell")
        raise ConfigError("no genotype given: pass --genotype NAME|FILE|SEARCH_DIR or set 'genotype:' in the config")
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        path = Path(source) / "genotype.json"
        if not path.is_file():
            raise ConfigError(f"{source} is a directory without genotype.json (is the search finished?)")
        source = path
    return resolve_genotype(source, expected_kind="cnn_cell")


def _run(config: TrainConfig, genotype: CNNGenotype, out: Path, data_dir: str | None, ctx: DistContext,
         force: bool, stop_after_epoch: int | None, progress: bool) -> TrainResult:
    opts = config.train
    if force:
        if ctx.is_main:
            clear_run_files(out, RUN_FILES)
        barrier(ctx)
    checkpoint = _load_resume_checkpoint(out, config, genotype)  # refuses a changed config or genotype
    if read_done(out) is not None:
        console(f"training in {out} is finished; nothing to do (use --force to redo it)", ctx.is_main)
        return load_train_result(out, was_finished=True)
    if opts.batch_size % ctx.world_size:
        raise ConfigError(f"train.batch_size ({opts.batch_size}) must be divisible by the {ctx.world_size} DDP processes")
    local_batch = opts.batch_size // ctx.world_size

    seed_everything(opts.seed)
    train_set, info = build_dataset(config.data, "train", augment=True, data_dir=data_dir)
    test_set, _ = build_dataset(config.data, "test", augment=False, data_dir=data_dir)
    if len(train_set) < local_batch:
        raise ConfigError(f"the training set has {len(train_set)} images, fewer than one batch of {opts.batch_size}")
    num_classes = config.model.num_classes or info.num_classes
    net_kwargs = {"channels": config.model.channels, "layers": config.model.layers, "num_classes": num_classes,
                  "auxiliary": config.model.auxiliary}
    model = build_network(genotype, config.model.net, drop_path_prob=0.0, **net_kwargs)
    fmt = memory_format_for(ctx.device, opts.channels_last, model)
    model = model.to(ctx.device, memory_format=fmt)
    if ctx.rank:
        seed_everything(opts.seed + 1000 * ctx.rank)
    wrapped = wrap_ddp(model, ctx)

    optimizer = torch.optim.SGD(model.parameters(), opts.lr, momentum=opts.momentum, weight_decay=opts.weight_decay)
    scheduler = make_scheduler(opts, optimizer)
    criterion = RecipeLoss(opts.auxiliary_weight, opts.label_smoothing)
    sampler = train_sampler(train_set, ctx, opts.seed)
    train_loader = DataLoader(train_set, batch_size=local_batch, sampler=sampler, drop_last=True,
                              num_workers=config.data.num_workers, pin_memory=ctx.device.type == "cuda")
    test_loader = DataLoader(test_set, batch_size=2 * local_batch, sampler=ShardSampler(len(test_set), ctx),
                             num_workers=config.data.num_workers)
    params = count_parameters(model)
    meta_base = {"genotype": genotype_to_dict(genotype), "net": config.model.net, "net_kwargs": net_kwargs,
                 "dataset": info.to_dict(), "params": params}

    log = JsonlLog(out / "log.jsonl", ctx.is_main)
    start_epoch, elapsed, last_eval = 0, 0.0, {}
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"], strict=True)
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        start_epoch = int(checkpoint["epoch"])
        elapsed = float(checkpoint["meta"].get("time_s", 0.0))
        last_eval = dict(checkpoint["meta"].get("eval", {}))
        restore_rank_rng(checkpoint.get("rng") or [], ctx, start_epoch)
        log.rewind(lambda r: r.get("epoch", 0) <= start_epoch)
        console(f"resuming training in {out} after epoch {start_epoch}/{opts.epochs}", ctx.is_main)
    elif ctx.is_main:
        log.rewind(lambda r: False)
        write_run_config(out, config, SPACE)
        console(f"training in {out}: {config.model.net} network C={config.model.channels} L={config.model.layers} "
                f"({params / 1e6:.3f}M params) on {info.name}, {opts.epochs} epochs, {ctx.world_size} process(es) "
                f"on {ctx.device}" + (f", {torch.get_num_threads()} CPU thread(s), "
                                      f"{'channels_last' if fmt == torch.channels_last else 'NCHW'}"
                                      if ctx.device.type == "cpu" else ""), ctx.is_main)

    record: dict[str, Any] = {}
    for epoch in range(start_epoch, opts.epochs):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        lr = scheduler.get_last_lr()[0]
        model.drop_path_prob = drop_path_at(opts.drop_path_prob, epoch, opts.epochs)
        wrapped.train()
        meter = Meter()
        bar = tqdm(train_loader, desc=f"train {epoch + 1}/{opts.epochs}", disable=not (progress and ctx.is_main),
                   leave=False, dynamic_ncols=True)
        for x, y in bar:
            x, y = x.to(ctx.device, non_blocking=True, memory_format=fmt), y.to(ctx.device, non_blocking=True)
            loss, logits = criterion(wrapped(x), y)
            if not math.isfinite(loss.item()):
                raise ConfigError(f"training diverged at epoch {epoch + 1} (loss {loss.item()}); lower train.lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
            optimizer.step()
            meter.update(loss, logits, y)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.close()
        scheduler.step()
        train = meter.reduce(ctx)
        record = {"epoch": epoch + 1, "epochs": opts.epochs, "lr": lr, "drop_path_prob": model.drop_path_prob,
                  "train_loss": train["loss"], "train_acc": train["top1"]}
        if (epoch + 1) % opts.eval_every == 0 or epoch + 1 == opts.epochs:
            broadcast_buffers(model, ctx)
            test = evaluate(model, test_loader, ctx, memory_format=fmt)
            last_eval = {"test_loss": test["loss"], "top1": test["top1"], "top5": test["top5"], "epoch": epoch + 1}
            record.update(test_loss=test["loss"], top1=test["top1"], top5=test["top5"])
        elapsed += time.perf_counter() - t0
        record["epoch_time_s"] = round(time.perf_counter() - t0, 3)
        log.write(record)
        console(f"epoch {epoch + 1}/{opts.epochs}  " + format_metrics(
            record, ("lr", "train_loss", "train_acc", "test_loss", "top1", "top5", "epoch_time_s")), ctx.is_main)
        meta = {**meta_base, "epoch": epoch + 1, "epochs": opts.epochs, "time_s": round(elapsed, 3), "eval": last_eval}
        _save(out, config, model, optimizer, scheduler, epoch + 1, meta, ctx)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < opts.epochs:
            return TrainResult(out, last_eval.get("top1"), last_eval.get("top5"), params, epoch + 1, opts.epochs,
                               False, out / "checkpoint.pt", record)

    final = {"top1": last_eval.get("top1"), "top5": last_eval.get("top5"), "test_loss": last_eval.get("test_loss"),
             "params": params, "params_with_aux": count_parameters(model, with_auxiliary=True),
             "epochs": opts.epochs, "time_s": round(elapsed, 3), **meta_base}
    if ctx.is_main:
        write_json_atomic(out / DONE_FILE, final)
        console(f"training finished: top1 {final['top1']:.4f}  top5 {final['top5']:.4f}  in {elapsed:.1f} s "
                f"({out / DONE_FILE})", ctx.is_main)
    barrier(ctx)
    return TrainResult(out, final["top1"], final["top5"], params, opts.epochs, opts.epochs, True,
                       out / "checkpoint.pt", final)


def _save(out: Path, config: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
          epoch: int, meta: dict[str, Any], ctx: DistContext) -> None:
    rng = gather_rng_states(ctx)
    if ctx.is_main:
        save_checkpoint(out / "checkpoint.pt", model.state_dict(), kind="train", meta=meta,
                        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), rng=rng, epoch=epoch,
                        config=to_dict(config))
    barrier(ctx)


def _load_resume_checkpoint(out: Path, config: TrainConfig, genotype: CNNGenotype) -> dict[str, Any] | None:
    path = out / "checkpoint.pt"
    if not path.is_file():
        return None
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") != "train" or "config" not in ckpt:
        raise CheckpointError(f"{path} is not a train checkpoint; point --out at a training run directory")
    check_resume_config(ckpt["config"], to_dict(config), out, RESUMABLE_CHANGES)
    if ckpt["meta"].get("genotype") != genotype_to_dict(genotype):
        raise ConfigError(f"{out} holds a training run of a different genotype; use --force to start over or another --out")
    return ckpt


def load_train_result(out_dir: str | os.PathLike[str], was_finished: bool = False) -> TrainResult:
    """The result recorded in a finished training run directory (done.json)."""
    out = Path(out_dir)
    final = read_done(out)
    if final is None:
        raise CheckpointError(f"{out} holds no finished training run ({DONE_FILE} missing or unreadable)")
    epochs = int(final.get("epochs", 0))
    return TrainResult(out, final.get("top1"), final.get("top5"), int(final.get("params", 0)), epochs, epochs, True,
                       out / "checkpoint.pt", final, was_finished)


def dataset_info_of(result: TrainResult) -> DatasetInfo | None:
    """The dataset description stored with a finished run (normalisation the deployed model expects)."""
    d = result.metrics.get("dataset")
    if not d:
        return None
    return DatasetInfo(d["name"], d["num_classes"], tuple(d["classes"]), d["image_size"], tuple(d["mean"]), tuple(d["std"]))
