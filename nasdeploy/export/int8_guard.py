"""The INT8 accuracy guard: when INT8 loses more than max_drop points, keep the most sensitive layers in float.

Method, chosen to stay affordable on the export machine:
1. rank (quantize one at a time, in PyTorch): each Conv/Linear layer alone gets INT8 numerics (its weight
   fake-quantized per output channel, symmetric; its input per tensor, asymmetric over the range seen on the
   calibration images) and the distance of the logits from the float model's (mean squared error) on a
   validation subset says how much that layer alone hurts: one forward pass of the subset per layer;
2. refine (leave one in float, in the real quantizer): the `shortlist` most sensitive layers are each left in
   float alone and the INT8 model's logits compared with float on the same subset;
3. keep: layers go into the float set in the refined order, the model is quantized again and scored on the
   whole validation sample after each, until the drop is within max_drop or max_layers are kept (then the
   best set is kept and the guard says it could not meet the limit).
Per-channel symmetric weight quantization commutes with a per-channel scale, so ranking the unfolded model
ranks the BN-folded layers the runtimes quantize.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from nasdeploy.export.parity import Runner
from nasdeploy.export.samples import Batch
from nasdeploy.utils.model_cost import is_auxiliary

METHOD = ("rank Conv/Linear layers by quantizing one at a time in PyTorch (logits MSE vs float on a validation "
          "subset), leave each of the most sensitive in float alone in the real quantizer, then keep them in float "
          "in that order until the drop is within the limit (scored on the whole validation sample)")


def top1(run: Runner, batches: Sequence[Batch]) -> float:
    """Top-1 accuracy of `run` (first output = logits) over labelled batches."""
    correct = total = 0
    for x, y in batches:
        logits = run(x)[0]
        correct += int((logits.argmax(1) == y).sum())
        total += len(y)
    return correct / total if total else float("nan")


def logits_mse(run: Runner, batches: Sequence[Batch], reference: Sequence[np.ndarray]) -> float:
    """Mean squared distance of `run`'s logits from reference logits (one array per batch)."""
    errors = [float(np.mean((run(x)[0].astype(np.float64) - ref) ** 2)) for (x, _), ref in zip(batches, reference)]
    return float(np.mean(errors)) if errors else float("nan")


def quantizable_layers(model: nn.Module) -> list[str]:
    """Conv2d / Linear module paths of the inference graph (auxiliary heads left out), in module order."""
    return [name for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and not is_auxiliary(name)]


def _input_ranges(model: nn.Module, layers: Sequence[str], images: Sequence[np.ndarray]) -> dict[str, tuple[float, float]]:
    """min / max of each layer's input over the calibration images."""
    ranges: dict[str, tuple[float, float]] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            lo, hi = float(args[0].min()), float(args[0].max())
            old = ranges.get(name, (lo, hi))
            ranges[name] = (min(old[0], lo), max(old[1], hi))
        return record

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in layers]
    try:
        with torch.no_grad():
            for x in images:
                model(torch.from_numpy(np.ascontiguousarray(x)))
    finally:
        for h in handles:
            h.remove()
    return ranges


def _fake_int8_input(lo: float, hi: float) -> Callable[..., tuple[torch.Tensor, ...]]:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-8) / 255.0
    zero = int(round(-128 - lo / scale))

    def pre(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (torch.fake_quantize_per_tensor_affine(args[0], scale, zero, -128, 127), *args[1:])
    return pre


def _fake_int8_weight(weight: torch.Tensor) -> torch.Tensor:
    flat = weight.detach().reshape(weight.shape[0], -1)
    scale = (flat.abs().amax(dim=1) / 127.0).clamp_min(1e-12).float()
    zeros = torch.zeros(weight.shape[0], dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight.detach(), scale, zeros, 0, -127, 127)


def rank_layers(model: nn.Module, calibration: Sequence[np.ndarray], subset: Sequence[Batch],
                layers: Sequence[str] | None = None) -> list[tuple[str, float]]:
    """(layer, logits MSE vs float with only that layer in INT8), most sensitive first (step 1 of the guard)."""
    model = model.eval()
    layers = list(layers) if layers is not None else quantizable_layers(model)
    ranges = _input_ranges(model, layers, calibration)

    def run(x: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            return [model(torch.from_numpy(np.ascontiguousarray(x))).numpy()]

    reference = [run(x)[0].astype(np.float64) for x, _ in subset]
    scores = []
    for name in layers:
        module = model.get_submodule(name)
        saved = module.weight.data
        handle = module.register_forward_pre_hook(_fake_int8_input(*ranges.get(name, (0.0, 0.0))))
        module.weight.data = _fake_int8_weight(saved)
        try:
            scores.append((name, logits_mse(run, subset, reference)))
        finally:
            module.weight.data = saved
            handle.remove()
    return sorted(scores, key=lambda item: -item[1])


@dataclass(frozen=True)
class GuardStep:
    """One re-quantization of the guard: the layers kept in float, the INT8 metric and its drop (points)."""

    kept: tuple[str, ...]
    metric: float
    drop: float


@dataclass(frozen=True)
class AccuracyGuard:
    """What the accuracy guard did: the limit, the drop before and after, the layers kept in float, every step."""

    max_drop: float
    float_metric: float
    first_drop: float  # points lost by the fully quantized model
    kept_in_float: tuple[str, ...]
    int8_metric: float
    drop: float  # points lost with kept_in_float left in float
    within: bool
    steps: tuple[GuardStep, ...] = ()
    shortlist: tuple[tuple[str, float], ...] = ()  # (layer, logits MSE when left in float alone), best first
    method: str = METHOD

    def line(self, advice: bool = True) -> str:
        """One line: within the limit or not, and which layers stayed in float (advice: say to use float if not)."""
        if not self.kept_in_float and self.within:
            return f"accuracy: INT8 {_change(self.drop)}, within the {self.max_drop:g}-point limit"
        kept = f"{len(self.kept_in_float)} layer(s) kept in float ({', '.join(self.kept_in_float)})"
        if self.within:
            return (f"accuracy: INT8 lost {self.first_drop:.2f} points (limit {self.max_drop:g}); with {kept} it "
                    f"{_change(self.drop)}")
        tail = ": over the limit" + (", use the float model" if advice else "")
        if not self.kept_in_float:  # no layer left in float brought the drop down
            return (f"accuracy: INT8 loses {self.first_drop:.2f} points (limit {self.max_drop:g}); no layer kept in "
                    f"float helped" + tail)
        return (f"accuracy: INT8 loses {self.first_drop:.2f} points (limit {self.max_drop:g}); with {kept} still "
                f"{self.drop:.2f} points" + tail)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with the one-line verdict."""
        return {**asdict(self), "line": self.line()}


def _change(drop: float) -> str:
    """A drop in points as words: 'loses 0.40 points' or, for a negative drop, 'gains 0.20 points'."""
    return f"loses {drop:.2f} points" if drop >= 0 else f"gains {-drop:.2f} points"


def points(float_metric: float, int8_metric: float) -> float:
    """Points of the metric lost by INT8 (positive = worse), rounded so that 1.0 - 0.99 is 1 point, not 1 + 1e-15."""
    return round(100.0 * (float_metric - int8_metric), 9)


def keep_in_float(ranked: Sequence[str], build: Callable[[tuple[str, ...]], Runner], float_runner: Runner,
                  float_metric: float, first_metric: float, validation: Sequence[Batch], subset: Sequence[Batch], *,
                  max_drop: float, shortlist: int = 4, max_layers: int = 8,
                  say: Callable[[str], None] = lambda _m: None) -> AccuracyGuard:
    """Steps 2 and 3 of the guard over layers ranked most sensitive first; `build(kept)` quantizes with `kept` in float.

    The INT8 file `build` writes last is the one of the kept set the result names (the caller re-runs build
    for it when it is not the last one built).
    """
    reference = [float_runner(x)[0].astype(np.float64) for x, _ in subset]
    refined = [(name, logits_mse(build((name,)), subset, reference)) for name in ranked[:shortlist]]
    refined.sort(key=lambda item: item[1])
    order = [name for name, _ in refined] + [n for n in ranked[shortlist:] if n not in dict(refined)]
    say("left in float alone: " + ", ".join(f"{n} (logits MSE {mse:.3g})" for n, mse in refined))
    steps: list[GuardStep] = []
    kept: tuple[str, ...] = ()
    for name in order[:max_layers]:
        kept = (*kept, name)
        metric = top1(build(kept), validation)
        steps.append(GuardStep(kept, metric, points(float_metric, metric)))
        say(f"{len(kept)} layer(s) in float: top-1 {100 * metric:.2f}% (drop {steps[-1].drop:.2f} points)")
        if steps[-1].drop <= max_drop:
            break
    best = min(steps, key=lambda s: (s.drop > max_drop, len(s.kept) if s.drop <= max_drop else s.drop)) if steps else None
    first_drop = points(float_metric, first_metric)
    if best is None or best.drop >= first_drop:
        build(())  # nothing helped: the fully quantized model stays
        return AccuracyGuard(max_drop, float_metric, first_drop, (), first_metric, first_drop, False, tuple(steps),
                             tuple(refined))
    if best is not steps[-1]:
        build(best.kept)
    return AccuracyGuard(max_drop, float_metric, first_drop, best.kept, best.metric, best.drop,
                         best.drop <= max_drop, tuple(steps), tuple(refined))
