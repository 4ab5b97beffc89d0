"""How a module tree is split into stages (stem, cells, head) and op units for cost breakdowns."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from nasdeploy.utils.model_cost import is_auxiliary

# Top-level children that together form the classifier head of the DARTS-style networks.
HEAD_NAMES = frozenset({"global_pooling", "classifier", "head", "fc"})


@dataclass(frozen=True)
class CostItem:
    """Parameters and MACs of one part of a network (a stage or an op type)."""

    name: str
    kind: str
    params: int
    macs: int
    count: int = 1


def stage_name(path: str, model: nn.Module) -> str:
    """The stage a module path belongs to: its top-level child, or `list.i` for a ModuleList child."""
    parts = path.split(".")
    first = parts[0]
    if first in HEAD_NAMES:
        return "head"
    if len(parts) > 1 and isinstance(getattr(model, first, None), nn.ModuleList):
        return f"{first}.{parts[1]}"
    return first


def scope_stage(scope: str) -> str:
    """The stage of an exporter name scope that is already a top-level or list-item path ('cells.3')."""
    return "head" if scope.split(".", 1)[0] in HEAD_NAMES else scope


def stage_kind(name: str, module: nn.Module | None = None) -> str:
    """A coarse label for a stage: stem, cell-normal, cell-reduce, head, auxiliary or other."""
    if name == "head":
        return "head"
    if is_auxiliary(name):
        return "auxiliary"
    if name.startswith("stem"):
        return "stem"
    if module is not None and isinstance(getattr(module, "reduction", None), bool):
        return "cell-reduce" if module.reduction else "cell-normal"
    if name.startswith("cells."):
        return "cell"
    return "other"


def model_stages(model: nn.Module) -> list[tuple[str, str, list[str]]]:
    """(stage name, kind, module paths) in module order; ModuleList children are stages of their own."""
    stages: dict[str, tuple[str, list[str]]] = {}
    for child_name, child in model.named_children():
        if isinstance(child, nn.ModuleList):
            for i, item in enumerate(child):
                name = f"{child_name}.{i}"
                stages[name] = (stage_kind(name, item), [name])
            continue
        name = stage_name(child_name, model)
        kind, paths = stages.setdefault(name, (stage_kind(name, child), []))
        paths.append(child_name)
    return [(name, kind, paths) for name, (kind, paths) in stages.items()]


def op_units(model: nn.Module) -> list[tuple[str, str]]:
    """(module path, op label) pairs that partition a network into op-type units.

    Cells with `_ops` (DARTS static cells) are split into their candidate ops, named from the
    model's genotype when it has one, and their preprocessing; stems, head and auxiliary heads are
    one unit each; any other stage is split into its leaf modules, named by class.
    """
    genotype = getattr(model, "genotype", None)
    units: list[tuple[str, str]] = []
    for stage, kind, paths in model_stages(model):
        if kind in ("stem", "head", "auxiliary"):
            units.extend((p, "auxiliary_head" if kind == "auxiliary" else kind) for p in paths)
            continue
        for path in paths:
            module = model.get_submodule(path)
            ops = getattr(module, "_ops", None)
            if isinstance(ops, nn.ModuleList):
                edges = _cell_edges(genotype, module, len(ops))
                for k, op in enumerate(ops):
                    units.append((f"{path}._ops.{k}", edges[k] if edges else type(op).__name__))
                for pre in ("preprocess0", "preprocess1"):
                    if hasattr(module, pre):
                        units.append((f"{path}.{pre}", f"preprocess ({type(getattr(module, pre)).__name__})"))
                continue
            leaves = [(n, m) for n, m in module.named_modules() if not any(True for _ in m.children())]
            for name, leaf in leaves:
                units.append((f"{path}.{name}" if name else path, type(leaf).__name__))
    return units


def _cell_edges(genotype: object, cell: nn.Module, n_ops: int) -> list[str] | None:
    """Op names of a static cell's edges, read from the model's CNN genotype, if it matches."""
    reduction = getattr(cell, "reduction", None)
    edges = getattr(genotype, "reduce" if reduction else "normal", None) if isinstance(reduction, bool) else None
    if edges is None or len(edges) != n_ops:
        return None
    return [op for op, _ in edges]
