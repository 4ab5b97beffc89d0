"""The pipeline stages of the DARTS recurrent space: the shared skeleton, the language model's export and profile.

Same run-directory contract as the other spaces: search/, genotype.json, train/, export/ (model.onnx and its
export report, published at the top level), profile.json. The language model has no ExecuTorch or INT8 path:
those two stages are recorded as skipped with their reason.
"""

from __future__ import annotations

from typing import Any

from nasdeploy.genotypes import RNN_PRIMITIVES, resolve_genotype
from nasdeploy.pipeline.deployment import publish_onnx
from nasdeploy.pipeline.results import (
    ExportStageResult,
    LanguageModelTrainResult,
    ParityVerdict,
    ProfileStageResult,
    SkippedStage,
)
from nasdeploy.pipeline.skeleton import SpaceStages
from nasdeploy.pipeline.stages import StageContext, quote_path
from nasdeploy.utils.files import write_json_atomic, write_text_atomic
from nasdeploy.utils.rundir import read_json

_CHECKPOINT = "train/best.pt"
NO_EXECUTORCH_PATH = "the recurrent language model has no ExecuTorch export path (ONNX only)"
NO_INT8_PATH = "the recurrent language model has no INT8 path (float ONNX only)"


def _profile_row(model: Any, name: str, found: bool, ctx: StageContext, onnx: Any) -> dict[str, Any]:
    from nasdeploy.profile.darts_rnn import profile_darts_rnn

    p = ctx.config.profile
    prof = profile_darts_rnn(model, seq_len=p.seq_len, batch_size=p.batch_size, warmup=p.warmup, runs=p.runs,
                             threads=p.threads, onnx_path=onnx)
    per_token = p.seq_len * p.batch_size
    latency = {"torch-cpu": {k: v / per_token for k, v in prof.torch_window.items() if k.endswith("_ms")}}
    if prof.onnx_window is not None:
        latency["ort-cpu"] = {k: v / per_token for k, v in prof.onnx_window.items() if k.endswith("_ms")}
    return {"name": name, "found": found, "params": prof.params, "macs_per_token": prof.macs_per_token,
            "latency": latency, "details": prof.to_dict()}


def _markdown_rows(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| model | params | MACs / token | PyTorch ms / token |", "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['name']} | {row['params']:,} | {row['macs_per_token'] / 1e6:.3f}M | "
                     f"{row['latency']['torch-cpu']['median_ms']:.4f} |")
    return lines


class DartsRnnStages(SpaceStages):
    """DARTS recurrent cell: search, train the language model, export it to ONNX, profile per token."""

    primitives = RNN_PRIMITIVES  # what DartsRnnSupernet mixes
    alpha_cells = ("alphas_recurrent",)

    def search_metrics(self, result: Any, last: dict[str, Any]) -> dict[str, float]:
        """Validation perplexity after the first epoch, at the end, and the best one."""
        return {"first_valid_ppl": result.first_valid_ppl, "valid_ppl": result.valid_ppl,
                "best_valid_ppl": result.best_valid_ppl}

    def train_result(self, ctx: StageContext, result: Any) -> LanguageModelTrainResult:
        """Perplexities of the trained language model and its vocabulary size."""
        vocab = read_json(ctx.path("train", "vocab.json")) or {}
        return LanguageModelTrainResult(epochs=result.epochs_done, best_valid_ppl=result.best_valid_ppl,
                                        test_ppl=result.test_ppl, params=result.params, asgd_epoch=result.asgd_epoch,
                                        checkpoint=_CHECKPOINT, net="language_model",
                                        vocab_size=len(vocab.get("words", [])) or None)

    def export(self, ctx: StageContext) -> ExportStageResult:
        """Export the trained language model to ONNX and check it against PyTorch in onnxruntime."""
        from nasdeploy.export.darts_rnn import export_darts_rnn_onnx
        from nasdeploy.nets.darts_rnn import load_darts_rnn_network

        model = load_darts_rnn_network(ctx.path(_CHECKPOINT))
        section = ctx.config.export
        ctx.path("export").mkdir(exist_ok=True)
        result = export_darts_rnn_onnx(model, ctx.path("export", "model.onnx"), seq_len=section.seq_len,
                                       batch_size=section.batch_size, dynamic_batch=section.dynamic_batch,
                                       opset=section.opset, rtol=section.rtol, atol=section.atol,
                                       windows=section.windows)
        report = result.to_dict()
        write_json_atomic(ctx.path("export", "export.json"), report)
        publish_onnx(ctx)
        parity = {"onnx": ParityVerdict.of(result.parity.report)} if result.parity is not None else {}
        return ExportStageResult(files={"onnx": "export/model.onnx", "report": "export/export.json"}, parity=parity,
                                 opset=report["opset"])

    def executorch(self, ctx: StageContext) -> SkippedStage:
        """No ExecuTorch path for the language model (its export is ONNX with a fixed window)."""
        return SkippedStage(reason=NO_EXECUTORCH_PATH)

    def quantize(self, ctx: StageContext) -> SkippedStage:
        """No INT8 path for the language model."""
        return SkippedStage(reason=NO_INT8_PATH)

    def profile(self, ctx: StageContext) -> ProfileStageResult:
        """Params, MACs per token and latency per token of the trained LM, next to DARTS_V2_RNN at the same sizes."""
        from nasdeploy.nets.darts_rnn import build_darts_rnn_network, load_darts_rnn_network

        p, e = ctx.config.profile, ctx.config.export
        model = load_darts_rnn_network(ctx.path(_CHECKPOINT))
        same_window = p.seq_len == e.seq_len and p.batch_size == e.batch_size and ctx.path("model.onnx").is_file()
        rows = [_profile_row(model, f"{ctx.config.name} (found)", True, ctx,
                             ctx.path("model.onnx") if same_window else None)]
        cell = model.rnns[0]
        reference = build_darts_rnn_network(resolve_genotype("DARTS_V2_RNN", expected_kind="rnn_cell"), model.ntokens,
                                            emsize=cell.ninp, nhid=cell.nhid).eval()
        rows.append(_profile_row(reference, "DARTS_V2_RNN", False, ctx, None))
        backends = ["torch-cpu"] + (["ort-cpu"] if same_window else [])
        out = {"net": "language_model", "table": "language_model", "backends": backends, "rows": rows,
               "net_description": (f"recurrent language model (vocabulary {model.ntokens:,}, emsize {cell.ninp}, nhid "
                                   f"{cell.nhid}, {cell.steps} nodes), window T={p.seq_len} B={p.batch_size}, "
                                   f"{p.threads} CPU thread(s); latency per token"),
               "convention": "multiply-accumulates of matrix products per token (FlopCounterMode total / 2)"}
        write_json_atomic(ctx.path("profile.json"), out)
        write_text_atomic(ctx.path("profile.md"), "\n".join(_markdown_rows(rows)) + "\n")
        return ProfileStageResult(table="language_model", found_params=rows[0]["params"],
                                  found_macs=rows[0]["macs_per_token"])

    def alpha_history(self, ctx: StageContext) -> list[dict[str, Any]]:
        """The recurrent cell's softmaxed alphas per epoch (logged under `alphas`)."""
        return [{"epoch": r.get("epoch"), "alphas_recurrent": r["alphas"]}
                for r in super().alpha_history(ctx) if "alphas" in r]

    def deploy_commands(self, ctx: StageContext) -> dict[str, str]:
        """The ONNX export of the trained language model (its only deployment path)."""
        e, q = ctx.config.export, quote_path
        return {"export": (f"nasdeploy export {q(ctx.path(_CHECKPOINT))} --seq-len {e.seq_len} --batch-size "
                           f"{e.batch_size} --out {q(ctx.path('export'))}")}

    def profile_command(self, ctx: StageContext) -> str:
        """The language-model profile at the section's window, batch, threads and runs."""
        p = ctx.config.profile
        return (f"nasdeploy profile {quote_path(ctx.path(_CHECKPOINT))} --seq-len {p.seq_len} --batch {p.batch_size} "
                f"--threads {p.threads} --warmup {p.warmup} --runs {p.runs}")
