"""`nasdeploy adl search|train|decode`: Auto-DeepLab search and segmentation training (thin layer over the library).

search and train are the same as `nasdeploy search|train` with an Auto-DeepLab config; decode reads a search checkpoint.
"""

from __future__ import annotations

import click

from nasdeploy.utils.yamlconfig import apply_overrides, load_yaml


@click.group()
def adl() -> None:
    """Auto-DeepLab: hierarchical search for segmentation and training of the searched network."""


def _config_dict(config: str, overrides: tuple[str, ...]) -> dict:
    return apply_overrides(load_yaml(config), overrides)


@adl.command("search")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Run directory.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value (e.g. search.epochs=2).")
@click.option("--force", "--restart", "restart", is_flag=True,
              help="Start over instead of resuming from OUT/checkpoint.pt (--restart: the older name).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def search_cmd(config: str, out_dir: str, overrides: tuple[str, ...], restart: bool, no_progress: bool) -> None:
    """Search cell and network path with the settings in CONFIG (YAML); writes OUT/genotype.json.

    DDP: torchrun --nproc_per_node N -m nasdeploy search --config CONFIG --out OUT (search.batch_size is global).
    """
    from nasdeploy.search.autodeeplab_loop import adl_search_config_from_dict, run_adl_search
    from nasdeploy.utils.distributed import launched_as_main

    cfg = adl_search_config_from_dict(_config_dict(config, overrides))
    result = run_adl_search(cfg, out_dir, force=restart, progress=not no_progress)
    if launched_as_main():
        click.echo(result.summary())


@adl.command("train")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Run directory.")
@click.option("--genotype", default=None, help="Registry name or genotype.json (overrides net.genotype).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value (e.g. train.epochs=2).")
@click.option("--force", "--restart", "restart", is_flag=True,
              help="Start over instead of resuming from OUT/checkpoint.pt (--restart: the older name).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def train_cmd(config: str, out_dir: str, genotype: str | None, overrides: tuple[str, ...], restart: bool,
              no_progress: bool) -> None:
    """Train the static segmentation network of a genotype from scratch; writes OUT/model.pt.

    DDP: torchrun --nproc_per_node N -m nasdeploy train --config CONFIG --out OUT (train.batch_size is global).
    """
    from nasdeploy.train.segmentation_loop import run_segmentation_training, seg_train_config_from_dict
    from nasdeploy.utils.distributed import launched_as_main

    cfg = seg_train_config_from_dict(_config_dict(config, overrides))
    result = run_segmentation_training(cfg, genotype, out_dir, force=restart, progress=not no_progress)
    if launched_as_main():
        click.echo(result.summary())


@adl.command("decode")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False), help="Write the genotype JSON here.")
def decode_cmd(checkpoint: str, output: str | None) -> None:
    """Decode the genotype (cell top-2, Viterbi path) from a search CHECKPOINT."""
    from nasdeploy.errors import CheckpointError
    from nasdeploy.genotypes import save_genotype
    from nasdeploy.genotypes.describe import describe_genotype
    from nasdeploy.spaces.autodeeplab_decode import decode_genotype
    from nasdeploy.utils.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint)
    model = state["model"]
    if "alphas" not in model or "betas" not in model:
        raise CheckpointError(f"{checkpoint} has no alphas/betas: not an Auto-DeepLab search checkpoint")
    blocks = int(state.get("meta", {}).get("config", {}).get("supernet", {}).get("blocks", 5))
    genotype = decode_genotype(model["alphas"].numpy(), model["betas"].numpy(), blocks, name="adl_decoded")
    click.echo(describe_genotype(genotype))
    if output:
        click.echo(f"wrote {save_genotype(genotype, output)}")
