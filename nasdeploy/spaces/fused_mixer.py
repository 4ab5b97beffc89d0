"""The 'fused' NodeMixer: a search node's candidate ops mapped onto the fused mixed-node kernel.

Per edge, the conv candidates run eagerly up to (not including) their final BN, from one shared
ReLU of the edge input; the kernel then folds those BNs, computes the parameter-free candidates
(3x3 max/avg pool + BN, identity) from the edge input itself, and forms the weighted sum over all
edges in one reduction, with a backward that recomputes instead of storing. 'none' is skipped.
Anything it does not recognise (or BN in eval mode) is computed eagerly and summed as a raw term,
so the result always equals mix_node_reference.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from nasdeploy.kernels import MAX_EDGES, MAX_TERMS, Term, TermKind, mixed_node
from nasdeploy.ops import FactorizedReduce, Identity, Zero
from nasdeploy.ops.layout import MIN_CPU_CHANNELS_LAST
from nasdeploy.ops.autodeeplab import AtrousConv, downsample2
from nasdeploy.spaces.lean_ops import lean_conv_body
from nasdeploy.spaces.mixing import MixedEdge, NodeMixer, mix_node_reference

BN_EPS = 1e-5
FUSED_DTYPES = (torch.float32, torch.float64)
# Nodes narrower than MIN_CPU_CHANNELS_LAST are not turned channels-last on the CPU (a oneDNN heap bug in the
# 1x1 stride-2 conv, see nasdeploy.ops.layout); a caller that knows a node has no strided edge may hand it
# channels-last inputs (the PC-DARTS cell does).


@dataclass(frozen=True)
class FusionOptions:
    """Which fusion steps are on (each was benchmarked separately; see scripts/bench_mixed_op.py)."""

    fold_bn: bool = True  # conv candidates: the kernel applies their final BN(affine=False)
    pools_in_kernel: bool = True  # max/avg pool + BN and identity computed inside the kernel
    shared_relu: bool = True  # one ReLU per edge feeds every conv candidate
    # Run the node in channels-last (the convolutions follow their input's layout; CPU depthwise
    # convolutions are much faster so). None: on for CPU tensors, off for CUDA (measure there).
    channels_last: bool | None = None
    # Conv candidates keep only their input for backward, recomputing the rest there, and a strided skip keeps no
    # padded copy (spaces/lean_ops.py; equal up to rounding): less memory for a little time, worth it on narrow nodes
    # (PC-DARTS). None: on for CPU tensors, off for CUDA (measure there).
    recompute_op_bodies: bool | None = False

    def use_channels_last(self, device: torch.device, channels: int | None = None) -> bool:
        """Whether the mixer turns a node of `channels` channels on `device` into channels-last (a narrow node
        keeps the layout its inputs come in)."""
        if device.type == "cpu" and channels is not None and 1 < channels < MIN_CPU_CHANNELS_LAST:
            return False
        return self.channels_last if self.channels_last is not None else device.type == "cpu"

    def on_device(self, device: torch.device) -> "FusionOptions":
        """These options with recompute_op_bodies settled for `device`."""
        if self.recompute_op_bodies is not None:
            return self
        return replace(self, recompute_op_bodies=device.type == "cpu")


@dataclass(frozen=True)
class _Part:
    """How one candidate op enters the kernel."""

    kind: TermKind
    body: Callable[[torch.Tensor], torch.Tensor] | None = None  # z from the (ReLU'd) input
    bn: nn.BatchNorm2d | None = None


def _foldable(bn: nn.Module) -> bool:
    # Batch statistics without affine: the only BN the kernel folds (search-time BN in train mode).
    return isinstance(bn, nn.BatchNorm2d) and not bn.affine and bn.training and bn.eps == BN_EPS


def _pool_kind(op: nn.Module, stride: int) -> TermKind | None:
    if not (isinstance(op, nn.Sequential) and len(op) == 2 and _foldable(op[1])):
        return None
    pool = op[0]
    three = pool.kernel_size in (3, (3, 3)) and pool.padding in (1, (1, 1)) and pool.stride in (stride, (stride, stride))
    if isinstance(pool, nn.MaxPool2d) and three and pool.dilation in (1, (1, 1)) and not pool.ceil_mode:
        return TermKind.MAX_POOL_BN
    if isinstance(pool, nn.AvgPool2d) and three and not pool.ceil_mode and not pool.count_include_pad \
            and pool.divisor_override is None:
        return TermKind.AVG_POOL_BN
    return None


def _sequential_body(layers: Sequence[nn.Module]) -> Callable[[torch.Tensor], torch.Tensor]:
    def body(h: torch.Tensor) -> torch.Tensor:
        for layer in layers:
            h = layer(h)
        return h

    return body


def _factorized_body(op: FactorizedReduce, lean: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    # FactorizedReduce.forward without its ReLU and BN (a test checks it against the module). lean: on even sizes
    # the shifted branch's stride-2 1x1 conv reads the odd rows and columns of r as a stride-1 conv on a view, so
    # backward keeps no padded copy (the same sums; recompute_op_bodies).
    def body(r: torch.Tensor) -> torch.Tensor:
        if lean and r.shape[2] % 2 == 0 and r.shape[3] % 2 == 0:
            odd = F.conv2d(r[:, :, 1::2, 1::2], op.conv_2.weight, op.conv_2.bias)
            return torch.cat([op.conv_1(r), odd], dim=1)
        shifted = F.pad(r[:, :, 1:, 1:], (0, 1, 0, 1))
        return torch.cat([op.conv_1(r), op.conv_2(shifted)], dim=1)

    return body


def _atrous_body(op: AtrousConv) -> Callable[[torch.Tensor], torch.Tensor]:
    # AtrousConv.forward without its ReLU and BN (Auto-DeepLab's dense rate-2 conv).
    def body(r: torch.Tensor) -> torch.Tensor:
        return op.conv(downsample2(r) if op.stride == 2 else r)

    return body


def decompose(op: nn.Module, stride: int, options: FusionOptions) -> _Part | None:
    """The kernel term for one candidate op (None for 'none'); RAW when it cannot be fused."""
    if isinstance(op, Zero):
        return None
    if options.pools_in_kernel:
        if isinstance(op, Identity) and stride == 1:
            return _Part(TermKind.IDENTITY)
        kind = _pool_kind(op, stride)
        if kind is not None:
            return _Part(kind, bn=op[1])
    if options.fold_bn:
        seq = getattr(op, "op", None)
        if isinstance(seq, nn.Sequential) and len(seq) >= 3 and isinstance(seq[0], nn.ReLU) and _foldable(seq[-1]):
            layers = list(seq)[1:-1]
            lean = lean_conv_body(layers) if options.recompute_op_bodies else None
            return _Part(TermKind.BATCH_NORM, lean or _sequential_body(layers), seq[-1])
        if isinstance(op, FactorizedReduce) and _foldable(op.bn):
            return _Part(TermKind.BATCH_NORM, _factorized_body(op, options.recompute_op_bodies), op.bn)
        if isinstance(op, AtrousConv) and _foldable(op.bn):
            return _Part(TermKind.BATCH_NORM, _atrous_body(op), op.bn)
    return _Part(TermKind.RAW, op)


def _fusable(inputs: Sequence[torch.Tensor], edges: Sequence[MixedEdge], weights: torch.Tensor) -> bool:
    dtype = weights.dtype
    n_terms = sum(not isinstance(op, Zero) for edge in edges for op in edge._ops)
    return (
        len(edges) <= MAX_EDGES
        and n_terms <= MAX_TERMS
        and dtype in FUSED_DTYPES
        and all(x.dim() == 4 and x.dtype == dtype and x.device == weights.device for x in inputs)
        and not torch.is_autocast_enabled(weights.device.type)
    )


def _update_running_stats(bns: Sequence[nn.BatchNorm2d], mean: torch.Tensor, invstd: torch.Tensor, count: int) -> None:
    """What nn.BatchNorm2d does in training mode, from the kernel's batch statistics (batched: a
    node folds dozens of BNs, and one small op per buffer would cost more than the kernel saves)."""
    with torch.no_grad():
        var = ((invstd.double().pow(-2) - BN_EPS).clamp_min(0) * (count / max(count - 1, 1))).to(mean.dtype)
        rows = [i for i, bn in enumerate(bns) if bn.track_running_stats and bn.running_mean is not None]
        if not rows:
            return
        tracked = [bns[i] for i in rows]
        torch._foreach_add_([bn.num_batches_tracked for bn in tracked], 1)
        momenta = {bn.momentum for bn in tracked}
        if len(momenta) == 1 and None not in momenta and all(bn.running_mean.dtype == mean.dtype for bn in tracked):
            factor = momenta.pop()
            torch._foreach_lerp_([bn.running_mean for bn in tracked], list(mean[rows].unbind(0)), factor)
            torch._foreach_lerp_([bn.running_var for bn in tracked], list(var[rows].unbind(0)), factor)
            return
        for row, bn in zip(rows, tracked):  # mixed momenta / cumulative averages: one BN at a time
            factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.lerp_(mean[row].to(bn.running_mean.dtype), factor)
            bn.running_var.lerp_(var[row].to(bn.running_var.dtype), factor)


def make_fused_mixer(options: FusionOptions = FusionOptions(), devices: Sequence[str] = ("cpu",)) -> NodeMixer:
    """A NodeMixer using the fused kernel on `devices`; other devices, dtypes, autocast and nodes
    larger than the kernel's fixed argument tables take the reference path."""
    devices = tuple(devices)

    def mix_node_fused(inputs: Sequence[torch.Tensor], edges: Sequence[MixedEdge], weights: torch.Tensor,
                       relus: list[torch.Tensor | None] | None = None) -> torch.Tensor:
        if not _fusable(inputs, edges, weights) or weights.device.type not in devices:
            return mix_node_reference(inputs, edges, weights)
        n_cols = weights.shape[1]
        node_options = options.on_device(weights.device)
        if options.use_channels_last(weights.device, min(x.shape[1] for x in inputs)):
            converted = [x.contiguous(memory_format=torch.channels_last) for x in inputs]
            if any(c is not x for c, x in zip(converted, inputs)):
                relus = None  # the cache holds ReLUs of the inputs as given
            inputs = converted
        zs: list[torch.Tensor] = []
        terms: list[Term] = []
        stat_bns: list[nn.BatchNorm2d] = []
        for e, (x, edge) in enumerate(zip(inputs, edges)):
            relu_x = None
            for k, op in enumerate(edge._ops):
                part = decompose(op, edge.stride, node_options)
                if part is None:
                    continue
                terms.append(Term(part.kind, e, e * n_cols + k))
                if part.bn is not None:
                    stat_bns.append(part.bn)
                if part.kind == TermKind.RAW:
                    zs.append(part.body(x))
                elif part.kind == TermKind.BATCH_NORM:
                    if options.shared_relu:
                        if relu_x is None and relus is not None:
                            relu_x = relus[e] = F.relu(x) if relus[e] is None else relus[e]
                        relu_x = F.relu(x) if relu_x is None else relu_x
                        zs.append(part.body(relu_x))
                    else:
                        zs.append(part.body(F.relu(x)))
        if not terms:
            raise ValueError("a node needs at least one edge with a non-'none' op")
        out, mean, invstd = mixed_node(list(inputs), [edge.stride for edge in edges], zs, weights, terms, BN_EPS)
        if stat_bns:
            _update_running_stats(stat_bns, mean, invstd, out.shape[0] * out.shape[2] * out.shape[3])
        return out

    return mix_node_fused
