"""The DARTS recurrent search: before each weight step (training split), an architecture step (validation split).

Run directory (the driver's files, nasdeploy.utils.epoch_driver): config.yaml, checkpoint.pt, log.jsonl,
done.json; and vocab.json, alphas.jsonl (per epoch: softmaxed alphas and the genotype so far) and
genotype.json once finished. Single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

import torch

from nasdeploy.config.darts_rnn import DartsRnnSearchConfig, DartsRnnSearchOptions
from nasdeploy.data.text import batchify, get_batch, load_text_corpus
from nasdeploy.genotypes import RecurrentGenotype, genotype_from_dict, genotype_to_dict, save_genotype
from nasdeploy.search.architect import Architect, ArchitectConfig
from nasdeploy.search.darts_rnn_architect import RecurrentArchitect
from nasdeploy.spaces.darts_rnn import DartsRnnSupernet
from nasdeploy.spaces.darts_rnn_derive import derive_recurrent_genotype
from nasdeploy.tasks.language_model import LanguageModelBatch, TBPTTSettings, architect_loss, evaluate_language_model, perplexity, tbptt_epoch
from nasdeploy.utils.checkpoint import load_checkpoint, load_weights_into
from nasdeploy.utils.epoch_driver import EpochBar, EpochLoop, RunOutcome, RunResult, RunSettings, run_epochs
from nasdeploy.utils.files import write_text_atomic
from nasdeploy.utils.rng import seed_everything
from nasdeploy.utils.yamlconfig import from_dict

# The recurrent cell mixes its candidate activations in PyTorch (no fused kernel for this space).
MIXED_OP = "reference"


@dataclass(kw_only=True)
class DartsRnnSearchResult(RunResult):
    """The recurrent genotype a search reached and its validation perplexities."""

    genotype: RecurrentGenotype
    valid_ppl: float  # last epoch
    first_valid_ppl: float
    best_valid_ppl: float

    def summary(self) -> str:
        """The genotype found and the perplexity reached, for the console."""
        return (f"genotype: {[list(e) for e in self.genotype.recurrent]}\n"
                f"valid ppl {self.first_valid_ppl:.2f} (epoch 1) -> {self.valid_ppl:.2f} (epoch {self.epochs_done}); "
                f"run directory: {self.out_dir}")


def build_search_model(config: DartsRnnSearchConfig, ntokens: int) -> DartsRnnSupernet:
    """The supernet a config describes."""
    m = config.model
    return DartsRnnSupernet(ntokens, emsize=m.emsize, nhid=m.nhid, steps=m.steps, dropout=m.dropout,
                          dropouth=m.dropouth, dropoutx=m.dropoutx, dropouti=m.dropouti, dropoute=m.dropoute,
                          alpha_init=m.alpha_init, bn_running_stats=m.bn_running_stats)


def search_epoch(model: DartsRnnSupernet, architect: Architect, optimizer: torch.optim.Optimizer,
                 train_data: torch.Tensor, search_data: torch.Tensor, options: DartsRnnSearchOptions,
                 bar: EpochBar | None = None) -> float:
    """One epoch: before each weight step, an architecture step on the matching validation window."""
    s = options
    state = {"hidden": model.init_hidden(search_data.size(1))}  # validation hidden state, carried

    def architecture_step(x: torch.Tensor, y: torch.Tensor, hidden: torch.Tensor, i: int, seq_len: int,
                          lr: float) -> None:
        xv, yv = get_batch(search_data, i % (search_data.size(0) - 1), s.bptt)  # full bptt, as the reference
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        train_batch = LanguageModelBatch(x, y, hidden, seed)
        val_batch = LanguageModelBatch(xv, yv, state["hidden"].detach(), seed + 1)
        architect.step(train_batch, val_batch, eta=lr)
        state["hidden"] = val_batch.next_hidden

    settings = TBPTTSettings(s.bptt, s.max_seq_len_delta, s.lr, s.clip, s.alpha_ar, s.beta_tar,
                             s.max_batches_per_epoch, length_jitter=False)
    return tbptt_epoch(model, optimizer, train_data, model.weight_parameters(), settings, bar,
                       before_step=architecture_step)


class DartsRnnSearch(EpochLoop[DartsRnnSearchResult]):
    """The DARTS recurrent search's step and evaluation (the driver runs the rest)."""

    kind, space = "search", "darts_rnn"
    run_files = ("vocab.json", "genotype.json")
    extra_logs = ("alphas.jsonl",)
    console_keys = ("train_ppl", "valid_ppl")
    checkpointed = {"optimizer": "optimizer", "arch_optimizer": "architect.optimizer"}

    @property
    def settings(self) -> RunSettings:
        s = self.config.search
        return RunSettings(s.epochs, s.device, s.threads)

    def setup(self) -> None:
        s = self.config.search
        self.corpus = load_text_corpus(self.config.data)
        if self.ctx.is_main:
            write_text_atomic(self.out / "vocab.json", self.corpus.vocab.to_json())
        seed_everything(s.seed)
        self.model = build_search_model(self.config, len(self.corpus.vocab)).to(self.ctx.device)
        self.optimizer = torch.optim.SGD(self.model.weight_parameters(), lr=s.lr, weight_decay=s.weight_decay)
        self.architect = RecurrentArchitect(self.model, architect_loss, self.optimizer,
                                            ArchitectConfig(order=s.order, lr=s.arch_lr, betas=s.arch_betas,
                                                            weight_decay=s.arch_weight_decay), clip=s.clip)
        self.train_data = batchify(self.corpus.train, s.batch_size).to(self.ctx.device)
        self.search_data = batchify(self.corpus.valid, s.batch_size).to(self.ctx.device)

    def describe(self) -> str:
        m = self.config.model
        return (f"{self.corpus.summary()}, supernet emsize={m.emsize} steps={m.steps}, {self.config.search.order} "
                f"order, on {self.ctx.device}")

    def meta(self) -> dict[str, Any]:
        return {"genotype": genotype_to_dict(self._genotype()), "ntokens": len(self.corpus.vocab)}

    def train_epoch(self, epoch: int, bar: EpochBar) -> dict[str, Any]:
        train_loss = search_epoch(self.model, self.architect, self.optimizer, self.train_data, self.search_data,
                                  self.config.search, bar)
        return {"train_ppl": perplexity(train_loss), "mixed_op": MIXED_OP}

    def evaluate(self, epoch: int) -> dict[str, Any]:
        s = self.config.search
        valid_nll = evaluate_language_model(self.model, self.corpus.valid, s.eval_batch_size or s.batch_size, s.bptt)
        return {"valid_ppl": perplexity(valid_nll), "valid_loss": valid_nll}

    def extra_records(self, epoch: int, record: dict[str, Any]) -> dict[str, dict[str, Any]]:
        probs = torch.softmax(self.model.alphas.detach().cpu(), dim=-1)
        return {"alphas.jsonl": {"alphas": probs.tolist(), "genotype": genotype_to_dict(self._genotype())}}

    def epoch_lines(self, record: dict[str, Any]) -> list[str]:
        return [f"  genotype {[list(e) for e in self._genotype().recurrent]}"]

    def finish(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        genotype = self._genotype(name=f"darts_rnn_search_{self.out.name}")
        ppl = [float(r["valid_ppl"]) for r in history]
        if self.ctx.is_main:
            save_genotype(genotype, self.out / "genotype.json", meta={"valid_ppl": ppl[-1], "epochs": self.settings.epochs})
        return {"valid_ppl": ppl[-1], "first_valid_ppl": ppl[0], "best_valid_ppl": min(ppl),
                "genotype": genotype_to_dict(genotype), "corpus": self.corpus.summary()}

    def result(self, outcome: RunOutcome) -> DartsRnnSearchResult:
        if outcome.done is not None:
            done = outcome.done
            genotype = genotype_from_dict(done["genotype"], "rnn_cell")
        else:
            ppl = [float(r["valid_ppl"]) for r in outcome.history] or [float("nan")]
            done = {"valid_ppl": ppl[-1], "first_valid_ppl": ppl[0], "best_valid_ppl": min(ppl)}
            genotype = self._genotype(name=f"darts_rnn_search_{self.out.name}")
        return DartsRnnSearchResult(out_dir=outcome.out_dir, epochs_done=outcome.epochs_done, epochs=outcome.epochs,
                                    finished=outcome.finished, was_finished=outcome.was_finished, genotype=genotype,
                                    valid_ppl=done["valid_ppl"], first_valid_ppl=done["first_valid_ppl"],
                                    best_valid_ppl=done["best_valid_ppl"])

    def _genotype(self, name: str | None = None) -> RecurrentGenotype:
        return derive_recurrent_genotype(self.model.alphas.detach().cpu(), self.model.primitives, name=name)


def run_search(config: DartsRnnSearchConfig, out_dir: str | os.PathLike[str], *, data_dir: str | None = None,
               force: bool = False, stop_after_epoch: int | None = None, progress: bool = True) -> DartsRnnSearchResult:
    """Search a recurrent cell in `out_dir` (or resume, or report a finished run); data_dir: a PTB-layout folder."""
    if data_dir is not None:
        config = replace(config, data=replace(config.data, data_dir=str(data_dir)))
    return run_epochs(DartsRnnSearch(config), out_dir, force=force, stop_after_epoch=stop_after_epoch,
                      progress=progress)


def load_search_checkpoint_model(path: str | os.PathLike[str]) -> tuple[DartsRnnSupernet, dict[str, Any]]:
    """Rebuild the supernet of a search checkpoint (for inspection)."""
    ckpt = load_checkpoint(path)
    config = from_dict(DartsRnnSearchConfig, ckpt["meta"]["config"])
    model = build_search_model(config, int(ckpt["meta"]["ntokens"]))
    load_weights_into(model, ckpt, source=str(path))
    return model, ckpt
