"""The stage skeleton every space shares: search, derive, train, export, executorch, quantize, the alpha figures and
the reproducing commands; a space's subclass names its parts and overrides what differs (its profile, its metrics,
a stage it has no path for).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

from nasdeploy.errors import CheckpointError
from nasdeploy.pipeline.deployment import (
    MISSING_EXECUTORCH,
    NO_INT8,
    DeploySpec,
    TrainedNetwork,
    build_trained_network,
    deploy_commands,
    executorch_stage_skip,
    executorch_trained,
    export_stage_formats,
    export_trained,
    int8_methods,
    quantize_trained,
)
from nasdeploy.pipeline.plots import plot_alpha_evolution, plot_final_alphas, read_jsonl
from nasdeploy.pipeline.results import (
    DeriveStageResult,
    ExecuTorchStageResult,
    ExportStageResult,
    ProfileStageResult,
    QuantizeStageResult,
    SearchStageResult,
    SkippedStage,
    TrainStageResult,
)
from nasdeploy.pipeline.selection_stage import run_selection_stage
from nasdeploy.pipeline.stages import (
    StageContext,
    StageFn,
    StageInterrupted,
    last_log_record,
    numeric_metrics,
    quote_path,
    search_folder,
    source_arg,
)
from nasdeploy.spaces.table import get_space
from nasdeploy.utils.rundir import read_done


def _finished(result: Any, what: str) -> None:
    """StageInterrupted unless a search/train loop's result is finished (stop_after_epoch stopped it)."""
    if not result.finished:
        raise StageInterrupted(f"{what} stopped after epoch {result.epochs_done}/{result.epochs}")


class SpaceStages:
    """One space's pipeline stages over the shared run-directory contract (search/, genotype.json, train/, ...)."""

    primitives: ClassVar[tuple[str, ...]] = ()  # the op names the supernet mixes (alpha figures); () = no figures
    alpha_cells: ClassVar[tuple[str, ...]] = ("alphas_normal", "alphas_reduce")
    int8_unsupported: ClassVar[str | None] = None  # why an INT8 section cannot be served (None: it can)

    def stages(self) -> dict[str, StageFn]:
        """Stage name -> function, in the runner's order."""
        return {"search": self.search, "derive": self.derive, "train": self.train, "export": self.export,
                "executorch": self.executorch, "quantize": self.quantize, "profile": self.profile}

    # The parts a space names.

    def search_config(self, ctx: StageContext) -> Any:
        """The search config the loop runs (the pipeline's, unless the space completes it)."""
        return ctx.config.search

    def search_order(self, config: Any) -> str:
        """The architecture-gradient order of the search."""
        return config.search.order

    def search_metrics(self, result: Any, last: dict[str, Any]) -> dict[str, float]:
        """The search's final metrics (default: the numbers of its last log record)."""
        return numeric_metrics(last)

    def train_result(self, ctx: StageContext, result: Any) -> TrainStageResult:
        """The typed result of the finished training loop."""
        raise NotImplementedError

    def deploy_spec(self, ctx: StageContext) -> DeploySpec:
        """What the export-side stages build: network family, checkpoint, input size, the run's data."""
        raise NotImplementedError

    def derive_figures(self, ctx: StageContext, genotype: Any) -> dict[str, str]:
        """Figures beyond the cell diagrams that derive draws (role -> run-relative file)."""
        return {}

    def profile(self, ctx: StageContext) -> ProfileStageResult:
        """profile.json: the cost table of the found network next to published ones."""
        raise NotImplementedError

    def export_command(self, ctx: StageContext) -> str:
        """`nasdeploy export TARGET --net NET --checkpoint CKPT ...` of the trained network (no --format, no --out)."""
        spec = self.deploy_spec(ctx)
        size = f" --input-size {spec.input_size[0]}x{spec.input_size[1]}" if spec.input_size else ""
        return (f"nasdeploy export {quote_path(ctx.path('genotype.json'))} --net {spec.net} "
                f"--checkpoint {quote_path(ctx.path(spec.checkpoint))}{size}")

    def profile_command(self, ctx: StageContext) -> str:
        """The command(s) that redo the profile stage's table."""
        raise NotImplementedError

    # The stages.

    def search(self, ctx: StageContext) -> SearchStageResult:
        """Search the supernet (resuming an interrupted search); with seeds, once per seed, keeping the best."""
        config = self.search_config(ctx)
        if ctx.config.selection is not None:
            return run_selection_stage(ctx, config, self.search_order(config))
        result = get_space(ctx.config.space).load("search_loop")(config, ctx.path("search"), **ctx.loop_options())
        _finished(result, "search")
        last = last_log_record(ctx.path("search", "log.jsonl"))
        warnings = (read_done(ctx.path("search")) or {}).get("warnings") or ()  # a collapse the search saw
        return SearchStageResult(epochs=result.epochs, order=self.search_order(config),
                                 mixed_op=str(last.get("mixed_op", "unknown")), final=self.search_metrics(result, last),
                                 warnings=tuple(warnings))

    def derive(self, ctx: StageContext) -> DeriveStageResult:
        """Publish the genotype the search wrote (search/genotype.json) as genotype.json and draw it."""
        from nasdeploy.genotypes import genotype_to_dict, load_genotype, save_genotype
        from nasdeploy.genotypes.describe import describe_genotype
        from nasdeploy.genotypes.draw import draw_genotype

        source = ctx.path("search", "genotype.json")
        if not source.is_file():
            raise CheckpointError(f"{source} is missing: the search is not finished (run the search stage first)")
        searched = load_genotype(source, get_space(ctx.config.space).genotype_kind)
        genotype = replace(searched, name=f"{ctx.config.name}_found")
        save_genotype(genotype, ctx.path("genotype.json"), meta={"source": "search/genotype.json"})
        ctx.path("figures").mkdir(exist_ok=True)
        for suffix in ("svg", "png"):
            draw_genotype(genotype, ctx.path("figures", f"cells.{suffix}"))
        figures = {"cells": "figures/cells.svg", **self.derive_figures(ctx, genotype)}
        return DeriveStageResult(genotype=genotype_to_dict(genotype), text=describe_genotype(genotype), figures=figures)

    def train(self, ctx: StageContext) -> TrainStageResult:
        """Train the derived network from scratch (resuming from the training checkpoint)."""
        loop = get_space(ctx.config.space).load("train_loop")
        result = loop(ctx.config.train, ctx.path("genotype.json"), ctx.path("train"), **ctx.loop_options())
        _finished(result, "training")
        return self.train_result(ctx, result)

    def trained_network(self, ctx: StageContext) -> TrainedNetwork:
        """The trained network and the run's samples, built once per process on the context."""
        return ctx.trained.get(lambda: build_trained_network(ctx, self.deploy_spec(ctx)))

    def export(self, ctx: StageContext) -> ExportStageResult | SkippedStage:
        """Export the trained network to ONNX (and TensorRT/Triton when asked) and check parity."""
        return export_trained(ctx, self.trained_network(ctx))

    def executorch(self, ctx: StageContext) -> ExecuTorchStageResult | SkippedStage:
        """Lower the trained network to an ExecuTorch program (XNNPACK), when the export section asks for one."""
        return executorch_stage_skip(ctx) or executorch_trained(ctx, self.trained_network(ctx))

    def quantize(self, ctx: StageContext) -> QuantizeStageResult | SkippedStage:
        """INT8 by the section's paths, calibrated on the training split and scored against float on validation images."""
        if not ctx.config.export.int8:
            return SkippedStage(reason=NO_INT8)
        if self.int8_unsupported:
            return SkippedStage(reason=self.int8_unsupported)
        methods, skipped = int8_methods(ctx)
        if not methods:
            return SkippedStage(reason=MISSING_EXECUTORCH)
        return quantize_trained(ctx, self.trained_network(ctx), methods, skipped)

    # The report's parts.

    def alpha_history(self, ctx: StageContext) -> list[dict[str, Any]]:
        """The per-epoch softmaxed alphas the (chosen) search logged, one key per cell type of alpha_cells."""
        return read_jsonl(ctx.path(search_folder(ctx), "alphas.jsonl"))

    def report_figures(self, ctx: StageContext) -> dict[str, str]:
        """The alpha evolution and final alphas figures, with the op names the supernet mixed."""
        if not self.primitives:
            return {}
        figures: dict[str, str] = {}
        history = self.alpha_history(ctx)
        if plot_alpha_evolution(history, self.primitives, ctx.path("figures", "alphas.png"), cells=self.alpha_cells):
            figures["alphas"] = "figures/alphas.png"
        if history and plot_final_alphas(history[-1], self.primitives, ctx.path("figures", "alphas_final.png"),
                                         cells=self.alpha_cells):
            figures["alphas_final"] = "figures/alphas_final.png"
        return figures

    def deploy_commands(self, ctx: StageContext) -> dict[str, str]:
        """The export, executorch and quantize commands (those the export section asks for)."""
        formats = " ".join(f"--format {f}" for f in export_stage_formats(ctx.config.export))
        command = self.export_command(ctx)
        commands = {"export": f"{command} {formats} --out {quote_path(ctx.path('export'))}",
                    **deploy_commands(ctx, command)}
        if self.int8_unsupported:
            commands.pop("quantize", None)
        return commands

    def reproduce_commands(self, ctx: StageContext) -> dict[str, str]:
        """The exact commands that redo each stage by hand over the same files (the runner orders them)."""
        config, run_dir, q = ctx.config, ctx.run_dir, quote_path
        data = f" --data-dir {q(config.data_dir)}" if config.data_dir else ""
        return {
            "search": f"nasdeploy search --config {q(run_dir / 'search' / 'config.yaml')} --out {q(run_dir / 'search')}{data}",
            "derive": f"nasdeploy pipeline{source_arg(config)} --out {q(run_dir)} --only derive",
            "train": (f"nasdeploy train --genotype {q(run_dir / 'genotype.json')} --config "
                      f"{q(run_dir / 'train' / 'config.yaml')} --out {q(run_dir / 'train')}{data}"),
            **self.deploy_commands(ctx),
            "profile": self.profile_command(ctx),
        }
