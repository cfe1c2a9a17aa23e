"""The spmm:: ops on CPU (the reference semantics): exact against torch.matmul on the dense masked weight,
opcheck (schema, fake kernels, aot dispatch), empty tensors, and a named error for every bad input."""

import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

import spmm
from conftest import DTYPES, gen, int_weight, random_24_mask, random_mask, spense_args
from spmm import ops

SHAPES = [(8, 16), (5, 12), (67, 260), (256, 192)]  # (M, K): odd M, K not a multiple of any tile
TOKENS = [(1,), (33,), (2, 7)]  # N = 1, odd N, and leading dims


def masked(w, mask):
    return torch.where(mask, w, torch.zeros_like(w))


def int_input(shape, k, dtype, g):
    return torch.randint(-3, 4, (*shape, k), generator=g).to(dtype)


def reference(x, w, bias=None):
    """fp32 torch.matmul on the dense masked weight."""
    y = x.float() @ w.float().T
    return y + bias.float() if bias is not None else y


def pack24(w, mask):
    return ops.sparse24_compress(w, mask)


def pack_csl(w, mask, tile_m=16, tile_k=32):
    return ops.tiled_csl_compress(w, mask, tile_m, tile_k)


# ------------------------------------------------------------------------------------------- exactness ----------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mk", SHAPES)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("with_bias", [False, True])
def test_sparse24_mm_exact(dtype, mk, tokens, with_bias):
    g = gen(7)
    m, k = mk
    w, mask = int_weight(m, k, dtype, g), random_24_mask(m, k, g)
    x = int_input(tokens, k, dtype, g)
    bias = int_weight(1, m, dtype, g)[0] if with_bias else None
    y = ops.sparse24_mm(x, *pack24(w, mask), bias)
    assert y.dtype == dtype and y.shape == (*tokens, m)
    assert torch.equal(y.float(), reference(x, masked(w, mask), bias))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mk", SHAPES)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("density", [0.0, 0.1, 0.5, 1.0])
def test_tiled_csl_mm_exact(dtype, mk, tokens, density):
    g = gen(11)
    m, k = mk
    w, mask = int_weight(m, k, dtype, g), random_mask(m, k, density, g)
    x = int_input(tokens, k, dtype, g)
    bias = int_weight(1, m, dtype, g)[0]
    y = ops.tiled_csl_mm(x, *pack_csl(w, mask), m, 16, 32, bias)
    assert y.dtype == dtype and y.shape == (*tokens, m)
    assert torch.equal(y.float(), reference(x, masked(w, mask), bias))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mk", SHAPES)
@pytest.mark.parametrize("dense_fraction", [0.0, 0.25, 1.0])
def test_spense_mm_exact(dtype, mk, dense_fraction):
    g = gen(13)
    m, k = mk
    w, mask = int_weight(m, k, dtype, g), random_24_mask(m, k, g)
    dense_rows = torch.randperm(m, generator=g)[: round(dense_fraction * m)]
    args, full = spense_args(w, mask, dense_rows)
    x = int_input((2, 9), k, dtype, g)
    bias = int_weight(1, m, dtype, g)[0]
    y = ops.spense_mm(x, *args, bias)
    assert y.shape == (2, 9, m)
    assert torch.equal(y.float(), reference(x, full, bias))


@pytest.mark.parametrize("dtype", DTYPES)
def test_real_values_within_twice_dense_error(dtype):
    """Random reals: our error vs an fp64 reference is at most ~2x that of torch's own dense op in `dtype`."""
    g = gen(17)
    m, k = 96, 512
    w, mask = torch.randn(m, k, generator=g).to(dtype), random_24_mask(m, k, g)
    x = torch.randn(20, k, generator=g).to(dtype)
    wm = masked(w, mask)
    ref = x.double() @ wm.double().T
    dense_err = (F.linear(x, wm).double() - ref).abs().max()
    for y in [ops.sparse24_mm(x, *pack24(w, mask)), ops.tiled_csl_mm(x, *pack_csl(w, mask), m, 16, 32)]:
        assert (y.double() - ref).abs().max() <= 2 * dense_err + 1e-6


def test_non_contiguous_activations():
    g = gen(19)
    w, mask = int_weight(24, 64, torch.float32, g), random_24_mask(24, 64, g)
    base = int_input((10,), 128, torch.float32, g)
    x = base[:, ::2]  # strided view
    assert not x.is_contiguous()
    assert torch.equal(ops.sparse24_mm(x, *pack24(w, mask)), reference(x, masked(w, mask)))
    xt = int_input((64,), 10, torch.float32, g).t()  # transposed view
    assert torch.equal(ops.tiled_csl_mm(xt, *pack_csl(w, mask), 24, 16, 32), reference(xt, masked(w, mask)))


def test_tiled_csl_layout():
    """Tile order, in-tile location order and the 16-bit unsigned location of a 256 x 256 tile."""
    w = torch.zeros(4, 6)
    w[0, 5] = 1.0  # tile (0, 1) at (0, 1)
    w[3, 0] = 2.0  # tile (1, 0) at (1, 0)
    w[2, 1] = 3.0  # tile (1, 0) at (0, 1)
    values, locations, offsets = ops.tiled_csl_compress(w, None, 2, 4)
    assert offsets.tolist() == [0, 0, 1, 3, 3]
    assert values.tolist() == [1.0, 3.0, 2.0]
    assert locations.tolist() == [1, 1, 4]
    big = torch.zeros(256, 256)
    big[255, 255] = 5.0
    _, loc, _ = ops.tiled_csl_compress(big, None, 256, 256)
    assert loc.view(torch.uint16).item() == 65535


def test_packers_store_no_zeros():
    """A zero (or -0.0) the mask keeps is not stored by Tiled-CSL, and is a +0.0 filler in 2:4."""
    w = torch.tensor([[0.0, -0.0, 3.0, 0.0, 1.0, 0.0, 0.0, -2.0]])
    keep_all = torch.ones_like(w, dtype=torch.bool)
    values, locations, _ = ops.tiled_csl_compress(w, keep_all, 1, 8)
    assert values.tolist() == [3.0, 1.0, -2.0] and locations.tolist() == [2, 4, 7]
    mask = torch.tensor([[True, True, False, False, True, False, False, True]])
    values, meta = ops.sparse24_compress(w, mask)
    assert values.tolist() == [[0.0, 0.0, 1.0, -2.0]] and not torch.signbit(values[0, :2]).any()


def test_sparse24_canonical_layout():
    w = torch.tensor([[0.0, 5.0, 0.0, 6.0, 7.0, 0.0, 0.0, 0.0, 0.0, 0.0, -0.0, 0.0]])
    values, meta = ops.sparse24_compress(w)
    assert values.tolist() == [[5.0, 6.0, 7.0, 0.0, 0.0, 0.0]]
    # group 0 keeps columns 1, 3; group 1 keeps 0 (+ filler 1); group 2 keeps none (fillers 0, 1); high nibble 0.
    assert meta.tolist() == [[(1 | 3 << 2) | (0 | 1 << 2) << 4, 0 | 1 << 2]]
    assert not torch.signbit(values).any()  # fillers are +0.0


# ---------------------------------------------------------------------------------------------- empty -----------
@pytest.mark.parametrize("n,m,k", [(0, 8, 16), (3, 0, 16), (3, 8, 0)])
def test_empty_tensors_give_defined_results(n, m, k):
    x = torch.ones(n, k)
    w = torch.zeros(m, k)
    bias = torch.arange(m, dtype=torch.float32)
    expected = torch.zeros(n, m) + bias
    assert torch.equal(ops.sparse24_mm(x, *ops.sparse24_compress(w), bias), expected)
    assert torch.equal(ops.tiled_csl_mm(x, *ops.tiled_csl_compress(w, None, 4, 8), m, 4, 8, bias), expected)
    values, meta = ops.sparse24_compress(w)
    assert torch.equal(ops.spense_mm(x, w[:0], values, meta, torch.arange(m, dtype=torch.int32), bias), expected)


# -------------------------------------------------------------------------------------------- opcheck -----------
def _opcheck_samples():
    g = gen(23)
    w, mask = int_weight(12, 32, torch.float16, g), random_24_mask(12, 32, g)
    x, bias = int_input((2, 3), 32, torch.float16, g), int_weight(1, 12, torch.float16, g)[0]
    values, meta = ops.sparse24_compress(w, mask)
    csl = ops.tiled_csl_compress(w, mask, 8, 16)
    spense, _ = spense_args(w, mask, torch.tensor([1, 4, 7]))
    return [
        (torch.ops.spmm.sparse24_compress, (w, mask)),
        (torch.ops.spmm.sparse24_compress, (masked(w, mask), None)),
        (torch.ops.spmm.sparse24_mm, (x, values, meta, bias)),
        (torch.ops.spmm.sparse24_mm, (x[0], values, meta, None)),
        (torch.ops.spmm.tiled_csl_mm, (x, *csl, 12, 8, 16, bias)),
        (torch.ops.spmm.spense_mm, (x, *spense, bias)),
        (torch.ops.spmm.spense_mm, (x[0], *spense, None)),
        (torch.ops.spmm._sparse24_check, (meta, 32)),
        (torch.ops.spmm._tiled_csl_check, (*csl[1:], 12, 32, 8, 16)),
    ]


@pytest.mark.parametrize("case", range(len(_opcheck_samples())))
def test_opcheck(case):
    op, args = _opcheck_samples()[case]
    opcheck(op, args)


def test_opcheck_tiled_csl_compress():
    """Data-dependent output size: checked without the dynamic-shape aot test, which needs a traceable size."""
    g = gen(29)
    w = int_weight(12, 32, torch.float32, g)
    opcheck(torch.ops.spmm.tiled_csl_compress, (w, random_mask(12, 32, 0.3, g), 8, 16),
            test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_compiles_fullgraph():
    g = gen(31)
    w, mask = int_weight(16, 32, torch.float32, g), random_24_mask(16, 32, g)
    values, meta = ops.sparse24_compress(w, mask)
    csl = ops.tiled_csl_compress(w, mask, 8, 16)

    def f(x):
        return ops.sparse24_mm(x, values, meta) + ops.tiled_csl_mm(x, *csl, 16, 8, 16)

    x = int_input((5,), 32, torch.float32, g)
    torch._dynamo.reset()
    got = torch.compile(f, fullgraph=True, backend="aot_eager")(x)
    assert torch.equal(got, 2 * reference(x, masked(w, mask)))


# ------------------------------------------------------------------------------------------- autograd ------------
def _autograd_cases():
    g = gen(41)
    w, mask = torch.randn(12, 32, generator=g, dtype=torch.float64).float(), random_24_mask(12, 32, g)
    wm = masked(w, mask)
    spense, full = spense_args(w, mask, torch.tensor([0, 5]))
    return [
        (lambda x, b: ops.sparse24_mm(x, *pack24(w, mask), b), wm),
        (lambda x, b: ops.tiled_csl_mm(x, *pack_csl(w, mask, 8, 16), 12, 8, 16, b), wm),
        (lambda x, b: ops.spense_mm(x, *spense, b), full),
    ]


@pytest.mark.parametrize("case", range(3))
def test_gradients_flow_to_x_and_bias(case):
    fn, dense = _autograd_cases()[case]
    x = torch.randn(2, 5, 32, requires_grad=True)
    bias = torch.randn(12, requires_grad=True)
    grad_out = torch.randn(2, 5, 12)
    fn(x, bias).backward(grad_out)
    x_ref, b_ref = x.detach().clone().requires_grad_(), bias.detach().clone().requires_grad_()
    F.linear(x_ref, dense, b_ref).backward(grad_out)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(bias.grad, b_ref.grad)


def test_packed_weight_gradient_is_refused():
    w, mask = torch.randn(8, 16), random_24_mask(8, 16)
    values, meta = pack24(w, mask)
    y = ops.sparse24_mm(torch.randn(3, 16), values.requires_grad_(), meta)
    with pytest.raises(RuntimeError, match=r"spmm::sparse24_mm: the packed weight is not differentiable"):
        y.sum().backward()


# ----------------------------------------------------------------------------------------- bad input ------------
@pytest.fixture
def packed():
    g = gen(37)
    w, mask = int_weight(8, 16, torch.float32, g), random_24_mask(8, 16, g)
    return w, mask, *ops.sparse24_compress(w, mask)


def test_compress_rejects_bad_input():
    w = torch.randn(8, 16)
    with pytest.raises(ValueError, match=r"`dense` has K = 18 columns; 2:4 sparsity needs a multiple of 4"):
        ops.sparse24_compress(torch.randn(8, 18))
    with pytest.raises(ValueError, match=r"`dense` must be 2-D"):
        ops.sparse24_compress(torch.randn(16))
    with pytest.raises(TypeError, match=r"`dense` must be float32, float16 or bfloat16"):
        ops.sparse24_compress(torch.ones(8, 16, dtype=torch.int32))
    with pytest.raises(TypeError, match=r"`mask` must be Bool"):
        ops.sparse24_compress(w, torch.ones(8, 16))
    with pytest.raises(ValueError, match=r"`mask` must have the shape of `dense`"):
        ops.sparse24_compress(w, torch.ones(8, 8, dtype=torch.bool))
    mask = torch.zeros(8, 16, dtype=torch.bool)
    mask[6, 8:11] = True
    with pytest.raises(ValueError, match=r"`mask` keeps more than 2 of the 4 elements at row 6, columns 8\.\.11"):
        ops.sparse24_compress(w, mask)
    bad = torch.zeros(8, 16)
    bad[2, 5] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or infinite value at row 2, column 5"):
        ops.sparse24_compress(bad)
    bad[2, 5] = float("inf")
    with pytest.raises(ValueError, match=r"NaN or infinite value at row 2, column 5"):
        ops.tiled_csl_compress(bad, None, 4, 4)
    with pytest.raises(ValueError, match=r"more than 65536 elements"):
        ops.tiled_csl_compress(w, None, 512, 256)
    with pytest.raises(ValueError, match=r"`tile_m` and `tile_k` must be positive"):
        ops.tiled_csl_compress(w, None, 0, 4)


def test_sparse24_mm_rejects_bad_input(packed):
    w, mask, values, meta = packed
    x = torch.randn(3, 16)
    with pytest.raises(TypeError, match=r"`values` must be Half"):
        ops.sparse24_mm(x.half(), values, meta)
    with pytest.raises(TypeError, match=r"`x` must be float32, float16 or bfloat16"):
        ops.sparse24_mm(x.long(), values, meta)
    with pytest.raises(ValueError, match=r"`values` must have K/2 = 16 columns for x's K = 32"):
        ops.sparse24_mm(torch.randn(3, 32), values, meta)
    with pytest.raises(ValueError, match=r"K = 18 .* must be a multiple of 4"):
        ops.sparse24_mm(torch.randn(3, 18), values, meta)
    with pytest.raises(ValueError, match=r"`meta` must be contiguous"):
        ops.sparse24_mm(x, values, torch.cat([meta, meta], 1)[:, ::2])
    with pytest.raises(TypeError, match=r"`meta` must be Byte"):
        ops.sparse24_mm(x, values, meta.int())
    with pytest.raises(ValueError, match=r"`meta` must have as many rows as `values`"):
        ops.sparse24_mm(x, values, meta[:4])
    with pytest.raises(ValueError, match=r"`bias` must have out_features = 8 elements, got 7"):
        ops.sparse24_mm(x, values, meta, torch.zeros(7))
    with pytest.raises(TypeError, match=r"`bias` must be Float"):
        ops.sparse24_mm(x, values, meta, torch.zeros(8, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"`x` must have at least 1 dim"):
        ops.sparse24_mm(torch.tensor(1.0), values, meta)
    corrupt = meta.clone()
    corrupt[3, 1] = 0x0F  # group 2: idx0 = 3, idx1 = 3
    with pytest.raises(ValueError, match=r"`meta` is not in the canonical 2:4 layout: row 3, group 2"):
        ops.sparse24_mm(x, values, corrupt)


def test_tiled_csl_mm_rejects_bad_input():
    w = torch.randn(8, 16)
    values, locations, offsets = ops.tiled_csl_compress(w, None, 4, 8)
    x = torch.randn(3, 16)
    with pytest.raises(ValueError, match=r"`tile_offsets` must have 7 entries for a 12 x 16 weight in 4 x 8 tiles, got 5"):
        ops.tiled_csl_mm(x, values, locations, offsets, 12, 4, 8)
    with pytest.raises(ValueError, match=r"`tile_offsets` must have 3 entries"):
        ops.tiled_csl_mm(torch.randn(3, 8), values, locations, offsets, 8, 4, 8)
    with pytest.raises(ValueError, match=r"`locations` must have one entry per value"):
        ops.tiled_csl_mm(x, values, locations[1:], offsets, 8, 4, 8)
    with pytest.raises(TypeError, match=r"`locations` must be Short"):
        ops.tiled_csl_mm(x, values, locations.int(), offsets, 8, 4, 8)
    with pytest.raises(TypeError, match=r"`tile_offsets` must be Int"):
        ops.tiled_csl_mm(x, values, locations, offsets.long(), 8, 4, 8)
    bad = offsets.clone()
    bad[2] = bad[3] + 1
    with pytest.raises(ValueError, match=r"`tile_offsets` must not decrease"):
        ops.tiled_csl_mm(x, values, locations, bad, 8, 4, 8)
    bad = offsets.clone()
    bad[-1] -= 1
    with pytest.raises(ValueError, match=r"`tile_offsets` must start at 0 and end at nnz"):
        ops.tiled_csl_mm(x, values, locations, bad, 8, 4, 8)
    bad = locations.clone()
    bad[0] = 32  # row 4 of a 4-row tile
    with pytest.raises(ValueError, match=r"`locations`\[0\] = 32 lies outside tile 0"):
        ops.tiled_csl_mm(x, values, bad, offsets, 8, 4, 8)
    edge = ops.tiled_csl_compress(torch.ones(6, 12), None, 4, 8)
    bad = edge[1].clone()
    bad[-1] = 7  # column 7 of the last tile, which is only 4 wide
    with pytest.raises(ValueError, match=r"lies outside tile 3 \(2 x 4\)"):
        ops.tiled_csl_mm(torch.randn(1, 12), edge[0], bad, edge[2], 6, 4, 8)


def test_spense_mm_rejects_bad_input(packed):
    w, mask, values, meta = packed
    dense = torch.randn(2, 16)
    x = torch.randn(3, 16)
    row_index = torch.arange(10, dtype=torch.int32)
    ops.spense_mm(x, dense, values, meta, row_index)  # well formed
    with pytest.raises(ValueError, match=r"`row_index` names output row 3 twice"):
        ops.spense_mm(x, dense, values, meta, torch.tensor([0, 1, 2, 3, 3, 5, 6, 7, 8, 9], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"`row_index`\[9\] = 10 is outside \[0, 10\)"):
        ops.spense_mm(x, dense, values, meta, row_index + (row_index == 9).int())
    with pytest.raises(ValueError, match=r"`row_index` must have one entry per output row \(dense 2 \+ sparse 8 = 10\)"):
        ops.spense_mm(x, dense, values, meta, row_index[:9])
    with pytest.raises(TypeError, match=r"`row_index` must be Int"):
        ops.spense_mm(x, dense, values, meta, row_index.long())
    with pytest.raises(ValueError, match=r"`dense_weight` must have K = 16 columns"):
        ops.spense_mm(x, torch.randn(2, 12), values, meta, row_index)
    with pytest.raises(TypeError, match=r"`dense_weight` must be Float"):
        ops.spense_mm(x, dense.half(), values, meta, row_index)


def test_fake_kernels_of_the_cuda_only_layouts():
    """The CUDA-only layout ops trace under torch.compile through their fakes; the shapes they promise follow the
    documented padding (tests/test_cuda_fakes.py checks them against the real ops on the GPU)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        values = torch.empty(300, 100, dtype=torch.float16)
        meta = torch.empty(300, 25, dtype=torch.uint8)
        a, e = torch.ops.spmm._sparse24_sm80_pack(values, meta)  # M to 32, K to 64; 16-bit meta per 16 columns
        assert a.shape == (320, 128) and a.dtype == torch.float16
        assert e.shape == (320 * 256 // 16,) and e.dtype == torch.int16
        dvalues, dmeta = torch.ops.spmm._sparse24_decode_pack(values, meta)  # 3 groups of 8 row tiles, 2 chunks of 128
        assert dvalues.shape == (24, 2 * 1024) and dvalues.dtype == torch.float16
        assert dmeta.shape == (24, 2 * 64) and dmeta.dtype == torch.int32
        e90 = torch.ops.spmm._sparse24_sm90_pack(torch.empty(304, 104, dtype=torch.bfloat16),
                                                 torch.empty(304, 26, dtype=torch.uint8))
        assert e90.shape == (320 * 256 // 8,) and e90.dtype == torch.uint8  # M to 64, K to 128, a byte per 8 columns
        x = torch.empty(5, 7, 200, dtype=torch.float16)
        assert torch.ops.spmm._sparse24_sm80_mm(x, a, e, 300, None).shape == (5, 7, 300)
        stream = (torch.empty(1000, dtype=torch.bfloat16), torch.empty(1000, dtype=torch.int16),
                  torch.empty(13, dtype=torch.int32))  # 12 tiles
        words, word_offsets = torch.ops.spmm._tiled_csl_words(*stream, 256, 64)
        assert words.shape == (1036, 2) and words.dtype == torch.bfloat16  # 1000 + 3 per tile, to a multiple of 4
        assert word_offsets.shape == (13,) and word_offsets.dtype == torch.int32
        y = torch.ops.spmm.tiled_csl_mm(x.bfloat16(), *stream, 300, 256, 64, None, words, word_offsets)
        assert y.shape == (5, 7, 300) and y.dtype == torch.bfloat16


@pytest.mark.parametrize("m,k", [(1, 4), (8, 16), (127, 12), (128, 128), (129, 260), (300, 100), (4096, 11008),
                                 (0, 64), (64, 0)])
def test_pack_fakes_promise_the_kernels_sizes(m, k):
    """The pack ops' fakes give exactly the shapes the kernels' size functions (sparse24_kernel_layouts.h, exported as
    spmm._C.sparse24_pack_shapes, from which the CUDA ops allocate) state, with the CUDA ops' dtypes."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        values = torch.empty(m, k // 2, dtype=torch.bfloat16)
        meta = torch.empty(m, (k + 7) // 8, dtype=torch.uint8)
        outputs = {"decode": torch.ops.spmm._sparse24_decode_pack(values, meta),
                   "sm90": (torch.ops.spmm._sparse24_sm90_pack(values, meta),),
                   "sm80": torch.ops.spmm._sparse24_sm80_pack(values, meta)}
    dtypes = {"decode": [torch.bfloat16, torch.int32], "sm90": [torch.uint8], "sm80": [torch.bfloat16, torch.int16]}
    for kernel, tensors in outputs.items():
        shapes = spmm._C.sparse24_pack_shapes(kernel, m, k)
        assert [tuple(t.shape) for t in tensors] == [tuple(s) for s in shapes], kernel
        assert [t.dtype for t in tensors] == dtypes[kernel], kernel
    with pytest.raises(ValueError, match="kernel must be"):
        spmm._C.sparse24_pack_shapes("sm70", m, k)
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\^31\)"):
        spmm._C.sparse24_pack_shapes("decode", -1, k)


def test_sparse24_kernel_choice_rules():
    """The C++ rules, as spmm.ops reads them: the decode kernel up to 8 tokens on Hopper (16 on weights of at most
    6144 x 4096), 32 on Ampere; the Hopper GEMM's config names, each a valid `config` argument."""
    assert ops.sparse24_decode_max_tokens(4096, 4096, True) == 16
    assert ops.sparse24_decode_max_tokens(6144, 4096, True) == 16
    assert ops.sparse24_decode_max_tokens(4096, 11008, True) == 8
    assert ops.sparse24_decode_max_tokens(57344, 8192, True) == 8
    assert ops.sparse24_decode_max_tokens(57344, 8192, False) == 32
    assert len(ops.SM90_CONFIGS) == len(set(ops.SM90_CONFIGS)) >= 5
    assert "coop128x32_streamk" in ops.SM90_CONFIGS and "coop256x128_c2x1" in ops.SM90_CONFIGS
    x = torch.zeros(2, 64, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"`config` must be one of .*coop128x128"):
        ops.sparse24_sm90_mm(x, x, x, 64, config="fastest")


# ------------------------------------------------------------------------------- integers, layouts, devices -----
def test_integer_arguments_hold_for_any_integer():
    """Bounds come before arithmetic and products are overflow-checked: no wrapped value passes a check."""
    w = torch.randn(64, 64)
    with pytest.raises(ValueError, match=r"tiled_csl_compress: a tile of `tile_m` x `tile_k` = 4294967296 x "
                                         r"4294967296 has more than 65536 elements"):
        ops.tiled_csl_compress(w, None, 2**32, 2**32)  # the product wraps to 0 in int64
    with pytest.raises(ValueError, match=r"more than 65536 elements"):
        ops.tiled_csl_compress(w, None, 2**62, 4)
    values, locations, offsets = ops.tiled_csl_compress(w, None, 16, 16)
    x = torch.randn(2, 64)
    with pytest.raises(ValueError, match=r"more than 65536 elements"):
        ops.tiled_csl_mm(x, values, locations, offsets, 64, 2**32, 2**32)
    for out_features in (2**62, 2**31, -1, -(2**63)):
        with pytest.raises(ValueError, match=r"`out_features` must be in \[0, 2147483647\]"):
            ops.tiled_csl_mm(x, values, locations, offsets, out_features, 16, 16)
    wide = torch.zeros(1, 1).expand(1, 2**62)  # K = 2**62 without memory: tiles = (2**31 - 1) * 2**62 overflows
    with pytest.raises(ValueError, match=r"the tile count \(2147483647 x 4611686018427387904\) overflows int64"):
        ops.tiled_csl_mm(wide, values, locations, offsets, 2**31 - 1, 1, 1)
    for op, call in [("tiled_csl_compress", lambda v: ops.tiled_csl_compress(w, None, v, 4)),
                     ("tiled_csl_mm", lambda v: ops.tiled_csl_mm(x, values, locations, offsets, v, 16, 16)),
                     ("_sparse24_decode_mm", lambda v: ops.sparse24_decode_mm(x, x, x, 64, splits=v)),
                     ("_sparse24_decode_pack", lambda v: ops.sparse24_decode_pack(x, x, v))]:
        with pytest.raises(ValueError, match=rf"spmm::{op}: `\w+` = {2**70} is outside int64"):
            call(2**70)
        with pytest.raises(TypeError, match=rf"spmm::{op}: `\w+` must be an int, got float"):
            call(4.0)
        with pytest.raises(TypeError, match=rf"spmm::{op}: `\w+` must be an int, got bool"):
            call(True)


def test_tiled_csl_mm_refuses_duplicate_and_unordered_locations():
    w = torch.randn(16, 32)
    values, locations, offsets = ops.tiled_csl_compress(w, None, 16, 16)
    x = torch.randn(3, 32)
    duplicate = locations.clone()
    duplicate[5] = duplicate[4]  # the same element twice: it would count twice
    with pytest.raises(ValueError, match=r"`locations`\[5\] = \d+ repeats or precedes the location before it in "
                                         r"tile 0; each tile lists its elements once, in increasing order"):
        ops.tiled_csl_mm(x, values, duplicate, offsets, 16, 16, 16)
    swapped = locations.clone()
    swapped[[2, 3]] = swapped[[3, 2]].clone()
    with pytest.raises(ValueError, match=r"`locations`\[3\] = \d+ repeats or precedes"):
        ops.tiled_csl_mm(x, values, swapped, offsets, 16, 16, 16)
    start = int(offsets[1])  # a tile's first location may be below the previous tile's last
    assert locations[start] < locations[start - 1]
    ops.tiled_csl_mm(x, values, locations, offsets, 16, 16, 16)


CUDA_ONLY = {
    "_sparse24_decode_pack": (lambda x: ops.sparse24_decode_pack(x, x), "CPU layers run spmm.ops.sparse24_mm"),
    "_sparse24_decode_mm": (lambda x: ops.sparse24_decode_mm(x, x, x, 4), r"spmm.ops.sparse24_mm\(x, values, meta"),
    "_sparse24_sm90_pack": (lambda x: ops.sparse24_sm90_pack(x, x), "CPU layers run spmm.ops.sparse24_mm"),
    "_sparse24_sm90_mm": (lambda x: ops.sparse24_sm90_mm(x, x, x, 4), r"spmm.ops.sparse24_mm\(x, values, meta"),
    "_sparse24_sm80_pack": (lambda x: ops.sparse24_sm80_pack(x, x), "CPU layers run spmm.ops.sparse24_mm"),
    "_sparse24_sm80_mm": (lambda x: ops.sparse24_sm80_mm(x, x, x, 4), r"spmm.ops.sparse24_mm\(x, values, meta"),
    "_tiled_csl_words": (lambda x: ops.tiled_csl_words(x, x, x, 256, 64), "spmm.ops.tiled_csl_mm on the Tiled-CSL"),
    "_spense_decode_mm": (lambda x: ops.spense_decode_mm(x, x, x, x, x), r"spmm.ops.spense_mm\(x, dense_weight"),
}


@pytest.mark.parametrize("op", CUDA_ONLY)
def test_cuda_only_ops_on_cpu_tensors_name_the_op_and_the_cpu_op_to_use(op):
    call, instead = CUDA_ONLY[op]
    with pytest.raises(NotImplementedError, match=rf"^spmm::{op} runs on CUDA tensors only and was given CPU tensors; "
                                                  rf"on CPU use .*{instead}"):
        call(torch.zeros(4, 8, dtype=torch.float16))


# ---------------------------------------------------------------------------------------------- NaN / Inf -------
def stored_reference(x, w, stored):
    """y[n, m] = sum over the stored (m, j) of w[m, j] * x[n, j], in fp64: a weight that is not stored adds
    nothing, even where x is NaN or Inf (where the dense matmul's 0 * NaN would give NaN)."""
    products = x.double()[:, None, :] * w.double()[None]
    return torch.where(stored[None], products, 0.0).sum(-1).to(x.dtype)


def nonfinite_input(n, k, g):
    x = torch.randint(-3, 4, (n, k), generator=g).float()
    x[0, 1], x[1, 6], x[2, 9], x[2, 10] = float("nan"), float("inf"), float("-inf"), float("inf")
    x[3, :] = float("nan")  # a whole row: every output of that token is NaN
    return x


def nonzero_int_weight(m, k, g):
    w = torch.randint(1, 3, (m, k), generator=g).float()
    return w * (torch.randint(0, 2, (m, k), generator=g) * 2 - 1)


def test_nan_and_inf_at_kept_positions_propagate_as_in_the_dense_masked_matmul():
    g = gen(40)
    m, k = 12, 16
    w, x = nonzero_int_weight(m, k, g), nonfinite_input(5, k, g)
    # 2:4 keeping exactly two nonzeros per group (no fillers)
    scores = torch.rand(m, k // 4, 4, generator=g)
    mask24 = (scores.argsort(-1).argsort(-1) < 2).reshape(m, k)
    y24 = ops.sparse24_mm(x, *ops.sparse24_compress(w, mask24))
    # Tiled-CSL at 50%
    mask = torch.rand(m, k, generator=g) < 0.5
    y_csl = ops.tiled_csl_mm(x, *ops.tiled_csl_compress(w, mask, 4, 8), m, 4, 8)
    # Spense: rows 0 and 5 dense (every column stored), the rest 2:4
    from spmm.formats import SpenseWeight

    spense = SpenseWeight.from_dense(w, torch.tensor([0, 5]), mask24)
    stored_spense = mask24.clone()
    stored_spense[[0, 5]] = True
    for y, stored in [(y24, mask24), (y_csl, mask), (spense.matmul(x), stored_spense)]:
        expected = stored_reference(x, w, stored)
        torch.testing.assert_close(y, expected, rtol=0, atol=0, equal_nan=True)
        dense = x @ torch.where(stored, w, 0.0).T  # the dense masked matmul: NaN wherever 0 meets NaN / Inf
        nonfinite = (~torch.isfinite(x)).float()
        kept_reads = (nonfinite @ stored.float().T) > 0  # outputs where a stored weight meets a NaN / Inf
        pruned_reads = (nonfinite @ (~stored).float().T) > 0  # outputs where a pruned zero meets one
        assert torch.equal(torch.isfinite(y), ~kept_reads)  # NaN / Inf reach exactly the outputs that read them
        torch.testing.assert_close(y[~pruned_reads], dense[~pruned_reads], rtol=0, atol=0, equal_nan=True)
        only_pruned = pruned_reads & ~kept_reads
        assert bool(only_pruned.any()) and bool(torch.isnan(dense[only_pruned]).all())  # the dense matmul's NaN...
        assert bool(torch.isfinite(y[only_pruned]).all())  # ...where the sparse op adds nothing


def test_2_4_fillers_read_their_columns():
    """A group keeping fewer than two stores +0.0 fillers at its lowest unused columns, which multiply x there."""
    w = torch.tensor([[0.0, 0.0, 0.0, 3.0]])  # keeps column 3: filler at column 0
    x = torch.tensor([[float("nan"), 1.0, 1.0, 2.0], [1.0, float("nan"), 1.0, 2.0]])
    y = ops.sparse24_mm(x, *ops.sparse24_compress(w))
    assert torch.isnan(y[0, 0]) and y[1, 0] == 6.0  # NaN at the filler column 0 propagates; at column 1 it does not
    values, locations, offsets = ops.tiled_csl_compress(w, None, 4, 4)
    assert torch.equal(ops.tiled_csl_mm(x, values, locations, offsets, 1, 4, 4), torch.tensor([[6.0], [6.0]]))
