"""`nasdeploy build-ext`: build the fused mixed-op extension ahead of time and report what was built."""

from __future__ import annotations

import click

from nasdeploy.errors import ConfigError, MissingDependencyError, NasDeployError


def _check_archs(ctx: click.Context, param: click.Parameter, archs: tuple[str, ...]) -> tuple[str, ...]:
    """--arch values: compute capabilities such as 8.0, 9.0a or 10.0 (one-line error otherwise)."""
    from nasdeploy.kernels.build import validate_cuda_arch

    return tuple(validate_cuda_arch(a) for a in archs)


@click.command("build-ext")
@click.option("--cuda/--no-cuda", default=None,
              help="Also build the CUDA kernels (default: when a GPU is visible and nvcc is found).")
@click.option("--arch", "archs", multiple=True, metavar="X.Y", callback=_check_archs,
              help="CUDA compute capability to build for, repeatable (default: the visible GPUs, else 9.0).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the build report as JSON.")
@click.option("-v", "--verbose", is_flag=True, help="Show the compiler commands and output.")
def build_ext(cuda: bool | None, archs: tuple[str, ...], json_path: str | None, verbose: bool) -> None:
    """Compile (or reuse the cached) fused mixed-op kernels, load them, and report CPU/CUDA/archs."""
    import torch

    from nasdeploy.kernels.build import build_extension, compiler_available, cuda_toolkit_available, loaded_devices

    if not compiler_available():
        raise MissingDependencyError("no C++ compiler or ninja on PATH; the search will use the reference mixed op")
    if cuda is False and archs:
        raise ConfigError("--arch names CUDA targets but --no-cuda builds the CPU kernels only")
    if cuda is None:
        cuda = torch.cuda.is_available() and cuda_toolkit_available()
    elif cuda and not cuda_toolkit_available():
        raise MissingDependencyError("--cuda needs a CUDA toolkit (nvcc and headers; set CUDA_HOME) and a CUDA build of torch")
    try:
        info = build_extension(cuda=cuda, archs=tuple(archs), verbose=verbose)
    except (RuntimeError, OSError, ValueError) as exc:  # ValueError: an arch this torch cannot build for
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NasDeployError(f"building the fused mixed-op extension failed: {first} (rerun with --verbose)") from None
    devices = loaded_devices()
    click.echo(f"built {info.name} in {info.seconds:.1f} s (torch {info.torch_version})")
    click.echo(f"  CPU kernels:  {'yes' if 'cpu' in devices else 'NO'}")
    if info.cuda:
        click.echo(f"  CUDA kernels: {'yes' if 'cuda' in devices else 'NO'} (sm {', '.join(info.archs)})")
    else:
        click.echo("  CUDA kernels: not built (no GPU visible or no CUDA toolkit; --cuda builds them anyway)")
    click.echo(f"  library:      {info.library}")
    if json_path:
        from nasdeploy.utils.files import write_json_atomic

        write_json_atomic(json_path, {**info.to_dict(), "devices": list(devices)})
        click.echo(f"wrote {json_path}")
