"""The DARTS CNN search loop: alternate architecture and weight steps, log, checkpoint, resume, DDP.

Run directory (names the pipeline relies on): config.yaml, checkpoint.pt (latest, atomic), log.jsonl
(per-epoch metrics), alphas.jsonl (per-epoch softmaxed alphas + genotype), genotype.json and done.json
(written when the run finishes). Only rank 0 writes.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from nasdeploy.data.factory import build_dataset
from nasdeploy.data.split import search_split
from nasdeploy.errors import CheckpointError, ConfigError
from nasdeploy.genotypes import CNNGenotype, genotype_from_dict, genotype_to_dict, load_genotype, save_genotype
from nasdeploy.search.architect import Architect, ArchitectConfig
from nasdeploy.search.config import RESUMABLE_CHANGES, SearchConfig
from nasdeploy.search.cost import build_expected_cost
from nasdeploy.search.step import classification_loss, search_step
from nasdeploy.spaces.darts_cnn import DartsSupernet
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
from nasdeploy.utils.rundir import CONFIG_FILE, DONE_FILE, check_resume_config, clear_run_files, open_run_directory, read_done, write_run_config
from nasdeploy.utils.runtime import runtime_settings
from nasdeploy.utils.runlog import JsonlLog, console, format_metrics
from nasdeploy.utils.yamlconfig import to_dict

SPACE = "darts_cnn"  # the name of this loop's entry in nasdeploy.spaces.table (written to config.yaml)
RUN_FILES = (CONFIG_FILE, "checkpoint.pt", "log.jsonl", "alphas.jsonl", "genotype.json", DONE_FILE)


@dataclass
class SearchResult:
    """What a search run produced (or had produced, when it was already finished)."""

    out_dir: Path
    genotype: CNNGenotype
    alphas_normal: torch.Tensor
    alphas_reduce: torch.Tensor
    epochs_done: int
    epochs: int
    finished: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    was_finished: bool = False  # True when this call found a finished run and did nothing
    betas_normal: torch.Tensor | None = None  # PC-DARTS edge normalisation (partial_channels > 1), raw
    betas_reduce: torch.Tensor | None = None

    def summary(self) -> str:
        """The genotype found and where the run is, for the console."""
        g = self.genotype
        return (f"genotype ({self.epochs_done}/{self.epochs} epochs): normal {list(g.normal)} reduce {list(g.reduce)}\n"
                f"run directory: {self.out_dir}")


def build_supernet(config: SearchConfig, num_classes: int) -> DartsSupernet:
    """The supernet a config describes."""
    m = config.model
    return DartsSupernet(channels=m.channels, num_classes=num_classes, layers=m.layers, steps=m.steps,
                         multiplier=m.multiplier, stem_multiplier=m.stem_multiplier, mixed_op=m.mixed_op,
                         alpha_init=m.alpha_init, alpha_init_scale=m.alpha_init_scale,
                         partial_channels=m.partial_channels)


@legacy_loop_keywords
def run_search(config: SearchConfig, out_dir: str | os.PathLike[str], *, data_dir: str | None = None,
               force: bool = False, stop_after_epoch: int | None = None, progress: bool = True) -> SearchResult:
    """Search (or resume, or report a finished run) in `out_dir`; under torchrun every rank calls this.

    stop_after_epoch: return after that many epochs are done (the run stays resumable).
    """
    out = Path(out_dir)
    with process_group(config.search.device) as ctx, runtime_settings(config.search.deterministic, config.search.threads), \
            open_run_directory(out, RUN_FILES, main=ctx.is_main):
        return _run(config, out, data_dir, ctx, force, stop_after_epoch, progress)




def _run(config: SearchConfig, out: Path, data_dir: str | None, ctx: DistContext, force: bool,
         stop_after_epoch: int | None, progress: bool) -> SearchResult:
    opts = config.search
    if force:
        if ctx.is_main:
            clear_run_files(out, RUN_FILES)
        barrier(ctx)
    checkpoint = _load_resume_checkpoint(out, config)  # refuses a changed config, finished run or not
    if read_done(out) is not None:
        console(f"search in {out} is finished; nothing to do (use --force to redo it)", ctx.is_main)
        return load_search_result(out, was_finished=True)

    if opts.batch_size % ctx.world_size:
        raise ConfigError(f"search.batch_size ({opts.batch_size}) must be divisible by the {ctx.world_size} DDP processes")
    local_batch = opts.batch_size // ctx.world_size

    # Identical model initialisation on every rank; then per-rank streams for augmentation.
    seed_everything(opts.seed)
    train_set, info = build_dataset(config.data, "train", augment=True, data_dir=data_dir)
    eval_set, _ = build_dataset(config.data, "train", augment=False, data_dir=data_dir)
    weight_idx, arch_idx = search_split(len(train_set), opts.train_portion)
    for name, idx in (("weight", weight_idx), ("architecture", arch_idx)):
        if len(idx) < opts.batch_size:
            raise ConfigError(f"the {name} half has {len(idx)} images, fewer than one batch of {opts.batch_size}; "
                              f"use more data or a smaller search.batch_size")
    model = build_supernet(config, info.num_classes).to(ctx.device)
    if ctx.rank:
        seed_everything(opts.seed + 1000 * ctx.rank)
    wrapped = wrap_ddp(model, ctx)

    weight_params = model.weight_parameters()
    w_opt = torch.optim.SGD(weight_params, opts.lr, momentum=opts.momentum, weight_decay=opts.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, opts.epochs, eta_min=opts.lr_min)
    architect = Architect(wrapped, classification_loss, w_opt,
                          ArchitectConfig(opts.order, opts.arch_lr, tuple(opts.arch_betas), opts.arch_weight_decay),
                          cost=build_expected_cost(opts.cost, model))

    weight_half, arch_half = Subset(train_set, weight_idx), Subset(train_set, arch_idx)
    w_sampler = train_sampler(weight_half, ctx, opts.seed)
    a_sampler = train_sampler(arch_half, ctx, opts.seed + 1)
    loader_args: dict[str, Any] = dict(batch_size=local_batch, drop_last=True, num_workers=config.data.num_workers,
                                       pin_memory=ctx.device.type == "cuda")
    w_loader = DataLoader(weight_half, sampler=w_sampler, **loader_args)
    a_loader = DataLoader(arch_half, sampler=a_sampler, **loader_args)
    eval_idx = arch_idx if opts.eval_images is None else arch_idx[: opts.eval_images]
    eval_loader = DataLoader(Subset(eval_set, eval_idx), sampler=ShardSampler(len(eval_idx), ctx),
                             batch_size=2 * local_batch, num_workers=config.data.num_workers)

    log = JsonlLog(out / "log.jsonl", ctx.is_main)
    alpha_log = JsonlLog(out / "alphas.jsonl", ctx.is_main)
    start_epoch, elapsed = 0, 0.0
    if checkpoint is not None:
        start_epoch = _restore(checkpoint, model, w_opt, architect, scheduler, ctx)
        elapsed = float(checkpoint["meta"].get("time_s", 0.0))
        log.rewind(lambda r: r.get("epoch", 0) <= start_epoch)
        alpha_log.rewind(lambda r: r.get("epoch", 0) <= start_epoch)
        console(f"resuming search in {out} after epoch {start_epoch}/{opts.epochs}", ctx.is_main)
    elif ctx.is_main:
        log.rewind(lambda r: False)
        alpha_log.rewind(lambda r: False)
        write_run_config(out, config, SPACE)
        console(f"searching in {out}: {info.name} ({len(weight_idx)} weight / {len(arch_idx)} alpha images), "
                f"supernet C={config.model.channels} L={config.model.layers}, {opts.order} order, "
                f"mixed op '{model.mixed_op}', {ctx.world_size} process(es) on {ctx.device}"
                + (f", {torch.get_num_threads()} CPU thread(s)" if ctx.device.type == "cpu" else ""), ctx.is_main)

    record: dict[str, Any] = {}
    for epoch in range(start_epoch, opts.epochs):
        t0 = time.perf_counter()
        w_sampler.set_epoch(epoch)
        a_sampler.set_epoch(epoch)
        lr = scheduler.get_last_lr()[0]
        model.train()
        train_meter = Meter()
        steps = min(len(w_loader), len(a_loader))
        bar = tqdm(zip(w_loader, a_loader), total=steps, desc=f"search {epoch + 1}/{opts.epochs}",
                   disable=not (progress and ctx.is_main), leave=False, dynamic_ncols=True)
        for (xw, yw), (xa, ya) in bar:
            train_batch = (xw.to(ctx.device, non_blocking=True), yw.to(ctx.device, non_blocking=True))
            arch_batch = (xa.to(ctx.device, non_blocking=True), ya.to(ctx.device, non_blocking=True))
            loss, logits = search_step(wrapped, architect, w_opt, weight_params, train_batch, arch_batch, lr,
                                       opts.grad_clip)
            if not math.isfinite(loss.item()):
                raise ConfigError(f"search diverged at epoch {epoch + 1} (training loss {loss.item()}); lower search.lr")
            train_meter.update(loss, logits, train_batch[1])
            bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.close()
        scheduler.step()
        train = train_meter.reduce(ctx)
        valid = _evaluate(model, eval_loader, ctx)
        genotype = model.genotype()
        record = {"epoch": epoch + 1, "epochs": opts.epochs, "lr": lr, "train_loss": train["loss"],
                  "train_acc": train["top1"], "valid_loss": valid["loss"], "valid_acc": valid["top1"],
                  "epoch_time_s": round(time.perf_counter() - t0, 3), "mixed_op": model.mixed_op,
                  "genotype": genotype_to_dict(genotype)}
        if architect.cost is not None:  # expected cost of the alphas and the derived genotype's table cost
            record.update(architect.cost.log_record(model.alphas_normal, model.alphas_reduce, genotype))
        normal, reduce = model.softmaxed_alphas()
        log.write(record)
        alpha_log.write({"epoch": epoch + 1, "alphas_normal": normal.cpu().tolist(),
                         "alphas_reduce": reduce.cpu().tolist(), "genotype": genotype_to_dict(genotype)})
        console(f"epoch {epoch + 1}/{opts.epochs}  " + format_metrics(
            record, ("lr", "train_loss", "train_acc", "valid_loss", "valid_acc", "epoch_time_s")), ctx.is_main)
        console(f"  normal: {_cell_text(genotype.normal)}\n  reduce: {_cell_text(genotype.reduce)}", ctx.is_main)
        if architect.cost is not None:
            console("  cost: " + format_metrics(record, tuple(k for k in record if k.startswith(("expected_", "derived_")))),
                    ctx.is_main)
        elapsed += time.perf_counter() - t0
        _save(out, config, model, w_opt, architect, scheduler, epoch + 1, genotype, record, elapsed, ctx)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < opts.epochs:
            return _result(out, model, epoch + 1, opts.epochs, False, record)

    genotype = model.genotype()
    if ctx.is_main:
        save_genotype(genotype, out / "genotype.json", meta={"source": "nasdeploy search", "epochs": opts.epochs,
                                                              "dataset": info.name})
        final = {k: v for k, v in record.items() if k != "genotype"} if record else _last_record(log)
        write_json_atomic(out / DONE_FILE, {"finished": True, "epochs": opts.epochs, "final": final,
                                              "genotype": genotype_to_dict(genotype), "time_s": round(elapsed, 3)})
        console(f"search finished: genotype written to {out / 'genotype.json'}", ctx.is_main)
    barrier(ctx)
    return _result(out, model, opts.epochs, opts.epochs, True, record or _last_record(log))


def _evaluate(model: DartsSupernet, loader: DataLoader, ctx: DistContext) -> dict[str, float]:
    broadcast_buffers(model, ctx)
    model.eval()
    meter = Meter()
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(ctx.device), y.to(ctx.device)
            logits = model(x)
            meter.update(F.cross_entropy(logits, y), logits, y)
    model.train()
    return meter.reduce(ctx)


def _save(out: Path, config: SearchConfig, model: DartsSupernet, w_opt: torch.optim.Optimizer,
          architect: Architect, scheduler: Any, epoch: int, genotype: CNNGenotype, record: dict[str, Any],
          elapsed: float, ctx: DistContext) -> None:
    rng = gather_rng_states(ctx)
    if ctx.is_main:
        meta = {"genotype": genotype_to_dict(genotype), "epoch": epoch, "epochs": config.search.epochs,
                "metrics": {k: v for k, v in record.items() if k != "genotype"}, "world_size": ctx.world_size,
                "time_s": round(elapsed, 3)}
        save_checkpoint(out / "checkpoint.pt", model.state_dict(), kind="search", meta=meta,
                        optimizer=w_opt.state_dict(), arch_optimizer=architect.optimizer.state_dict(),
                        scheduler=scheduler.state_dict(), rng=rng, epoch=epoch, config=to_dict(config))
    barrier(ctx)


def _load_resume_checkpoint(out: Path, config: SearchConfig) -> dict[str, Any] | None:
    path = out / "checkpoint.pt"
    if not path.is_file():
        return None
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") != "search" or "config" not in ckpt:
        raise CheckpointError(f"{path} is not a search checkpoint; point --out at a search run directory")
    check_resume_config(ckpt["config"], to_dict(config), out, RESUMABLE_CHANGES)
    return ckpt


def _restore(ckpt: dict[str, Any], model: DartsSupernet, w_opt: torch.optim.Optimizer, architect: Architect,
             scheduler: Any, ctx: DistContext) -> int:
    model.load_state_dict(ckpt["model"], strict=True)
    w_opt.load_state_dict(ckpt["optimizer"])
    architect.optimizer.load_state_dict(ckpt["arch_optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    epoch = int(ckpt["epoch"])
    restore_rank_rng(ckpt.get("rng") or [], ctx, epoch)
    return epoch


def _result(out: Path, model: DartsSupernet, done: int, epochs: int, finished: bool,
            record: dict[str, Any]) -> SearchResult:
    normal, reduce = (None if b is None else b.detach().cpu().clone() for b in (model.betas_normal, model.betas_reduce))
    return SearchResult(out, model.genotype(), model.alphas_normal.detach().cpu().clone(),
                        model.alphas_reduce.detach().cpu().clone(), done, epochs, finished,
                        {k: v for k, v in record.items() if k != "genotype"}, betas_normal=normal, betas_reduce=reduce)


def _last_record(log: JsonlLog) -> dict[str, Any]:
    records = log.read()
    return {k: v for k, v in records[-1].items() if k != "genotype"} if records else {}


def _cell_text(edges: tuple[tuple[str, int], ...]) -> str:
    return " ".join(f"{op}<-{i}" for op, i in edges)


def load_search_result(out_dir: str | os.PathLike[str], was_finished: bool = False) -> SearchResult:
    """The result of a finished search run directory (genotype.json, done.json, checkpoint.pt)."""
    out = Path(out_dir)
    done = read_done(out)
    if done is None:
        raise CheckpointError(f"{out} holds no finished search (done.json missing or unreadable)")
    genotype_path = out / "genotype.json"
    genotype = load_genotype(genotype_path, "cnn_cell") if genotype_path.is_file() else genotype_from_dict(done["genotype"])
    alphas: dict[str, torch.Tensor] = {}
    if (out / "checkpoint.pt").is_file():
        state = load_checkpoint(out / "checkpoint.pt")["model"]
        alphas = {k: state[k] for k in ("alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce") if k in state}
    empty = torch.empty(0)
    return SearchResult(out, genotype, alphas.get("alphas_normal", empty), alphas.get("alphas_reduce", empty),
                        int(done.get("epochs", 0)), int(done.get("epochs", 0)), True, dict(done.get("final", {})),
                        was_finished, betas_normal=alphas.get("betas_normal"), betas_reduce=alphas.get("betas_reduce"))
