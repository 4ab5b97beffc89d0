"""BatchNorm folding before ExecuTorch lowering / PT2E: same function, no BatchNorm left in DARTS networks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nasdeploy.export.batchnorm_fold import fold_batchnorm, remaining_batchnorms
from nasdeploy.export.untrained import randomize_bn_statistics_
from nasdeploy.genotypes import get_genotype
from nasdeploy.nets import build_network
from nasdeploy.ops.darts_cnn import FactorizedReduce, SepConv


@pytest.mark.parametrize("name", ["DARTS_V2", "NASNet", "AmoebaNet", "PNAS"])
def test_folded_network_computes_the_same_function_in_float64(name: str) -> None:
    net = build_network(get_genotype(name), "cifar", channels=8, layers=5, auxiliary=False, num_classes=10)
    randomize_bn_statistics_(net, (3, 32, 32), seed=0)
    net = net.double().eval()
    folded, count = fold_batchnorm(net)
    assert count > 0 and remaining_batchnorms(folded) == 0
    assert remaining_batchnorms(net) > 0  # the source is left untouched
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(folded(x), net(x), rtol=1e-9, atol=1e-10)


def test_factorized_reduce_folds_each_half_of_its_batchnorm() -> None:
    op = FactorizedReduce(6, 10).double().eval()
    with torch.no_grad():  # distinct statistics per channel, so swapped halves would show
        op.bn.running_mean.copy_(torch.linspace(-1, 1, 10, dtype=torch.float64))
        op.bn.running_var.copy_(torch.linspace(0.5, 2, 10, dtype=torch.float64))
        op.bn.weight.copy_(torch.linspace(0.2, 1.5, 10, dtype=torch.float64))
        op.bn.bias.copy_(torch.linspace(-0.3, 0.3, 10, dtype=torch.float64))
    folded, count = fold_batchnorm(op)
    assert count == 1 and isinstance(folded.bn, nn.Identity)
    x = torch.randn(2, 6, 7, 7, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(folded(x), op(x), rtol=1e-10, atol=1e-12)


def test_non_affine_batchnorm_folds_and_a_trailing_batchnorm_stays() -> None:
    seq = nn.Sequential(SepConv(4, 4, 3, 1, 1, affine=False), nn.ReLU(), nn.BatchNorm2d(4)).double().eval()
    with torch.no_grad():
        for m in seq.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.uniform_(-1, 1)
    folded, count = fold_batchnorm(seq)
    assert count == 2 and remaining_batchnorms(folded) == 1  # the BN after a ReLU has no conv to fold into
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(folded(x), seq(x), rtol=1e-10, atol=1e-12)


def test_pt2e_graph_has_no_batchnorm_node() -> None:
    pytest.importorskip("executorch")
    from nasdeploy.export.executorch import quantize_pt2e_xnnpack

    net = build_network(get_genotype("DARTS_V2"), "cifar", channels=4, layers=2, auxiliary=False, num_classes=10).eval()
    quantized = quantize_pt2e_xnnpack(net, (3, 32, 32), [torch.randn(2, 3, 32, 32)])
    targets = {str(n.target) for n in quantized.graph.nodes if n.op == "call_function"}
    assert not any("batch_norm" in t for t in targets)
    assert any("quantize_per_tensor" in t for t in targets)
