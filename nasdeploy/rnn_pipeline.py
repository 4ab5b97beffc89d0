"""Deprecated: the recurrent pipeline now runs through the one pipeline runner (nasdeploy.pipeline.runner).

`load_rnn_pipeline_config` and `run_rnn_pipeline` keep working for one release: they load the file with
nasdeploy.pipeline.config.load_pipeline_config (older search_run:/train_run: sections are mapped) and run
nasdeploy.pipeline.runner.run_pipeline, which writes pipeline_state.json, report.md and summary.json.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from nasdeploy.pipeline.sections import DartsRnnExportSection as RNNExportSettings  # noqa: F401  (old names)
from nasdeploy.pipeline.sections import DartsRnnProfileSection as RNNProfileSettings  # noqa: F401
from nasdeploy.utils.deprecation import warn_deprecated


def load_rnn_pipeline_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Any:
    """Deprecated: nasdeploy.pipeline.config.load_pipeline_config."""
    from nasdeploy.pipeline.config import load_pipeline_config

    warn_deprecated("nasdeploy.rnn_pipeline.load_rnn_pipeline_config", "nasdeploy.pipeline.config.load_pipeline_config")
    return load_pipeline_config(path, overrides)


def run_rnn_pipeline(config: Any, out_dir: str | os.PathLike[str], *, data_dir: str | None = None,
                     force: bool = False, **_: Any) -> dict[str, Any]:
    """Deprecated: nasdeploy.pipeline.runner.run_pipeline; returns the run's summary.json content."""
    from dataclasses import replace
    from pathlib import Path

    from nasdeploy.pipeline.runner import run_pipeline
    from nasdeploy.pipeline.state import STATE_FILE

    warn_deprecated("nasdeploy.rnn_pipeline.run_rnn_pipeline", "nasdeploy.pipeline.runner.run_pipeline")
    if data_dir:
        config = replace(config, data_dir=data_dir)
    redo = ("search",) if force and (Path(out_dir) / STATE_FILE).is_file() else ()
    return run_pipeline(config, out_dir, force=redo, progress=False).summary
