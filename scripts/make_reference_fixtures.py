"""Write the DARTS reference-parity fixtures (tests/fixtures/darts_reference_*) from the reference code.

Usage (run outside the repository's import path, CPU, float64):

    python scripts/make_reference_fixtures.py /tmp/quark0_darts [--out tests/fixtures]

The argument is a checkout of github.com/quark0/darts (its cnn/ and rnn/ folders are imported from
there; nothing of it is copied). The outputs are plain data: JSON key/shape lists and .pt files of
tensors (loadable with torch.load(weights_only=True)).

Run-time workarounds for current PyTorch (the reference files are not modified):
- torch.Tensor.cuda and nn.Module.cuda are replaced by the identity: the reference calls .cuda()
  unconditionally (alphas, Network.new, the architect's unrolled model) and this runs on the CPU.
- torchvision is not needed by the code paths used; if it is missing a stub module stands in for
  cnn/utils.py's `import torchvision.datasets / transforms`.
- rnn/utils.embedded_dropout calls the removed `embed._backend.Embedding`; the rnn model module's
  reference to it is replaced by a plain `F.embedding` lookup (valid because dropoute = 0 here).
- rnn Architect._construct_model_from_theta: the reference updates only `encoder.weight` in the
  state_dict it loads, and the later `decoder.weight` entry (the same tied tensor, old value)
  overwrites it, so its unrolled model never moves the tied embedding/decoder weight. The fixture
  uses a replacement that sets both keys to the unrolled value (what the DARTS equations mean).
- rnn _clip returns a 0-dim tensor, which current torch's deprecated `sub_(Number, Tensor)` overload
  rejects; the replacement returns the same value as a Python float. The fixture is made where the
  clip is active (coefficient < 1), so the reference's uncapped coefficient does not matter.
- PNAS is not in the reference's cnn/genotypes.py: its cells come from nasdeploy's registry data and
  are built by the reference model.py (the JSON's "source" says which genotype came from where).
- The deprecated `add_(Number, Tensor)` / `sub(Number, Tensor)` overloads the reference uses still
  work in current torch (with a warning); they are left alone.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's nasdeploy (genotype data only)
from nasdeploy.genotypes import get_genotype  # noqa: E402  (torch-free)

REFERENCE_MODULES = ("model", "model_search", "genotypes", "architect", "utils", "operations", "data")


def import_reference(ref: Path, sub: str) -> dict[str, types.ModuleType]:
    """Import the reference's `sub` folder (cnn or rnn) modules afresh (both folders reuse names)."""
    for name in REFERENCE_MODULES:
        sys.modules.pop(name, None)
    folder = str(ref / sub)
    sys.path.insert(0, folder)
    try:
        names = ("operations", "genotypes", "utils", "model", "model_search", "architect") if sub == "cnn" else (
            "genotypes", "utils", "model", "model_search", "architect")
        return {name: importlib.import_module(name) for name in names}
    finally:
        sys.path.remove(folder)


def patch_torch_for_cpu() -> None:
    """`.cuda()` is the identity (see the module docstring)."""
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    try:
        import torchvision  # noqa: F401
    except ImportError:
        stub = types.ModuleType("torchvision")
        stub.datasets = types.ModuleType("torchvision.datasets")  # type: ignore[attr-defined]
        stub.transforms = types.ModuleType("torchvision.transforms")  # type: ignore[attr-defined]
        sys.modules.update({"torchvision": stub, "torchvision.datasets": stub.datasets,
                            "torchvision.transforms": stub.transforms})


def shapes(model: nn.Module) -> dict[str, list[int]]:
    """state_dict key -> shape, in state_dict order."""
    return {k: list(v.shape) for k, v in model.state_dict().items()}


# -- (a) evaluation-network keys and shapes ------------------------------------------------------------

def network_keys(ref: dict[str, types.ModuleType]) -> dict:
    genos = ref["genotypes"]
    out: dict = {"cifar": {}, "imagenet": {}, "settings": {}}
    cifar = dict(C=8, num_classes=7, layers=6, auxiliary=True)
    imagenet = dict(C=8, num_classes=7, layers=6, auxiliary=True)
    out["settings"] = {"cifar": cifar, "imagenet": imagenet}
    out["source"] = {}
    for name in ("DARTS_V1", "DARTS_V2", "NASNet", "AmoebaNet", "PNAS"):
        g = getattr(genos, name, None)
        out["source"][name] = "reference genotypes.py"
        if g is None:  # PNAS is not in the reference file: its published cells, from our registry data
            ours = get_genotype(name)
            g = genos.Genotype(list(ours.normal), list(ours.normal_concat), list(ours.reduce), list(ours.reduce_concat))
            out["source"][name] = "nasdeploy registry data, built by the reference model.py"
        out["cifar"][name] = shapes(ref["model"].NetworkCIFAR(genotype=g, **cifar))
        out["imagenet"][name] = shapes(ref["model"].NetworkImageNet(genotype=g, **imagenet))
    return out


def amoeba_forward(ref: dict[str, types.ModuleType]) -> dict:
    """A tiny reference AmoebaNet CIFAR network in eval mode: its state_dict, an input and its logits."""
    torch.manual_seed(11)
    model = ref["model"].NetworkCIFAR(C=4, num_classes=5, layers=3, auxiliary=False, genotype=ref["genotypes"].AmoebaNet)
    model.drop_path_prob = 0.0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        logits, _ = model(x)
    return {"settings": {"channels": 4, "num_classes": 5, "layers": 3}, "state_dict": model.state_dict(),
            "input": x, "logits": logits}


# -- (b) CNN supernet ----------------------------------------------------------------------------------

def seeded_tensors(names_shapes: list[tuple[str, list[int]]], seed: int, scale: float) -> dict[str, torch.Tensor]:
    """scale * N(0, 1) tensors drawn in the given order from one generator (the tests redraw them alike)."""
    g = torch.Generator().manual_seed(seed)
    return {n: scale * torch.randn(shape, generator=g, dtype=torch.float64) for n, shape in names_shapes}


def cnn_supernet(ref: dict[str, types.ModuleType]) -> dict:
    """Tiny reference supernet from seeded weights and momentum: batches, logits, alpha gradients."""
    torch.manual_seed(5)
    criterion = nn.CrossEntropyLoss()
    model = ref["model_search"].Network(4, 3, 3, criterion)  # C=4, 3 classes, 3 layers, steps 4, multiplier 4
    names_shapes = [(n, list(p.shape)) for n, p in model.named_parameters()]
    weights = seeded_tensors(names_shapes, seed=101, scale=0.3)
    momentum = seeded_tensors(names_shapes, seed=202, scale=0.1)
    alphas = seeded_tensors([("alphas_normal", list(model.alphas_normal.shape)),
                             ("alphas_reduce", list(model.alphas_reduce.shape))], seed=303, scale=0.3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(weights[n])
            opt.state[p]["momentum_buffer"] = momentum[n].clone()
        model.alphas_normal.copy_(alphas["alphas_normal"])
        model.alphas_reduce.copy_(alphas["alphas_reduce"])
    batches = [(torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,))) for _ in range(2)]
    model.train()
    (xt, yt), (xv, yv) = batches
    with torch.no_grad():
        logits = model(xv)

    args = types.SimpleNamespace(momentum=0.9, weight_decay=3e-4, arch_learning_rate=3e-4, arch_weight_decay=1e-3)
    architect = ref["architect"].Architect(model, args)
    model._loss(xv, yv).backward()
    first = [a.grad.clone() for a in model.arch_parameters()]
    for a in model.arch_parameters():
        a.grad = None
    eta = 0.1
    architect._backward_step_unrolled(xt, yt, xv, yv, eta, opt)
    second = [a.grad.clone() for a in model.arch_parameters()]
    return {"settings": {"channels": 4, "num_classes": 3, "layers": 3, "steps": 4, "multiplier": 4,
                         "lr": 0.1, "momentum": 0.9, "weight_decay": 3e-4, "eta": eta,
                         "weights": {"seed": 101, "scale": 0.3}, "momentum_buffer": {"seed": 202, "scale": 0.1},
                         "alphas": {"seed": 303, "scale": 0.3}},
            "parameter_shapes": names_shapes,
            "x_train": xt, "y_train": yt, "x_valid": xv, "y_valid": yv, "logits_valid": logits,
            "first_order": {"alphas_normal": first[0], "alphas_reduce": first[1]},
            "second_order": {"alphas_normal": second[0], "alphas_reduce": second[1]}}


# -- (c) recurrent supernet ------------------------------------------------------------------------------

def _rnn_patches(ref: dict[str, types.ModuleType]) -> None:
    def embedding_no_dropout(embed, words, dropout=0.1, scale=None):
        assert not dropout and scale is None, "the fixture runs with dropoute = 0"
        return F.embedding(words, embed.weight)

    ref["model"].embedded_dropout = embedding_no_dropout
    arch_mod = ref["architect"]
    original_clip = arch_mod._clip

    def clip_as_float(grads, max_norm):
        return float(original_clip(grads, max_norm))

    arch_mod._clip = clip_as_float

    def construct_model_tied(self, theta):
        model_new = self.model.new()
        model_dict = self.model.state_dict()
        offset = 0
        for k, v in self.model.named_parameters():
            n = v.numel()
            model_dict[k] = theta[offset: offset + n].view(v.size())
            offset += n
        assert offset == len(theta)
        model_dict["decoder.weight"] = model_dict["encoder.weight"]  # the tied weight moves too
        model_new.load_state_dict(model_dict)
        return model_new

    arch_mod.Architect._construct_model_from_theta = construct_model_tied


def rnn_supernet(ref: dict[str, types.ModuleType], clip: float = 0.25, lr: float = 20.0, wdecay: float = 5e-7) -> dict:
    """Tiny reference recurrent supernet (dropouts 0): weights, windows, first/second-order alpha gradients."""
    _rnn_patches(ref)
    torch.manual_seed(7)
    ntokens, nhid, T, B = 24, 8, 6, 4
    model = ref["model_search"].RNNModelSearch(ntokens, nhid, nhid, nhid, 0.0, 0.0, 0.0, 0.0, 0.0)
    with torch.no_grad():
        model.weights.copy_(0.3 * torch.randn_like(model.weights))
    model.train()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    alphas = model.weights.detach().clone()
    xt, yt = torch.randint(0, ntokens, (T, B)), torch.randint(0, ntokens, (T, B))
    xv, yv = torch.randint(0, ntokens, (T, B)), torch.randint(0, ntokens, (T, B))
    ht, hv = 0.1 * torch.randn(1, B, nhid), 0.1 * torch.randn(1, B, nhid)

    args = types.SimpleNamespace(wdecay=wdecay, clip=clip, arch_lr=3e-3, arch_wdecay=1e-3)
    architect = ref["architect"].Architect(model, args)
    loss, _ = model._loss([hv], xv, yv.reshape(-1))
    loss.backward()
    first = model.weights.grad.clone()
    model.weights.grad = None

    # The clip coefficients the reference applies (for the record and the test's sanity checks).
    loss_t, _ = model._loss([ht], xt, yt.reshape(-1))
    g = torch.autograd.grad(loss_t, list(model.parameters()))
    train_norm = float(torch.sqrt(sum((t ** 2).sum() for t in g)))
    assert clip / (train_norm + 1e-6) < 1, "choose weights whose training gradient is clipped"

    optimizer = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wdecay)
    architect._backward_step_unrolled([ht], xt, yt.reshape(-1), [hv], xv, yv.reshape(-1), lr)
    second = model.weights.grad.clone()
    del optimizer
    return {"settings": {"ntokens": ntokens, "emsize": nhid, "nhid": nhid, "steps": 8, "lr": lr, "clip": clip,
                         "weight_decay": wdecay, "dropouts": 0.0, "train_grad_norm": train_norm},
            "params": params, "alphas": alphas,
            "x_train": xt, "y_train": yt, "hidden_train": ht, "x_valid": xv, "y_valid": yv, "hidden_valid": hv,
            "first_order": first, "second_order": second}


def rnn_keys(ref: dict[str, types.ModuleType]) -> dict:
    """state_dict keys and shapes of the reference recurrent evaluation model per published genotype."""
    genos = ref["genotypes"]
    out = {}
    for name, registry_name in (("DARTS_V1", "DARTS_V1_RNN"), ("DARTS_V2", "DARTS_V2_RNN"), ("ENAS", "ENAS_RNN")):
        model = ref["model"].RNNModel(30, 8, 8, 8, genotype=getattr(genos, name))
        out[registry_name] = shapes(model)
    return {"settings": {"ntokens": 30, "emsize": 8, "nhid": 8}, "models": out}


def reference_commit(ref: Path) -> str:
    """The checkout's HEAD commit, if it is a git checkout."""
    try:
        return subprocess.run(["git", "-C", str(ref), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout; pass --commit)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path, help="checkout of github.com/quark0/darts")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests" / "fixtures")
    parser.add_argument("--commit", help="the reference commit, when the checkout is an extracted archive")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    np.random.seed(0)
    patch_torch_for_cpu()
    args.out.mkdir(parents=True, exist_ok=True)

    cnn = import_reference(args.reference, "cnn")
    keys = network_keys(cnn)
    (args.out / "darts_reference_network_keys.json").write_text(json.dumps(keys, separators=(",", ":")) + "\n", encoding="utf-8")
    torch.save(amoeba_forward(cnn), args.out / "darts_reference_amoebanet_tiny.pt")
    torch.save(cnn_supernet(cnn), args.out / "darts_reference_cnn_supernet.pt")

    rnn = import_reference(args.reference, "rnn")
    (args.out / "darts_reference_rnn_keys.json").write_text(json.dumps(rnn_keys(rnn), separators=(",", ":")) + "\n", encoding="utf-8")
    torch.save(rnn_supernet(rnn), args.out / "darts_reference_rnn_supernet.pt")
    commit = args.commit or reference_commit(args.reference)
    info = {"reference": "github.com/quark0/darts", "commit": commit, "torch": torch.__version__,
            "dtype": "float64", "device": "cpu"}
    (args.out / "darts_reference_info.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    print(f"fixtures written to {args.out} (reference commit {commit}, torch {torch.__version__})")


if __name__ == "__main__":
    main()
