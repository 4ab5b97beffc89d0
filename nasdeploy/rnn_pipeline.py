"""The recurrent pipeline: search a cell, train its language model, export it to ONNX, profile it.

Run directory: search/ and train/ (the loops' run directories), model.onnx, export.json (parity),
profile.json and profile.md, summary.json and summary.md. Each stage is skipped when its output is
already there (the loops resume or return their finished results), so a stopped pipeline continues.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm import tqdm

from nasdeploy.errors import ConfigError
from nasdeploy.search.rnn_config import RNNSearchConfig
from nasdeploy.train.rnn_config import RNNTrainConfig
from nasdeploy.utils.files import write_json_atomic, write_text_atomic
from nasdeploy.utils.yaml_config import config_from_dict, read_yaml


@dataclass(frozen=True)
class RNNExportSettings:
    """ONNX export: the fixed sequence length and batch size, and the parity tolerance."""

    seq_len: int = 35
    batch_size: int = 1
    dynamic_batch: bool = False
    opset: int | None = None
    rtol: float = 1e-3
    atol: float = 1e-5
    windows: int = 3

    def __post_init__(self) -> None:
        if self.seq_len < 1 or self.batch_size < 1 or self.windows < 1:
            raise ConfigError("export.seq_len, export.batch_size and export.windows must be positive")


@dataclass(frozen=True)
class RNNProfileSettings:
    """Profiling: window, batch, timing runs and CPU threads."""

    seq_len: int = 35
    batch_size: int = 1
    warmup: int = 3
    runs: int = 20
    threads: int = 1

    def __post_init__(self) -> None:
        if min(self.seq_len, self.batch_size, self.runs, self.threads) < 1 or self.warmup < 0:
            raise ConfigError("profile.seq_len, batch_size, runs and threads must be positive, warmup not negative")


@dataclass(frozen=True)
class RNNPipelineConfig:
    """All four stages (sections search_run, train_run, export, profile of one YAML file)."""

    search_run: RNNSearchConfig = field(default_factory=RNNSearchConfig)
    train_run: RNNTrainConfig = field(default_factory=RNNTrainConfig)
    export: RNNExportSettings = field(default_factory=RNNExportSettings)
    profile: RNNProfileSettings = field(default_factory=RNNProfileSettings)


def load_rnn_pipeline_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> RNNPipelineConfig:
    """Load the pipeline YAML (dotted overrides such as search_run.search.epochs=2), validated."""
    from nasdeploy.utils.yaml_config import apply_overrides

    return config_from_dict(RNNPipelineConfig, apply_overrides(read_yaml(path), overrides), where=str(path))


def run_rnn_pipeline(config: RNNPipelineConfig, out_dir: str | os.PathLike[str], *, data_dir: str | None = None,
                     force: bool = False, echo: Callable[[str], None] = tqdm.write) -> dict[str, Any]:
    """Search -> train -> export -> profile; returns (and writes) the summary."""
    from nasdeploy.nets.rnn import load_rnn_lm
    from nasdeploy.nets.rnn_export import export_rnn_lm_onnx
    from nasdeploy.nets.rnn_profile import profile_rnn_lm
    from nasdeploy.search.rnn_loop import run_rnn_search
    from nasdeploy.train.rnn_loop import run_rnn_training

    out = Path(out_dir)
    summary_path = out / "summary.json"
    if summary_path.is_file() and not force:
        echo(f"pipeline in {out} is already finished (use force to redo it)")
        return json.loads(summary_path.read_text(encoding="utf-8"))
    search = run_rnn_search(config.search_run, out / "search", data_dir=data_dir, force=force, echo=echo)
    echo(f"searched genotype: {[list(e) for e in search.genotype.recurrent]}")
    train = run_rnn_training(config.train_run, search.genotype, out / "train", data_dir=data_dir, force=force, echo=echo)
    model = load_rnn_lm(out / "train" / "best.pt")
    e = config.export
    export = export_rnn_lm_onnx(model, out / "model.onnx", seq_len=e.seq_len, batch_size=e.batch_size,
                                dynamic_batch=e.dynamic_batch, opset=e.opset, rtol=e.rtol, atol=e.atol,
                                windows=e.windows)
    write_json_atomic(out / "export.json", export.to_dict())
    echo(f"exported {out / 'model.onnx'}: {export.parity.summary() if export.parity else 'not checked'}")
    p = config.profile
    profile = profile_rnn_lm(model, seq_len=p.seq_len, batch_size=p.batch_size, warmup=p.warmup, runs=p.runs,
                             threads=p.threads, onnx_path=out / "model.onnx" if p.seq_len == e.seq_len and
                             p.batch_size == e.batch_size else None)
    write_json_atomic(out / "profile.json", profile.to_dict())
    write_text_atomic(out / "profile.md", profile.to_markdown())
    summary = {
        "genotype": [list(g) for g in search.genotype.recurrent],
        "search": {"epochs": search.epochs_done, "first_valid_ppl": search.first_valid_ppl,
                   "final_valid_ppl": search.valid_ppl, "best_valid_ppl": search.best_valid_ppl,
                   "seconds": round(search.seconds, 1)},
        "train": {"epochs": train.epochs_done, "best_valid_ppl": train.best_valid_ppl, "test_ppl": train.test_ppl,
                  "params": train.params, "asgd_epoch": train.asgd_epoch, "seconds": round(train.seconds, 1)},
        "export": {"path": str(out / "model.onnx"), "parity_ok": bool(export.parity and export.parity.ok),
                   "max_abs_err": {o.name: o.max_abs_err for o in export.parity.outputs} if export.parity else None},
        "profile": {"params": profile.params, "macs_per_token": profile.macs_per_token,
                    "torch_ms_per_token": profile.torch_ms_per_token, "onnx_ms_per_token": profile.onnx_ms_per_token},
    }
    write_text_atomic(out / "summary.md", _summary_markdown(summary))
    write_json_atomic(summary_path, summary)
    return summary


def _summary_markdown(s: dict[str, Any]) -> str:
    lines = [
        "# Recurrent pipeline summary", "",
        f"Genotype: `{s['genotype']}`", "",
        "| stage | result |", "|---|---|",
        f"| search | valid ppl {s['search']['first_valid_ppl']:.2f} (epoch 1) -> {s['search']['final_valid_ppl']:.2f} "
        f"(epoch {s['search']['epochs']}; best {s['search']['best_valid_ppl']:.2f}), {s['search']['seconds']:.0f} s |",
        f"| train | best valid ppl {s['train']['best_valid_ppl']:.2f}, test ppl {s['train']['test_ppl']:.2f}, "
        f"{s['train']['params']:,} params, {s['train']['seconds']:.0f} s |",
        f"| export | onnxruntime parity {'ok' if s['export']['parity_ok'] else 'FAILED'}, max abs error "
        + ", ".join(f"{k} {v:.1e}" for k, v in (s['export']['max_abs_err'] or {}).items()) + " |",
        f"| profile | {s['profile']['macs_per_token'] / 1e6:.3f} M MACs/token, "
        f"{s['profile']['torch_ms_per_token']:.4f} ms/token (PyTorch) |",
    ]
    return "\n".join(lines) + "\n"
