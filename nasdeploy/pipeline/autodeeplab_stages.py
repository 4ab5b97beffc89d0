"""The pipeline stages of the Auto-DeepLab space: the shared skeleton (hierarchical search, the decoded genotype it
wrote, segmentation training, export, executorch), the network-path figure and the segmentation profile.

INT8 is not implemented for segmentation yet: an export section that asks for it gets the quantize stage
skipped with its reason.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from nasdeploy.data.segmentation import with_data_dir
from nasdeploy.pipeline.deployment import DeploySpec
from nasdeploy.pipeline.image_profile import latency_config, latency_summary, profile_targets
from nasdeploy.pipeline.results import ProfileStageResult, SegmentationTrainResult
from nasdeploy.pipeline.skeleton import SpaceStages
from nasdeploy.pipeline.stages import StageContext, environment_line, quote_path
from nasdeploy.utils.files import write_json_atomic
from nasdeploy.utils.rundir import read_json

_CHECKPOINT = "train/model.pt"
_CONVENTION = "multiply-accumulates of convolutions and FC layers, BN folded, activations/pooling/resizes not counted"


def _train_config(ctx: StageContext) -> Any:
    """The train config with this run's data root (for the sizes the export and profile stages read)."""
    config = ctx.config.train
    return replace(config, data=with_data_dir(config.data, ctx.config.data_dir))


def _crop_size(ctx: StageContext) -> tuple[int, int]:
    """The profile's input size, else the training crop (else the synthetic image size)."""
    if ctx.config.profile.input_size is not None:
        return tuple(ctx.config.profile.input_size)  # type: ignore[return-value]
    data = _train_config(ctx).data
    return tuple(data.crop_size or data.image_size)  # type: ignore[return-value]


class AutoDeepLabStages(SpaceStages):
    """Auto-DeepLab: cell + network-level search, segmentation training, export, profile at crop and full size."""

    int8_unsupported = ("INT8 calibration and float-vs-INT8 scoring are implemented for classifiers only "
                        "(segmentation: not yet)")

    def search_order(self, config: Any) -> str:
        """Auto-DeepLab's architecture gradient is first order."""
        return "first"

    def search_metrics(self, result: Any, last: dict[str, Any]) -> dict[str, float]:
        """The last epoch's losses, mIoU and pixel accuracy, and the decoded path's log-probability."""
        keys = ("train_loss", "arch_loss", "val_miou", "val_pixel_acc")
        return {**{k: float(last[k]) for k in keys if last.get(k) is not None}, "path_log_prob": result.path_log_prob}

    def derive_figures(self, ctx: StageContext, genotype: Any) -> dict[str, str]:
        """The network level: every transition by its final beta probability, the decoded path on top."""
        from nasdeploy.pipeline.plots import plot_network_path
        from nasdeploy.spaces.autodeeplab_decode import beta_probabilities
        from nasdeploy.utils.checkpoint import load_checkpoint

        betas = load_checkpoint(ctx.path("search", "checkpoint.pt"))["model"]["betas"]
        if plot_network_path(beta_probabilities(betas.double().numpy()), genotype.path, ctx.path("figures", "path.png")):
            return {"path": "figures/path.png"}
        return {}

    def train_result(self, ctx: StageContext, result: Any) -> SegmentationTrainResult:
        """mIoU of the trained segmentation network next to the majority-class baseline."""
        summary = read_json(ctx.path("train", "done.json")) or {}
        config = ctx.config.train
        return SegmentationTrainResult(epochs=config.train.epochs, miou=result.val_miou,
                                       majority_miou=result.majority_miou, pixel_acc=summary.get("val_pixel_acc"),
                                       params=result.params, checkpoint=_CHECKPOINT, net="segmentation",
                                       filter_multiplier=config.net.filter_multiplier)

    def deploy_spec(self, ctx: StageContext) -> DeploySpec:
        """The trained segmentation net at the crop size; random-input parity (no dataset parity for segmentation)."""
        return DeploySpec(net="segmentation", checkpoint=_CHECKPOINT, input_size=_crop_size(ctx))

    def profile(self, ctx: StageContext) -> ProfileStageResult:
        """Params, MACs at the crop and at full resolution, and latency of the found net next to the published one."""
        from nasdeploy.data.segmentation import dataset_classes
        from nasdeploy.genotypes import resolve_genotype
        from nasdeploy.nets import build_network
        from nasdeploy.profile.api import profile_model
        from nasdeploy.profile.complexity import model_complexity
        from nasdeploy.profile.environment import collect_environment

        section, environment = ctx.config.profile, collect_environment()
        train = _train_config(ctx)
        net_kwargs = train.net.net_kwargs()
        if section.channels is not None:
            net_kwargs["filter_multiplier"] = section.channels
        num_classes = len(dataset_classes(train.data))
        height, width = _crop_size(ctx)
        rows = []
        for t in profile_targets(ctx):
            genotype = resolve_genotype(t.target, expected_kind="autodeeplab")
            model = build_network(genotype, "segmentation", num_classes=num_classes, **net_kwargs).eval()
            result = profile_model(model, (3, height, width), name=t.name, latency=",".join(t.backends) or "none",
                                   activations=False, latency_config=latency_config(ctx), environment=environment)
            macs_at = {f"{height}x{width}": result.macs}
            for h, w in section.macs_at:
                macs_at[f"{h}x{w}"] = model_complexity(model, (3, h, w), activations=False).macs
            rows.append({"name": t.name, "found": t.found, "params": result.params, "macs": result.macs,
                         "macs_at": macs_at, "latency": latency_summary(result.latency), "path": list(genotype.path)})
        sizes = list(rows[0]["macs_at"])
        description = (f"Auto-DeepLab segmentation net as trained (F={net_kwargs.get('filter_multiplier')}, ASPP "
                       f"{net_kwargs.get('aspp_channels')}, decoder {net_kwargs.get('decoder_channels')} channels, "
                       f"{num_classes} classes); MACs at {', '.join(sizes)}")
        out = {"net": "segmentation", "table": "segmentation", "net_description": description,
               "backends": list(section.backends), "rows": rows, "input_size": [height, width], "sizes": sizes,
               "net_kwargs": net_kwargs, "num_classes": num_classes, "convention": _CONVENTION,
               "environment": environment_line(environment)}
        write_json_atomic(ctx.path("profile.json"), out)
        return ProfileStageResult(table="segmentation", found_params=rows[0]["params"], found_macs=rows[0]["macs"])

    def profile_command(self, ctx: StageContext) -> str:
        """The profile of the found and the published net at the largest size the table counted."""
        sizes = list((read_json(ctx.path("profile.json")) or {}).get("sizes") or ["1024x2048"])
        targets = " ".join([quote_path(ctx.path("genotype.json")), *ctx.config.profile.compare])
        return f"nasdeploy profile {targets} --net segmentation --input-size {sizes[-1]}"
