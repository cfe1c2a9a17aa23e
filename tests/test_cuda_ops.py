"""The CUDA matmul ops and layers against torch.matmul on the dense masked weight (fp32 reference).

An op whose CUDA kernel is not registered yet is skipped with that reason -- checked through the dispatcher,
so a registered kernel can never be skipped (or pass vacuously) here.
"""

import pytest
import torch
import torch.nn.functional as F

import spmm
from conftest import gen, int_weight, random_24_mask, random_mask
from spmm import ops

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not spmm._C.cuda_built, reason="spmm was built without CUDA kernels"),
]

GPU_DTYPES = [torch.float16, torch.bfloat16]
SHAPES = [(128, 256), (67, 260), (4096, 4096)]  # (M, K): odd M, K not a multiple of a tile, a real layer
TOKENS = [(1,), (7,), (64,), (3, 33), (2048,)]


def needs_cuda_kernel(op: str):
    return pytest.mark.skipif(not ops.has_cuda_kernel(op), reason=f"spmm::{op} has no CUDA kernel yet")


def masked(w, mask):
    return torch.where(mask, w, torch.zeros_like(w))


def case(m, k, tokens, dtype, seed, mask_fn):
    """Small-integer operands (exact in fp32 accumulation), on the GPU; the fp32 reference on the masked weight."""
    g = gen(seed)
    w, mask = int_weight(m, k, dtype, g), mask_fn(m, k, g)
    x = torch.randint(-3, 4, (*tokens, k), generator=g).to(dtype)
    bias = int_weight(1, m, dtype, g)[0]
    ref = x.float() @ masked(w, mask).float().T + bias.float()
    return w.cuda(), mask.cuda(), x.cuda(), bias.cuda(), ref.cuda()


@needs_cuda_kernel("sparse24_mm")
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("mk", SHAPES)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("with_bias", [False, True])
def test_sparse24_mm(dtype, mk, tokens, with_bias):
    w, mask, x, bias, ref = case(*mk, tokens, dtype, 1, random_24_mask)
    values, meta = ops.sparse24_compress(w, mask)
    y = ops.sparse24_mm(x, values, meta, bias if with_bias else None)
    expected = ref if with_bias else ref - bias.float()
    assert y.dtype == dtype and torch.equal(y.float(), expected.to(dtype).float())


@needs_cuda_kernel("tiled_csl_mm")
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("mk", SHAPES)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("density", [0.0, 0.1, 0.2, 0.5, 1.0])
def test_tiled_csl_mm(dtype, mk, tokens, density):
    w, mask, x, bias, ref = case(*mk, tokens, dtype, 2, lambda m, k, g: random_mask(m, k, density, g))
    packed = ops.tiled_csl_compress(w.cpu(), mask.cpu(), 256, 64)
    y = ops.tiled_csl_mm(x, *(t.cuda() for t in packed), mk[0], 256, 64, bias)
    assert y.dtype == dtype and torch.equal(y.float(), ref.to(dtype).float())


@needs_cuda_kernel("spense_mm")
@pytest.mark.usefixtures("cublas_fp32_reductions")  # its dense rows run cuBLAS: exact sums in fp32 only
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("mk", SHAPES)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("dense_fraction", [0.0, 0.25, 1.0])
def test_spense_mm(dtype, mk, tokens, dense_fraction):
    w, mask, x, bias, ref = case(*mk, tokens, dtype, 3, random_24_mask)
    dense_rows = torch.randperm(mk[0], generator=gen(4))[: round(dense_fraction * mk[0])]
    layer = spmm.formats.SpenseWeight.from_dense(w, dense_rows.cuda(), mask)
    full = layer.to_dense()
    expected = x.float() @ full.float().T + bias.float()
    y = layer.matmul(x, bias)
    assert y.dtype == dtype and torch.equal(y.float(), expected.to(dtype).float())


@needs_cuda_kernel("sparse24_mm")
def test_sparse24_mm_real_values_within_twice_dense_error():
    g = gen(5)
    w = torch.randn(1024, 2048, generator=g).half().cuda()
    mask = random_24_mask(1024, 2048, g).cuda()
    x = torch.randn(37, 2048, generator=g).half().cuda()
    wm = masked(w, mask)
    ref = x.double() @ wm.double().T
    dense_err = (F.linear(x, wm).double() - ref).abs().max()
    err = (ops.sparse24_mm(x, *ops.sparse24_compress(w, mask)).double() - ref).abs().max()
    assert err <= 2 * dense_err


@needs_cuda_kernel("sparse24_mm")
def test_sparse24_mm_non_contiguous_and_graph_capture():
    w, mask, x, bias, ref = case(256, 512, (16,), torch.float16, 6, random_24_mask)
    values, meta = ops.sparse24_compress(w, mask)
    wide = torch.stack([x, x], dim=-1).reshape(16, 1024)[:, ::2]  # x's values at a column stride of 2
    assert not wide.is_contiguous() and torch.equal(wide, x)
    assert torch.equal(ops.sparse24_mm(wide, values, meta, bias).float(), ref.half().float())
    static_x = x.clone()
    graph = torch.cuda.CUDAGraph()
    ops.sparse24_mm(static_x, values, meta, bias)  # warm-up outside capture
    with torch.cuda.graph(graph):
        out = ops.sparse24_mm(static_x, values, meta, bias)
    static_x.copy_(-x)
    graph.replay()
    torch.cuda.synchronize()
    expected = (-x).float() @ masked(w, mask).float().T + bias.float()
    assert torch.equal(out.float(), expected.half().float())


@pytest.mark.parametrize(
    "config, op",
    [(spmm.Sparse24Config(), "sparse24_mm"), (spmm.TiledCSLConfig(sparsity=0.7), "tiled_csl_mm"),
     (spmm.SpenseConfig(dense_fraction=0.25), "spense_mm")],
    ids=["2:4", "tiled-csl", "spense"],
)
def test_sparsified_model_on_gpu(config, op):
    if not ops.has_cuda_kernel(op):
        pytest.skip(f"spmm::{op} has no CUDA kernel yet")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 128)).half().cuda()
    sparse = spmm.sparsify(model, config)
    dense_masked = torch.nn.Sequential(sparse[0].to_dense_linear(), torch.nn.GELU(), sparse[2].to_dense_linear())
    x = torch.randn(4, 9, 256, device="cuda", dtype=torch.half)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), dense_masked(x), rtol=2e-3, atol=2e-3)
        compiled = torch.compile(sparse, fullgraph=True)
        torch.testing.assert_close(compiled(x), sparse(x), rtol=1e-3, atol=1e-3)  # inductor may fuse GELU differently


def test_sparse24_layer_packs_on_gpu():
    """Sparse24Linear.from_dense on a CUDA linear packs with the CUDA packer; the format round-trips exactly."""
    linear = torch.nn.Linear(512, 256).half().cuda()
    mask = spmm.pruning.magnitude_mask(linear.weight, "2:4")
    layer = spmm.nn.Sparse24Linear.from_dense(linear, mask)
    assert layer.weight_format.device.type == "cuda"
    assert torch.equal(layer.to_dense_weight(), masked(linear.weight.detach(), mask))


@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("mk", [(128, 256), (67, 260), (4096, 4096)])
@pytest.mark.parametrize("tokens", [(1,), (8,), (9,), (16,), (17,), (32,), (33,), (64,), (3, 100), (2048,)])
@pytest.mark.parametrize("prefill_kernel", [True, False])
def test_sparse24_layer_both_kernels(dtype, mk, tokens, prefill_kernel):
    """Sparse24Linear holds the decode kernel's layout and that of the prefill GEMM the rule names for the device and
    shape (the Hopper one where the shape allows, else the Ampere one, on compute capability 8.x and 9.0), and
    sparse24_mm picks between them in C++; all exact on integer inputs. Token counts on both sides of every threshold
    (8, 16 on Hopper; 32 on Ampere)."""
    w, mask, x, bias, ref = case(*mk, tokens, dtype, 2, random_24_mask)
    linear = torch.nn.Linear(mk[1], mk[0], dtype=dtype, device="cuda")
    with torch.no_grad():
        linear.weight.copy_(w)
        linear.bias.copy_(bias)
    layer = spmm.nn.Sparse24Linear.from_dense(linear, mask).use_prefill_kernel(prefill_kernel)
    gemm = ops.sparse24_prefill_gemm(*mk, torch.device("cuda")) if prefill_kernel else None
    assert layer.dvalues is not None and layer.dmeta is not None
    assert (layer.sm90_e is not None) == (gemm == "sm90")  # Hopper reads `values`: no copy of them
    assert (layer.sm80_a is not None) == (layer.sm80_e is not None) == (gemm == "sm80")
    if torch.cuda.get_device_capability() in ((8, 0), (9, 0)) and prefill_kernel:
        assert gemm is not None  # never silently off on the GPUs these paths are for
    with torch.no_grad():
        y = layer(x)
    assert y.shape == (*tokens, mk[0]) and torch.equal(y.float(), ref.to(dtype).float())
