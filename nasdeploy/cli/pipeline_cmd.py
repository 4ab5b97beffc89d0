"""`nasdeploy pipeline [CONFIG] [--out DIR]`: the whole chain for any space of the table."""

from __future__ import annotations

import click


_STAGES = "search, derive, train, export, executorch, quantize, profile, report"  # runner.STAGE_ORDER (checked there)


@click.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Run directory (default: runs/<config name>). Pointing at an existing one resumes it.")
@click.option("--force", multiple=True, metavar="STAGE",
              help=f"Redo STAGE (and the stages after it). Repeatable. Stages: {_STAGES}.")
@click.option("--only", multiple=True, metavar="STAGE",
              help="Run only STAGE, from the files already in the run directory (e.g. --only quantize).")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False),
              help="Dataset root (CIFAR, an image folder, a PTB-layout corpus, Cityscapes).")
@click.option("--seeds", "seeds_text", default=None, metavar="0,1,2,3",
              help="Search once per seed, train each derived genotype briefly and go on with the best on validation "
                   "(the search section's `selection:` block; search/seed-N/, search/selection.json; darts_cnn).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value, e.g. train.train.epochs=2.")
@click.option("--quiet", is_flag=True, help="No progress output.")
def pipeline(config: str | None, out_dir: str | None, force: tuple[str, ...], only: tuple[str, ...],
             data_dir: str | None, seeds_text: str | None, overrides: tuple[str, ...], quiet: bool) -> None:
    """Search, derive, train, export (ONNX), ExecuTorch, INT8, profile and report; with no CONFIG, the built-in demo.

    CONFIG's `space:` picks the search space (darts_cnn, darts_rnn, autodeeplab); stages: search, derive,
    train, export, executorch, quantize, profile, report.
    """
    from dataclasses import replace
    from pathlib import Path

    from nasdeploy.config.selection import SelectionOptions, parse_seeds
    from nasdeploy.pipeline.config import load_pipeline_config
    from nasdeploy.pipeline.runner import run_pipeline

    cfg = load_pipeline_config(config, overrides)
    if data_dir:
        cfg = replace(cfg, data_dir=data_dir)
    if seeds_text is not None:
        cfg = replace(cfg, selection=replace(cfg.selection or SelectionOptions(), seeds=parse_seeds(seeds_text)))
    run_dir = Path(out_dir) if out_dir else Path("runs") / cfg.name
    result = run_pipeline(cfg, run_dir, force=force, only=only, progress=not quiet)
    if result.interrupted:
        click.echo(f"stopped during {result.interrupted}; run the same command again to resume")
        return
    if not result.ran:
        click.echo(f"{run_dir} is already finished (use --force STAGE to redo a stage)")
    click.echo(f"report: {run_dir / 'report.md'}")
