"""What every pipeline stage shares: its context, the interruption signal, the contract of a space's stages.

Each space's stage set (named by its entry in nasdeploy.spaces.table) reads the previous stages' files and
typed results from the run directory and returns its own result (nasdeploy.pipeline.results).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, TypeVar

from nasdeploy.pipeline.config import PipelineConfig
from nasdeploy.pipeline.results import SearchStageResult, StageResult
from nasdeploy.pipeline.state import PipelineState

R = TypeVar("R", bound=StageResult)


class BuildOnce:
    """A value built on first use and kept for the process (the export-side stages' one model/data build)."""

    def __init__(self) -> None:
        self._value: Any = None
        self._built = False

    def get(self, build: Callable[[], Any]) -> Any:
        """The value, built by `build` the first time."""
        if not self._built:
            self._value, self._built = build(), True
        return self._value


@dataclass(frozen=True)
class StageContext:
    """What every stage gets: the config, the run directory, whether to show progress, and a per-process cache."""

    config: PipelineConfig
    run_dir: Path
    progress: bool = True
    stop_after_epoch: int | None = None  # tests: interrupt search/train after this many epochs
    trained: BuildOnce = field(default_factory=BuildOnce, compare=False, repr=False)

    def path(self, *parts: str) -> Path:
        """A path inside the run directory."""
        return self.run_dir.joinpath(*parts)

    def loop_options(self) -> dict[str, Any]:
        """The keyword arguments every search/train loop takes, as this pipeline run sets them."""
        return {"data_dir": self.config.data_dir, "stop_after_epoch": self.stop_after_epoch, "progress": self.progress}

    def earlier(self, stage: str, kind: type[R]) -> R | None:
        """The stored result of an earlier stage of this run when it is a `kind` (None: not done, or skipped)."""
        result = PipelineState.load(self.run_dir).result(stage)
        return result if isinstance(result, kind) else None

    def say(self, stage: str) -> Callable[[str], None] | None:
        """A progress printer for `stage` (None when quiet)."""
        return (lambda msg: print(f"[{stage}] {msg}", flush=True)) if self.progress else None


StageFn = Callable[[StageContext], StageResult]


class PipelineStages(Protocol):
    """A space's stages as the runner uses them (what its table entry's `pipeline` class builds)."""

    def stages(self) -> Mapping[str, StageFn]:
        """Stage name -> function; a stage the mapping lacks is skipped with one line."""

    def report_figures(self, ctx: StageContext) -> dict[str, str]:
        """The space's own report figures (role -> run-relative file), drawn now."""

    def reproduce_commands(self, ctx: StageContext) -> dict[str, str]:
        """Stage -> the command that redoes it by hand over the same files."""


class StageInterrupted(Exception):
    """A stage stopped early on purpose (stop_after_epoch); rerunning resumes it."""


def environment_line(env: Mapping[str, Any]) -> str:
    """One readable line from the profiler's environment record."""
    parts = []
    for key in ("cpu", "logical_cpus", "gpu"):
        value = env.get(key)
        if value not in (None, "", [], {}):
            parts.append(f"{key} {value}")
    versions = env.get("versions")
    if isinstance(versions, dict):
        parts += [f"{k} {v}" for k, v in versions.items() if k in ("torch", "onnxruntime")]
    return ", ".join(parts) or "unknown machine"


def last_log_record(path: Path) -> dict[str, Any]:
    """The last record of a run's log.jsonl ({} when there is none)."""
    from nasdeploy.utils.runlog import JsonlLog

    records = JsonlLog(path).read() if path.is_file() else []
    return records[-1] if records else {}


def numeric_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a log record (flags, lists and names left out)."""
    return {k: float(v) for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def search_folder(ctx: StageContext) -> str:
    """The run-relative folder of the search whose logs the report draws: the chosen seed's under a selection."""
    result = ctx.earlier("search", SearchStageResult)
    return result.run_folder if result is not None else "search"


def quote_path(path: str | os.PathLike[str]) -> str:
    """A path quoted for a shell command line."""
    import shlex

    return shlex.quote(os.fspath(path))


def source_arg(config: PipelineConfig) -> str:
    """The pipeline file argument of a reproducing command ('' for the built-in demo), and its --seeds if any."""
    seeds = f" --seeds {','.join(map(str, config.selection.seeds))}" if config.selection is not None else ""
    return ("" if config.source == "(built-in demo)" else " " + quote_path(config.source)) + seeds
