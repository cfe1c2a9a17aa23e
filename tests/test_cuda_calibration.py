"""The pruners and calibrated sparsify on CUDA tensors: valid masks, exact levels, the same quality as on CPU, and
a calibrated model whose sparse layers run the CUDA kernels."""

import copy

import pytest
import torch
from torch import nn

import spmm
from conftest import gen
from spmm.formats import masked_weight
from spmm.pruning import InputStats, prune
from test_calibration import PRUNERS, activations, output_error

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("pruner", PRUNERS)
@pytest.mark.parametrize("sparsity", ["2:4", 0.5, 0.7])
def test_pruners_on_cuda_match_cpu_quality(pruner, sparsity):
    x = activations(1024, 512, seed=7)
    w = torch.randn(256, 512, generator=gen(8))
    cpu = prune(pruner, w, sparsity, InputStats.of(x))
    gpu = prune(pruner, w.cuda(), sparsity, InputStats.of(x.cuda()))
    assert gpu.mask.is_cuda and gpu.weight.is_cuda
    if sparsity == "2:4":
        assert bool((gpu.mask.reshape(256, 128, 4).sum(-1) == 2).all())
    elif pruner == "wanda":
        assert (~gpu.mask).sum(1).tolist() == [round(sparsity * 512)] * 256
    else:
        assert int((~gpu.mask).sum()) == round(sparsity * w.numel())
    # GPU reductions round differently, so near-ties may flip: the reconstruction error must match, not the bits
    err_cpu = output_error(w, masked_weight(cpu.weight, cpu.mask), x)
    err_gpu = output_error(w, masked_weight(gpu.weight, gpu.mask).cpu(), x)
    assert err_gpu <= 1.02 * err_cpu + 1e-6, (err_gpu, err_cpu)


@pytest.mark.parametrize("config", [spmm.Sparse24Config(pruner="sparsegpt"), spmm.TiledCSLConfig(0.7, "wanda")],
                         ids=["sparsegpt-2:4", "wanda-70%"])
def test_calibrated_sparsify_on_cuda(config):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 256)).cuda().half()
    dense = copy.deepcopy(model)
    data = [torch.randn(32, 256, device="cuda", dtype=torch.half) for _ in range(4)]
    spmm.sparsify(model, config, calibration=data)
    assert all(p.is_cuda for p in model.parameters()) and all(b.is_cuda for b in model.buffers())
    x = torch.randn(8, 256, device="cuda", dtype=torch.half)
    with torch.no_grad():
        y = model(x)
        masked = nn.Sequential(model[0].to_dense_linear(), nn.GELU(), model[2].to_dense_linear())
        torch.testing.assert_close(y, masked(x), rtol=2e-3, atol=2e-3)  # the kernels compute the pruned model
    for i in (0, 2):
        kept = model[i].to_dense_weight() != 0
        if isinstance(config, spmm.Sparse24Config):
            assert bool((kept.reshape(kept.shape[0], -1, 4).sum(-1) <= 2).all())
        else:  # wanda counts per output row
            assert bool(((~kept).sum(1) >= round(0.7 * kept.shape[1])).all())
        assert not torch.equal(model[i].to_dense_weight(), dense[i].weight)
