"""The spmm:: ops on CPU (the reference semantics): exact against torch.matmul on the dense masked weight,
opcheck (schema, fake kernels, aot dispatch), empty tensors, and a named error for every bad input."""

import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

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
    """The CUDA-only layout ops trace under torch.compile through their fakes; the shapes they promise (checked on
    the GPU against the real ops by opcheck) follow the documented padding."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        values = torch.empty(300, 100, dtype=torch.float16)
        meta = torch.empty(300, 25, dtype=torch.uint8)
        a, e = torch.ops.spmm._sparse24_sm80_pack(values, meta)  # M to 32, K to 64; 16-bit meta per 16 columns
        assert a.shape == (320, 128) and a.dtype == torch.float16
        assert e.shape == (320 * 256 // 16,) and e.dtype == torch.int16
        x = torch.empty(5, 7, 200, dtype=torch.float16)
        assert torch.ops.spmm._sparse24_sm80_mm(x, a, e, 300, None).shape == (5, 7, 300)
        stream = (torch.empty(1000, dtype=torch.bfloat16), torch.empty(1000, dtype=torch.int16),
                  torch.empty(13, dtype=torch.int32))  # 12 tiles
        words, word_offsets = torch.ops.spmm._tiled_csl_words(*stream, 256, 64)
        assert words.shape == (1036, 2) and words.dtype == torch.bfloat16  # 1000 + 3 per tile, to a multiple of 4
        assert word_offsets.shape == (13,) and word_offsets.dtype == torch.int32
        y = torch.ops.spmm._tiled_csl_mm_words(x.bfloat16(), words, word_offsets, 300, 256, None)
        assert y.shape == (5, 7, 300) and y.dtype == torch.bfloat16


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
