"""Pipeline run-directory state: which stages finished, when, and with what outputs."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasdeploy.utils.files import write_json_atomic

STATE_FILE = "pipeline_state.json"


@dataclass
class PipelineState:
    """Per-stage status persisted in <run_dir>/pipeline_state.json."""

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

    def mark_started(self, stage: str) -> None:
        """Record that `stage` started (a crash leaves it 'running', so it reruns/resumes)."""
        self.stages[stage] = {"status": "running", "started": time.time()}
        self.save()

    def mark_done(self, stage: str, outputs: dict[str, Any]) -> None:
        """Record that `stage` finished with the given outputs."""
        entry = self.stages.get(stage, {})
        entry.update(status="done", finished=time.time(), outputs=outputs)
        entry["seconds"] = round(entry["finished"] - entry.get("started", entry["finished"]), 2)
        self.stages[stage] = entry
        self.save()

    def invalidate(self, stages: list[str]) -> None:
        """Mark stages as needing a rerun (used by --force)."""
        for stage in stages:
            if stage in self.stages:
                self.stages[stage]["status"] = "stale"
        self.save()
