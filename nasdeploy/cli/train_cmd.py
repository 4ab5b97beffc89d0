"""`nasdeploy train`: train the static network of a genotype (any space of the table) from scratch."""

from __future__ import annotations

import click

from nasdeploy.cli.rundir_options import default_out_dir
from nasdeploy.cli.search_cmd import load_space_config, run_options


@click.command("train")
@click.option("--genotype", "genotype", default=None,
              help="Registry name, genotype JSON file, or a search run directory (its genotype.json).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Training config YAML of any space: DARTS CNN (default), DARTS RNN (`space: darts_rnn`) or "
                   "Auto-DeepLab segmentation (`space: autodeeplab`, or a `net:` section). Default: the run "
                   "directory's stored config when resuming.")
@click.option("--out", "out_dir", default=None, help="Run directory (default: runs/train-<config name>).")
@run_options
def train(genotype: str | None, config_path: str | None, out_dir: str | None, data_dir: str | None, force: bool,
          progress: bool, overrides: tuple[str, ...]) -> None:
    """Train the network of a genotype; OVERRIDES are section.key=value (e.g. train.epochs=10).

    DDP: torchrun --nproc_per_node N -m nasdeploy train --config FILE ... (DARTS CNN and Auto-DeepLab).
    """
    from nasdeploy.utils.distributed import launched_as_main

    out = default_out_dir(out_dir, config_path, "train")
    space, data = load_space_config(config_path, out, overrides)
    config = space.load_train_config(data)
    result = space.load("train_loop")(config, genotype, out, data_dir=data_dir, force=force, progress=progress)
    if launched_as_main():
        click.echo(result.summary())
