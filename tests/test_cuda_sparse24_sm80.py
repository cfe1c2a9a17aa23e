"""The Ampere prefill 2:4 GEMM (CUTLASS 2.x mma.sp; its sm_90a build runs on the H100) against torch.matmul on the
dense masked weight, and the dispatch that sends prefill to it where the Hopper GEMM cannot take the shape."""

import pytest
import torch

import spmm
from conftest import assert_exact_on_leading_dims_strided_x_and_graph, cuda_int_case as int_case, masked_reference as reference
from spmm import ops

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not spmm._C.cuda_built, reason="spmm was built without CUDA kernels"),
    pytest.mark.skipif(not ops.has_cuda_kernel("_sparse24_sm80_mm"), reason="built without the sm_80 GEMM family"),
    # 300 x 520: a shape the Hopper GEMM does not take, so the rule names the Ampere GEMM wherever the device runs it
    pytest.mark.skipif(torch.cuda.is_available() and ops.sparse24_prefill_gemm(300, 520, torch.device("cuda")) != "sm80",
                       reason="the sm_80 GEMM runs on compute capability 8.x and 9.0 GPUs"),
]

DTYPES = [torch.float16, torch.bfloat16]


def packed(w, mask):
    return ops.sparse24_sm80_pack(*ops.sparse24_compress(w, mask))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mk", [(256, 512), (300, 200), (4, 100), (264, 1040), (4096, 4096), (11008, 4096)])
@pytest.mark.parametrize("n", [1, 7, 33, 128, 1000, 2048])
@pytest.mark.parametrize("with_bias", [False, True])
def test_exact_integer_inputs(dtype, mk, n, with_bias):
    """Odd M (padded to 32 rows), K not a multiple of 64 (x padded), N not a multiple of 8 (x padded)."""
    w, mask, x, bias = int_case(*mk, n, dtype, hash((mk, n, 80)) % 1000)
    b = bias if with_bias else None
    y = ops.sparse24_sm80_mm(x, *packed(w, mask), mk[0], b)
    assert y.shape == (n, mk[0]) and y.dtype == dtype
    assert torch.equal(y, reference(x, w, mask, b))


def test_layout_shapes_and_padding():
    w, mask, _, _ = int_case(300, 200, 1, torch.float16, 1)
    values, meta = ops.sparse24_compress(w, mask)
    a, e = ops.sparse24_sm80_pack(values, meta)
    assert a.shape == (320, 128) and e.shape == (320 * 256 // 16,) and e.dtype == torch.int16
    assert torch.equal(a[:300, :100], values) and not a[300:].any() and not a[:, 100:].any()


def test_leading_dims_strided_x_and_graph_capture():
    w, mask, x, bias = int_case(512, 1024, 96, torch.float16, 3)
    a, e = packed(w, mask)
    assert_exact_on_leading_dims_strided_x_and_graph(lambda x_: ops.sparse24_sm80_mm(x_, a, e, 512, bias), w, mask, x,
                                                     bias)


def test_empty_batch():
    w, mask, x, bias = int_case(64, 128, 1, torch.float16, 4)
    y = ops.sparse24_sm80_mm(x[:0], *packed(w, mask), 64, bias)
    assert y.shape == (0, 64)


def test_opcheck():
    w, mask, x, bias = int_case(300, 200, 33, torch.float16, 7)
    values, meta = ops.sparse24_compress(w, mask)
    torch.library.opcheck(torch.ops.spmm._sparse24_sm80_pack, (values, meta))
    a, e = ops.sparse24_sm80_pack(values, meta)
    torch.library.opcheck(torch.ops.spmm._sparse24_sm80_mm, (x, a, e, 300, bias))


def test_rejects_layouts_it_cannot_take():
    w, mask, x, _ = int_case(264, 1040, 8, torch.float16, 5)
    a, e = packed(w, mask)
    with pytest.raises(ValueError, match=r"do not hold the Ampere GEMM layout of a 200 x 1040 weight"):
        ops.sparse24_sm80_mm(x, a, e, 200)
    with pytest.raises(ValueError, match=r"do not hold the Ampere GEMM layout of a 264 x 1024 weight"):
        ops.sparse24_sm80_mm(x[:, :1024], a, e, 264)
    with pytest.raises(TypeError, match=r"`a` must be BFloat16"):
        ops.sparse24_sm80_mm(x.bfloat16(), a, e, 264)
    with pytest.raises(TypeError, match=r"`e` must be Short"):
        ops.sparse24_sm80_mm(x, a, e.view(torch.uint8), 264)
    with pytest.raises(ValueError, match=r"`a` is on cpu but `x` is on cuda"):
        ops.sparse24_sm80_mm(x, a.cpu(), e, 264)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sparse24_mm_sends_prefill_the_hopper_gemm_cannot_take_here(dtype):
    """out_features % 8 != 0: no Hopper GEMM; above 32 tokens sparse24_mm (and the layer) use this GEMM instead of
    slicing the decode kernel."""
    w, mask, x, bias = int_case(300, 520, 100, dtype, 8)
    assert ops.sparse24_prefill_gemm(300, 520, x.device) == "sm80"
    values, meta = ops.sparse24_compress(w, mask)
    assert torch.equal(ops.sparse24_mm(x, values, meta, bias), reference(x, w, mask, bias))
    linear = torch.nn.Linear(520, 300, dtype=dtype, device="cuda")
    with torch.no_grad():
        linear.weight.copy_(w)
        linear.bias.copy_(bias)
        layer = spmm.nn.Sparse24Linear.from_dense(linear, mask)
        assert layer.sm80_a is not None and layer.sm80_e is not None and layer.sm90_e is None
        assert ops.sparse24_pick_kernel(300, 520, 100, True, "sm80") == "sm80"
        assert torch.equal(layer(x), reference(x, w, mask, bias))
