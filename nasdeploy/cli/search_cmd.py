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
@click.option("--seeds", "seeds_text", default=None, metavar="0,1,2,3",
              help="Search once per seed, train each derived genotype briefly (the config's `selection:` block) and "
                   "keep the best on validation: OUT/seed-N/, OUT/selection.json, OUT/genotype.json (darts_cnn).")
@run_options
def search(config_path: str | None, out_dir: str | None, seeds_text: str | None, data_dir: str | None, force: bool,
           progress: bool, overrides: tuple[str, ...]) -> None:
    """Search the architecture of a space; OVERRIDES are section.key=value.

    DDP: torchrun --nproc_per_node N -m nasdeploy search --config FILE --out DIR (DARTS CNN and Auto-DeepLab;
    the config's batch size is the global batch).
    """
    from nasdeploy.config.selection import SECTION
    from nasdeploy.utils.distributed import launched_as_main

    out = default_out_dir(out_dir, config_path, "search")
    space, data = load_space_config(config_path, out, overrides)
    if seeds_text is not None or SECTION in data:
        _select(space, data, seeds_text, out, data_dir, force, progress)
        return
    config = space.load_search_config(data)
    result = space.load("search_loop")(config, out, data_dir=data_dir, force=force, progress=progress)
    if launched_as_main():
        click.echo(result.summary())


def _select(space: Any, data: dict[str, Any], seeds_text: str | None, out: Path, data_dir: str | None, force: bool,
            progress: bool) -> None:
    """The selection protocol over several seeds (nasdeploy.search.selection), one search process per seed."""
    import dataclasses
    import os

    from nasdeploy.config.selection import SECTION, SelectionOptions, parse_seeds
    from nasdeploy.search.selection import run_selection
    from nasdeploy.utils.yamlconfig import from_dict

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--seeds starts one search process per seed itself; run it without torchrun")
    options = from_dict(SelectionOptions, data.pop(SECTION, None), SECTION)
    if seeds_text is not None:
        options = dataclasses.replace(options, seeds=parse_seeds(seeds_text))
    record = run_selection(space, data, options, out, data_dir=data_dir, force=force, progress=progress)
    click.echo(f"genotype (seed {record.chosen_seed}): {out / 'genotype.json'}\nselection: {out / 'selection.json'}")
