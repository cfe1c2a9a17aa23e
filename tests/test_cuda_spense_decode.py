"""The Spense decode kernel (spmm::_spense_decode_mm: dense and 2:4 row tiles in one launch, reading the saved
layouts) against torch.matmul on SpenseWeight.to_dense(): small integers, so every result is exact."""

import pytest
import torch
import torch.nn.functional as F

import spmm
from conftest import gen, int_weight, random_24_mask
from spmm import ops
from spmm.formats import Sparse24Weight, SpenseWeight

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not spmm._C.cuda_built, reason="spmm was built without CUDA kernels"),
    pytest.mark.skipif(not ops.has_cuda_kernel("_spense_decode_mm"), reason="built without the spense_decode family"),
]

DTYPES = [torch.float16, torch.bfloat16]
HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9
LOADERS = ["auto", "cp_async"] + (["tma"] if HOPPER else [])


def case(md, ms, k, n, dtype, seed, permute=True):
    """A SpenseWeight (md dense rows at random output positions, the rest 2:4 under a random mask), x and bias on
    the GPU, small integers."""
    g = gen(seed)
    m = md + ms
    w = int_weight(m, k, dtype, g)
    mask = random_24_mask(m, k, g)
    dense_rows = torch.randperm(m, generator=g)[:md] if permute else torch.arange(md)
    weight = SpenseWeight.from_dense(w, dense_rows, mask).to("cuda")
    x = torch.randint(-3, 4, (n, k), generator=g).to(dtype).cuda()
    bias = int_weight(1, m, dtype, g)[0].cuda()
    return weight, x, bias


def reference(x, weight, bias=None):
    """fp32 torch.matmul on the dense weight (+ bias), rounded once to x's dtype."""
    y = x.float() @ weight.to_dense().float().T
    return (y + bias.float() if bias is not None else y).to(x.dtype)


def run(x, weight, bias=None, **kw):
    dense = weight.dense if weight.dense.shape[0] > 0 else None
    return ops.spense_decode_mm(x, dense, weight.sparse.values, weight.sparse.meta, weight.row_index, bias, **kw)


# (md, ms): dense fraction 0, one row tile, 12.5 %, 25 %, 50 %, 100 %; M and Md not multiples of 16; large M.
MIXES = [(0, 512), (16, 496), (64, 448), (128, 384), (256, 256), (512, 0), (20, 37), (70, 1030), (1024, 3072)]


@pytest.mark.parametrize("dtype", DTYPES, ids=["float16", "bfloat16"])
@pytest.mark.parametrize("md,ms", MIXES)
@pytest.mark.parametrize("n", [1, 7, 16, 64])
@pytest.mark.parametrize("with_bias", [False, True])
def test_exact_mixes(dtype, md, ms, n, with_bias):
    weight, x, bias = case(md, ms, 1024, n, dtype, md * 7 + ms + n)
    b = bias if with_bias else None
    y = run(x, weight, b)
    assert y.shape == (n, md + ms) and y.dtype == dtype
    assert torch.equal(y, reference(x, weight, b))


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("k", [36, 200, 1056, 4096, 4128])
@pytest.mark.parametrize("n", [1, 9, 33, 100])
def test_each_loader_k_tails_and_many_tokens(loader, k, n):
    """K not a multiple of the 128-column chunk (and K % 8 == 4, odd metadata rows), N past the 64 tokens of one
    launch; "tma" only where tensor maps can describe the rows (else the op refuses, checked below)."""
    weight, x, bias = case(36, 300, k, n, torch.float16, k + n)
    if loader == "tma" and (k % 16 or ((k + 7) // 8) % 16):
        with pytest.raises(ValueError, match=r"`loader` \"tma\" needs"):
            run(x, weight, bias, loader=loader)
        return
    assert torch.equal(run(x, weight, bias, loader=loader), reference(x, weight, bias))


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("splits", [1, 2, 3, 5, 8, 12])
def test_every_split_factor(loader, splits):
    """Split-K summed in a cluster (sm_90, up to 8) or through the workspace (cp_async, or more than 8)."""
    weight, x, bias = case(200, 900, 1536, 11, torch.bfloat16, splits)
    assert torch.equal(run(x, weight, bias, loader=loader, splits=splits), reference(x, weight, bias))


@pytest.mark.parametrize("loader", LOADERS)
def test_fragment_order_metadata(loader):
    """The 2:4 decode layout's metadata read instead of the canonical bytes (for measuring the two side by side)."""
    weight, x, bias = case(40, 1000, 2048, 8, torch.float16, 3)
    _, fragments = ops.sparse24_decode_pack(weight.sparse.values, weight.sparse.meta)
    y = run(x, weight, bias, loader=loader, meta_fragments=fragments)
    assert torch.equal(y, reference(x, weight, bias))


def test_plain_24_and_identity_row_index():
    """No dense rows and no row_index: the one-copy 2:4 decode kernel, equal to the shipping one."""
    g = gen(4)
    w, mask = int_weight(4096, 4096, torch.float16, g), random_24_mask(4096, 4096, g)
    sw = Sparse24Weight.from_dense(w, mask).to("cuda")
    x = torch.randint(-3, 4, (8, 4096), generator=g).half().cuda()
    y = ops.spense_decode_mm(x, None, sw.values, sw.meta)
    assert torch.equal(y, (x.float() @ sw.to_dense().float().T).half())
    dv, dm = ops.sparse24_decode_pack(sw.values, sw.meta)
    assert torch.equal(y, ops.sparse24_decode_mm(x, dv, dm, 4096))


def test_leading_dims_strided_and_unaligned_operands():
    weight, x, bias = case(48, 200, 512, 12, torch.float16, 8)
    expected = reference(x, weight, bias)
    assert torch.equal(run(x.reshape(3, 4, 512), weight, bias), expected.reshape(3, 4, -1))
    strided = torch.stack([x, x], dim=-1).reshape(12, 1024)[:, ::2]
    assert not strided.is_contiguous() and torch.equal(run(strided, weight, bias), expected)
    # dense rows read in place with a leading dimension, and from an unaligned start (copied by the op)
    wide = torch.zeros(48, 520, dtype=torch.float16, device="cuda")
    wide[:, :512] = weight.dense
    args = (weight.sparse.values, weight.sparse.meta, weight.row_index, bias)
    assert torch.equal(ops.spense_decode_mm(x, wide[:, :512], *args), expected)
    shifted = torch.empty(48 * 512 + 1, dtype=torch.float16, device="cuda")[1:].view(48, 512)
    shifted.copy_(weight.dense)
    assert torch.equal(ops.spense_decode_mm(x, shifted, *args), expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float16", "bfloat16"])
def test_real_values_within_twice_dense_error(dtype):
    g = gen(5)
    m, k = 4096, 4096
    w = torch.randn(m, k, generator=g).to(dtype)
    weight = SpenseWeight.from_dense(w, torch.randperm(m, generator=g)[:1024], random_24_mask(m, k, g)).to("cuda")
    x = torch.randn(16, k, generator=g).to(dtype).cuda()
    wd = weight.to_dense()
    ref = x.double() @ wd.double().T
    dense_err = (F.linear(x, wd).double() - ref).abs().max()
    y = run(x, weight)
    assert (y.double() - ref).abs().max() <= 2 * dense_err
    assert torch.equal(y, run(x, weight))  # deterministic split-K


def test_cuda_graph_capture():
    weight, x, bias = case(256, 768, 2048, 8, torch.float16, 7)
    static_x = x.clone()
    run(static_x, weight, bias)  # warm-up outside capture (also encodes the tensor maps)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run(static_x, weight, bias)
    for sign in (-1, 1):
        static_x.copy_(sign * x)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, reference(sign * x, weight, bias))


def test_compile_fullgraph():
    weight, x, bias = case(64, 192, 512, 4, torch.float16, 6)
    fn = torch.compile(lambda t: run(t, weight, bias), fullgraph=True)
    assert torch.equal(fn(x), reference(x, weight, bias))


def test_opcheck():
    weight, x, bias = case(32, 96, 256, 5, torch.float16, 11)
    args = (x, weight.dense, weight.sparse.values, weight.sparse.meta, weight.row_index, bias)
    torch.library.opcheck(torch.ops.spmm._spense_decode_mm, args)
    torch.library.opcheck(torch.ops.spmm._spense_decode_mm, (x, None, weight.sparse.values, weight.sparse.meta,
                                                              None, None, None, "cp_async", 2))


def test_rejects_bad_input():
    weight, x, bias = case(32, 96, 256, 4, torch.float16, 9)
    values, meta, ri = weight.sparse.values, weight.sparse.meta, weight.row_index
    with pytest.raises(TypeError, match=r"`values` must be BFloat16"):
        ops.spense_decode_mm(x.bfloat16(), weight.dense.bfloat16(), values, meta, ri)
    with pytest.raises(TypeError, match=r"`dense_weight` must be Half"):
        ops.spense_decode_mm(x, weight.dense.float(), values, meta, ri)
    with pytest.raises(ValueError, match=r"`dense_weight` must have K = 256 columns"):
        ops.spense_decode_mm(x, weight.dense[:, :128], values, meta, ri)
    with pytest.raises(ValueError, match=r"`row_index` must have one entry per output row \(dense 32 \+ 2:4 96"):
        ops.spense_decode_mm(x, weight.dense, values, meta, ri[:-1])
    with pytest.raises(TypeError, match=r"`row_index` must be Int"):
        ops.spense_decode_mm(x, weight.dense, values, meta, ri.long())
    with pytest.raises(ValueError, match=r"`loader` must be \"auto\", \"tma\" or \"cp_async\", got \"bulk\""):
        ops.spense_decode_mm(x, weight.dense, values, meta, ri, loader="bulk")
    with pytest.raises(ValueError, match=r"`splits` must be 0 \(the kernel's choice\) or 1\.\.2 .*got 3"):
        ops.spense_decode_mm(x, weight.dense, values, meta, ri, splits=3)
    with pytest.raises(ValueError, match=r"`meta_fragments` must be the 2:4 decode layout's metadata"):
        ops.spense_decode_mm(x, weight.dense, values, meta, ri, meta_fragments=torch.zeros(7, dtype=torch.int32,
                                                                                           device="cuda"))
    with pytest.raises(TypeError, match=r"`x` must be float16 or bfloat16"):
        ops.spense_decode_mm(x.float(), weight.dense.float(), values.float(), meta, ri)
