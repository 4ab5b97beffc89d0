"""`nasdeploy train`: train a static network from a genotype with a published recipe."""

from __future__ import annotations

import click

from nasdeploy.cli.rundir_options import default_out_dir
from nasdeploy.errors import ConfigError


@click.command("train")
@click.option("--genotype", "genotype", default=None,
              help="Registry name, genotype JSON file, or a search run directory (its genotype.json).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Training config YAML (default: the run directory's config.yaml when resuming).")
@click.option("--data-dir", default=None, help="Dataset root (CIFAR in torchvision layout, or an image folder).")
@click.option("--out", "out_dir", default=None, help="Run directory (default: runs/train-<config name>).")
@click.option("--force", is_flag=True, help="Start over even if the run directory holds a finished or partial run.")
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
@click.argument("overrides", nargs=-1)
def train(genotype: str | None, config_path: str | None, data_dir: str | None, out_dir: str | None, force: bool,
          progress: bool, overrides: tuple[str, ...]) -> None:
    """Train the network of a genotype; OVERRIDES are section.key=value (e.g. train.epochs=10)."""
    from nasdeploy.train.config import load_train_config
    from nasdeploy.train.loop import run_training
    from nasdeploy.utils.distributed import launched_as_main

    out = default_out_dir(out_dir, config_path, "train")
    if config_path is None:
        if not (out / "config.yaml").is_file():
            raise ConfigError("give --config FILE, or --out DIR of an existing run (its config.yaml is reused)")
        config_path = str(out / "config.yaml")
    config = load_train_config(config_path, overrides)
    result = run_training(config, genotype, out, data_dir, force=force, progress=progress)
    if not launched_as_main():
        return
    if result.top1 is not None:
        click.echo(f"top1 {result.top1:.4f}  top5 {result.top5:.4f}  params {result.params:,}  "
                   f"({result.epochs_done}/{result.epochs} epochs)")
    click.echo(f"run directory: {result.out_dir}")
