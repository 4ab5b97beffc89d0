"""Training a derived recurrent cell as a language model: SGD, then averaged SGD once validation stalls.

Run directory: config.yaml, genotype.json, vocab.json, log.jsonl (per epoch), checkpoint.pt (latest,
for resume), best.pt (best validation weights -- the averaged ones once ASGD runs -- in the train
checkpoint format export and profile read) and done.json when finished. Pointed at again, a run
resumes from checkpoint.pt; a finished run is returned as it is unless force=True.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from nasdeploy.data.text import batchify, load_text_corpus
from nasdeploy.errors import CheckpointError, ConfigError
from nasdeploy.genotypes import RecurrentGenotype, genotype_to_dict, resolve_genotype, save_genotype
from nasdeploy.nets.rnn import NET_NAME, build_rnn_lm
from nasdeploy.tasks.language_model import TBPTTSettings, evaluate_lm, perplexity, tbptt_epoch
from nasdeploy.train.rnn_config import RNNTrainConfig
from nasdeploy.utils.checkpoint import load_checkpoint, load_weights_into, save_checkpoint
from nasdeploy.utils.files import write_json_atomic, write_text_atomic
from nasdeploy.utils.runlog import JsonlLog
from nasdeploy.utils.rng import capture_rng_state, restore_rng_state, seed_everything
from nasdeploy.utils.distributed import resolve_device
from nasdeploy.utils.deprecation import legacy_loop_keywords
from nasdeploy.utils.rundir import CONFIG_FILE, DONE_FILE, check_resume_config, open_run_directory, read_done, read_run_config, write_run_config
from nasdeploy.utils.runlog import console_writer
from nasdeploy.utils.runtime import runtime_settings
from nasdeploy.utils.yamlconfig import to_dict

SPACE = "darts_rnn"  # the name of this loop's entry in nasdeploy.spaces.table (written to config.yaml)
RUN_FILES = ("checkpoint.pt", "best.pt", "log.jsonl", DONE_FILE, CONFIG_FILE, "genotype.json", "vocab.json")


@dataclass(frozen=True)
class RNNTrainResult:
    """What a finished (or stopped) training run produced."""

    out_dir: Path
    epochs_done: int
    best_valid_ppl: float
    test_ppl: float | None
    params: int
    asgd_epoch: int | None
    seconds: float
    finished: bool

    def summary(self) -> str:
        """The perplexities reached, for the console."""
        test = f", test ppl {self.test_ppl:.2f}" if self.test_ppl is not None else ""
        return f"best valid ppl {self.best_valid_ppl:.2f}{test}; {self.params:,} parameters; run directory: {self.out_dir}"


def _genotype_source(genotype: Any, out: Path) -> Any:
    """None: the run's own genotype.json (resuming); a search run directory: its genotype.json."""
    if genotype is None:
        if not (out / "genotype.json").is_file():
            raise ConfigError("no genotype given: pass --genotype NAME|FILE|SEARCH_DIR")
        return out / "genotype.json"
    if isinstance(genotype, (str, os.PathLike)) and Path(genotype).is_dir():
        return Path(genotype) / "genotype.json"
    return genotype


def _make_optimizer(mode: str, params: list[torch.nn.Parameter], lr: float, wd: float) -> torch.optim.Optimizer:
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


def _result(out: Path, final: dict[str, Any]) -> RNNTrainResult:
    return RNNTrainResult(out, final["epochs"], final["best_valid_ppl"], final["test_ppl"], final["params"],
                          final["asgd_epoch"], final["seconds"], True)


@legacy_loop_keywords
def run_rnn_training(config: RNNTrainConfig, genotype: RecurrentGenotype | str | os.PathLike[str] | None,
                     out_dir: str | os.PathLike[str], *, data_dir: str | None = None, force: bool = False,
                     stop_after_epoch: int | None = None, progress: bool = True) -> RNNTrainResult:
    """Train the evaluation language model of `genotype`; resumable; a finished run is not redone."""
    echo = console_writer(progress)
    if not progress:
        config = replace(config, train=replace(config.train, progress=False))
    with runtime_settings(threads=config.train.threads), open_run_directory(Path(out_dir), RUN_FILES):
        return _run_rnn_training(config, genotype, out_dir, data_dir, force, stop_after_epoch, echo)


def _run_rnn_training(config: RNNTrainConfig, genotype: RecurrentGenotype | str | os.PathLike[str],
                      out_dir: str | os.PathLike[str], data_dir: str | None, force: bool,
                      stop_after_epoch: int | None, echo: Callable[[str], None]) -> RNNTrainResult:
    out = Path(out_dir)
    genotype = resolve_genotype(_genotype_source(genotype, out), expected_kind=RecurrentGenotype.kind)
    if data_dir is not None:
        config = replace(config, data=replace(config.data, data_dir=str(data_dir)))
    if force:
        for name in RUN_FILES:
            if (out / name).exists():
                (out / name).unlink()
    stored = {"genotype": genotype_to_dict(genotype), **to_dict(config)}
    if (out / CONFIG_FILE).is_file():  # a finished run is checked too: a changed config is not "nothing to do"
        check_resume_config(read_run_config(out), stored, out, allowed=(
            "data.data_dir", "train.epochs", "train.progress", "train.device", "train.threads", "genotype.name"))
    done = None if force else read_done(out)
    if done is not None:
        echo(f"training in {out} is already finished (use --force to redo it)")
        return _result(out, done)
    s = config.train
    corpus = load_text_corpus(config.data)
    device = resolve_device(s.device)
    model_cfg = replace(config.model, ntokens=len(corpus.vocab))
    out.mkdir(parents=True, exist_ok=True)
    write_run_config(out, stored, SPACE)
    write_text_atomic(out / "vocab.json", corpus.vocab.to_json())
    save_genotype(genotype, out / "genotype.json")

    seed_everything(s.seed)
    model = build_rnn_lm(genotype, **model_cfg.to_dict()).to(device)
    params = list(model.parameters())
    n_params = sum(p.numel() for p in params)
    mode, history, best_valid, asgd_epoch, start_epoch, seconds = "sgd", [], float("inf"), None, 1, 0.0
    optimizer = _make_optimizer(mode, params, s.lr, s.weight_decay)
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path, map_location=device)
        if ckpt.get("kind") != "rnn_train_state":
            raise CheckpointError(f"{ckpt_path} is a '{ckpt.get('kind')}' checkpoint, not an RNN training state")
        load_weights_into(model, ckpt, source=str(ckpt_path))
        meta = ckpt["meta"]
        mode, history, best_valid = meta["mode"], list(meta["history"]), float(meta["best_valid"])
        asgd_epoch, seconds, start_epoch = meta["asgd_epoch"], float(meta["seconds"]), int(meta["epoch"]) + 1
        optimizer = _make_optimizer(mode, params, s.lr, s.weight_decay)
        optimizer.load_state_dict(ckpt["optimizer"])
        restore_rng_state(ckpt["rng"])
        JsonlLog(out / "log.jsonl").rewind(lambda r: int(r.get("epoch", 0)) < start_epoch)
        echo(f"resuming training in {out} from epoch {start_epoch} ({mode.upper()})")

    train_data = batchify(corpus.train, s.batch_size).to(device)
    settings = TBPTTSettings(s.bptt, s.max_seq_len_delta, s.lr, s.clip, s.alpha_ar, s.beta_tar,
                             s.max_batches_per_epoch, s.progress)
    net_meta = {"genotype": genotype_to_dict(genotype), "net": NET_NAME, "net_kwargs": model_cfg.to_dict()}
    last_epoch = s.epochs if stop_after_epoch is None else min(s.epochs, stop_after_epoch)
    for epoch in range(start_epoch, last_epoch + 1):
        t0 = time.perf_counter()
        train_nll = tbptt_epoch(model, optimizer, train_data, params, settings, desc=f"train epoch {epoch}")
        with averaged_weights(model, optimizer):
            valid_nll = evaluate_lm(model, corpus.valid, s.eval_batch_size, s.bptt)
            improved = valid_nll < best_valid
            if improved:
                best_valid = valid_nll
                save_checkpoint(out / "best.pt", model.state_dict(), kind="train",
                                meta={**net_meta, "epoch": epoch, "valid_ppl": perplexity(valid_nll)})
        if mode == "sgd":
            if should_switch_to_asgd(history, valid_nll, s.nonmono):
                mode, asgd_epoch = "asgd", epoch
                optimizer = _make_optimizer(mode, params, s.lr, s.weight_decay)
                echo(f"epoch {epoch}: validation stopped improving; switching to averaged SGD")
            history.append(valid_nll)
        seconds += time.perf_counter() - t0
        JsonlLog(out / "log.jsonl").write({"epoch": epoch, "optimizer": "asgd" if isinstance(optimizer, torch.optim.ASGD) else "sgd",
                                           "train_ppl": perplexity(train_nll), "valid_ppl": perplexity(valid_nll),
                                           "best_valid_ppl": perplexity(best_valid), "seconds": round(seconds, 2)})
        save_checkpoint(ckpt_path, model.state_dict(), kind="rnn_train_state",
                        meta={**net_meta, "epoch": epoch, "mode": mode, "history": history, "best_valid": best_valid,
                              "asgd_epoch": asgd_epoch, "seconds": seconds},
                        optimizer=optimizer.state_dict(), rng=capture_rng_state())
        echo(f"train epoch {epoch}/{s.epochs}: train ppl {perplexity(train_nll):.2f}  valid ppl "
             f"{perplexity(valid_nll):.2f}{' *' if improved else ''}  ({mode.upper()}, {seconds:.0f}s)")

    epochs_done = max(start_epoch - 1, last_epoch)
    if epochs_done < s.epochs:
        return RNNTrainResult(out, epochs_done, perplexity(best_valid), None, n_params, asgd_epoch, seconds, False)
    best = load_checkpoint(out / "best.pt", map_location=device)
    load_weights_into(model, best, source=str(out / "best.pt"))
    test_nll = evaluate_lm(model, corpus.test, s.test_batch_size, s.bptt)
    final = {"epochs": s.epochs, "best_valid_ppl": perplexity(best_valid), "test_ppl": perplexity(test_nll),
             "best_epoch": int(best["meta"]["epoch"]), "params": n_params, "asgd_epoch": asgd_epoch,
             "seconds": seconds, "corpus": corpus.summary(), "genotype": genotype_to_dict(genotype)}
    write_json_atomic(out / DONE_FILE, final)
    echo(f"finished: best valid ppl {final['best_valid_ppl']:.2f}, test ppl {final['test_ppl']:.2f}, "
         f"{n_params:,} parameters")
    return _result(out, final)
