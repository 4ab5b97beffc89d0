"""`nasdeploy profile TARGET...`: params, MACs, mobile verdict and latency per runtime (the adapter of TARGET's space)."""

from __future__ import annotations

import click

from nasdeploy.nets import list_networks
from nasdeploy.profile.latency import BACKEND_GROUPS, BACKENDS


@click.command()
@click.argument("targets", nargs=-1, required=False, metavar="TARGET...")
@click.option("--net", type=click.Choice(list_networks()), default=None,
              help="Network family built from a genotype [default: the checkpoint's, else imagenet for DARTS CNN "
                   "genotypes, the genotype's own family otherwise; ignored for .onnx targets].")
@click.option("--channels", "--filter-multiplier", "channels", type=int, default=None,
              help="Initial channels C, Auto-DeepLab's filter multiplier F, or a language model's nhid (default: the family's).")
@click.option("--layers", type=int, default=None, help="Number of cells L (default: the family's).")
@click.option("--num-classes", type=int, default=None, help="Classifier outputs, or a language model's vocabulary (default: the family's).")
@click.option("--input-size", default=None, metavar="S|HxW",
              help="Input size S (square) or HxW (default: the family's; needed for .onnx with symbolic H/W).")
@click.option("--seq-len", type=int, default=None, help="Language model: window length (default: the model's).")
@click.option("--threads", type=int, default=None, help="Language model: CPU threads of the timings (default: 1).")
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False), default=None,
              help="An exported ONNX model of the (one) TARGET to time in onnxruntime instead of a temporary export.")
@click.option("--latency", "latency", default="none", show_default=True,
              help=f"Comma-separated backends ({', '.join(BACKENDS)}) or groups ({', '.join(BACKEND_GROUPS)}).")
@click.option("--batch", type=int, default=1, show_default=True, help="Batch size for latency.")
@click.option("--warmup", type=int, default=10, show_default=True, help="Untimed warm-up runs per backend.")
@click.option("--runs", type=int, default=100, show_default=True, help="Timed runs per backend.")
@click.option("--breakdown/--no-breakdown", default=None, help="Per-stage and per-op tables (default: on for one target).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the report as JSON.")
@click.option("--cost-table", "cost_space", default=None, metavar="SPACE",
              help="Instead of profiling targets, build (or reuse from the cache) the cost table of search space SPACE "
                   "(darts_cnn) on --net, timed on the one --latency backend (none: MACs only); --json FILE writes it.")
@click.option("--markdown", "md_path", type=click.Path(dir_okay=False), default=None, help="Write the printed report as Markdown.")
def profile(targets, net, channels, layers, num_classes, input_size, seq_len, threads, onnx_path, latency, batch, warmup,
            runs, breakdown, json_path, cost_space, md_path) -> None:
    """Profile registry names, genotype files, checkpoints or .onnx files (several: one comparison table)."""
    from nasdeploy.errors import ConfigError
    from nasdeploy.export.request import NetSizes
    from nasdeploy.profile.latency import parse_backends
    from nasdeploy.profile.protocol import LatencyConfig
    from nasdeploy.profile.request import ProfileRequest
    from nasdeploy.utils.files import write_json_atomic, write_text_atomic

    input_size = _parse_input_size(input_size)
    if cost_space is not None:
        from nasdeploy.profile.cost_table_build import cost_table_cli

        click.echo(cost_table_cli(cost_space, latency, net=net or "imagenet", channels=channels, layers=layers,
                                  num_classes=num_classes, input_size=input_size, json_path=json_path, targets=targets))
        return
    if not targets:
        raise ConfigError("name at least one TARGET to profile (or use --cost-table SPACE)")
    backends = parse_backends(latency)
    adapter, resolved = _adapter(list(targets))
    report = adapter(resolved, ProfileRequest(
        net=net, sizes=NetSizes(channels, layers, num_classes), input_size=input_size, latency=backends,
        latency_config=LatencyConfig(batch=batch, warmup=warmup, runs=runs, progress=True), onnx_path=onnx_path,
        seq_len=seq_len, threads=threads))
    text = report.text(breakdown)
    click.echo(text)
    if json_path:
        click.echo(f"wrote {write_json_atomic(json_path, report.to_dict())}")
    if md_path:
        click.echo(f"wrote {write_text_atomic(md_path, text)}")


def _adapter(targets: list[str]):  # type: ignore[no-untyped-def]
    """The one profile adapter of the targets' space (an .onnx file goes with any image network) and the
    resolved targets; targets of two spaces cannot share one table."""
    from nasdeploy.errors import ConfigError
    from nasdeploy.export.target import deploy_target
    from nasdeploy.profile.api import is_onnx_target
    from nasdeploy.spaces.table import DEFAULT_SPACE, get_space, resolve

    resolved = [t if is_onnx_target(t) else deploy_target(t) for t in targets]
    spaces = {t.space.name: t.space for t in resolved if not isinstance(t, str)}
    onnx_files = any(isinstance(t, str) for t in resolved)
    if onnx_files:  # an .onnx file is profiled as an image network
        spaces.setdefault(DEFAULT_SPACE, get_space(DEFAULT_SPACE))
    refs = {space.profile_targets for space in spaces.values()}
    if len(refs) > 1:
        note = f" (an .onnx file counts as {DEFAULT_SPACE})" if onnx_files else ""
        raise ConfigError(f"targets of the {' and '.join(sorted(spaces))} spaces cannot share one profile table{note}")
    return resolve(refs.pop()), resolved


def _parse_input_size(text: str | None) -> int | tuple[int, int, int] | None:
    """'224' -> 224, '1024x2048' -> (3, 1024, 2048), each side within the input_side limit; else a one-line error."""
    from nasdeploy.errors import ConfigError
    from nasdeploy.utils.limits import brief, check_input_size

    if text is None:
        return None
    parts = text.lower().split("x")
    if not all(p.isdecimal() and len(p) < 10 and int(p) > 0 for p in parts) or len(parts) not in (1, 2):
        raise ConfigError(f"--input-size must be S or HxW with positive integers, got {brief(text)}")
    check_input_size("--input-size", int(parts[0]), int(parts[-1]))
    return int(parts[0]) if len(parts) == 1 else (3, int(parts[0]), int(parts[1]))
