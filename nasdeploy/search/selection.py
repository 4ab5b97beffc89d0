"""Several searches and the selection protocol (DARTS, section 3.3): search once per seed, train each derived
genotype briefly from scratch, keep the best on validation (one search alone does not reproduce).

The selection folder OUT (marked as a selection) holds:
  config.yaml      the search config with its `selection:` block as run (a rerun is checked against it)
  search.yaml      the search config every seed runs (its seed is set on the child's command line)
  train.yaml       the short training config every derived genotype is trained with
  seed-N/search/   seed N's search run directory, seed-N/search.log its console output
  seed-N/train/    the short training of seed N's genotype, seed-N/train.log
  selection.json   per seed: genotype, cost (where the search logged one), short-training metric; the chosen
                   seed; the metric's mean and standard deviation over the seeds (search/selection_record.py)
  genotype.json    the chosen genotype
Every search and short training is a child process (`python -m nasdeploy search|train`): each resolves its own
CPU threads, a crash of one leaves the others running, and the epoch driver resumes an unfinished one. A
finished one is not started again, so a rerun (also with more seeds) only does what is missing.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from nasdeploy.config.selection import SECTION, SelectionOptions, SelectionRules, merge
from nasdeploy.errors import ConfigError, NasDeployError
from nasdeploy.genotypes import load_genotype, save_genotype
from nasdeploy.search.selection_record import SeedResult, SelectionRecord, cost_of, save_selection
from nasdeploy.spaces.table import SearchSpace
from nasdeploy.utils.files import write_text_atomic
from nasdeploy.utils.ownership import check_folder, claim_folder, clear_own_entries
from nasdeploy.utils.rundir import check_resume_config, read_done
from nasdeploy.utils.runlock import run_directory_lock
from nasdeploy.utils.runlog import console
from nasdeploy.utils.runtime import auto_threads
from nasdeploy.utils.yamlconfig import dump_yaml, load_yaml

CONFIG_FILE, SEARCH_FILE, TRAIN_FILE, GENOTYPE_FILE = "config.yaml", "search.yaml", "train.yaml", "genotype.json"
_SEED_FOLDER = re.compile(r"^seed-\d+$")
# Keys of the selection block that may change between runs of one folder: which seeds, how many at once.
_FREE_KEYS = (f"{SECTION}.seeds", f"{SECTION}.parallel")


class SelectionRunError(NasDeployError):
    """A search or short training of one or more seeds failed (the others finished and are kept)."""


@dataclass(frozen=True)
class SelectionPlan:
    """What every seed runs: the space, its rules, the child configs' files and the command-line extras."""

    space: SearchSpace
    rules: SelectionRules
    out: Path
    data_dir: str | None
    search_threads: int | None  # a count for parallel children where the config leaves it to the machine
    train_threads: int | None
    progress: bool  # echo each child's output (prefixed with its seed); the per-seed status lines always show


def space_rules(space: SearchSpace) -> SelectionRules:
    """The space's selection rules, or a one-line error when it has none yet."""
    if not space.selection:
        raise ConfigError(f"--seeds (the selection protocol) is not supported for the {space.name} space yet "
                          f"(supported: darts_cnn)")
    return space.load("selection")


def short_training_config(space: SearchSpace, search: Mapping[str, Any], options: SelectionOptions) -> dict[str, Any]:
    """The short training config (a validated mapping of the space's training config) for a search config."""
    rules = space_rules(space)
    data = merge(rules.short_training(space.load_search_config(search), options.epochs), options.train or {})
    try:
        space.load_train_config(data)
    except ConfigError as exc:
        raise ConfigError(f"{SECTION}.train: {exc}") from None
    return data


def run_selection(space: SearchSpace, search: Mapping[str, Any], options: SelectionOptions,
                  out_dir: str | os.PathLike[str], *, data_dir: str | None = None, force: bool = False,
                  progress: bool = True) -> SelectionRecord:
    """Search once per seed of `options`, train each derived genotype briefly, keep the best (see the module doc).

    `search` is the search config mapping without its selection block. Raises SelectionRunError naming the seeds
    that failed after the others finished (their run directories stay; run again to resume).
    """
    if not options.seeds:
        raise ConfigError("the selection protocol needs seeds (--seeds 0,1,2,3 or selection.seeds)")
    rules = space_rules(space)
    search = {k: v for k, v in search.items() if k not in ("space", SECTION)}
    train = short_training_config(space, search, options)
    out = Path(out_dir)
    check_folder(out, "selection")
    with run_directory_lock(out):
        claim_folder(out, "selection")
        if force:
            clear_own_entries(out, "selection", [p.name for p in out.iterdir() if _SEED_FOLDER.match(p.name)]
                              + [CONFIG_FILE, SEARCH_FILE, TRAIN_FILE, "selection.json", GENOTYPE_FILE])
        full = {"space": space.name, **search, SECTION: _options_dict(options)}
        _check_stored(out, full, tuple(type(space.load_search_config(search)).RESUMABLE))
        write_text_atomic(out / SEARCH_FILE, dump_yaml({"space": space.name, **search}))
        write_text_atomic(out / TRAIN_FILE, dump_yaml({"space": space.name, **train}))
        write_text_atomic(out / CONFIG_FILE, dump_yaml(full))
        share = options.parallel
        plan = SelectionPlan(space, rules, out, data_dir, _shared_threads(_get(search, rules.search_threads_key), share),
                             _shared_threads(_get(train, rules.train_threads_key), share), progress)
        console(f"selection in {out}: {len(options.seeds)} searches (seeds {', '.join(map(str, options.seeds))}), "
                f"{options.parallel} at a time; each derived genotype trained for a short validation run")
        with ThreadPoolExecutor(max_workers=options.parallel) as pool:
            outcomes = list(pool.map(lambda seed: _run_seed(plan, seed), options.seeds))
        failed = [o for o in outcomes if isinstance(o, str)]
        if failed:
            raise SelectionRunError(f"{len(failed)} of {len(outcomes)} seeds failed: {'; '.join(failed)}; the "
                                    f"finished seeds are kept, run the same command again to resume")
        record = SelectionRecord.from_results(space.name, rules.metric, rules.higher_is_better,
                                              [o for o in outcomes if isinstance(o, SeedResult)])
        chosen = record.chosen
        save_genotype(chosen.genotype, out / GENOTYPE_FILE,
                      meta={"source": "nasdeploy search --seeds", "seed": chosen.seed, rules.metric: chosen.metric,
                            "selection": "selection.json"})
        save_selection(record, out)
    console(record.summary())
    return record


def _options_dict(options: SelectionOptions) -> dict[str, Any]:
    return {"seeds": list(options.seeds), "epochs": options.epochs, "parallel": options.parallel,
            "train": options.train}


def _check_stored(out: Path, full: dict[str, Any], resumable: tuple[str, ...]) -> None:
    """Refuse a folder whose stored config differs (outside the seeds, the parallel count and the resumable keys)."""
    path = out / CONFIG_FILE
    if not path.is_file():
        return
    stored = load_yaml(path)
    if stored.get("space") != full["space"]:
        raise ConfigError(f"{out} holds a selection of the {stored.get('space')!r} space, not {full['space']!r}; "
                          f"use --force to start over or another --out")
    check_resume_config(stored, full, out, resumable + _FREE_KEYS)


def _get(data: Mapping[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, Mapping) else None
    return data


def _shared_threads(threads: Any, share: int) -> int | None:
    """Children run `share` at a time: those whose config leaves the thread count to the machine ("auto" or
    torch's default) each get their share of its cores; a count given in the config stays as given."""
    if share > 1 and threads in ("auto", None):
        return auto_threads(share)
    return None


def _run_seed(plan: SelectionPlan, seed: int) -> SeedResult | str:
    """Seed `seed`'s search and short training (each skipped when finished); its result, or why it failed."""
    folder = plan.out / f"seed-{seed}"
    folder.mkdir(exist_ok=True)
    search_dir, train_dir = folder / "search", folder / "train"
    rules = plan.rules
    extra = [f"{rules.seed_key}={seed}"]
    if plan.search_threads is not None:
        extra.append(f"{rules.search_threads_key}={plan.search_threads}")
    failure = _stage(plan, seed, "search", search_dir, ["--config", str(plan.out / SEARCH_FILE), *extra])
    if failure:
        return failure
    extra = [] if plan.train_threads is None else [f"{rules.train_threads_key}={plan.train_threads}"]
    failure = _stage(plan, seed, "train", train_dir, ["--genotype", str(search_dir), "--config",
                                                      str(plan.out / TRAIN_FILE), *extra])
    if failure:
        return failure
    search_done, train_done = read_done(search_dir) or {}, read_done(train_dir) or {}
    metric = train_done.get(rules.metric)
    if not isinstance(metric, (int, float)):
        return f"seed {seed}: the short training recorded no {rules.metric} (see {train_dir / 'done.json'})"
    genotype = load_genotype(search_dir / GENOTYPE_FILE, plan.space.genotype_kind)
    console(f"seed {seed}: {rules.metric} {metric:.4f}")
    return SeedResult(seed=seed, genotype=genotype, metric=float(metric), cost=cost_of(search_done.get("final", {})),
                      search_dir=str(search_dir.relative_to(plan.out)), train_dir=str(train_dir.relative_to(plan.out)),
                      search_time_s=search_done.get("time_s"), train_time_s=train_done.get("time_s"))


def _stage(plan: SelectionPlan, seed: int, kind: str, run_dir: Path, args: list[str]) -> str | None:
    """Run `nasdeploy <kind>` for one seed in a child process unless `run_dir` is finished; None or why it failed."""
    noun = "search" if kind == "search" else "short training"
    if read_done(run_dir) is not None:
        console(f"seed {seed}: {noun} finished earlier ({run_dir}); not redone")
        return None
    console(f"seed {seed}: {noun} in {run_dir}")
    data_dir = [] if plan.data_dir is None else ["--data-dir", plan.data_dir]
    command = [sys.executable, "-m", "nasdeploy", kind, "--out", str(run_dir), "--no-progress", *data_dir, *args]
    log = run_dir.parent / f"{kind}.log"
    code, last = _run_child(command, log, f"[seed {seed}] ", plan.progress)
    if code != 0 or read_done(run_dir) is None:
        return f"seed {seed}: {noun} failed (exit code {code}: {last or 'no output'}; log {log})"
    return None


def _run_child(command: list[str], log_path: Path, prefix: str, echo: bool) -> tuple[int, str]:
    """Run `command`, appending its output to `log_path` (and echoing it prefixed); (exit code, last line)."""
    import nasdeploy

    root = str(Path(nasdeploy.__file__).resolve().parents[1])  # the child imports this same nasdeploy
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    last = ""
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(command)}\n")
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                              bufsize=1) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if line.strip():
                    last = line.strip()
                console(prefix + line.rstrip("\n"), echo)
            code = proc.wait()
    return code, last

