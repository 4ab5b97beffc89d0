"""`nasdeploy search`: search any space of the table into a run directory (resumes; a finished run is not redone)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from nasdeploy.cli.rundir_options import default_out_dir
from nasdeploy.errors import ConfigError


def load_space_config(config_path: str | None, out: Path, overrides: tuple[str, ...] = ()) -> tuple[Any, dict[str, Any]]:
    """(space entry, config mapping with overrides) from --config, else from the run directory's stored config."""
    from nasdeploy.spaces.table import space_of_config
    from nasdeploy.utils.rundir import run_config_file
    from nasdeploy.utils.yamlconfig import apply_overrides, load_yaml

    path = Path(config_path) if config_path is not None else run_config_file(out)
    if path is None:
        raise ConfigError("give --config FILE, or --out DIR of an existing run (its stored config is reused)")
    data = load_yaml(path)
    return space_of_config(data), apply_overrides(data, overrides)


RUN_OPTIONS = (
    click.option("--data-dir", default=None,
                 help="Dataset root: CIFAR (torchvision layout), an image folder, a PTB-layout corpus, or Cityscapes."),
    click.option("--force", is_flag=True, help="Start over even if the run directory holds a finished or partial run."),
    click.option("--progress/--no-progress", default=True, help="Show progress bars and per-epoch lines."),
    click.argument("overrides", nargs=-1, metavar="[SECTION.KEY=VALUE]..."),
)


def run_options(command: Any) -> Any:
    """The options every search/train command shares (one vocabulary for all spaces)."""
    for option in reversed(RUN_OPTIONS):
        command = option(command)
    return command


@click.command("search")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Search config YAML of any space: DARTS CNN (default), DARTS RNN (`space: darts_rnn`) or "
                   "Auto-DeepLab (`space: autodeeplab`, or a `supernet:` section). Default: the run directory's "
                   "stored config when resuming.")
@click.option("--out", "out_dir", default=None, help="Run directory (default: runs/search-<config name>).")
@run_options
def search(config_path: str | None, out_dir: str | None, data_dir: str | None, force: bool, progress: bool,
           overrides: tuple[str, ...]) -> None:
    """Search the architecture of a space; OVERRIDES are section.key=value.

    DDP: torchrun --nproc_per_node N -m nasdeploy search --config FILE --out DIR (DARTS CNN and Auto-DeepLab;
    the config's batch size is the global batch).
    """
    from nasdeploy.utils.distributed import launched_as_main

    out = default_out_dir(out_dir, config_path, "search")
    space, data = load_space_config(config_path, out, overrides)
    config = space.load_search_config(data)
    result = space.load("search_loop")(config, out, data_dir=data_dir, force=force, progress=progress)
    if launched_as_main():
        click.echo(result.summary())
