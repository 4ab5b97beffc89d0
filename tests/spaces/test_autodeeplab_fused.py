"""The fused mixed-op kernel on Auto-DeepLab cells: every candidate but the dense atrous conv's conv itself runs
in-kernel or with its BN folded, and the supernet's outputs and gradients equal the reference path's in float64."""

from __future__ import annotations

import pytest
import torch

from nasdeploy.config.autodeeplab import AutoDeepLabSupernetConfig
from nasdeploy.kernels import TermKind
from nasdeploy.kernels.build import compiler_available
from nasdeploy.ops.autodeeplab import AtrousConv
from nasdeploy.spaces.autodeeplab import AutoDeepLabSupernet
from nasdeploy.spaces.fused_mixer import FusionOptions, decompose
from nasdeploy.spaces.mixing import MixedEdge

CONFIG = dict(layers=3, filter_multiplier=2, blocks=2, num_classes=3, stem_channels=4)


@pytest.fixture(scope="module")
def ext():
    if not compiler_available():
        pytest.skip("no C++ compiler/ninja: the fused kernels cannot be built here (reference path is used)")
    from nasdeploy.kernels import load_mixed_node

    return load_mixed_node()


def _supernet(mixer: str) -> AutoDeepLabSupernet:
    torch.manual_seed(0)
    return AutoDeepLabSupernet(AutoDeepLabSupernetConfig(**CONFIG, mixed_op=mixer)).double().train()


def test_every_auto_deeplab_candidate_decomposes_into_a_kernel_term():
    model = _supernet("reference")
    kinds = {}
    for module in model.modules():
        if isinstance(module, MixedEdge):
            for op in module._ops:
                part = decompose(op, module.stride, FusionOptions())
                if part is not None:
                    kinds.setdefault(type(op).__name__, set()).add(part.kind)
    assert kinds["AtrousConv"] == {TermKind.BATCH_NORM}  # its search BN is folded into the kernel
    assert TermKind.RAW not in set().union(*kinds.values())


@pytest.mark.parametrize("stride", [1, 2])
def test_atrous_body_plus_folded_bn_equals_the_module(stride):
    from torch.nn import functional as F

    torch.manual_seed(1)
    op = AtrousConv(3, 4, 3, stride, affine=False).double().train()
    x = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    part = decompose(op, stride, FusionOptions())
    z = part.body(F.relu(x))
    expected = F.batch_norm(z, None, None, training=True, eps=op.bn.eps)
    torch.testing.assert_close(expected, op(x), rtol=1e-12, atol=1e-12)


def test_fused_supernet_matches_reference_forward_and_gradients(ext):
    torch.set_num_threads(1)
    fused, reference = _supernet("fused"), _supernet("reference")
    assert fused.mixer_name == "fused"
    reference.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    outs = []
    for model in (fused, reference):
        model.zero_grad(set_to_none=True)
        out = model(x)
        out.square().mean().backward()
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-10)
    grads_f = dict(fused.named_parameters())
    # float64 summation-order error scales with the largest gradient terms (about 70 here, with heads as
    # wide as their nodes), not with each small entry: the absolute tolerance is relative to that scale.
    scale = max(float(p.grad.abs().max()) for p in reference.parameters() if p.grad is not None)
    for name, p in reference.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(grads_f[name].grad, p.grad, rtol=1e-9, atol=1e-11 * scale, msg=name)
    for (name, a), b in zip(fused.named_buffers(), reference.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)
