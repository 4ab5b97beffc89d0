"""Training a derived recurrent cell as a language model: SGD, then averaged SGD once validation stalls.

Run directory (the driver's files, nasdeploy.utils.epoch_driver): config.yaml, checkpoint.pt, log.jsonl,
done.json; and genotype.json, vocab.json and best.pt (the best validation weights -- the averaged ones once
ASGD runs -- in the train checkpoint format export and profile read). Single process.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import torch

from nasdeploy.config.darts_rnn import DartsRnnTrainConfig
from nasdeploy.data.text import batchify, load_text_corpus
from nasdeploy.genotypes import RecurrentGenotype, genotype_to_dict, save_genotype
from nasdeploy.nets.darts_rnn import NET_NAME, build_darts_rnn_network
from nasdeploy.tasks.language_model import TBPTTSettings, evaluate_language_model, perplexity, tbptt_epoch
from nasdeploy.train.genotype_source import GenotypeSource, genotype_fingerprint, resolve_train_genotype
from nasdeploy.utils.checkpoint import load_checkpoint, load_weights_into, save_checkpoint
from nasdeploy.utils.epoch_driver import EpochBar, EpochLoop, RunOutcome, RunResult, RunSettings, run_epochs
from nasdeploy.utils.files import write_text_atomic
from nasdeploy.utils.rng import seed_everything


@dataclass(kw_only=True)
class DartsRnnTrainResult(RunResult):
    """The perplexities a language-model training run reached."""

    best_valid_ppl: float
    test_ppl: float | None
    params: int
    asgd_epoch: int | None

    def summary(self) -> str:
        """The perplexities reached, for the console."""
        test = f", test ppl {self.test_ppl:.2f}" if self.test_ppl is not None else ""
        return f"best valid ppl {self.best_valid_ppl:.2f}{test}; {self.params:,} parameters; run directory: {self.out_dir}"


def make_optimizer(mode: str, params: list[torch.nn.Parameter], lr: float, wd: float) -> torch.optim.Optimizer:
    """Plain SGD, or ASGD averaging from its first step (mode 'asgd')."""
    if mode == "asgd":
        return torch.optim.ASGD(params, lr=lr, t0=0, lambd=0.0, weight_decay=wd)
    return torch.optim.SGD(params, lr=lr, weight_decay=wd)


def should_switch_to_asgd(history: list[float], valid_loss: float, nonmono: int) -> bool:
    """The non-monotone trigger: worse than the best loss before the last `nonmono` epochs."""
    return len(history) > nonmono and valid_loss > min(history[:-nonmono])


@contextmanager
def averaged_weights(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Temporarily load ASGD's running averages into the model (no-op under plain SGD)."""
    if not isinstance(optimizer, torch.optim.ASGD):
        yield
        return
    saved = {}
    with torch.no_grad():
        for p in model.parameters():
            ax = optimizer.state.get(p, {}).get("ax")
            if ax is not None:
                saved[p] = p.detach().clone()
                p.copy_(ax)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, value in saved.items():
                p.copy_(value)


class DartsRnnTraining(EpochLoop[DartsRnnTrainResult]):
    """The language model's TBPTT step, its (averaged) validation and the ASGD switch (the driver runs the rest)."""

    kind, space = "train", "darts_rnn"
    run_files = ("best.pt", "genotype.json", "vocab.json")
    console_keys = ("optimizer", "train_ppl", "valid_ppl", "best_valid_ppl")
    checkpointed = {"optimizer": "optimizer"}

    def __init__(self, config: DartsRnnTrainConfig, genotype: RecurrentGenotype):
        super().__init__(config)
        self.genotype = genotype

    @property
    def settings(self) -> RunSettings:
        t = self.config.train
        return RunSettings(t.epochs, t.device, t.threads)

    def fingerprint(self) -> dict[str, Any]:
        return genotype_fingerprint(self.genotype)

    def setup(self) -> None:
        s, device = self.config.train, self.ctx.device
        self.corpus = load_text_corpus(self.config.data)
        model_cfg = replace(self.config.model, ntokens=len(self.corpus.vocab))
        if self.ctx.is_main:
            write_text_atomic(self.out / "vocab.json", self.corpus.vocab.to_json())
            save_genotype(self.genotype, self.out / "genotype.json")
        seed_everything(s.seed)
        self.model = build_darts_rnn_network(self.genotype, **model_cfg.to_dict()).to(device)
        self.params = list(self.model.parameters())
        self.mode, self.valid_history, self.best_valid, self.asgd_epoch = "sgd", [], float("inf"), None
        self.optimizer = make_optimizer(self.mode, self.params, s.lr, s.weight_decay)
        self.train_data = batchify(self.corpus.train, s.batch_size).to(device)
        self.net_meta = {"genotype": genotype_to_dict(self.genotype), "net": NET_NAME, "net_kwargs": model_cfg.to_dict()}

    def describe(self) -> str:
        return f"{self.corpus.summary()}, {sum(p.numel() for p in self.params):,} parameters, on {self.ctx.device}"

    def meta(self) -> dict[str, Any]:
        return {**self.net_meta, "mode": self.mode, "history": self.valid_history, "best_valid": self.best_valid,
                "asgd_epoch": self.asgd_epoch}

    def restore(self, meta: dict[str, Any]) -> None:
        self.mode, self.valid_history = meta["mode"], list(meta["history"])
        self.best_valid, self.asgd_epoch = float(meta["best_valid"]), meta["asgd_epoch"]
        self.optimizer = make_optimizer(self.mode, self.params, self.config.train.lr, self.config.train.weight_decay)

    def train_epoch(self, epoch: int, bar: EpochBar) -> dict[str, Any]:
        s = self.config.train
        settings = TBPTTSettings(s.bptt, s.max_seq_len_delta, s.lr, s.clip, s.alpha_ar, s.beta_tar,
                                 s.max_batches_per_epoch)
        return {"train_ppl": perplexity(tbptt_epoch(self.model, self.optimizer, self.train_data, self.params, settings, bar))}

    def evaluate(self, epoch: int) -> dict[str, Any]:
        """Validation (with ASGD's averages), best.pt when it improves, and the switch to ASGD when it stalls."""
        s = self.config.train
        with averaged_weights(self.model, self.optimizer):
            valid_nll = evaluate_language_model(self.model, self.corpus.valid, s.eval_batch_size, s.bptt)
            if valid_nll < self.best_valid:
                self.best_valid = valid_nll
                if self.ctx.is_main:
                    save_checkpoint(self.out / "best.pt", self.model.state_dict(), kind="train",
                                    meta={**self.net_meta, "epoch": epoch + 1, "valid_ppl": perplexity(valid_nll)})
        if self.mode == "sgd":
            if should_switch_to_asgd(self.valid_history, valid_nll, s.nonmono):
                self.mode, self.asgd_epoch = "asgd", epoch + 1
                self.optimizer = make_optimizer(self.mode, self.params, s.lr, s.weight_decay)
            self.valid_history.append(valid_nll)
        return {"optimizer": self.mode, "valid_ppl": perplexity(valid_nll), "best_valid_ppl": perplexity(self.best_valid)}

    def epoch_lines(self, record: dict[str, Any]) -> list[str]:
        return ["  validation stopped improving: averaged SGD from now on"] if record["epoch"] == self.asgd_epoch else []

    def finish(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        s = self.config.train
        best = load_checkpoint(self.out / "best.pt")
        load_weights_into(self.model, best, source=str(self.out / "best.pt"))
        test_nll = evaluate_language_model(self.model, self.corpus.test, s.test_batch_size, s.bptt)
        return {"best_valid_ppl": perplexity(self.best_valid), "test_ppl": perplexity(test_nll),
                "best_epoch": int(best["meta"]["epoch"]), "params": sum(p.numel() for p in self.params),
                "asgd_epoch": self.asgd_epoch, "corpus": self.corpus.summary(), "genotype": genotype_to_dict(self.genotype)}

    def result(self, outcome: RunOutcome) -> DartsRnnTrainResult:
        done = outcome.done if outcome.done is not None else {
            "best_valid_ppl": perplexity(self.best_valid), "test_ppl": None,
            "params": sum(p.numel() for p in self.params), "asgd_epoch": self.asgd_epoch}
        return DartsRnnTrainResult(out_dir=outcome.out_dir, epochs_done=outcome.epochs_done, epochs=outcome.epochs,
                                   finished=outcome.finished, was_finished=outcome.was_finished,
                                   best_valid_ppl=done["best_valid_ppl"], test_ppl=done["test_ppl"],
                                   params=done["params"], asgd_epoch=done["asgd_epoch"])


def run_training(config: DartsRnnTrainConfig, genotype: GenotypeSource, out_dir: str | os.PathLike[str], *,
                 data_dir: str | None = None, force: bool = False, stop_after_epoch: int | None = None,
                 progress: bool = True) -> DartsRnnTrainResult:
    """Train the evaluation language model of `genotype` (None: the run's own) in `out_dir`; resumes."""
    if data_dir is not None:
        config = replace(config, data=replace(config.data, data_dir=str(data_dir)))
    resolved = resolve_train_genotype(genotype, Path(out_dir), "rnn_cell")
    return run_epochs(DartsRnnTraining(config, resolved), out_dir, force=force, stop_after_epoch=stop_after_epoch,
                      progress=progress)
