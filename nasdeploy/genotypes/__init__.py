"""Genotypes: typed, versioned, validated descriptions of searched architectures (no model code)."""

from nasdeploy.genotypes.model import SCHEMA_VERSION, CNNGenotype, Genotype, RecurrentGenotype
from nasdeploy.genotypes.primitives import CNN_CELL_OPS, CNN_EXTRA_OPS, CNN_PRIMITIVES, RNN_CELL_OPS, RNN_PRIMITIVES
from nasdeploy.genotypes.registry import (
    PUBLISHED_COSTS,
    genotype_aliases,
    get_genotype,
    list_genotypes,
    register_genotype,
    resolve_genotype,
)
from nasdeploy.genotypes.serialize import (
    genotype_from_dict,
    genotype_from_json,
    genotype_kinds,
    genotype_to_dict,
    genotype_to_json,
    load_genotype,
    register_genotype_kind,
    save_genotype,
)
from nasdeploy.genotypes.validate import validate_cnn_genotype, validate_recurrent_genotype
from nasdeploy.genotypes.autodeeplab import (
    AUTODEEPLAB_CELL_OPS,
    AUTODEEPLAB_PRIMITIVES,
    AUTODEEPLAB_PUBLISHED_COSTS,
    AUTODEEPLAB,
    AutoDeepLabGenotype,
    _autodeeplab_from_dict,
    _autodeeplab_to_dict,
    make_autodeeplab_genotype,
    validate_autodeeplab_genotype,
)

register_genotype_kind(AutoDeepLabGenotype, _autodeeplab_to_dict, _autodeeplab_from_dict)
register_genotype("AutoDeepLab", AUTODEEPLAB)
PUBLISHED_COSTS["AutoDeepLab"] = AUTODEEPLAB_PUBLISHED_COSTS

__all__ = [
    "SCHEMA_VERSION",
    "CNNGenotype",
    "RecurrentGenotype",
    "Genotype",
    "CNN_PRIMITIVES",
    "CNN_EXTRA_OPS",
    "CNN_CELL_OPS",
    "RNN_PRIMITIVES",
    "RNN_CELL_OPS",
    "PUBLISHED_COSTS",
    "get_genotype",
    "list_genotypes",
    "genotype_aliases",
    "register_genotype",
    "resolve_genotype",
    "genotype_to_dict",
    "genotype_from_dict",
    "genotype_to_json",
    "genotype_from_json",
    "genotype_kinds",
    "register_genotype_kind",
    "load_genotype",
    "save_genotype",
    "validate_cnn_genotype",
    "validate_recurrent_genotype",
    "AutoDeepLabGenotype",
    "AUTODEEPLAB_PRIMITIVES",
    "AUTODEEPLAB_CELL_OPS",
    "make_autodeeplab_genotype",
    "validate_autodeeplab_genotype",
]
