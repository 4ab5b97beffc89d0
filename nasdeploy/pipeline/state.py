"""Pipeline run-directory state: which stages finished, when, and the typed result each one returned."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasdeploy.errors import ConfigError
from nasdeploy.pipeline.results import StageResult, stage_result_from_dict
from nasdeploy.utils.files import write_json_atomic

STATE_FILE = "pipeline_state.json"


@dataclass
class PipelineState:
    """Per-stage status persisted in <run_dir>/pipeline_state.json (a finished stage's `outputs`: its result)."""

    run_dir: Path
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: Path) -> "PipelineState":
        """Read the state of a run directory (empty when new)."""
        path = run_dir / STATE_FILE
        stages = json.loads(path.read_text())["stages"] if path.is_file() else {}
        return cls(run_dir, stages)

    def save(self) -> None:
        """Write the state atomically."""
        write_json_atomic(self.run_dir / STATE_FILE, {"stages": self.stages})

    def is_done(self, stage: str) -> bool:
        """True when `stage` finished and was not invalidated since."""
        return self.stages.get(stage, {}).get("status") == "done"

    def seconds(self, stage: str) -> float:
        """How long `stage` took when it last ran (0 when it never finished)."""
        return float(self.stages.get(stage, {}).get("seconds", 0.0))

    def result(self, stage: str) -> StageResult | None:
        """The typed result `stage` returned when it last finished (None when it never did)."""
        outputs = self.stages.get(stage, {}).get("outputs")
        if outputs is None:
            return None
        try:
            return stage_result_from_dict(outputs)
        except (ConfigError, KeyError, TypeError) as exc:
            raise ConfigError(f"{self.run_dir / STATE_FILE}: the {stage} stage's record is unreadable ({exc}); "
                              "use a new --out directory") from None

    def mark_started(self, stage: str) -> None:
        """Record that `stage` started (a crash leaves it 'running', so it reruns/resumes)."""
        self.stages[stage] = {"status": "running", "started": time.time()}
        self.save()

    def mark_done(self, stage: str, result: StageResult) -> None:
        """Record that `stage` finished with `result`."""
        entry = self.stages.get(stage, {})
        entry.update(status="done", finished=time.time(), outputs=result.to_dict())
        entry["seconds"] = round(entry["finished"] - entry.get("started", entry["finished"]), 2)
        self.stages[stage] = entry
        self.save()

    def invalidate(self, stages: list[str]) -> None:
        """Mark stages as needing a rerun (used by --force)."""
        for stage in stages:
            if stage in self.stages:
                self.stages[stage]["status"] = "stale"
        self.save()
