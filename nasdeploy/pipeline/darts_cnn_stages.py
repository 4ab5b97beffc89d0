"""The pipeline stages of the DARTS CNN space: the shared skeleton, a budget's cost table, the mobile-setting profile."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from nasdeploy.genotypes import CNN_PRIMITIVES
from nasdeploy.pipeline.deployment import DeploySpec
from nasdeploy.pipeline.image_profile import (
    int8_file_timings,
    int8_files_command,
    latency_config,
    latency_summary,
    profile_targets,
)
from nasdeploy.pipeline.results import ClassifierTrainResult, ProfileStageResult
from nasdeploy.pipeline.skeleton import SpaceStages
from nasdeploy.pipeline.stages import StageContext, environment_line, quote_path, search_folder
from nasdeploy.utils.files import write_json_atomic
from nasdeploy.utils.rundir import read_json

_NET_DESCRIPTIONS = {"imagenet": "ImageNet mobile setting (224x224, C=48, 14 cells)", "cifar": "CIFAR (32x32, C=36, 20 cells)"}
_CONVENTION = "multiply-accumulates of convolutions and FC layers, BN folded, activations/pooling not counted"


def _not_run(results: dict[str, Any], backends: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """Backends that were asked for but skipped or failed: their status and one-line reason."""
    return {b: {"status": results[b].status, "note": results[b].note} for b in backends
            if b in results and not results[b].ok}


def _latency_notes(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (backend, status, reason) over the table, naming the rows it applies to."""
    notes: dict[tuple[str, str, str], list[str]] = {}
    for row in rows:
        for backend, info in row["not_run"].items():
            notes.setdefault((backend, info["status"], info["note"]), []).append(row["name"])
    return [{"backend": b, "status": st, "note": note, "rows": names} for (b, st, note), names in notes.items()]


class DartsCnnStages(SpaceStages):
    """DARTS CNN: search (with a budget's cost table), train the classifier, export it, profile the mobile setting."""

    primitives = CNN_PRIMITIVES  # what DartsCnnSupernet mixes (the search config has no primitives of its own)

    def search_config(self, ctx: StageContext) -> Any:
        """The search config; a budget with `table: auto` gets the (cached) table of the profile's network."""
        config = ctx.config.search
        cost = config.search.cost
        if cost is None or cost.table != "auto":
            return config
        from nasdeploy.profile.cost_table import save_cost_table
        from nasdeploy.profile.cost_table_build import build_or_load_cost_table
        from nasdeploy.utils.ownership import claim_folder

        prof = ctx.config.profile
        path = ctx.path("search", "cost_table.json")
        if not path.is_file():  # a resumed search keeps the table it started with
            backend = None if cost.metric == "macs" else cost.backend
            table = build_or_load_cost_table(ctx.config.space, backend, net=prof.net, channels=prof.channels,
                                             layers=prof.layers, progress=ctx.progress)
            # The search's run directory (a selection folder over seeds): the table is written into it first.
            claim_folder(path.parent, "run" if ctx.config.selection is None else "selection")
            save_cost_table(table, path)
        return replace(config, search=replace(config.search, cost=replace(cost, table=str(path))))

    def train_result(self, ctx: StageContext, result: Any) -> ClassifierTrainResult:
        """Top-1 / top-5 of the trained classifier and its class count."""
        return ClassifierTrainResult(epochs=result.epochs, top1=result.top1, top5=result.top5, params=result.params,
                                     checkpoint="train/checkpoint.pt", net=ctx.config.train.model.net,
                                     num_classes=result.metrics.get("dataset", {}).get("num_classes"))

    def deploy_spec(self, ctx: StageContext) -> DeploySpec:
        """The trained classifier at its default input size, with the run's dataset (real-image parity, INT8)."""
        train = ctx.config.train
        data = replace(train.data, data_dir=ctx.config.data_dir or train.data.data_dir)
        return DeploySpec(net=train.model.net, checkpoint="train/checkpoint.pt", data=data)

    def profile(self, ctx: StageContext) -> ProfileStageResult:
        """Params, MACs (mobile setting) and latency of the found architecture next to registry genotypes.

        With `profile.int8`, the INT8 files the quantize stage wrote are timed next to their float twins.
        """
        from nasdeploy.profile.api import profile_targets as measure_targets
        from nasdeploy.profile.environment import collect_environment

        section, environment = ctx.config.profile, collect_environment()
        targets = profile_targets(ctx)
        # The rows with latency columns are timed together, in turns (A B A B), so a change of load during the
        # window touches the found network and the published ones alike; the others get params and MACs only.
        results: dict[str, Any] = {}
        for backends in dict.fromkeys(t.backends for t in targets):
            group = [t for t in targets if t.backends == backends]
            measured = measure_targets([t.target for t in group], net=section.net, channels=section.channels,
                                       layers=section.layers, latency=",".join(backends) or "none",
                                       latency_config=latency_config(ctx), environment=environment)
            results.update({t.name: r for t, r in zip(group, measured)})
        rows, threads = [], {}
        for t in targets:
            result = results[t.name]
            threads.update({b: r.settings["intra_op_threads"] for b, r in result.latency.items()
                            if r.ok and r.settings.get("intra_op_threads") is not None})
            rows.append({"name": t.name, "found": t.found, "params": result.params, "macs": result.macs,
                         "latency": latency_summary(result.latency, t.backends),
                         "not_run": _not_run(result.latency, t.backends)})
        out = {"net": section.net, "table": "mobile", "net_description": _NET_DESCRIPTIONS.get(section.net, section.net),
               "backends": list(section.backends), "rows": rows,
               "latency_protocol": {"batch": 1, "warmup": section.warmup, "runs": section.runs, "threads": threads},
               "latency_notes": _latency_notes(rows), "convention": _CONVENTION,
               "environment": environment_line(environment)}
        int8 = int8_file_timings(ctx, ctx.config.train.model.net)
        if int8 is not None:
            out["int8_files"] = int8
        budget = self.budget_verdict(ctx, rows[0])
        if budget is not None:
            out["budget"] = budget
        write_json_atomic(ctx.path("profile.json"), out)
        return ProfileStageResult(table="mobile", found_params=rows[0]["params"], found_macs=rows[0]["macs"])

    def budget_verdict(self, ctx: StageContext, found: dict[str, Any]) -> dict[str, Any] | None:
        """The search budget: target, expected, unconstrained and derived cost (the search's budget record, kept in
        the published genotype's meta) next to what the profiler measures on the found network."""
        cost = ctx.config.search.search.cost
        if cost is None:
            return None
        if cost.metric == "macs":
            measured, unit = found["macs"], "MACs"
        else:
            cell = found["latency"].get(cost.backend) or {}
            measured, unit = cell.get("median_ms"), f"ms ({cost.backend} median)"
        record = (read_json(ctx.path(search_folder(ctx), "done.json")) or {}).get("budget") or {}
        return {"metric": cost.metric, "target": cost.target, "unit": unit, "measured": measured,
                "meets": bool(measured is not None and measured <= cost.target),
                "expected": record.get("expected"), "unconstrained": record.get("unconstrained"),
                "derived": record.get("derived"), "binding": record.get("binding"), "method": record.get("method")}

    def profile_command(self, ctx: StageContext) -> str:
        """The profile command of the cost table, and a second line timing the INT8 comparison's ONNX pair."""
        prof, q = ctx.config.profile, quote_path
        targets = " ".join([q(ctx.path("genotype.json")), *prof.compare])
        sizes = "".join(f" --{k} {v}" for k, v in (("channels", prof.channels), ("layers", prof.layers)) if v is not None)
        lines = [f"nasdeploy profile {targets} --net {prof.net}{sizes} --latency {','.join(prof.backends) or 'none'}"]
        int8 = int8_files_command((read_json(ctx.path("profile.json")) or {}).get("int8_files"), ctx)
        return "\n".join(lines + ([int8] if int8 else []))
