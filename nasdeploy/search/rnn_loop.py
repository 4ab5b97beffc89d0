"""The DARTS recurrent search loop: alternate architecture steps (validation) and weight steps (train).

Run directory: config.yaml, vocab.json, log.jsonl (per epoch), alphas.jsonl (per epoch: softmaxed
alphas and the derived genotype), checkpoint.pt (latest, atomic, weights_only-loadable),
genotype.json and done.json when finished. Pointed at again, a run resumes from its checkpoint; a
finished run is returned as it is unless force=True.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from nasdeploy.data.text import batchify, get_batch, load_text_corpus
from nasdeploy.errors import CheckpointError
from nasdeploy.genotypes import RecurrentGenotype, genotype_from_dict, genotype_to_dict, save_genotype
from nasdeploy.search.architect import Architect, ArchitectConfig
from nasdeploy.search.rnn_architect import RecurrentArchitect
from nasdeploy.spaces.darts_rnn_derive import derive_recurrent_genotype
from nasdeploy.search.rnn_config import RNNSearchConfig
from nasdeploy.spaces.darts_rnn import RNNSearchModel
from nasdeploy.tasks.language_model import LMBatch, TBPTTSettings, architect_loss, evaluate_lm, perplexity, tbptt_epoch
from nasdeploy.utils.checkpoint import load_checkpoint, load_weights_into, save_checkpoint
from nasdeploy.utils.files import write_json_atomic, write_text_atomic
from nasdeploy.utils.runlog import JsonlLog
from nasdeploy.utils.rng import capture_rng_state, restore_rng_state, seed_everything
from nasdeploy.utils.distributed import resolve_device
from nasdeploy.utils.deprecation import legacy_loop_keywords
from nasdeploy.utils.rundir import CONFIG_FILE, DONE_FILE, check_resume_config, open_run_directory, read_run_config, write_run_config
from nasdeploy.utils.runlog import console_writer
from nasdeploy.utils.runtime import runtime_settings
from nasdeploy.utils.yamlconfig import from_dict, to_dict

# The recurrent cell mixes its candidate activations in PyTorch (no fused kernel for this space).
MIXED_OP = "reference"
SPACE = "darts_rnn"  # the name of this loop's entry in nasdeploy.spaces.table (written to config.yaml)
RUN_FILES = ("checkpoint.pt", "log.jsonl", "alphas.jsonl", "genotype.json", "done.json", "config.yaml", "vocab.json")


@dataclass(frozen=True)
class RNNSearchResult:
    """What a finished (or stopped) search produced."""

    out_dir: Path
    genotype: RecurrentGenotype
    epochs_done: int
    valid_ppl: float  # last epoch
    first_valid_ppl: float
    best_valid_ppl: float
    seconds: float
    finished: bool

    def summary(self) -> str:
        """The genotype found and the perplexity reached, for the console."""
        return (f"genotype: {[list(e) for e in self.genotype.recurrent]}\n"
                f"valid ppl {self.first_valid_ppl:.2f} (epoch 1) -> {self.valid_ppl:.2f} (epoch {self.epochs_done}); "
                f"run directory: {self.out_dir}")


def build_search_model(config: RNNSearchConfig, ntokens: int) -> RNNSearchModel:
    """The supernet a config describes."""
    m = config.model
    return RNNSearchModel(ntokens, emsize=m.emsize, nhid=m.nhid, steps=m.steps, dropout=m.dropout,
                          dropouth=m.dropouth, dropoutx=m.dropoutx, dropouti=m.dropouti, dropoute=m.dropoute,
                          alpha_init=m.alpha_init, bn_running_stats=m.bn_running_stats)


def _result_from_done(out_dir: Path, done: dict[str, Any]) -> RNNSearchResult:
    return RNNSearchResult(out_dir, genotype_from_dict(done["genotype"], "rnn_cell"), done["epochs"],
                           done["valid_ppl"], done["first_valid_ppl"], done["best_valid_ppl"], done["seconds"], True)


@legacy_loop_keywords
def run_rnn_search(config: RNNSearchConfig, out_dir: str | os.PathLike[str], *, data_dir: str | None = None,
                   force: bool = False, stop_after_epoch: int | None = None, progress: bool = True) -> RNNSearchResult:
    """Search a recurrent cell; resumable, and a finished run is not redone unless force=True."""
    echo = console_writer(progress)
    if not progress:
        config = replace(config, search=replace(config.search, progress=False))
    with runtime_settings(threads=config.search.threads), open_run_directory(Path(out_dir), RUN_FILES):
        return _run_rnn_search(config, out_dir, data_dir, force, stop_after_epoch, echo)


def _run_rnn_search(config: RNNSearchConfig, out_dir: str | os.PathLike[str], data_dir: str | None, force: bool,
                    stop_after_epoch: int | None, echo: Callable[[str], None]) -> RNNSearchResult:
    out = Path(out_dir)
    if data_dir is not None:
        config = replace(config, data=replace(config.data, data_dir=str(data_dir)))
    done_path = out / DONE_FILE
    if force:
        for name in RUN_FILES:
            if (out / name).exists():
                (out / name).unlink()
    if (out / CONFIG_FILE).is_file():  # a finished run is checked too: a changed config is not "nothing to do"
        check_resume_config(read_run_config(out), to_dict(config), out,
                            allowed=("data.data_dir", "search.epochs", "search.progress", "search.device", "search.threads"))
    if not force and done_path.is_file():
        echo(f"search in {out} is already finished (use --force to redo it)")
        return _result_from_done(out, json.loads(done_path.read_text(encoding="utf-8")))
    s = config.search
    corpus = load_text_corpus(config.data)
    device = resolve_device(s.device)
    out.mkdir(parents=True, exist_ok=True)
    write_run_config(out, config, SPACE)
    write_text_atomic(out / "vocab.json", corpus.vocab.to_json())

    seed_everything(s.seed)
    model = build_search_model(config, len(corpus.vocab)).to(device)
    optimizer = torch.optim.SGD(model.weight_parameters(), lr=s.lr, weight_decay=s.weight_decay)
    architect = RecurrentArchitect(model, architect_loss, optimizer,
                                   ArchitectConfig(order=s.order, lr=s.arch_lr, betas=s.arch_betas,
                                                   weight_decay=s.arch_weight_decay), clip=s.clip)
    start_epoch, seconds, first_ppl = 1, 0.0, float("nan")
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path, map_location=device)
        if ckpt.get("kind") != "rnn_search":
            raise CheckpointError(f"{ckpt_path} is a '{ckpt.get('kind')}' checkpoint, not an RNN search checkpoint")
        load_weights_into(model, ckpt, source=str(ckpt_path))
        optimizer.load_state_dict(ckpt["optimizer"])
        architect.optimizer.load_state_dict(ckpt["arch_optimizer"])
        restore_rng_state(ckpt["rng"])
        start_epoch = int(ckpt["meta"]["epoch"]) + 1
        seconds = float(ckpt["meta"]["seconds"])
        first_ppl = float(ckpt["meta"]["first_valid_ppl"])
        for name in ("log.jsonl", "alphas.jsonl"):
            JsonlLog(out / name).rewind(lambda r: int(r.get("epoch", 0)) < start_epoch)
        echo(f"resuming search in {out} from epoch {start_epoch}")

    train_data = batchify(corpus.train, s.batch_size).to(device)
    search_data = batchify(corpus.valid, s.batch_size).to(device)
    last_epoch = s.epochs if stop_after_epoch is None else min(s.epochs, stop_after_epoch)
    valid_ppl = float("nan")
    for epoch in range(start_epoch, last_epoch + 1):
        t0 = time.perf_counter()
        train_loss = _search_epoch(model, architect, optimizer, train_data, search_data, config, epoch)
        valid_nll = evaluate_lm(model, corpus.valid, s.eval_batch_size or s.batch_size, s.bptt)
        valid_ppl = perplexity(valid_nll)
        if epoch == 1:
            first_ppl = valid_ppl
        seconds += time.perf_counter() - t0
        genotype = derive_recurrent_genotype(model.alphas.detach().cpu(), model.primitives)
        probs = torch.softmax(model.alphas.detach().cpu(), dim=-1)
        JsonlLog(out / "log.jsonl").write({"epoch": epoch, "train_ppl": perplexity(train_loss), "valid_ppl": valid_ppl,
                                           "valid_loss": valid_nll, "seconds": round(seconds, 2),
                                           "mixed_op": MIXED_OP})
        JsonlLog(out / "alphas.jsonl").write({"epoch": epoch, "alphas": probs.tolist(),
                                              "genotype": genotype_to_dict(genotype)})
        save_checkpoint(ckpt_path, model.state_dict(), kind="rnn_search",
                        meta={"epoch": epoch, "seconds": seconds, "first_valid_ppl": first_ppl,
                              "config": to_dict(config), "genotype": genotype_to_dict(genotype),
                              "ntokens": len(corpus.vocab)},
                        optimizer=optimizer.state_dict(), arch_optimizer=architect.optimizer.state_dict(),
                        rng=capture_rng_state())
        echo(f"search epoch {epoch}/{s.epochs}: train ppl {perplexity(train_loss):.2f}  valid ppl {valid_ppl:.2f}  "
             f"genotype {[list(e) for e in genotype.recurrent]}  ({seconds:.0f}s)")

    epochs_done = max(start_epoch - 1, last_epoch)
    genotype = derive_recurrent_genotype(model.alphas.detach().cpu(), model.primitives, name=f"rnn_search_{out.name}")
    logged = [float(r["valid_ppl"]) for r in JsonlLog(out / "log.jsonl").read()]
    if logged:  # a run resumed exactly at its end has no epoch left to evaluate
        valid_ppl = logged[-1]
    best_ppl = min(logged) if logged else valid_ppl
    if epochs_done < s.epochs:
        return RNNSearchResult(out, genotype, epochs_done, valid_ppl, first_ppl, best_ppl, seconds, False)
    save_genotype(genotype, out / "genotype.json", meta={"valid_ppl": valid_ppl, "epochs": s.epochs})
    done = {"epochs": s.epochs, "valid_ppl": valid_ppl, "first_valid_ppl": first_ppl, "best_valid_ppl": best_ppl,
            "seconds": seconds, "genotype": genotype_to_dict(genotype), "corpus": corpus.summary()}
    write_json_atomic(done_path, done)
    return _result_from_done(out, done)


def _search_epoch(model: RNNSearchModel, architect: Architect, optimizer: torch.optim.Optimizer,
                  train_data: torch.Tensor, search_data: torch.Tensor, config: RNNSearchConfig, epoch: int) -> float:
    """One epoch: before each weight step, an architecture step on the matching validation window."""
    s = config.search
    state = {"hidden": model.init_hidden(search_data.size(1))}  # validation hidden state, carried

    def architecture_step(x: torch.Tensor, y: torch.Tensor, hidden: torch.Tensor, i: int, seq_len: int,
                          lr: float) -> None:
        xv, yv = get_batch(search_data, i % (search_data.size(0) - 1), s.bptt)  # full bptt, as the reference
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        train_batch = LMBatch(x, y, hidden, seed)
        val_batch = LMBatch(xv, yv, state["hidden"].detach(), seed + 1)
        architect.step(train_batch, val_batch, eta=lr)
        state["hidden"] = val_batch.next_hidden

    settings = TBPTTSettings(s.bptt, s.max_seq_len_delta, s.lr, s.clip, s.alpha_ar, s.beta_tar,
                             s.max_batches_per_epoch, s.progress, length_jitter=False)
    return tbptt_epoch(model, optimizer, train_data, model.weight_parameters(), settings,
                       desc=f"search epoch {epoch}", before_step=architecture_step)


def load_search_checkpoint_model(path: str | os.PathLike[str]) -> tuple[RNNSearchModel, dict[str, Any]]:
    """Rebuild the supernet of a search checkpoint (for inspection)."""
    ckpt = load_checkpoint(path)
    config = from_dict(RNNSearchConfig, ckpt["meta"]["config"])
    model = build_search_model(config, int(ckpt["meta"]["ntokens"]))
    load_weights_into(model, ckpt, source=str(path))
    return model, ckpt


__all__ = ["RNNSearchResult", "run_rnn_search", "build_search_model", "load_search_checkpoint_model"]
