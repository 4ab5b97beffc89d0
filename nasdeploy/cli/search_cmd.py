"""`nasdeploy search`: DARTS CNN or Auto-DeepLab search into a run directory (resumes; a finished run is not redone)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from nasdeploy.cli.rundir_options import default_out_dir
from nasdeploy.errors import ConfigError


def load_space_config(config_path: str | None, out: Path) -> tuple[str, dict[str, Any]]:
    """(space, config mapping without its space key) from --config, else from the run directory's stored config."""
    from nasdeploy.utils.spaces import config_space, run_config_file, without_space
    from nasdeploy.utils.yamlconfig import load_yaml

    path = Path(config_path) if config_path is not None else run_config_file(out)
    if path is None:
        raise ConfigError("give --config FILE, or --out DIR of an existing run (its stored config is reused)")
    data = load_yaml(path)
    return config_space(data), without_space(data)


@click.command("search")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Search config YAML: DARTS CNN, or Auto-DeepLab (a `supernet:` section or `space: autodeeplab`). "
                   "Default: the run directory's stored config when resuming.")
@click.option("--data-dir", default=None, help="Dataset root (CIFAR in torchvision layout, an image folder, or Cityscapes).")
@click.option("--out", "out_dir", default=None, help="Run directory (default: runs/search-<config name>).")
@click.option("--force", is_flag=True, help="Start over even if the run directory holds a finished or partial run.")
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
@click.argument("overrides", nargs=-1)
def search(config_path: str | None, data_dir: str | None, out_dir: str | None, force: bool, progress: bool,
           overrides: tuple[str, ...]) -> None:
    """Search a DARTS CNN cell or an Auto-DeepLab cell + network path; OVERRIDES are section.key=value."""
    from nasdeploy.utils.distributed import launched_as_main
    from nasdeploy.utils.spaces import set_data_root
    from nasdeploy.utils.yamlconfig import apply_overrides

    out = default_out_dir(out_dir, config_path, "search")
    space, data = load_space_config(config_path, out)
    if space == "autodeeplab":
        from nasdeploy.search.autodeeplab_loop import adl_search_config_from_dict, run_adl_search

        cfg = adl_search_config_from_dict(set_data_root(apply_overrides(data, overrides), data_dir))
        adl = run_adl_search(cfg, out, resume=not force, progress=progress)
        if launched_as_main():
            click.echo(f"searched {adl.epochs_done}/{cfg.search.epochs} epochs; val mIoU {adl.val_miou:.4f}; "
                       f"path {list(adl.path)}")
            click.echo(f"genotype: {adl.genotype_path}")
        return
    from nasdeploy.search.config import search_config_from_dict
    from nasdeploy.search.loop import run_search

    config = search_config_from_dict(data, overrides)
    result = run_search(config, out, data_dir, force=force, progress=progress)
    if not launched_as_main():
        return
    g = result.genotype
    click.echo(f"genotype ({result.epochs_done}/{result.epochs} epochs): normal {list(g.normal)} reduce {list(g.reduce)}")
    click.echo(f"run directory: {result.out_dir}")
