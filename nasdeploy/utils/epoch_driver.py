"""The epoch driver: the one run-directory protocol every search and training loop runs under.

A loop (one per space and kind) subclasses EpochLoop and supplies only what is its own: building data,
model and optimisers (setup), one epoch of its step (train_epoch), its evaluation, its per-epoch records,
what its checkpoint holds besides the model, and its final artifacts. run_epochs does the rest, the same way for every space:

- the run directory's lock (one process per directory), its ownership mark (a folder nasdeploy did not make is
  never written into) and, with force, removal of the run's own files and nothing else;
- the resume checks: the stored config.yaml (a changed key outside the config's RESUMABLE refuses, finished
  run or not), the checkpoint's kind and the loop's fingerprint (e.g. the trained genotype);
- a finished run (done.json) is reported and left alone;
- the epochs: progress bar, divergence check of every step's loss, per-epoch JSON-lines logs (rewound on
  resume so no epoch appears twice), one console line, and an atomic checkpoint with the optimiser and
  scheduler states and every rank's RNG state (bitwise resume); only rank 0 writes;
- stop_after_epoch (an unfinished, resumable result) and Ctrl-C (the last completed epoch stays resumable);
- a loop's own early stop (EpochLoop.stop_reason, e.g. a search criterion): the run finishes after that
  epoch, its done.json records `stopped_early` (epoch, planned epochs, reason) and `epochs` the epochs run;
- done.json once the last epoch is done, and a typed result.
"""

from __future__ import annotations

import math
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from tqdm import tqdm

from nasdeploy.errors import CheckpointError, ConfigError
from nasdeploy.utils.checkpoint import load_checkpoint, load_weights_into, save_checkpoint
from nasdeploy.utils.checks import Threads
from nasdeploy.utils.distributed import DistContext, barrier, gather_rng_states, process_group, restore_rank_rng
from nasdeploy.utils.files import write_json_atomic
from nasdeploy.utils.ownership import check_folder, clear_own_entries, mark_folder
from nasdeploy.utils.rundir import (
    CONFIG_FILE,
    DONE_FILE,
    check_resume_config,
    open_run_directory,
    read_done,
    read_run_config,
    write_run_config,
)
from nasdeploy.utils.runlog import JsonlLog, console, format_metrics
from nasdeploy.utils.runtime import runtime_settings
from nasdeploy.utils.yamlconfig import load_yaml, to_dict

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "log.jsonl"
# Every run directory holds these; a loop names its other files in EpochLoop.run_files.
BASE_RUN_FILES = (CONFIG_FILE, CHECKPOINT_FILE, LOG_FILE, DONE_FILE)
_NOUN = {"search": "search", "train": "training"}
_VERB = {"search": "searching", "train": "training"}


@dataclass(frozen=True)
class RunSettings:
    """How a run executes (from its config's loop section): epochs, device, CPU threads, determinism."""

    epochs: int
    device: str = "auto"
    threads: Threads = None
    deterministic: bool = False


@dataclass(kw_only=True)
class RunResult:
    """What every search or training call returns; each space's result adds its own fields."""

    out_dir: Path
    epochs_done: int
    epochs: int
    finished: bool
    was_finished: bool = False  # True when this call found a finished run and did nothing


@dataclass
class RunOutcome:
    """What the driver hands a loop to build its result from."""

    out_dir: Path
    epochs_done: int
    epochs: int
    finished: bool
    was_finished: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)  # log.jsonl records, oldest first
    done: dict[str, Any] | None = None  # done.json's record once finished


R = TypeVar("R", bound=RunResult)


class EpochBar:
    """One epoch's progress bar (rank 0, when progress is on) and the divergence check of each step's loss."""

    def __init__(self, kind: str, epoch: int, epochs: int, enabled: bool):
        self.kind, self.epoch = kind, epoch
        self.bar = tqdm(desc=f"{kind} {epoch}/{epochs}", disable=not enabled, leave=False, dynamic_ncols=True)

    def expect(self, total: int) -> None:
        """Set the bar's length (in steps, or in whatever unit step() advances by)."""
        self.bar.total = total
        self.bar.refresh()

    def step(self, loss: float, advance: int = 1) -> None:
        """Count one step; a loss that is not finite ends the run with one line."""
        if not math.isfinite(loss):
            raise ConfigError(f"{_NOUN[self.kind]} diverged at epoch {self.epoch} (training loss {loss}); "
                              f"lower {self.kind}.lr")
        self.bar.update(advance)
        self.bar.set_postfix(loss=f"{loss:.3f}")

    def close(self) -> None:
        """Remove the bar from the terminal."""
        self.bar.close()


class EpochLoop(ABC, Generic[R]):
    """A space's search or training loop: the hooks run_epochs calls (see the module docstring).

    The driver sets `ctx` (the DDP context), `out` (the run directory) and `threads` (the CPU thread count the
    run's setting resolved to, recorded in every log record, each checkpoint and done.json) before setup().
    Epoch arguments are 0-based (epoch 0 is the first); records carry the 1-based number.
    """

    kind: ClassVar[str]  # "search" | "train": the checkpoint kind and the config section of the loop settings
    space: ClassVar[str]  # the space's name in nasdeploy.spaces.table (written to config.yaml)
    run_files: ClassVar[tuple[str, ...]] = ()  # the loop's own files besides BASE_RUN_FILES
    extra_logs: ClassVar[tuple[str, ...]] = ()  # per-epoch JSON-lines files besides log.jsonl
    console_keys: ClassVar[tuple[str, ...]] = ()  # the record keys of the per-epoch console line
    # What the checkpoint holds by state_dict besides the model (`self.model`): checkpoint key -> attribute
    # path (dotted to reach into an attribute), e.g. {"optimizer": "optimizer", "arch_optimizer": "architect.optimizer"}.
    checkpointed: ClassVar[dict[str, str]] = {}

    ctx: DistContext
    out: Path
    threads: int
    model: Any  # the torch.nn.Module the checkpoint holds, built by setup()

    def __init__(self, config: Any):
        self.config = config

    @property
    @abstractmethod
    def settings(self) -> RunSettings:
        """Epochs, device, threads and determinism of this run."""

    def fingerprint(self) -> dict[str, Any]:
        """What must match besides the config to resume (e.g. the genotype trained); stored in the checkpoint."""
        return {}

    @abstractmethod
    def setup(self) -> None:
        """Build data, model, optimisers and schedulers (seeded; a bad size raises ConfigError)."""

    def describe(self) -> str:
        """What a fresh run does, for its first console line."""
        return ""

    def meta(self) -> dict[str, Any]:
        """JSON-able extras of each checkpoint's meta (e.g. the genotype so far)."""
        return {}

    def restore(self, meta: dict[str, Any]) -> None:
        """Restore what meta() saved; the driver then loads the checkpointed state_dicts and the RNG states."""

    @abstractmethod
    def train_epoch(self, epoch: int, bar: EpochBar) -> dict[str, Any]:
        """One epoch of the space's step; returns the training part of the epoch's record."""

    @abstractmethod
    def evaluate(self, epoch: int) -> dict[str, Any]:
        """The evaluation after an epoch ({} when this epoch is not evaluated)."""

    def extra_records(self, epoch: int, record: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Records of the extra_logs files, by file name (the driver adds the epoch number)."""
        return {}

    def epoch_lines(self, record: dict[str, Any]) -> list[str]:
        """Console lines after the epoch's line (e.g. the genotype so far)."""
        return []

    def stop_reason(self, record: dict[str, Any]) -> str | None:
        """Why the run finishes after this epoch, before its last (None: it goes on); every rank must agree."""
        return None

    @abstractmethod
    def finish(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        """Write the final artifacts (rank 0 only) and return done.json's content (the same on every rank)."""

    @abstractmethod
    def result(self, outcome: RunOutcome) -> R:
        """The typed result (with outcome.was_finished the loop was not set up: read the run directory)."""


def run_epochs(loop: EpochLoop[R], out_dir: str | os.PathLike[str], *, force: bool = False,
               stop_after_epoch: int | None = None, progress: bool = True) -> R:
    """Run (or resume, or report the finished) `loop` in `out_dir`; under torchrun every rank calls this."""
    out = Path(out_dir)
    s = loop.settings
    files = BASE_RUN_FILES + loop.run_files + loop.extra_logs
    with process_group(s.device) as ctx, runtime_settings(s.deterministic, s.threads) as threads:
        if ctx.is_main:  # before the lock too, so that a folder nasdeploy did not make does not even get a .lock
            check_folder(out, "run")
        with open_run_directory(out, files, main=ctx.is_main):
            loop.ctx, loop.out, loop.threads = ctx, out, threads
            return _drive(loop, files, force, stop_after_epoch, progress and ctx.is_main)


def _drive(loop: EpochLoop[R], files: tuple[str, ...], force: bool, stop_after_epoch: int | None,
           talk: bool) -> R:
    """The protocol; status lines go to the console on rank 0, bars and per-epoch lines only when `talk`."""
    ctx, out, epochs = loop.ctx, loop.out, loop.settings.epochs
    noun, say = _NOUN[loop.kind], ctx.is_main
    # A folder nasdeploy did not make (no mark, not empty) or of another kind is refused, --force or not.
    marked = check_folder(out, "run") if ctx.is_main else True
    if force:
        if ctx.is_main and marked:
            clear_own_entries(out, "run", files)
        barrier(ctx)
    _check_stored_config(loop)
    # Every rank reads the checkpoint before the first collective (setup's DDP wrap), so before rank 0 replaces it.
    checkpoint = _resume_checkpoint(loop)
    done = read_done(out)
    if done is not None:
        console(f"{noun} in {out} is finished; nothing to do (use --force to redo it)", say)
        done_epochs = int(done.get("epochs", epochs))
        return loop.result(RunOutcome(out, done_epochs, done_epochs, True, was_finished=True, done=done))

    loop.setup()
    logs = [JsonlLog(out / name, ctx.is_main) for name in (LOG_FILE, *loop.extra_logs)]
    start, elapsed = 0, 0.0
    if checkpoint is not None:
        _restore(loop, checkpoint)
        start, elapsed = int(checkpoint["epoch"]), float(checkpoint["meta"].get("time_s", 0.0))
        restore_rank_rng(checkpoint["rng"], ctx, start)
        console(f"resuming {noun} in {out} after epoch {start}/{epochs}", say)
    else:
        console(f"{_VERB[loop.kind]} in {out}: {loop.describe()}", say)
    for log in logs:
        log.rewind(lambda r: r.get("epoch", 0) <= start)
    history = [r for r in logs[0].read() if r.get("epoch", 0) <= start]
    if ctx.is_main:
        if not marked:  # only now: a run refused before this point leaves no folder behind
            mark_folder(out, "run")
        write_run_config(out, loop.config, loop.space)

    end = max(start, epochs if stop_after_epoch is None else min(epochs, stop_after_epoch))
    saved = start
    # A resumed run whose last epoch met the loop's stop criterion (the crash came before done.json) stops there.
    stopped = loop.stop_reason(history[-1]) if history and start < epochs else None
    try:
        for epoch in range(start, end if stopped is None else start):
            history.append(_run_epoch(loop, logs, epoch, talk))
            elapsed += history[-1]["epoch_time_s"]
            _save(loop, epoch + 1, elapsed)
            saved = epoch + 1
            stopped = loop.stop_reason(history[-1]) if saved < epochs else None
            if stopped is not None:
                break
    except KeyboardInterrupt:  # the checkpoint of the last completed epoch is intact (written atomically)
        console(f"interrupted: the {noun} in {out} resumes after epoch {saved}/{epochs} (run the same command again)",
                say)
        raise
    if stopped is None and end < epochs:
        return loop.result(RunOutcome(out, end, epochs, False, history=history))

    early = {} if stopped is None else {"stopped_early": {"epoch": saved, "epochs": epochs, "reason": stopped}}
    done = {"finished": True, "epochs": saved, **early, **loop.finish(history), "threads": loop.threads,
            "time_s": round(elapsed, 3)}
    if ctx.is_main:
        write_json_atomic(out / DONE_FILE, done)
    if stopped is None:
        console(f"{noun} finished after {epochs} epochs ({elapsed:.1f} s): {out}", say)
    else:
        console(f"{noun} stopped early after epoch {saved}/{epochs} ({stopped}; {elapsed:.1f} s): {out}", say)
    barrier(ctx)
    return loop.result(RunOutcome(out, saved, saved, True, history=history, done=done))


def _run_epoch(loop: EpochLoop, logs: list[JsonlLog], epoch: int, talk: bool) -> dict[str, Any]:
    """Train and evaluate one epoch; log it (every log file, then one console line)."""
    epochs = loop.settings.epochs
    t0 = time.perf_counter()
    bar = EpochBar(loop.kind, epoch + 1, epochs, talk)
    try:
        record = {"epoch": epoch + 1, **loop.train_epoch(epoch, bar)}
    finally:
        bar.close()
    record.update(loop.evaluate(epoch))
    record["epoch_time_s"] = round(time.perf_counter() - t0, 3)
    record["threads"] = loop.threads
    extra = loop.extra_records(epoch, record)
    logs[0].write(record)
    for log in logs[1:]:
        log.write({"epoch": epoch + 1, **extra[log.path.name]})
    console(f"epoch {epoch + 1}/{epochs}  " + format_metrics(record, loop.console_keys + ("epoch_time_s",)), talk)
    for line in loop.epoch_lines(record):
        console(line, talk)
    return record


def _save(loop: EpochLoop, epoch: int, elapsed: float) -> None:
    """The atomic checkpoint after `epoch` epochs (rank 0 writes it with every rank's RNG state)."""
    rng = gather_rng_states(loop.ctx)
    if loop.ctx.is_main:
        meta = {**loop.meta(), "space": loop.space, "epoch": epoch, "epochs": loop.settings.epochs,
                "time_s": round(elapsed, 3), "world_size": loop.ctx.world_size, "threads": loop.threads,
                "config": to_dict(loop.config),
                "fingerprint": loop.fingerprint()}
        states = {key: attrgetter(path)(loop).state_dict() for key, path in loop.checkpointed.items()}
        save_checkpoint(loop.out / CHECKPOINT_FILE, loop.model.state_dict(), kind=loop.kind, meta=meta, rng=rng,
                        epoch=epoch, **states)
    barrier(loop.ctx)


def _restore(loop: EpochLoop, checkpoint: dict[str, Any]) -> None:
    """The loop's state as the checkpoint holds it (the RNG states aside)."""
    loop.restore(checkpoint["meta"])
    load_weights_into(loop.model, checkpoint, source=str(loop.out / CHECKPOINT_FILE))
    for key, path in loop.checkpointed.items():
        attrgetter(path)(loop).load_state_dict(checkpoint[key])


def _check_stored_config(loop: EpochLoop) -> None:
    """Refuse a run directory of another space, or one whose config.yaml differs outside the RESUMABLE keys."""
    path = loop.out / CONFIG_FILE
    if not path.is_file():
        return
    stored_space = load_yaml(path).get("space")
    if stored_space != loop.space:
        raise ConfigError(f"{loop.out} holds a run of the {stored_space!r} space, not {loop.space!r}; "
                          f"use --force to start over or another --out")
    check_resume_config(read_run_config(loop.out), to_dict(loop.config), loop.out, type(loop.config).RESUMABLE)


def _resume_checkpoint(loop: EpochLoop) -> dict[str, Any] | None:
    """The checkpoint to resume from (None: a fresh run), checked for its kind and the loop's fingerprint."""
    path = loop.out / CHECKPOINT_FILE
    if not path.is_file():
        return None
    checkpoint = load_checkpoint(path)  # on the CPU: RNG states must stay there
    meta = checkpoint.get("meta", {})
    if checkpoint.get("kind") != loop.kind or meta.get("space") != loop.space:
        raise CheckpointError(f"{path} is not a {loop.space} {loop.kind} checkpoint; point --out at a "
                              f"{_NOUN[loop.kind]} run directory of that space")
    stored = meta.get("fingerprint", {})
    for key, value in loop.fingerprint().items():
        if stored.get(key) != value:
            raise ConfigError(f"{loop.out} holds a {_NOUN[loop.kind]} run of a different {key}; use --force to start "
                              f"over or another --out")
    return checkpoint
