"""The table of search spaces: the one place that knows which spaces exist (DARTS CNN, DARTS RNN, Auto-DeepLab).

Every other module (CLI, pipeline runner, config validation) looks a space up here by name instead of
branching on it. Entries name their parts as "module:attribute" strings resolved on first use, so that
importing the table loads neither torch nor the search code, and a deploy-only user never loads search.

Each space provides, with one vocabulary for all of them:
- search_config / train_config: its config dataclasses (nasdeploy.config.<space>), validated from a mapping;
- search_loop(config, out_dir, *, data_dir, force, stop_after_epoch, progress) -> result with .summary();
- train_loop(config, genotype, out_dir, *, data_dir, force, stop_after_epoch, progress) -> result with .summary();
- derive: the rule from architecture weights to a genotype;
- network: the static network family its genotypes build (nasdeploy.nets);
- pipeline: its pipeline stages, a class whose instances have stages() (search, derive, train, export,
  executorch, quantize, profile), report_figures(ctx) and reproduce_commands(ctx);
- export_section / profile_section: the dataclasses of its pipeline file's export: and profile: sections;
- export_target / profile_targets: what `nasdeploy export` and `nasdeploy profile` call for its genotypes and
  checkpoints (one signature each across spaces);
- cost_cells: the cell description of its per-op cost tables (a deployment budget in the search);
- selection: its rules for the selection protocol over several seeds (nasdeploy.config.selection.SelectionRules).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Mapping

from nasdeploy.errors import ConfigError
from nasdeploy.utils.yamlconfig import from_dict

DEFAULT_SPACE = "darts_cnn"


def resolve(ref: str) -> Any:
    """The object a "module:attribute" reference names (imported on demand)."""
    module, _, attr = ref.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, attr) if attr else obj


@dataclass(frozen=True)
class SearchSpace:
    """One search space: its parts, referenced lazily."""

    name: str
    title: str
    genotype_kind: str
    search_config: str
    search_loop: str
    train_config: str
    train_loop: str
    derive: str
    network: str
    pipeline: str
    export_section: str = "nasdeploy.pipeline.sections:ExportSection"
    profile_section: str = "nasdeploy.pipeline.sections:ProfileSection"
    export_target: str = "nasdeploy.export.api:export_target"
    profile_targets: str = "nasdeploy.profile.networks:profile_network_targets"
    profile_defaults: Mapping[str, Any] = field(default_factory=dict)
    profile_nets: tuple[str, ...] = ()  # the network families its profile section may name (empty: no `net` key)
    # Top-level sections that only this space's search/train configs have (so `space:` may be left out).
    config_sections: tuple[str, ...] = ()
    # The cell description its per-op cost tables use (nasdeploy.profile.cost_table.CellSpace); "" = none yet.
    cost_cells: str = ""
    # Its rules for `nasdeploy search --seeds` (nasdeploy.config.selection.SelectionRules); "" = not supported yet.
    selection: str = ""

    def load(self, part: str) -> Any:
        """The object behind one of this entry's references, e.g. load("search_loop")."""
        return resolve(getattr(self, part))

    def load_search_config(self, data: Mapping[str, Any]) -> Any:
        """The validated search config of a mapping (a `space:` key is dropped)."""
        return from_dict(self.load("search_config"), without_space(data))

    def load_train_config(self, data: Mapping[str, Any]) -> Any:
        """The validated training config of a mapping (a `space:` key is dropped)."""
        return from_dict(self.load("train_config"), without_space(data))

    def pipeline_stages(self) -> Any:
        """This space's pipeline stages (nasdeploy.pipeline.stages.PipelineStages)."""
        return resolve(self.pipeline)()


SPACES: dict[str, SearchSpace] = {
    "darts_cnn": SearchSpace(
        name="darts_cnn",
        title="DARTS CNN cell (image classification; CIFAR search, CIFAR/ImageNet-mobile networks)",
        genotype_kind="cnn_cell",
        search_config="nasdeploy.config.darts_cnn:DartsCnnSearchConfig",
        search_loop="nasdeploy.search.darts_cnn_loop:run_search",
        train_config="nasdeploy.config.darts_cnn:DartsCnnTrainConfig",
        train_loop="nasdeploy.train.darts_cnn_loop:run_training",
        derive="nasdeploy.spaces.darts_cnn_derive:derive_genotype",
        network="nasdeploy.nets.darts_cnn:NetworkCIFAR",
        pipeline="nasdeploy.pipeline.darts_cnn_stages:DartsCnnStages",
        profile_nets=("cifar", "imagenet"),
        cost_cells="nasdeploy.profile.cost_table_build:DARTS_CNN_CELLS",
        selection="nasdeploy.config.selection:DARTS_CNN_RULES",
    ),
    "darts_rnn": SearchSpace(
        name="darts_rnn",
        title="DARTS recurrent cell (language modelling; PTB layout or the generated corpus)",
        genotype_kind="rnn_cell",
        search_config="nasdeploy.config.darts_rnn:DartsRnnSearchConfig",
        search_loop="nasdeploy.search.darts_rnn_loop:run_search",
        train_config="nasdeploy.config.darts_rnn:DartsRnnTrainConfig",
        train_loop="nasdeploy.train.darts_rnn_loop:run_training",
        derive="nasdeploy.spaces.darts_rnn_derive:derive_recurrent_genotype",
        network="nasdeploy.nets.darts_rnn:DartsRnnLanguageModel",
        pipeline="nasdeploy.pipeline.darts_rnn_stages:DartsRnnStages",
        export_section="nasdeploy.pipeline.sections:DartsRnnExportSection",
        profile_section="nasdeploy.pipeline.sections:DartsRnnProfileSection",
        export_target="nasdeploy.export.darts_rnn:export_darts_rnn_target",
        profile_targets="nasdeploy.profile.darts_rnn:profile_darts_rnn_targets",
    ),
    "autodeeplab": SearchSpace(
        name="autodeeplab",
        title="Auto-DeepLab cell + network level (semantic segmentation; Cityscapes layout or synthetic shapes)",
        genotype_kind="autodeeplab",
        search_config="nasdeploy.config.autodeeplab:AutoDeepLabSearchConfig",
        search_loop="nasdeploy.search.autodeeplab_loop:run_search",
        train_config="nasdeploy.config.autodeeplab:AutoDeepLabTrainConfig",
        train_loop="nasdeploy.train.autodeeplab_loop:run_training",
        derive="nasdeploy.spaces.autodeeplab_decode:decode_genotype",
        network="nasdeploy.nets.autodeeplab:AutoDeepLabNet",
        pipeline="nasdeploy.pipeline.autodeeplab_stages:AutoDeepLabStages",
        profile_nets=("segmentation",),
        profile_defaults={"net": "segmentation", "compare": ("AutoDeepLab",),
                          "latency_for": ("found", "AutoDeepLab"), "macs_at": ((1024, 2048),)},
        config_sections=("supernet", "net"),
    ),
}


def space_names() -> tuple[str, ...]:
    """The names of the known spaces."""
    return tuple(SPACES)


def get_space(name: str) -> SearchSpace:
    """The table entry of a space, or a one-line error naming the known ones."""
    try:
        return SPACES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown search space {name!r} (known: {', '.join(SPACES)})") from None


def space_of_config(data: Mapping[str, Any]) -> SearchSpace:
    """The space a search/train config names with `space:`, else the one its sections imply, else DARTS CNN."""
    if "space" in data:
        return get_space(data["space"])
    for space in SPACES.values():
        if any(section in data for section in space.config_sections):
            return space
    return SPACES[DEFAULT_SPACE]


def space_of_pipeline(data: Mapping[str, Any]) -> SearchSpace:
    """The space of a pipeline file: `space:`, else DARTS CNN."""
    return get_space(data["space"]) if "space" in data else SPACES[DEFAULT_SPACE]


def without_space(data: Mapping[str, Any]) -> dict[str, Any]:
    """The mapping without its `space:` key (the config loaders validate the rest)."""
    return {k: v for k, v in data.items() if k != "space"}
