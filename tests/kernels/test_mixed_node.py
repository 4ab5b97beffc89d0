"""Fused mixed-node kernels against their plain-torch definition and against the eager mixed op.

Tolerances: float64 results agree with the definition to 1e-10 (they differ only in summation
order); float32 to rtol 1e-4 / atol 1e-5 (batch-norm statistics over a few hundred values and
seven to forty weighted terms, each rounded in float32: errors seen are ~2e-6).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from nasdeploy.genotypes.primitives import CNN_PRIMITIVES
from nasdeploy.kernels.build import compiler_available
from nasdeploy.kernels.terms import Term, TermKind
from nasdeploy.spaces import mixer_table
from nasdeploy.spaces.mixing import MixedEdge, mix_node_reference

F64 = dict(rtol=1e-10, atol=1e-10)
F32 = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="session")
def ext():
    """The extension, built once per session (skips, with the reason, where nothing can compile it)."""
    if not compiler_available():
        pytest.skip("no C++ compiler/ninja: the fused kernels cannot be built here (reference path is used)")
    from nasdeploy.kernels import load_mixed_node

    return load_mixed_node()


def all_terms(edge: int, n_cols: int, stride: int) -> list[Term]:
    """Every term kind on one edge (identity only at stride 1), like a DARTS edge."""
    base = edge * n_cols
    kinds = [TermKind.MAX_POOL_BN, TermKind.AVG_POOL_BN]
    kinds += [TermKind.IDENTITY] if stride == 1 else [TermKind.RAW]
    kinds += [TermKind.BATCH_NORM, TermKind.BATCH_NORM, TermKind.RAW]
    return [Term(k, edge, base + 1 + i) for i, k in enumerate(kinds)]


def make_node(dtype, n=3, c=4, h=7, w=5, strides=(2, 1), layout="nchw", seed=0):
    """Random edge inputs (stride-2 edges at twice the size, odd sizes), zs, weights and terms."""
    g = torch.Generator().manual_seed(seed)
    ho, wo = h, w
    xs, zs, terms = [], [], []
    for e, s in enumerate(strides):
        xs.append(torch.randn(n, c, ho * s - (s - 1), wo * s, generator=g, dtype=dtype))
        for t in all_terms(e, 8, s):
            terms.append(t)
            if t.kind in (TermKind.RAW, TermKind.BATCH_NORM):
                zs.append(2 * torch.randn(n, c, ho, wo, generator=g, dtype=dtype) + 0.5)
    weights = torch.rand(len(strides), 8, generator=g, dtype=dtype)
    if layout == "channels_last":
        xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
        zs = [z.contiguous(memory_format=torch.channels_last) for z in zs]
    elif layout == "strided":  # non-contiguous views of larger tensors
        xs = [torch.randn(n, c, x.shape[3], x.shape[2] + 1, generator=g, dtype=dtype).transpose(2, 3)[:, :, :-1]
              .copy_(x) for x in xs]
        zs = [torch.randn(n, 2 * c, ho, wo, generator=g, dtype=dtype)[:, ::2].copy_(z) for z in zs]
        assert not xs[0].is_contiguous() and not zs[0].is_contiguous()
    return xs, list(strides), zs, weights, terms


def run_both(xs, strides, zs, weights, terms):
    """Forward and backward of the fused op and of its definition on the same inputs and output grad."""
    from nasdeploy.kernels import mixed_node, reference_mixed_node

    results = []
    for fn in (mixed_node, reference_mixed_node):
        leaves = [t.detach().clone().requires_grad_(True) for t in (*xs, *zs, weights)]
        lx, lz, lw = leaves[:len(xs)], leaves[len(xs):-1], leaves[-1]
        out, mean, invstd = fn(lx, strides, lz, lw, terms)
        grad = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
        grads = torch.autograd.grad(out, leaves, grad)
        results.append((out, mean, invstd, grads))
    return results


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, F64), (torch.float32, F32)])
def test_forward_and_backward_match_the_definition(ext, layout, dtype, tol):
    fused, ref = run_both(*make_node(dtype, layout=layout))
    torch.testing.assert_close(fused[0], ref[0], **tol)
    torch.testing.assert_close(fused[1], ref[1], **tol)
    torch.testing.assert_close(fused[2], ref[2], **tol)
    for a, b in zip(fused[3], ref[3]):
        torch.testing.assert_close(a, b, **tol)
    if layout == "channels_last":
        assert fused[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, F64), (torch.float32, F32)])
def test_cuda_code_paths_emulated_on_the_cpu_match_the_definition(ext, monkeypatch, layout, dtype, tol):
    """The CUDA threads' per-element bodies, dp/argmax buffers and gathers, run serially on the CPU."""
    monkeypatch.setenv("NASDEPLOY_EMULATE_CUDA", "1")
    fused, ref = run_both(*make_node(dtype, layout=layout))
    torch.testing.assert_close(fused[0], ref[0], **tol)
    torch.testing.assert_close(fused[2], ref[2], **tol)
    for a, b in zip(fused[3], ref[3]):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("shape", [dict(n=1, c=3, h=1, w=1), dict(n=1, c=1, h=4, w=3), dict(n=2, c=5, h=2, w=9)])
def test_batch_one_tiny_and_odd_shapes(ext, shape):
    fused, ref = run_both(*make_node(torch.float64, **shape))
    torch.testing.assert_close(fused[0], ref[0], **F64)
    for a, b in zip(fused[3], ref[3]):
        torch.testing.assert_close(a, b, **F64)


def test_zero_weighted_ops_still_get_weight_gradients(ext):
    xs, strides, zs, weights, terms = make_node(torch.float64)
    weights[0, 1:5] = 0.0  # the first edge's max/avg pool, identity and one BN term contribute nothing
    fused, ref = run_both(xs, strides, zs, weights, terms)
    torch.testing.assert_close(fused[0], ref[0], **F64)
    grad_w = fused[3][-1]
    assert (grad_w[0, 1:5] != 0).all()  # d out / d w = y, whatever w is
    torch.testing.assert_close(grad_w, ref[3][-1], **F64)
    assert (grad_w[:, 0] == 0).all() and (grad_w[:, 7] == 0).all()  # columns without a term


def test_gradcheck_float64_through_the_cpu_launcher(ext):
    from nasdeploy.kernels import mixed_node

    xs, strides, zs, weights, terms = make_node(torch.float64, n=2, c=2, h=3, w=3)
    leaves = [t.requires_grad_(True) for t in (*xs, *zs, weights)]

    def fn(*args):
        return mixed_node(args[:len(xs)], strides, args[len(xs):-1], args[-1], terms)[0]

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7)


def test_double_backward_uses_the_differentiable_definition(ext):
    from nasdeploy.kernels import mixed_node

    xs, strides, zs, weights, terms = make_node(torch.float64, n=2, c=2, h=3, w=3, strides=(1,))
    leaves = [t.requires_grad_(True) for t in (*xs, *zs, weights)]
    assert torch.autograd.gradgradcheck(
        lambda *a: mixed_node(a[:1], strides, a[1:-1], a[-1], terms)[0], leaves, eps=1e-6, atol=1e-6)


def test_opcheck_schema_fake_and_autograd_registration(ext):
    xs, strides, zs, weights, terms = make_node(torch.float32, n=2, c=3, h=4, w=4)
    args = ([x.requires_grad_(True) for x in xs], strides, [z.requires_grad_(True) for z in zs],
            weights.requires_grad_(True), [int(t.kind) for t in terms], [t.edge for t in terms],
            [t.wcol for t in terms], 1e-5)
    torch.library.opcheck(torch.ops.nasdeploy.mixed_node_fwd.default, args)


def test_results_are_bitwise_reproducible_across_runs_and_thread_counts(ext):
    xs, strides, zs, weights, terms = make_node(torch.float32, n=4, c=8, h=16, w=16)
    previous = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2, 2):
            torch.set_num_threads(threads)
            out, _, _, grads = run_both(xs, strides, zs, weights, terms)[0]
            runs.append((out, grads))
    finally:
        torch.set_num_threads(previous)
    for out, grads in runs[1:]:
        assert torch.equal(out, runs[0][0])
        assert all(torch.equal(a, b) for a, b in zip(grads, runs[0][1]))


def test_bad_inputs_raise_one_clear_error(ext):
    from nasdeploy.kernels import mixed_node

    xs, strides, zs, weights, terms = make_node(torch.float32)
    with pytest.raises(RuntimeError, match="mixed_node: op output 1 has shape"):
        mixed_node(xs, strides, [zs[0], zs[1][:, :, :-1]] + zs[2:], weights, terms)
    with pytest.raises(RuntimeError, match="identity terms need stride 1"):
        mixed_node(xs, strides, zs, weights, [Term(TermKind.IDENTITY, 0, 1)])
    with pytest.raises(RuntimeError, match="float32 or float64"):
        mixed_node([x.half() for x in xs], strides, [z.half() for z in zs], weights.half(), terms)


# ---- NaN and infinity: the fused op follows PyTorch's reference path, in bounds ------------------
# PyTorch's max_pool2d (checked on the CPU): a window holding NaN outputs NaN and sends its gradient to
# its last NaN; else the first maximum wins; a window of -inf reports its first position. Max-pool
# terms carry a batch norm, so a non-finite max turns the whole channel NaN and the argmax shows up
# as the NaN-or-zero pattern of dL/dx, which assert_close(equal_nan=True) compares exactly.

NAN, INF = float("nan"), float("inf")
NONFINITE_TERMS = {
    "all": lambda: all_terms(0, 8, 2) + all_terms(1, 8, 1),
    "max_pool": lambda: [Term(TermKind.MAX_POOL_BN, 0, 1), Term(TermKind.MAX_POOL_BN, 1, 9)],
    "avg_pool": lambda: [Term(TermKind.AVG_POOL_BN, 0, 2), Term(TermKind.AVG_POOL_BN, 1, 10)],
    "identity": lambda: [Term(TermKind.IDENTITY, 1, 11), Term(TermKind.RAW, 0, 4)],
}


def poison(x: torch.Tensor, case: str) -> None:
    """Write NaN / +-inf into a (2, 4, H, W) tensor in place; channel 1 stays finite but for one -inf."""
    if case == "nan_border":
        x[-1, -1, -1, -1] = NAN  # bottom-right corner of the last plane: its window has no row/column +1
        x[0, 0, 0, 0] = NAN
        x[0, 2, -1, 0] = NAN
        x[1, 0, 0, -1] = NAN
        x[0, 3, 1, 1] = x[0, 3, 1, 2] = NAN  # two NaNs in one window: the gradient goes to the last
    elif case == "nan_windows":
        x[0, 0, 1:4, 1:4] = NAN  # all-NaN windows inside
        x[1, 3] = NAN  # a whole plane, border windows included
        x[0, 2, -2:, -2:] = NAN  # all-NaN bottom-right corner window
    elif case == "inf":
        x[0, 0, 1, 1] = x[0, 0, 1, 2] = INF  # a tie of +inf: the first wins
        x[1, 2, :3, :3] = -INF  # all--inf windows at the top-left corner
        x[1, 3, -1, -1], x[1, 3, -1, -2] = INF, -INF
        x[0, 1, 2, 2] = -INF  # never a whole window: the max stays finite
    else:
        raise ValueError(case)


def nonfinite_node(case: str, terms_name: str, dtype, layout: str):
    """Edges at stride 2 (9 x 7 input, odd sizes) and 1 (5 x 4) into a 5 x 4 node, NaN / inf poisoned."""
    g = torch.Generator().manual_seed(5)
    xs = [torch.randn(2, 4, 9, 7, generator=g, dtype=dtype), torch.randn(2, 4, 5, 4, generator=g, dtype=dtype)]
    terms = NONFINITE_TERMS[terms_name]()
    n_z = sum(t.kind in (TermKind.RAW, TermKind.BATCH_NORM) for t in terms)
    zs = [torch.randn(2, 4, 5, 4, generator=g, dtype=dtype) for _ in range(n_z)]
    for x in xs + zs[:2]:
        poison(x, case)
    weights = torch.rand(2, 8, generator=g, dtype=dtype) + 0.1
    if layout == "channels_last":
        xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
        zs = [z.contiguous(memory_format=torch.channels_last) for z in zs]
    return xs, [2, 1], zs, weights, terms


def run_both_unused(xs, strides, zs, weights, terms):
    """run_both, where some inputs may feed no term (their gradient: zeros)."""
    from nasdeploy.kernels import mixed_node, reference_mixed_node

    results = []
    for fn in (mixed_node, reference_mixed_node):
        leaves = [t.detach().clone().requires_grad_(True) for t in (*xs, *zs, weights)]
        out, mean, invstd = fn(leaves[:len(xs)], strides, leaves[len(xs):-1], leaves[-1], terms)
        grad = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
        grads = torch.autograd.grad(out, leaves, grad, allow_unused=True, materialize_grads=True)
        results.append((out, mean, invstd, grads))
    return results


@pytest.mark.parametrize("path", ["cpu", "cuda_emulated"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("terms_name", sorted(NONFINITE_TERMS))
@pytest.mark.parametrize("case", ["nan_border", "nan_windows", "inf"])
def test_nonfinite_inputs_match_the_reference_path(ext, monkeypatch, path, layout, terms_name, case):
    if path == "cuda_emulated":
        monkeypatch.setenv("NASDEPLOY_EMULATE_CUDA", "1")
    args = nonfinite_node(case, terms_name, torch.float64, layout)
    fused, ref = run_both_unused(*args)
    assert not torch.isfinite(ref[0]).all()  # the case does reach the output...
    assert torch.isfinite(ref[0][:, 1]).any() or terms_name != "max_pool"  # ...and some channel stays finite
    names = ["out", "mean", "invstd"] + [f"grad {i}" for i in range(len(ref[3]))]
    for name, a, b in zip(names, [*fused[:3], *fused[3]], [*ref[:3], *ref[3]]):
        torch.testing.assert_close(a, b, equal_nan=True, **F64, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("path", ["cpu", "cuda_emulated"])
def test_nonfinite_float32_max_pool_argmax_follows_pytorch(ext, monkeypatch, path):
    """The max-pool gradient lands where torch's max_pool2d puts it (NaN: the last NaN of the window)."""
    if path == "cuda_emulated":
        monkeypatch.setenv("NASDEPLOY_EMULATE_CUDA", "1")
    xs, strides, zs, weights, terms = nonfinite_node("nan_border", "max_pool", torch.float32, "nchw")
    fused, ref = run_both_unused(xs, strides, zs, weights, terms)
    for a, b in zip([fused[0], *fused[3]], [ref[0], *ref[3]]):
        torch.testing.assert_close(a, b, equal_nan=True, **F32)
    # Independently of reference_mixed_node: the NaN entries of dL/dx are max_pool2d's argmaxes.
    for x, s, gx in zip(xs, strides, fused[3][:2]):
        _, idx = torch.nn.functional.max_pool2d(x, 3, s, 1, return_indices=True)
        hit = torch.zeros(x.shape, dtype=torch.bool).flatten(2)
        hit.scatter_(2, idx.flatten(2), True)
        nan_channels = torch.isnan(x).flatten(2).any(2).any(0)  # BN over (N, H, W): the channel turns NaN
        assert torch.equal(torch.isnan(gx)[:, nan_channels], hit.view(x.shape)[:, nan_channels])


# ---- the 'fused' NodeMixer -------------------------------------------------------------------------

def node_edges(channels: int, strides, seed: int = 0) -> nn.ModuleList:
    torch.manual_seed(seed)
    return nn.ModuleList(MixedEdge(CNN_PRIMITIVES, channels, s) for s in strides)


@pytest.mark.parametrize("strides", [(1, 1, 1), (2, 2, 1)], ids=["normal", "reduction"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_mixer_matches_the_eager_mixed_op(ext, one_thread, strides, channels_last):
    from nasdeploy.spaces.fused_mixer import FusionOptions, make_fused_mixer

    fused_mixer = make_fused_mixer(FusionOptions(channels_last=channels_last))
    c, size = 8, 6  # >= MIN_CPU_CHANNELS_LAST, so channels-last really runs
    edges_ref = node_edges(c, strides)
    edges_fused = copy.deepcopy(edges_ref)
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(3, c, size * s, size * s, generator=g) for s in strides]
    alphas = torch.randn(len(strides), len(CNN_PRIMITIVES), generator=g)
    outs, grads = [], []
    for mixer, edges in ((mix_node_reference, edges_ref), (fused_mixer, edges_fused)):
        leaves = [x.clone().requires_grad_(True) for x in xs] + [alphas.clone().requires_grad_(True)]
        out = mixer(leaves[:-1], list(edges), leaves[-1].softmax(-1))
        params = list(edges.parameters())
        grads.append(torch.autograd.grad(out.square().sum(), leaves + params))
        outs.append(out)
    torch.testing.assert_close(outs[1], outs[0], **F32)
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # The folded batch norms update their running statistics as nn.BatchNorm2d does.
    for (name, a), b in zip(edges_ref.state_dict().items(), edges_fused.state_dict().values()):
        torch.testing.assert_close(b.double(), a.double(), rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_fused_mixer_updates_running_statistics_like_batchnorm(ext, momentum):
    from nasdeploy.spaces.fused_mixer import make_fused_mixer

    edges_ref = node_edges(4, (1, 2))
    for m in edges_ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = momentum
    edges_fused = copy.deepcopy(edges_ref)
    w = torch.rand(2, len(CNN_PRIMITIVES))
    for step in range(3):
        xs = [torch.randn(4, 4, 5, 5), torch.randn(4, 4, 10, 10)]
        mix_node_reference(xs, list(edges_ref), w)
        make_fused_mixer()(xs, list(edges_fused), w)
    for (name, a), b in zip(edges_ref.state_dict().items(), edges_fused.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def test_fused_mixer_on_auto_deeplab_edges(ext, one_thread):
    """Another op family (dense atrous convs): folded where the op has the ReLU..BN shape, else raw."""
    from nasdeploy.genotypes.autodeeplab import AUTODEEPLAB_PRIMITIVES
    from nasdeploy.ops.autodeeplab import build_autodeeplab_op
    from nasdeploy.spaces.fused_mixer import make_fused_mixer

    torch.manual_seed(0)
    edges_ref = nn.ModuleList(MixedEdge(AUTODEEPLAB_PRIMITIVES, 4, 1, build_autodeeplab_op) for _ in range(3))
    edges_fused = copy.deepcopy(edges_ref)
    xs = [torch.randn(2, 4, 9, 9) for _ in range(3)]
    alphas = torch.randn(3, len(AUTODEEPLAB_PRIMITIVES))
    results = []
    for mixer, edges in ((mix_node_reference, edges_ref), (make_fused_mixer(), edges_fused)):
        leaves = [x.clone().requires_grad_(True) for x in xs] + [alphas.clone().requires_grad_(True)]
        out = mixer(leaves[:-1], list(edges), leaves[-1].softmax(-1))
        results.append((out, torch.autograd.grad(out.square().sum(), leaves + list(edges.parameters()))))
    torch.testing.assert_close(results[1][0], results[0][0], **F32)
    for a, b in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_fused_mixer_takes_the_reference_path_for_nodes_beyond_the_kernel_tables(ext, monkeypatch):
    from nasdeploy.kernels import MAX_EDGES
    from nasdeploy.spaces import fused_mixer

    calls = []
    monkeypatch.setattr(fused_mixer, "mix_node_reference", lambda *a: calls.append(1) or mix_node_reference(*a))
    edges = node_edges(2, (1,) * (MAX_EDGES + 1))
    xs = [torch.randn(1, 2, 3, 3) for _ in edges]
    out = fused_mixer.make_fused_mixer()(xs, list(edges), torch.rand(len(edges), len(CNN_PRIMITIVES)))
    assert calls and out.shape == (1, 2, 3, 3)


def test_fused_mixer_never_runs_the_none_op(ext, monkeypatch):
    from nasdeploy.ops import Zero
    from nasdeploy.spaces.fused_mixer import make_fused_mixer

    def boom(self, x):
        raise AssertionError("the 'none' op must be skipped, not multiplied by 0")

    monkeypatch.setattr(Zero, "forward", boom)
    edges = node_edges(4, (1, 2))
    xs = [torch.randn(2, 4, 4, 4), torch.randn(2, 4, 8, 8)]
    make_fused_mixer()(xs, list(edges), torch.rand(2, len(CNN_PRIMITIVES)))


def test_fused_mixer_in_eval_mode_equals_reference(ext):
    from nasdeploy.spaces.fused_mixer import make_fused_mixer

    edges = node_edges(4, (1, 1)).eval()
    xs = [torch.randn(2, 4, 5, 5) for _ in range(2)]
    w = torch.rand(2, len(CNN_PRIMITIVES))
    with torch.no_grad():
        torch.testing.assert_close(make_fused_mixer()(xs, list(edges), w), mix_node_reference(xs, list(edges), w), **F32)


def test_env_var_and_auto_choose_the_implementation(ext, monkeypatch):
    monkeypatch.setenv("NASDEPLOY_MIXED_OP", "reference")
    assert mixer_table.get_node_mixer()[0] == "reference"
    monkeypatch.setenv("NASDEPLOY_MIXED_OP", "fused")
    assert mixer_table.get_node_mixer()[0] == "fused"
    monkeypatch.delenv("NASDEPLOY_MIXED_OP")
    assert mixer_table.get_node_mixer()[0] == "fused"  # auto: fused when it can be built


def test_auto_falls_back_to_reference_with_one_warning_when_the_build_fails(monkeypatch):
    from types import MappingProxyType

    def broken(_recompute_op_bodies):
        raise RuntimeError("no C++ compiler or ninja on PATH\ndetails")

    monkeypatch.setattr(mixer_table, "MIXERS", MappingProxyType({**mixer_table.MIXERS, "fused": broken}))
    monkeypatch.delenv("NASDEPLOY_MIXED_OP", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        name, mixer = mixer_table.get_node_mixer("auto")
    assert name == "reference" and mixer is mix_node_reference
    assert len(caught) == 1 and "no C++ compiler" in str(caught[0].message)
    from nasdeploy.errors import ConfigError

    with pytest.raises(ConfigError, match="'fused' is unavailable: no C\\+\\+ compiler"):
        mixer_table.get_node_mixer("fused")


# ---- a whole search step ---------------------------------------------------------------------------

@pytest.mark.parametrize("order", ["first", "second"])
def test_search_step_fused_and_reference_give_the_same_alphas(ext, one_thread, order):
    from nasdeploy.search.architect import Architect, ArchitectConfig
    from nasdeploy.search.step import classification_loss, search_step
    from nasdeploy.spaces.darts_cnn import DartsCnnSupernet

    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(2)]
    states = {}
    for impl in ("reference", "fused"):
        torch.manual_seed(0)  # same initial weights and alphas
        model = DartsCnnSupernet(channels=4, layers=3, steps=4, multiplier=4, alpha_init_scale=0.5, mixed_op=impl)
        assert model.mixed_op == impl
        params = model.weight_parameters()
        opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=3e-4)
        architect = Architect(model, classification_loss, opt, ArchitectConfig(order=order, lr=0.1))
        alphas0 = [a.detach().clone() for a in model.arch_parameters()]
        for _ in range(2):
            search_step(model, architect, opt, params, batches[0], batches[1], lr=0.05, grad_clip=5.0)
        states[impl] = model.state_dict()
    ref, fused = states["reference"], states["fused"]
    for key in ("alphas_normal", "alphas_reduce"):
        moved = (ref[key] - alphas0[0 if key == "alphas_normal" else 1]).abs().max()
        assert moved > 1e-3  # the step did move the alphas...
        torch.testing.assert_close(fused[key], ref[key], rtol=0, atol=1e-5)  # ...the same way
    for key in ref:
        torch.testing.assert_close(fused[key].double(), ref[key].double(), rtol=1e-3, atol=1e-4, msg=key)


# ---- CUDA (skipped without a GPU; run by scripts/gpu_check.sh) ---------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, F64), (torch.float32, F32)])
def test_cuda_matches_the_definition(ext, layout, dtype, tol):
    if not ext.cuda:
        pytest.fail("the extension was built without CUDA kernels on a GPU machine")
    xs, strides, zs, weights, terms = make_node(dtype, n=4, c=8, h=9, w=7, layout=layout)
    cuda = [[t.cuda() for t in xs], strides, [t.cuda() for t in zs], weights.cuda(), terms]
    fused, ref = run_both(*cuda)
    torch.testing.assert_close(fused[0], ref[0], **tol)
    for a, b in zip(fused[3], ref[3]):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.cuda
def test_cuda_is_bitwise_deterministic_and_agrees_with_cpu(ext):
    xs, strides, zs, weights, terms = make_node(torch.float32, n=8, c=16, h=16, w=16)
    cpu = run_both(xs, strides, zs, weights, terms)[0]
    cuda_args = ([t.cuda() for t in xs], strides, [t.cuda() for t in zs], weights.cuda(), terms)
    first, second = run_both(*cuda_args)[0], run_both(*cuda_args)[0]
    assert torch.equal(first[0], second[0])
    assert all(torch.equal(a, b) for a, b in zip(first[3], second[3]))
    torch.testing.assert_close(first[0].cpu(), cpu[0], **F32)
    for a, b in zip(first[3], cpu[3]):
        torch.testing.assert_close(a.cpu(), b, **F32)


@pytest.mark.cuda
def test_cuda_opcheck(ext):
    xs, strides, zs, weights, terms = make_node(torch.float32, n=2, c=3, h=4, w=4)
    args = ([x.cuda().requires_grad_(True) for x in xs], strides, [z.cuda().requires_grad_(True) for z in zs],
            weights.cuda().requires_grad_(True), [int(t.kind) for t in terms], [t.edge for t in terms],
            [t.wcol for t in terms], 1e-5)
    torch.library.opcheck(torch.ops.nasdeploy.mixed_node_fwd.default, args)


@pytest.mark.cuda
def test_cuda_fused_mixer_matches_the_eager_mixed_op(ext):
    from nasdeploy.spaces.fused_mixer import make_fused_mixer

    edges_ref = node_edges(8, (2, 2, 1)).cuda()
    edges_fused = copy.deepcopy(edges_ref)
    xs = [torch.randn(4, 8, 16, 16, device="cuda"), torch.randn(4, 8, 16, 16, device="cuda"),
          torch.randn(4, 8, 8, 8, device="cuda")]
    alphas = torch.randn(3, len(CNN_PRIMITIVES), device="cuda")
    results = []
    for mixer, edges in ((mix_node_reference, edges_ref), (make_fused_mixer(devices=("cuda",)), edges_fused)):
        leaves = [x.clone().requires_grad_(True) for x in xs] + [alphas.clone().requires_grad_(True)]
        out = mixer(leaves[:-1], list(edges), leaves[-1].softmax(-1))
        results.append((out, torch.autograd.grad(out.square().sum(), leaves)))
    torch.testing.assert_close(results[1][0], results[0][0], **F32)
    for a, b in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_narrow_cpu_nodes_are_not_converted_and_wide_ones_go_channels_last():
    """oneDNN corrupts the heap in the channels-last backward of a 1x1 stride-2 conv with 2-7 input
    channels on some CPUs; the mixer never turns such narrow nodes channels-last."""
    from nasdeploy.spaces.fused_mixer import MIN_CPU_CHANNELS_LAST, FusionOptions

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for forced in (None, True):
        options = FusionOptions(channels_last=forced)
        assert not options.use_channels_last(cpu, 4)
        assert not options.use_channels_last(cpu, MIN_CPU_CHANNELS_LAST - 1)
        assert options.use_channels_last(cpu, MIN_CPU_CHANNELS_LAST)
    assert FusionOptions(channels_last=True).use_channels_last(cuda, 4)
    assert not FusionOptions().use_channels_last(cuda, 64)
