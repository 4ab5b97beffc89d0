"""The pipeline stages of the DARTS recurrent space: search, derive (top-1 rule), train the LM, export, profile.

Same run-directory contract as the other spaces: search/, genotype.json, train/, export/ (model.onnx and
its parity report, published at the top level), profile.json. The language model has no ExecuTorch or
INT8 path: those two stages are recorded as skipped with their reason.
"""

from __future__ import annotations

from typing import Any

from nasdeploy.errors import CheckpointError
from nasdeploy.genotypes import load_genotype, resolve_genotype
from nasdeploy.pipeline.plots import plot_alpha_evolution, plot_final_alphas, read_jsonl
from nasdeploy.pipeline.stages import (
    StageContext,
    StageFn,
    StageInterrupted,
    last_log_record,
    publish_genotype,
    publish_onnx,
    quote_path,
    source_arg,
)
from nasdeploy.utils.files import write_json_atomic, write_text_atomic
from nasdeploy.utils.rundir import read_json

_GENOTYPE_KIND = "rnn_cell"


def rnn_search_stage(ctx: StageContext) -> dict[str, Any]:
    """Search the recurrent cell (resuming an interrupted search)."""
    from nasdeploy.config.darts_rnn import DartsRnnSearchConfig
    from nasdeploy.search.darts_rnn_loop import run_search
    from nasdeploy.utils.yamlconfig import from_dict

    config = from_dict(DartsRnnSearchConfig, ctx.config.search)
    result = run_search(config, ctx.path("search"), **ctx.loop_options())
    if not result.finished:
        raise StageInterrupted(f"search stopped after epoch {result.epochs_done}/{config.search.epochs}")
    last = last_log_record(ctx.path("search", "log.jsonl"))
    return {"dir": "search", "epochs": result.epochs_done, "order": config.search.order,
            "mixed_op": last.get("mixed_op", "unknown"),
            "final": {"first_valid_ppl": result.first_valid_ppl, "valid_ppl": result.valid_ppl,
                      "best_valid_ppl": result.best_valid_ppl}}


def rnn_derive_stage(ctx: StageContext) -> dict[str, Any]:
    """Derive the genotype from the final alphas (DARTS top-1 rule) and draw the recurrent cell."""
    from nasdeploy.spaces.darts_rnn_derive import derive_recurrent_genotype

    history = read_jsonl(ctx.path("search", "alphas.jsonl"))
    if not read_json(ctx.path("search", "done.json")) or not history:
        raise CheckpointError(f"{ctx.path('search')} holds no finished recurrent search: run the search stage first")
    # alphas.jsonl holds softmaxed weights; the top-1 rule is invariant to the softmax.
    genotype = derive_recurrent_genotype(history[-1]["alphas"], name=f"{ctx.config.name}_found")
    return publish_genotype(ctx, genotype, {"source": "search", "epochs": history[-1].get("epoch")})


def rnn_train_stage(ctx: StageContext) -> dict[str, Any]:
    """Train the language model of the derived cell from scratch (resuming from its checkpoint)."""
    from nasdeploy.config.darts_rnn import DartsRnnTrainConfig
    from nasdeploy.train.darts_rnn_loop import run_training
    from nasdeploy.utils.yamlconfig import from_dict

    config = from_dict(DartsRnnTrainConfig, ctx.config.train)
    genotype = load_genotype(ctx.path("genotype.json"), _GENOTYPE_KIND)
    result = run_training(config, genotype, ctx.path("train"), **ctx.loop_options())
    if not result.finished:
        raise StageInterrupted(f"training stopped after epoch {result.epochs_done}/{config.train.epochs}")
    vocab = read_json(ctx.path("train", "vocab.json")) or {}
    return {"dir": "train", "epochs": result.epochs_done, "best_valid_ppl": result.best_valid_ppl,
            "test_ppl": result.test_ppl, "params": result.params, "asgd_epoch": result.asgd_epoch,
            "checkpoint": "train/best.pt", "net": "language_model",
            "vocab_size": len(vocab.get("words", [])) or None}


def rnn_export_stage(ctx: StageContext) -> dict[str, Any]:
    """Export the trained language model to ONNX and check it against PyTorch in onnxruntime."""
    from nasdeploy.export.darts_rnn import export_darts_rnn_onnx
    from nasdeploy.nets.darts_rnn import load_darts_rnn_network

    model = load_darts_rnn_network(ctx.path("train", "best.pt"))
    section = ctx.config.export
    ctx.path("export").mkdir(exist_ok=True)
    result = export_darts_rnn_onnx(model, ctx.path("export", "model.onnx"), seq_len=section.seq_len,
                                   batch_size=section.batch_size, dynamic_batch=section.dynamic_batch,
                                   opset=section.opset, rtol=section.rtol, atol=section.atol, windows=section.windows)
    report = result.to_dict()
    write_json_atomic(ctx.path("export", "export.json"), report)
    publish_onnx(ctx)
    parity = result.parity
    outputs = list(parity.outputs) if parity is not None else []
    return {"dir": "export", "onnx": "model.onnx", "opset": report.get("opset"), "files": ["export/model.onnx"],
            "parity": {"passed": bool(parity is not None and parity.ok),
                       "max_abs_err": max((o.max_abs_err for o in outputs), default=None),
                       "max_rel_err": max((o.max_rel_err for o in outputs), default=None),
                       "rtol": section.rtol, "atol": section.atol}}


def rnn_executorch_stage(ctx: StageContext) -> dict[str, Any]:
    """No ExecuTorch path for the language model (its export is ONNX with a fixed window)."""
    from nasdeploy.pipeline.stages import skip_stage

    return skip_stage("the recurrent language model has no ExecuTorch export path (ONNX only)")


def rnn_quantize_stage(ctx: StageContext) -> dict[str, Any]:
    """No INT8 path for the language model."""
    from nasdeploy.pipeline.stages import skip_stage

    return skip_stage("the recurrent language model has no INT8 path (float ONNX only)")


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


def rnn_profile_stage(ctx: StageContext) -> dict[str, Any]:
    """Params, MACs per token and latency per token of the trained LM, next to DARTS_V2_RNN at the same sizes."""
    from nasdeploy.nets.darts_rnn import build_darts_rnn_network, load_darts_rnn_network

    p, e = ctx.config.profile, ctx.config.export
    model = load_darts_rnn_network(ctx.path("train", "best.pt"))
    same_window = p.seq_len == e.seq_len and p.batch_size == e.batch_size and ctx.path("model.onnx").is_file()
    rows = [_profile_row(model, f"{ctx.config.name} (found)", True, ctx, ctx.path("model.onnx") if same_window else None)]
    cell = model.rnns[0]
    reference = build_darts_rnn_network(resolve_genotype("DARTS_V2_RNN", expected_kind=_GENOTYPE_KIND), model.ntokens,
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
    return {"file": "profile.json"}


def _markdown_rows(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| model | params | MACs / token | PyTorch ms / token |", "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['name']} | {row['params']:,} | {row['macs_per_token'] / 1e6:.3f}M | "
                     f"{row['latency']['torch-cpu']['median_ms']:.4f} |")
    return lines


def report_figures(ctx: StageContext) -> dict[str, str]:
    """The evolution and final heatmap of the recurrent cell's softmaxed alphas."""
    from nasdeploy.genotypes import RNN_PRIMITIVES

    history = [{"epoch": r.get("epoch"), "alphas_recurrent": r["alphas"]}
               for r in read_jsonl(ctx.path("search", "alphas.jsonl")) if "alphas" in r]
    figures: dict[str, str] = {}
    if plot_alpha_evolution(history, RNN_PRIMITIVES, ctx.path("figures", "alphas.png"), cells=("alphas_recurrent",)):
        figures["alphas"] = "figures/alphas.png"
    if history and plot_final_alphas(history[-1], RNN_PRIMITIVES, ctx.path("figures", "alphas_final.png"),
                                     cells=("alphas_recurrent",)):
        figures["alphas_final"] = "figures/alphas_final.png"
    return figures


def reproduce_commands(ctx: StageContext) -> dict[str, str]:
    """The commands that redo each recurrent stage by hand over the same files."""
    run_dir, q, e, p = ctx.run_dir, quote_path, ctx.config.export, ctx.config.profile
    data = f" --data-dir {q(ctx.config.data_dir)}" if ctx.config.data_dir else ""
    return {
        "search": f"nasdeploy search --config {q(run_dir / 'search' / 'config.yaml')} --out {q(run_dir / 'search')}{data}",
        "derive": f"nasdeploy pipeline{source_arg(ctx.config)} --out {q(run_dir)} --only derive",
        "train": f"nasdeploy train --genotype {q(run_dir / 'genotype.json')} --config {q(run_dir / 'train' / 'config.yaml')} --out {q(run_dir / 'train')}{data}",
        "export": f"nasdeploy export {q(run_dir / 'train' / 'best.pt')} --seq-len {e.seq_len} --batch-size {e.batch_size} --out {q(run_dir / 'export')}",
        "profile": f"nasdeploy profile {q(run_dir / 'train' / 'best.pt')} --seq-len {p.seq_len} --batch {p.batch_size} --threads {p.threads} --warmup {p.warmup} --runs {p.runs}",
    }


STAGES: dict[str, StageFn] = {
    "search": rnn_search_stage,
    "derive": rnn_derive_stage,
    "train": rnn_train_stage,
    "export": rnn_export_stage,
    "executorch": rnn_executorch_stage,
    "quantize": rnn_quantize_stage,
    "profile": rnn_profile_stage,
}
