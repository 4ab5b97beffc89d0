"""`nasdeploy rnn search|train|export|profile|pipeline`: the DARTS recurrent cells (thin layer over the library).

search, train and pipeline are the same as `nasdeploy search|train|pipeline` with a recurrent config;
export and profile work on a language-model checkpoint.
"""

from __future__ import annotations

import json

import click

from nasdeploy.errors import ConfigError

_OVERRIDES = click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")


@click.group()
def rnn() -> None:
    """DARTS recurrent cells: search on language modelling, train, export, profile."""


@rnn.command("search")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Search config YAML (`space: darts_rnn`).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="PTB-layout corpus folder (for data.dataset=ptb).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Run directory (resumed when it exists).")
@click.option("--force", is_flag=True, help="Start over even if the run directory holds a finished or partial run.")
@_OVERRIDES
def search_cmd(config_path: str | None, data_dir: str | None, out_dir: str, force: bool, overrides: tuple[str, ...]) -> None:
    """Search a recurrent cell; writes genotype.json, alphas.jsonl, log.jsonl and checkpoint.pt into --out."""
    from nasdeploy.config.darts_rnn import DartsRnnSearchConfig
    from nasdeploy.search.darts_rnn_loop import run_search
    from nasdeploy.utils.yamlconfig import load_config

    result = run_search(load_config(DartsRnnSearchConfig, config_path, overrides), out_dir, data_dir=data_dir, force=force)
    click.echo(result.summary())


@rnn.command("train")
@click.option("--genotype", required=True, help="Recurrent genotype: registry name (e.g. DARTS_V2_RNN) or genotype.json.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Training config YAML (`space: darts_rnn`).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="PTB-layout corpus folder (for data.dataset=ptb).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Run directory (resumed when it exists).")
@click.option("--force", is_flag=True, help="Start over even if the run directory holds a finished or partial run.")
@_OVERRIDES
def train_cmd(genotype: str, config_path: str | None, data_dir: str | None, out_dir: str, force: bool,
              overrides: tuple[str, ...]) -> None:
    """Train the language model of a recurrent genotype; writes best.pt, log.jsonl and done.json into --out."""
    from nasdeploy.config.darts_rnn import DartsRnnTrainConfig
    from nasdeploy.train.darts_rnn_loop import run_training
    from nasdeploy.utils.yamlconfig import load_config

    result = run_training(load_config(DartsRnnTrainConfig, config_path, overrides), genotype, out_dir, data_dir=data_dir,
                          force=force)
    click.echo(result.summary())


def _model_options(f):  # type: ignore[no-untyped-def]
    f = click.option("--checkpoint", type=click.Path(dir_okay=False), help="Train checkpoint (best.pt) to load.")(f)
    f = click.option("--genotype", help="Without --checkpoint: a recurrent genotype (name or file), random weights.")(f)
    f = click.option("--ntokens", type=int, default=10000, show_default=True, help="Vocabulary size (with --genotype).")(f)
    f = click.option("--nhid", type=int, default=850, show_default=True, help="emsize = nhid (with --genotype).")(f)
    return f


def _load_model(checkpoint: str | None, genotype: str | None, ntokens: int, nhid: int):  # type: ignore[no-untyped-def]
    from nasdeploy.nets.rnn import build_rnn_lm, load_rnn_lm

    if (checkpoint is None) == (genotype is None):
        raise ConfigError("give exactly one of --checkpoint or --genotype")
    if checkpoint is not None:
        return load_rnn_lm(checkpoint)
    return build_rnn_lm(genotype, ntokens, emsize=nhid, nhid=nhid).eval()


@rnn.command("export")
@_model_options
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .onnx file.")
@click.option("--seq-len", type=int, default=35, show_default=True, help="Fixed sequence length of the graph.")
@click.option("--batch-size", type=int, default=1, show_default=True)
@click.option("--dynamic-batch", is_flag=True, help="Make the batch dimension dynamic.")
@click.option("--opset", type=int, default=None, help="ONNX opset (default: the exporter's).")
@click.option("--no-check", is_flag=True, help="Skip the onnxruntime parity check.")
@click.option("--report", type=click.Path(dir_okay=False), help="Write the export and parity report as JSON.")
def export_cmd(checkpoint, genotype, ntokens, nhid, output, seq_len, batch_size, dynamic_batch, opset, no_check,  # type: ignore[no-untyped-def]
               report) -> None:
    """Export the language model to ONNX (tokens, hidden -> log_probs, hidden_out) and check it in onnxruntime."""
    from nasdeploy.export.language_model import export_rnn_lm_onnx
    from nasdeploy.utils.files import write_json_atomic

    model = _load_model(checkpoint, genotype, ntokens, nhid)
    result = export_rnn_lm_onnx(model, output, seq_len=seq_len, batch_size=batch_size, dynamic_batch=dynamic_batch,
                                opset=opset, check=not no_check)
    if report:
        write_json_atomic(report, result.to_dict())
    click.echo(f"wrote {output} ({result.file_bytes / 1e6:.1f} MB)")
    if result.parity is not None:
        click.echo(f"onnxruntime parity ok: {result.parity.summary()}")


@rnn.command("profile")
@_model_options
@click.option("--seq-len", type=int, default=35, show_default=True)
@click.option("--batch-size", type=int, default=1, show_default=True)
@click.option("--runs", type=int, default=20, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True, help="CPU threads for the timings.")
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False), help="Also time this exported model in onnxruntime.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the profile as JSON (and a .md next to it).")
def profile_cmd(checkpoint, genotype, ntokens, nhid, seq_len, batch_size, runs, threads, onnx_path, output) -> None:  # type: ignore[no-untyped-def]
    """Parameters, MACs per token and latency per token of the language model."""
    from pathlib import Path

    from nasdeploy.profile.language_model import profile_rnn_lm
    from nasdeploy.utils.files import write_json_atomic, write_text_atomic

    model = _load_model(checkpoint, genotype, ntokens, nhid)
    result = profile_rnn_lm(model, seq_len=seq_len, batch_size=batch_size, runs=runs, threads=threads,
                            onnx_path=onnx_path)
    if output:
        write_json_atomic(output, result.to_dict())
        write_text_atomic(Path(output).with_suffix(".md"), result.to_markdown())
    click.echo(result.to_markdown(), nl=False)


@rnn.command("pipeline")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="Pipeline YAML with `space: darts_rnn` (or the older search_run/train_run sections).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="PTB-layout corpus folder (for data.dataset=ptb).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Run directory (continued when it exists).")
@click.option("--force", is_flag=True, help="Redo every stage.")
@_OVERRIDES
def pipeline_cmd(config_path: str, data_dir: str | None, out_dir: str, force: bool, overrides: tuple[str, ...]) -> None:
    """The same as `nasdeploy pipeline CONFIG --out DIR` (search -> derive -> train -> export -> profile -> report)."""
    from dataclasses import replace
    from pathlib import Path

    from nasdeploy.pipeline.config import load_pipeline_config
    from nasdeploy.pipeline.runner import run_pipeline
    from nasdeploy.pipeline.state import STATE_FILE

    cfg = load_pipeline_config(config_path, overrides)
    if data_dir:
        cfg = replace(cfg, data_dir=data_dir)
    redo = ("search",) if force and (Path(out_dir) / STATE_FILE).is_file() else ()
    result = run_pipeline(cfg, out_dir, force=redo)
    click.echo(json.dumps(result.summary, indent=2) if result.summary else f"stopped during {result.interrupted}")
