"""`nasdeploy train`: train a static network from a genotype (DARTS CNN recipes or Auto-DeepLab segmentation)."""

from __future__ import annotations

import click

from nasdeploy.cli.rundir_options import default_out_dir
from nasdeploy.cli.search_cmd import load_space_config


@click.command("train")
@click.option("--genotype", "genotype", default=None,
              help="Registry name, genotype JSON file, or a search run directory (its genotype.json).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Training config YAML: DARTS CNN, or Auto-DeepLab segmentation (a `net:` section or "
                   "`space: autodeeplab`). Default: the run directory's stored config when resuming.")
@click.option("--data-dir", default=None, help="Dataset root (CIFAR in torchvision layout, an image folder, or Cityscapes).")
@click.option("--out", "out_dir", default=None, help="Run directory (default: runs/train-<config name>).")
@click.option("--force", is_flag=True, help="Start over even if the run directory holds a finished or partial run.")
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
@click.argument("overrides", nargs=-1)
def train(genotype: str | None, config_path: str | None, data_dir: str | None, out_dir: str | None, force: bool,
          progress: bool, overrides: tuple[str, ...]) -> None:
    """Train the network of a genotype; OVERRIDES are section.key=value (e.g. train.epochs=10)."""
    from nasdeploy.utils.distributed import launched_as_main
    from nasdeploy.utils.spaces import set_data_root
    from nasdeploy.utils.yamlconfig import apply_overrides

    out = default_out_dir(out_dir, config_path, "train")
    space, data = load_space_config(config_path, out)
    if space == "autodeeplab":
        from nasdeploy.train.segmentation_loop import run_segmentation_training, seg_train_config_from_dict

        data = set_data_root(apply_overrides(data, overrides), data_dir)
        if genotype is not None:
            data = {**data, "net": {**(data.get("net") or {}), "genotype": _genotype_file(genotype)}}
        seg = run_segmentation_training(seg_train_config_from_dict(data), out, resume=not force, progress=progress)
        if launched_as_main():
            click.echo(f"val mIoU {seg.val_miou:.4f} (majority-class baseline {seg.majority_miou:.4f}); "
                       f"{seg.params:,} parameters")
            click.echo(f"model: {seg.model_path}")
        return
    from nasdeploy.train.config import train_config_from_dict
    from nasdeploy.train.loop import run_training

    config = train_config_from_dict(data, overrides)
    result = run_training(config, genotype, out, data_dir, force=force, progress=progress)
    if not launched_as_main():
        return
    if result.top1 is not None:
        click.echo(f"top1 {result.top1:.4f}  top5 {result.top5:.4f}  params {result.params:,}  "
                   f"({result.epochs_done}/{result.epochs} epochs)")
    click.echo(f"run directory: {result.out_dir}")


def _genotype_file(genotype: str) -> str:
    """A search run directory stands for its genotype.json; names and files pass through."""
    from pathlib import Path

    path = Path(genotype)
    return str(path / "genotype.json") if path.is_dir() else genotype
