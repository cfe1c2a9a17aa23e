"""The Hopper prefill 2:4 GEMM (CUTLASS wgmma.sp) against torch.matmul on the dense masked weight."""

import pytest
import torch

import spmm
from conftest import assert_exact_on_leading_dims_strided_x_and_graph, cuda_int_case as int_case, masked_reference as reference
from spmm import ops

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not spmm._C.cuda_built, reason="spmm was built without CUDA kernels"),
    pytest.mark.skipif(not ops.has_cuda_kernel("_sparse24_sm90_mm"), reason="built without the sm_90a kernels"),
    pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() != (9, 0),
                       reason="the sm_90a GEMM needs a compute capability 9.0 GPU"),
]

DTYPES = [torch.float16, torch.bfloat16]


def packed(w, mask):
    return ops.sparse24_sm90_pack(*ops.sparse24_compress(w, mask))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mk", [(256, 4096), (264, 1040), (4096, 4096), (11008, 4096)])
@pytest.mark.parametrize("n", [1, 33, 128, 1000, 2048])
@pytest.mark.parametrize("with_bias", [False, True])
def test_exact_integer_inputs(dtype, mk, n, with_bias):
    w, mask, x, bias = int_case(*mk, n, dtype, hash((mk, n)) % 1000)
    b = bias if with_bias else None
    y = ops.sparse24_sm90_mm(x, *packed(w, mask), mk[0], b)
    assert y.shape == (n, mk[0]) and y.dtype == dtype
    assert torch.equal(y, reference(x, w, mask, b))


def test_leading_dims_strided_x_and_graph_capture():
    w, mask, x, bias = int_case(512, 1024, 96, torch.float16, 3)
    a, e = packed(w, mask)
    assert_exact_on_leading_dims_strided_x_and_graph(lambda x_: ops.sparse24_sm90_mm(x_, a, e, 512, bias), w, mask, x,
                                                     bias)


def test_opcheck():
    w, mask, x, bias = int_case(256, 1024, 33, torch.float16, 7)
    values, meta = ops.sparse24_compress(w, mask)
    torch.library.opcheck(torch.ops.spmm._sparse24_sm90_pack, (values, meta))
    a, e = ops.sparse24_sm90_pack(values, meta)
    torch.library.opcheck(torch.ops.spmm._sparse24_sm90_mm, (x, a, e, 256, bias))


def test_rejects_shapes_and_layouts_it_cannot_take():
    w, mask, x, _ = int_case(264, 1040, 8, torch.float16, 5)
    values, meta = ops.sparse24_compress(w, mask)
    with pytest.raises(ValueError, match=r"needs out_features % 8 == 0 and in_features % 16 == 0.*260 x 1040"):
        ops.sparse24_sm90_pack(values[:260].contiguous(), meta[:260].contiguous())
    with pytest.raises(ValueError, match=r"needs out_features % 8 == 0 and in_features % 16 == 0.*264 x 1032"):
        ops.sparse24_sm90_pack(values[:, :516].contiguous(), meta[:, :129].contiguous())
    a, e = ops.sparse24_sm90_pack(values, meta)
    with pytest.raises(ValueError, match=r"do not hold the Hopper GEMM layout of a 256 x 1040 weight"):
        ops.sparse24_sm90_mm(x, a, e, 256)
    with pytest.raises(TypeError, match=r"`a` must be BFloat16"):
        ops.sparse24_sm90_mm(x.bfloat16(), a, e, 264)
