"""Write the PC-DARTS reference-parity fixtures (tests/fixtures/pcdarts_reference_*) from the reference code.

Usage (run outside the repository's import path, CPU, float64):

    python scripts/make_pcdarts_fixtures.py /tmp/pcdarts_ref --commit 8c434ef2... [--out tests/fixtures]

The argument is a checkout of github.com/yuhuixu1993/PC-DARTS (its model_search.py, architect.py,
operations.py, genotypes.py and utils.py are imported from there; nothing of it is copied). The
reference fixes K = 4 partial channels in its MixedOp, so the fixtures are for K = 4. The outputs are
plain data: a .pt file of tensors (torch.load(weights_only=True)) and JSON.

Run-time workarounds, shared with scripts/make_reference_fixtures.py (the reference files are not
modified): `.cuda()` on tensors and modules is the identity; torchvision is stubbed if missing. The
deprecated `add_(Number, Tensor)` / `sub(Number, Tensor)` overloads its architect uses still work.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import types
import warnings
from pathlib import Path

import torch
from torch import nn

from make_reference_fixtures import patch_torch_for_cpu, reference_commit, seeded_tensors  # scripts/ is on sys.path

PCDARTS_MODULES = ("operations", "genotypes", "utils", "model_search", "architect")
SETTINGS = {"channels": 8, "num_classes": 3, "layers": 5, "steps": 4, "multiplier": 4, "partial_channels": 4,
            "lr": 0.1, "momentum": 0.9, "weight_decay": 3e-4, "eta": 0.1,
            "weights": {"seed": 101, "scale": 0.3}, "momentum_buffer": {"seed": 202, "scale": 0.1},
            "arch": {"seed": 303, "scale": 0.5}, "batch": 4, "image_size": 8}
DERIVE_CASES = [{"seed": 400 + i, "alpha_scale": 1.0, "beta_scale": 2.0} for i in range(8)]


def import_pcdarts(ref: Path) -> dict[str, types.ModuleType]:
    """Import the reference modules afresh from the checkout's root folder."""
    for name in PCDARTS_MODULES:
        sys.modules.pop(name, None)
    sys.path.insert(0, str(ref))
    try:
        return {name: importlib.import_module(name) for name in PCDARTS_MODULES}
    finally:
        sys.path.remove(str(ref))


def arch_names_shapes(model: nn.Module) -> list[tuple[str, list[int]]]:
    """The reference's four architecture tensors, in its arch_parameters() order."""
    names = ("alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce")
    return [(n, list(p.shape)) for n, p in zip(names, model.arch_parameters())]


def set_arch(model: nn.Module, values: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for (name, _), p in zip(arch_names_shapes(model), model.arch_parameters()):
            p.copy_(values[name])


def supernet(ref: dict[str, types.ModuleType]) -> dict:
    """Tiny reference PC-DARTS supernet from seeded weights/momentum/alphas/betas: logits and arch gradients."""
    s = SETTINGS
    torch.manual_seed(5)
    model = ref["model_search"].Network(s["channels"], s["num_classes"], s["layers"], nn.CrossEntropyLoss())
    names_shapes = [(n, list(p.shape)) for n, p in model.named_parameters()]
    weights = seeded_tensors(names_shapes, **s["weights"])
    momentum = seeded_tensors(names_shapes, **s["momentum_buffer"])
    arch = seeded_tensors(arch_names_shapes(model), **s["arch"])
    opt = torch.optim.SGD(model.parameters(), lr=s["lr"], momentum=s["momentum"], weight_decay=s["weight_decay"])
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(weights[n])
            opt.state[p]["momentum_buffer"] = momentum[n].clone()
    set_arch(model, arch)
    size = s["image_size"]
    batches = [(torch.randn(s["batch"], 3, size, size), torch.randint(0, s["num_classes"], (s["batch"],)))
               for _ in range(2)]
    model.train()
    (xt, yt), (xv, yv) = batches
    with torch.no_grad():
        logits = model(xv)

    args = types.SimpleNamespace(momentum=s["momentum"], weight_decay=s["weight_decay"], arch_learning_rate=6e-4,
                                 arch_weight_decay=1e-3)
    architect = ref["architect"].Architect(model, args)
    model._loss(xv, yv).backward()
    first = [a.grad.clone() for a in model.arch_parameters()]
    for a in model.arch_parameters():
        a.grad = None
    architect._backward_step_unrolled(xt, yt, xv, yv, s["eta"], opt)
    second = [a.grad.clone() for a in model.arch_parameters()]
    names = [n for n, _ in arch_names_shapes(model)]
    return {"settings": s, "parameter_shapes": names_shapes, "arch_shapes": arch_names_shapes(model),
            "x_train": xt, "y_train": yt, "x_valid": xv, "y_valid": yv, "logits_valid": logits,
            "first_order": dict(zip(names, first)), "second_order": dict(zip(names, second))}


def derivations(ref: dict[str, types.ModuleType]) -> dict:
    """The reference genotype() on seeded alphas/betas (scale large enough that the betas decide edges)."""
    s = SETTINGS
    model = ref["model_search"].Network(s["channels"], s["num_classes"], s["layers"], nn.CrossEntropyLoss())
    cases = []
    for case in DERIVE_CASES:
        shapes = arch_names_shapes(model)
        values = {**seeded_tensors(shapes[:2], case["seed"], case["alpha_scale"]),
                  **seeded_tensors(shapes[2:], case["seed"] + 1000, case["beta_scale"])}
        set_arch(model, values)
        g = model.genotype()
        cases.append({**case, "arch": {k: v.tolist() for k, v in values.items()},
                      "normal": [list(e) for e in g.normal], "normal_concat": list(g.normal_concat),
                      "reduce": [list(e) for e in g.reduce], "reduce_concat": list(g.reduce_concat)})
    return {"steps": s["steps"], "multiplier": s["multiplier"], "cases": cases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path, help="checkout of github.com/yuhuixu1993/PC-DARTS")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests" / "fixtures")
    parser.add_argument("--commit", help="the reference commit, when the checkout is an extracted archive")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    patch_torch_for_cpu()
    args.out.mkdir(parents=True, exist_ok=True)
    ref = import_pcdarts(args.reference)
    torch.save(supernet(ref), args.out / "pcdarts_reference_supernet.pt")
    (args.out / "pcdarts_reference_derive.json").write_text(json.dumps(derivations(ref), separators=(",", ":")) + "\n",
                                                           encoding="utf-8")
    commit = args.commit or reference_commit(args.reference)
    info = {"reference": "github.com/yuhuixu1993/PC-DARTS", "commit": commit, "torch": torch.__version__,
            "dtype": "float64", "device": "cpu", "partial_channels": SETTINGS["partial_channels"]}
    (args.out / "pcdarts_reference_info.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    print(f"fixtures written to {args.out} (reference commit {commit}, torch {torch.__version__})")


if __name__ == "__main__":
    main()
