"""`nasdeploy genotypes list|show|draw`."""

from __future__ import annotations

import click

from nasdeploy.genotypes import genotype_aliases, genotype_to_json, get_genotype, list_genotypes, resolve_genotype
from nasdeploy.genotypes.describe import describe_genotype


@click.group()
def genotypes() -> None:
    """List, show and draw genotypes (registry names or JSON files)."""


@genotypes.command("list")
def list_cmd() -> None:
    """List the published genotypes in the registry."""
    aliases: dict[str, list[str]] = {}
    for alias, name in genotype_aliases().items():
        aliases.setdefault(name, []).append(alias)
    for name in list_genotypes():
        g = get_genotype(name)
        extra = f"  (alias: {', '.join(aliases[name])})" if name in aliases else ""
        click.echo(f"{name:<14} {g.kind}{extra}")


@genotypes.command("show")
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Print the versioned JSON form.")
def show_cmd(target: str, as_json: bool) -> None:
    """Show a genotype given by registry NAME or FILE."""
    g = resolve_genotype(target)
    click.echo(genotype_to_json(g) if as_json else describe_genotype(g), nl=not as_json)


@genotypes.command("draw")
@click.argument("target")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .svg or .png file.")
def draw_cmd(target: str, output: str) -> None:
    """Draw the cells of a genotype (NAME or FILE) as an SVG or PNG diagram."""
    from nasdeploy.genotypes.draw import draw_genotype

    path = draw_genotype(resolve_genotype(target), output)
    click.echo(f"wrote {path}")
