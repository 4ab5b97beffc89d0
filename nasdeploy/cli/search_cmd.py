"""`nasdeploy search`: DARTS CNN search into a run directory (resumes; a finished run is not redone)."""

from __future__ import annotations

import click

from nasdeploy.cli.rundir_options import default_out_dir
from nasdeploy.errors import ConfigError


@click.command("search")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Search config YAML (default: the run directory's config.yaml when resuming).")
@click.option("--data-dir", default=None, help="Dataset root (CIFAR in torchvision layout, or an image folder).")
@click.option("--out", "out_dir", default=None, help="Run directory (default: runs/search-<config name>).")
@click.option("--force", is_flag=True, help="Start over even if the run directory holds a finished or partial run.")
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
@click.argument("overrides", nargs=-1)
def search(config_path: str | None, data_dir: str | None, out_dir: str | None, force: bool, progress: bool,
           overrides: tuple[str, ...]) -> None:
    """Search a DARTS CNN cell; OVERRIDES are section.key=value (e.g. search.epochs=2 model.channels=8)."""
    from nasdeploy.search.config import load_search_config
    from nasdeploy.search.loop import run_search
    from nasdeploy.utils.distributed import launched_as_main

    out = default_out_dir(out_dir, config_path, "search")
    if config_path is None:
        if not (out / "config.yaml").is_file():
            raise ConfigError("give --config FILE, or --out DIR of an existing run (its config.yaml is reused)")
        config_path = str(out / "config.yaml")
    config = load_search_config(config_path, overrides)
    result = run_search(config, out, data_dir, force=force, progress=progress)
    if not launched_as_main():
        return
    g = result.genotype
    click.echo(f"genotype ({result.epochs_done}/{result.epochs} epochs): normal {list(g.normal)} reduce {list(g.reduce)}")
    click.echo(f"run directory: {result.out_dir}")

