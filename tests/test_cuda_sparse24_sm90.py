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
    """What the GEMM reads: the canonical values and the metadata the pack reorders for it."""
    values, meta = ops.sparse24_compress(w, mask)
    return values, ops.sparse24_sm90_pack(values, meta)


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


# Every config, whether or not the heuristic picks it today: a retuned heuristic may pick any of them. Shapes: one
# tile, fewer tiles than SMs (stream-K splits K), odd N, a K that is not a multiple of the 128-wide K tile, and
# more tiles than SMs.
@pytest.mark.parametrize("config", ops.SM90_CONFIGS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mkn", [(128, 256, 1), (264, 1040, 33), (4096, 4096, 17), (4096, 4096, 64), (1024, 2064, 777),
                                 (3072, 4096, 300)])
def test_every_config_exact(config, dtype, mkn):
    m, k, n = mkn
    w, mask, x, bias = int_case(m, k, n, dtype, ops.SM90_CONFIGS.index(config) * 31 + m + n)
    a, e = packed(w, mask)
    for b in (bias, None):
        assert torch.equal(ops.sparse24_sm90_mm(x, a, e, m, b, config=config), reference(x, w, mask, b)), (config, b)


@pytest.mark.parametrize("config", ["coop256x128_c2x1", "coop128x64_streamk", "coop128x128_streamk"])
@pytest.mark.parametrize("swizzle,splits", [(1, 0), (2, 0), (8, 0), (0, 3), (4, 7)])
def test_scheduler_knobs_exact(config, swizzle, splits):
    w, mask, x, bias = int_case(2048, 4096, 520, torch.bfloat16, swizzle * 10 + splits)
    a, e = packed(w, mask)
    y = ops.sparse24_sm90_mm(x, a, e, 2048, bias, config=config, swizzle=swizzle, splits=splits)
    assert torch.equal(y, reference(x, w, mask, bias))


@pytest.mark.parametrize("config", [None, "coop128x32_streamk", "coop128x64_streamk"])
def test_leading_dims_strided_x_and_graph_capture(config):
    w, mask, x, bias = int_case(512, 1024, 96, torch.float16, 3)
    a, e = packed(w, mask)
    assert_exact_on_leading_dims_strided_x_and_graph(
        lambda x_: ops.sparse24_sm90_mm(x_, a, e, 512, bias, config=config), w, mask, x, bias)


def test_opcheck():
    w, mask, x, bias = int_case(256, 1024, 33, torch.float16, 7)
    values, meta = ops.sparse24_compress(w, mask)
    torch.library.opcheck(torch.ops.spmm._sparse24_sm90_pack, (values, meta))
    e = ops.sparse24_sm90_pack(values, meta)
    torch.library.opcheck(torch.ops.spmm._sparse24_sm90_mm, (x, values, e, 256, bias))
    torch.library.opcheck(torch.ops.spmm._sparse24_sm90_mm, (x, values, e, 256, bias, 3, 2, 0))


@pytest.mark.parametrize("mk", [(8, 16), (264, 1040), (4096, 4096)])
def test_pack_is_a_byte_permutation_of_the_canonical_meta(mk):
    # Each byte of canonical meta (two groups' codes) is one byte of e, moved; the rest of e (rows padded to 64,
    # columns to 128) is zero. Also: the GEMM needs no copy of the values, and e is M x K / 8 bytes, padded.
    m, k = mk
    w, mask, _, _ = int_case(m, k, 1, torch.float16, m + k)
    values, meta = ops.sparse24_compress(w, mask)
    e = ops.sparse24_sm90_pack(values, meta)
    assert e.dtype == torch.uint8 and e.numel() == -(-m // 64) * 64 * (-(-k // 128) * 128) // 8
    nonzero_e = torch.sort(e[e != 0].long()).values
    nonzero_meta = torch.sort(meta[meta != 0].flatten().long()).values
    assert torch.equal(nonzero_e, nonzero_meta)


def test_rejects_shapes_and_layouts_it_cannot_take():
    w, mask, x, _ = int_case(264, 1040, 8, torch.float16, 5)
    values, meta = ops.sparse24_compress(w, mask)
    with pytest.raises(ValueError, match=r"needs out_features % 8 == 0 and in_features % 16 == 0.*260 x 1040"):
        ops.sparse24_sm90_pack(values[:260].contiguous(), meta[:260].contiguous())
    with pytest.raises(ValueError, match=r"needs out_features % 8 == 0 and in_features % 16 == 0.*264 x 1032"):
        ops.sparse24_sm90_pack(values[:, :516].contiguous(), meta[:, :129].contiguous())
    a, e = values, ops.sparse24_sm90_pack(values, meta)
    with pytest.raises(ValueError, match=r"`values` must be the canonical \[256, 520\] of a 256 x 1040 weight"):
        ops.sparse24_sm90_mm(x, a, e, 256)
    with pytest.raises(ValueError, match=r"`e` does not hold the Hopper GEMM metadata of a 264 x 1040 weight"):
        ops.sparse24_sm90_mm(x, a, e[:-16], 264)
    with pytest.raises(TypeError, match=r"`values` must be BFloat16"):
        ops.sparse24_sm90_mm(x.bfloat16(), a, e, 264)
    with pytest.raises(ValueError, match=r"`config` must be one of"):
        ops.sparse24_sm90_mm(x, a, e, 264, config="coop64x64")
    with pytest.raises(ValueError, match=r"`config` must be -1 .* or a config number 0\.\."):
        torch.ops.spmm._sparse24_sm90_mm(x, a, e, 264, None, len(ops.SM90_CONFIGS))
    with pytest.raises(ValueError, match=r"`swizzle` must be 0 \(default\), 1, 2, 4 or 8, got 3"):
        ops.sparse24_sm90_mm(x, a, e, 264, swizzle=3)
    with pytest.raises(ValueError, match=r"`splits` must be in 0\.\.64, got 65"):
        ops.sparse24_sm90_mm(x, a, e, 264, splits=65)
