"""The DARTS CNN search: alternate architecture and weight steps on the two halves of the training set (DDP-ready).

Run directory (the driver's files, nasdeploy.utils.epoch_driver): config.yaml, checkpoint.pt, log.jsonl,
done.json; and alphas.jsonl (per epoch: softmaxed alphas and the genotype so far) and genotype.json once
finished. The genotype of each epoch and the one published are derived under the budget and the collapse
guards (search/darts_cnn_derivation.py); done.json and genotype.json's meta carry its `budget` record,
`guards` and `warnings`. Under torchrun the global batch is split over the ranks and the alpha gradient is
all-reduced.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Subset

from nasdeploy.config.darts_cnn import DartsCnnSearchConfig
from nasdeploy.data.factory import build_dataset
from nasdeploy.data.split import search_split
from nasdeploy.errors import CheckpointError, ConfigError
from nasdeploy.genotypes import CNNGenotype, genotype_from_dict, genotype_to_dict, load_genotype, save_genotype
from nasdeploy.search.architect import Architect, ArchitectConfig
from nasdeploy.search.cost import build_expected_cost
from nasdeploy.search.darts_cnn_derivation import DartsCnnDerivation, DartsCnnDeriver
from nasdeploy.search.step import classification_loss, search_step
from nasdeploy.spaces.darts_cnn import DartsCnnSupernet
from nasdeploy.spaces.darts_cnn_guards import aux_skip_weight
from nasdeploy.utils.checkpoint import load_checkpoint
from nasdeploy.utils.distributed import broadcast_buffers, local_batch_size, shard_loader, train_sampler, wrap_ddp
from nasdeploy.utils.epoch_driver import EpochBar, EpochLoop, RunOutcome, RunResult, RunSettings, run_epochs
from nasdeploy.utils.metrics import Meter
from nasdeploy.utils.rng import seed_everything
from nasdeploy.utils.rundir import read_done
from nasdeploy.utils.runlog import format_metrics

# The architecture parameters a result carries (the betas only with PC-DARTS partial channels).
ARCH_STATE = ("alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce")


@dataclass(kw_only=True)
class DartsCnnSearchResult(RunResult):
    """The genotype and alphas a search reached, and its last epoch's metrics."""

    genotype: CNNGenotype
    alphas_normal: torch.Tensor
    alphas_reduce: torch.Tensor
    metrics: dict[str, Any] = field(default_factory=dict)
    betas_normal: torch.Tensor | None = None  # PC-DARTS edge normalisation (partial_channels > 1), raw
    betas_reduce: torch.Tensor | None = None

    def summary(self) -> str:
        """The genotype found and where the run is, for the console."""
        g = self.genotype
        return (f"genotype ({self.epochs_done}/{self.epochs} epochs): normal {list(g.normal)} reduce {list(g.reduce)}\n"
                f"run directory: {self.out_dir}")


def build_supernet(config: DartsCnnSearchConfig, num_classes: int) -> DartsCnnSupernet:
    """The supernet a config describes."""
    m = config.model
    return DartsCnnSupernet(channels=m.channels, num_classes=num_classes, layers=m.layers, steps=m.steps,
                         multiplier=m.multiplier, stem_multiplier=m.stem_multiplier, mixed_op=m.mixed_op,
                         alpha_init=m.alpha_init, alpha_init_scale=m.alpha_init_scale,
                         partial_channels=m.partial_channels, aux_skip=config.search.collapse.darts_minus,
                         recompute_op_bodies=m.recompute_op_bodies)


class DartsCnnSearch(EpochLoop[DartsCnnSearchResult]):
    """The DARTS CNN search's step and evaluation (the driver runs the rest)."""

    kind, space = "search", "darts_cnn"
    run_files = ("genotype.json",)
    extra_logs = ("alphas.jsonl",)
    console_keys = ("lr", "train_loss", "train_acc", "valid_loss", "valid_acc")
    checkpointed = {"optimizer": "optimizer", "arch_optimizer": "architect.optimizer", "scheduler": "scheduler"}

    def __init__(self, config: DartsCnnSearchConfig, data_dir: str | None = None):
        super().__init__(config)
        self.data_dir = data_dir

    @property
    def settings(self) -> RunSettings:
        s = self.config.search
        return RunSettings(s.epochs, s.device, s.threads, s.deterministic)

    def setup(self) -> None:
        config, opts, ctx = self.config, self.config.search, self.ctx
        local_batch = local_batch_size(opts.batch_size, ctx, "search")
        # Identical model initialisation on every rank; then per-rank streams for augmentation.
        seed_everything(opts.seed)
        train_set, self.info = build_dataset(config.data, "train", augment=True, data_dir=self.data_dir)
        eval_set, _ = build_dataset(config.data, "train", augment=False, data_dir=self.data_dir)
        weight_idx, arch_idx = search_split(len(train_set), opts.train_portion)
        for name, idx in (("weight", weight_idx), ("architecture", arch_idx)):
            if len(idx) < opts.batch_size:
                raise ConfigError(f"the {name} half has {len(idx)} images, fewer than one batch of {opts.batch_size}; "
                                  f"use more data or a smaller search.batch_size")
        self.model = build_supernet(config, self.info.num_classes).to(ctx.device)
        if ctx.rank:
            seed_everything(opts.seed + 1000 * ctx.rank)
        self.wrapped = wrap_ddp(self.model, ctx)
        self.weight_params = self.model.weight_parameters()
        self.optimizer = torch.optim.SGD(self.weight_params, opts.lr, momentum=opts.momentum, weight_decay=opts.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, opts.epochs, eta_min=opts.lr_min)
        cost = build_expected_cost(opts.cost, self.model)
        self.architect = Architect(self.wrapped, classification_loss, self.optimizer,
                                   ArchitectConfig(opts.order, opts.arch_lr, tuple(opts.arch_betas), opts.arch_weight_decay),
                                   cost=cost)
        self.deriver = DartsCnnDeriver(cost, opts.collapse)
        self.derivation: DartsCnnDerivation = self.deriver.derive(self.model)  # an unmeetable budget fails here
        self.stopped: tuple[int, str] | None = None
        weight_half, arch_half = Subset(train_set, weight_idx), Subset(train_set, arch_idx)
        self.samplers = (train_sampler(weight_half, ctx, opts.seed), train_sampler(arch_half, ctx, opts.seed + 1))
        loader_args: dict[str, Any] = dict(batch_size=local_batch, drop_last=True, num_workers=config.data.num_workers,
                                           pin_memory=ctx.device.type == "cuda")
        self.loaders = (DataLoader(weight_half, sampler=self.samplers[0], **loader_args),
                        DataLoader(arch_half, sampler=self.samplers[1], **loader_args))
        eval_idx = arch_idx if opts.eval_images is None else arch_idx[: opts.eval_images]
        self.eval_loader = shard_loader(Subset(eval_set, eval_idx), 2 * local_batch, ctx, config.data.num_workers)
        self.halves = (len(weight_idx), len(arch_idx))

    def describe(self) -> str:
        ctx, m = self.ctx, self.config.model
        return (f"{self.info.name} ({self.halves[0]} weight / {self.halves[1]} alpha images), supernet C={m.channels} "
                f"L={m.layers}, {self.config.search.order} order, mixed op '{self.model.mixed_op}', "
                f"{ctx.world_size} process(es) on {ctx.device}"
                + (f", {torch.get_num_threads()} CPU thread(s)" if ctx.device.type == "cpu" else ""))

    def meta(self) -> dict[str, Any]:
        return {"genotype": genotype_to_dict(self.derivation.genotype)}

    def train_epoch(self, epoch: int, bar: EpochBar) -> dict[str, Any]:
        device = self.ctx.device
        for sampler in self.samplers:
            sampler.set_epoch(epoch)
        lr = self.scheduler.get_last_lr()[0]
        guards = self.config.search.collapse
        if guards.darts_minus:
            self.model.aux_skip_weight = aux_skip_weight(guards.aux_skip_weight, epoch, self.settings.epochs)
        self.model.train()
        meter = Meter()
        bar.expect(min(len(loader) for loader in self.loaders))
        for (xw, yw), (xa, ya) in zip(*self.loaders):
            train_batch = (xw.to(device, non_blocking=True), yw.to(device, non_blocking=True))
            arch_batch = (xa.to(device, non_blocking=True), ya.to(device, non_blocking=True))
            loss, logits = search_step(self.wrapped, self.architect, self.optimizer, self.weight_params, train_batch,
                                       arch_batch, lr, self.config.search.grad_clip)
            bar.step(loss.item())
            meter.update(loss, logits, train_batch[1])
        self.scheduler.step()
        train = meter.reduce(self.ctx)
        record = {"epochs": self.settings.epochs, "lr": lr, "train_loss": train["loss"], "train_acc": train["top1"],
                  "mixed_op": self.model.mixed_op}
        return {**record, "aux_skip_weight": self.model.aux_skip_weight} if guards.darts_minus else record

    def evaluate(self, epoch: int) -> dict[str, Any]:
        model = self.model
        broadcast_buffers(model, self.ctx)
        model.eval()
        meter = Meter()
        with torch.no_grad():
            for x, y in self.eval_loader:
                x, y = x.to(self.ctx.device), y.to(self.ctx.device)
                logits = model(x)
                meter.update(F.cross_entropy(logits, y), logits, y)
        model.train()
        valid = meter.reduce(self.ctx)
        self.derivation = self.deriver.derive(model)  # the genotype, its costs and what the guards did
        return {"valid_loss": valid["loss"], "valid_acc": valid["top1"], **self.derivation.log_record()}

    def extra_records(self, epoch: int, record: dict[str, Any]) -> dict[str, dict[str, Any]]:
        normal, reduce = self.model.softmaxed_alphas()
        return {"alphas.jsonl": {"alphas_normal": normal.cpu().tolist(), "alphas_reduce": reduce.cpu().tolist(),
                                 "genotype": record["genotype"]}}

    def epoch_lines(self, record: dict[str, Any]) -> list[str]:
        genotype = genotype_from_dict(record["genotype"])
        lines = [f"  normal: {_cell_text(genotype.normal)}\n  reduce: {_cell_text(genotype.reduce)}"]
        if self.architect.cost is not None:
            keys = tuple(k for k in record if k.startswith(("expected_", "unconstrained_", "derived_")))
            lines.append("  cost: " + format_metrics(record, keys + ("cost_target", "budget_binds")))
        if "skip_cap_acted" in record:
            lines.append(f"  P-DARTS skip cap: {'acted' if record['skip_cap_acted'] else 'not needed'}")
        if "warning" in record:
            lines.append(f"  warning: {record['warning']}")
        return lines

    def stop_reason(self, record: dict[str, Any]) -> str | None:
        reason = self.deriver.stop_reason(int(record.get("normal_skips", 0)))
        if reason is not None:
            self.stopped = (int(record["epoch"]), reason)
        return reason

    def finish(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        derivation = self.deriver.derive(self.model)
        summary = derivation.summary()
        if self.stopped is not None:
            summary["guards"]["darts_plus"].update(acted=True, epoch=self.stopped[0])
        epochs_run = history[-1]["epoch"] if history else 0
        if self.ctx.is_main:
            save_genotype(derivation.genotype, self.out / "genotype.json",
                          meta={"source": "nasdeploy search", "epochs": epochs_run, "dataset": self.info.name, **summary})
        return {"final": _without_genotype(history[-1] if history else {}),
                "genotype": genotype_to_dict(derivation.genotype), **summary}

    def result(self, outcome: RunOutcome) -> DartsCnnSearchResult:
        if outcome.was_finished:
            return load_search_result(outcome.out_dir, was_finished=True)
        arch = {name: getattr(self.model, name) for name in ARCH_STATE}
        return DartsCnnSearchResult(out_dir=outcome.out_dir, epochs_done=outcome.epochs_done, epochs=outcome.epochs,
                                    finished=outcome.finished, genotype=self.deriver.derive(self.model).genotype,
                                    metrics=_without_genotype(outcome.history[-1] if outcome.history else {}),
                                    **{k: None if v is None else v.detach().cpu().clone() for k, v in arch.items()})


def run_search(config: DartsCnnSearchConfig, out_dir: str | os.PathLike[str], *, data_dir: str | None = None,
               force: bool = False, stop_after_epoch: int | None = None, progress: bool = True) -> DartsCnnSearchResult:
    """Search (or resume, or report a finished run) in `out_dir`; under torchrun every rank calls this."""
    return run_epochs(DartsCnnSearch(config, data_dir), out_dir, force=force, stop_after_epoch=stop_after_epoch,
                      progress=progress)


def _without_genotype(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in ("genotype", "unconstrained_genotype")}


def _cell_text(edges: tuple[tuple[str, int], ...]) -> str:
    return " ".join(f"{op}<-{i}" for op, i in edges)


def load_search_result(out_dir: str | os.PathLike[str], was_finished: bool = False) -> DartsCnnSearchResult:
    """The result of a finished search run directory (genotype.json, done.json, checkpoint.pt)."""
    out = Path(out_dir)
    done = read_done(out)
    if done is None:
        raise CheckpointError(f"{out} holds no finished search (done.json missing or unreadable)")
    genotype_path = out / "genotype.json"
    genotype = load_genotype(genotype_path, "cnn_cell") if genotype_path.is_file() else genotype_from_dict(done["genotype"])
    state = load_checkpoint(out / "checkpoint.pt")["model"]
    epochs = int(done.get("epochs", 0))
    return DartsCnnSearchResult(out_dir=out, epochs_done=epochs, epochs=epochs, finished=True, was_finished=was_finished,
                                genotype=genotype, metrics=dict(done.get("final", {})),
                                **{k: state.get(k) for k in ARCH_STATE})
