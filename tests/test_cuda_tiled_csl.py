"""The Tiled-CSL CUDA kernels: the GPU packer against the CPU packer (bit for bit), and the SpMM kernel against
torch.matmul on the dense masked weight (fp32 reference; small integers make it exact)."""

import pytest
import torch
import torch.nn.functional as F

import spmm
from conftest import assert_bitwise_equal, masked, masked_reference as reference, random_weight
from spmm import ops
from spmm.formats import TiledCSLWeight, tiled_csl_layouts as layouts

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not spmm._C.cuda_built, reason="spmm was built without CUDA kernels"),
]

DTYPES = [torch.float16, torch.bfloat16]
SPARSITIES = [0.0, 0.5, 0.8, 0.9, 0.99, 1.0]
TOKENS = [1, 7, 8, 33, 64, 65, 200]
SHAPES = [(264, 1040), (300, 72), (256, 64), (1000, 136)]  # ragged row tiles / K tiles, one exact tile
BIG_SHAPES = [(4096, 4096), (11008, 4096)]


def name(v):
    """Readable test ids: 264x1040, float16."""
    if isinstance(v, tuple):
        return "x".join(map(str, v))
    return str(v).replace("torch.", "") if isinstance(v, torch.dtype) else None


def cuda_gen(seed):
    return torch.Generator("cuda").manual_seed(seed)


def int_case(m, k, n, dtype, sparsity, seed, nonzero=False):
    """Small-integer weight (no zeros if `nonzero`), a random keep-mask of density 1 - sparsity, x [n, k] and bias,
    made on the GPU: every product and sum is exact in fp32."""
    g = cuda_gen(seed)
    w = torch.randint(-2, 3, (m, k), generator=g, device="cuda")
    if nonzero:
        w = torch.where(w == 0, torch.ones_like(w), w)
    mask = torch.rand(m, k, generator=g, device="cuda") >= sparsity
    x = torch.randint(-3, 4, (n, k), generator=g, device="cuda").to(dtype)
    bias = torch.randint(-2, 3, (m,), generator=g, device="cuda").to(dtype)
    return w.to(dtype), mask, x, bias


def stream_mm(x, packed, m, bias=None, tile=(256, 64)):
    return ops.tiled_csl_mm(x, *packed, m, *tile, bias)


def words_mm(x, packed, m, bias=None, tile=(256, 64)):
    """The same product through the word layout (what TiledCSLLinear runs on CUDA by default), made from the same
    stream, which the op then does not read."""
    words, word_offsets = ops.tiled_csl_words(*packed, *tile)
    return ops.tiled_csl_mm(x, *empty_stream(packed), m, *tile, bias, words=words, word_offsets=word_offsets)


def empty_stream(packed):
    return tuple(t[:0] for t in packed)


HAS_DELTA_KERNEL = ops.has_cuda_kernel("_tiled_csl_delta_mm")
NO_DELTA_KERNEL = "this build has no delta kernel (CMake family tiled_csl_delta)"
_delta_layouts = {}


def delta_layout(packed, m, k, tile):
    """The delta layout of a stream, built on the GPU once per stream (a graph capture replays the product, not the
    build, which reads sizes back to the host)."""
    key = (tuple(t.data_ptr() for t in packed), tuple(t.numel() for t in packed), m, k, tile)
    if key not in _delta_layouts:
        _delta_layouts.clear()
        layout = layouts.delta_layout(TiledCSLWeight(*packed, (m, k), *tile))
        _delta_layouts[key] = (packed, layout)  # packed: keeps the pointers in the key alive
    return _delta_layouts[key][1]


def delta_mm(x, packed, m, bias=None, tile=(256, 64)):
    """The same product on the delta kernel, from the delta layout of the same stream (passed to the public op with
    the stream left empty, as a TiledCSLLinear holding the layout alone does)."""
    values, codes, offsets = delta_layout(packed, m, x.shape[-1], tile)
    return ops.tiled_csl_mm(x, *empty_stream(packed), m, *tile, bias, delta_values=values, delta_codes=codes,
                            delta_offsets=offsets)


def delta_tc_mm(x, packed, m, bias=None, tile=(256, 64)):
    """The delta layout on its tensor-core kernel at any N (the rule runs it above 8 tokens only)."""
    return ops.tiled_csl_delta_mm(x, *delta_layout(packed, m, x.shape[-1], tile), m, bias, "tensor_cores")


@pytest.fixture(params=["stream", "words", "delta"])
def mm(request):
    """Every matmul test runs on each kernel: the stream's, the word layout's and the delta layout's (the rule's
    kernel: CUDA cores up to 8 tokens, tensor cores above; test_delta_tensor_cores_at_few_tokens covers the rest)."""
    if request.param == "delta" and not HAS_DELTA_KERNEL:
        pytest.skip(NO_DELTA_KERNEL)
    return {"stream": stream_mm, "words": words_mm, "delta": delta_mm}[request.param]


def test_has_cuda_kernels():
    assert ops.has_cuda_kernel("tiled_csl_mm") and ops.has_cuda_kernel("tiled_csl_compress")


# ---------------------------------------------------------------------------------------------- packer ---------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=name)
@pytest.mark.parametrize("mk", [(264, 1040), (300, 72), (67, 260), (1, 1), (513, 4096)], ids=name)
@pytest.mark.parametrize("tile", [(256, 64), (128, 64), (16, 32), (1, 8), (256, 256)], ids=name)
@pytest.mark.parametrize("with_mask", [False, True])
def test_gpu_packer_matches_cpu_packer(dtype, mk, tile, with_mask):
    g = torch.Generator().manual_seed(hash((mk, tile)) % 1000)
    w = random_weight(*mk, dtype, g, zeros=0.3)  # zeros and -0.0, which are never stored
    mask = torch.rand(*mk, generator=g) < 0.4 if with_mask else None
    cpu = ops.tiled_csl_compress(w, mask, *tile)
    gpu = ops.tiled_csl_compress(w.cuda(), None if mask is None else mask.cuda(), *tile)
    for got, want in zip(gpu, cpu):
        assert got.device.type == "cuda"
        assert_bitwise_equal(got.cpu(), want)


def test_gpu_packer_non_contiguous_and_empty():
    g = torch.Generator().manual_seed(3)
    w = random_weight(96, 200, torch.float16, g)
    mask = torch.rand(96, 200, generator=g) < 0.5
    cpu = ops.tiled_csl_compress(w.t().contiguous(), mask.t().contiguous(), 64, 64)
    gpu = ops.tiled_csl_compress(w.cuda().t(), mask.cuda().t(), 64, 64)  # transposed views
    for got, want in zip(gpu, cpu):
        assert_bitwise_equal(got.cpu(), want)
    for shape in [(0, 64), (64, 0), (0, 0)]:
        values, locations, offsets = ops.tiled_csl_compress(torch.zeros(shape, device="cuda"), None, 256, 64)
        assert values.numel() == 0 and locations.numel() == 0 and offsets.tolist() == [0]
    values, _, offsets = ops.tiled_csl_compress(torch.zeros(300, 100, device="cuda"), None, 256, 64)
    assert values.numel() == 0 and offsets.tolist() == [0] * 5


def test_gpu_packer_large_layer_matches_the_cpu_packer():
    """A 7B model's largest layer packs on the GPU bit for bit as on the CPU (its packing time is measured by
    python -m bench.host_overhead, not asserted here)."""
    w = torch.randn(11008, 4096, device="cuda", dtype=torch.float16)
    mask = torch.rand(11008, 4096, device="cuda") < 0.2
    values, locations, offsets = ops.tiled_csl_compress(w, mask)
    assert values.numel() == int((mask & (w != 0)).sum()) and offsets[-1].item() == values.numel()
    for got, want in zip((values, locations, offsets), ops.tiled_csl_compress(w.cpu(), mask.cpu())):
        assert torch.equal(got.cpu(), want)


def test_gpu_packer_rejects_bad_input():
    bad = torch.zeros(8, 16, device="cuda")
    bad[2, 5] = float("nan")
    bad[6, 1] = float("inf")
    with pytest.raises(ValueError, match=r"`dense` has a NaN or infinite value at row 2, column 5"):
        ops.tiled_csl_compress(bad, None, 4, 4)
    masked_out = torch.zeros(8, 16, device="cuda")
    masked_out[7, 15] = float("inf")  # dropped by the mask, still refused (as on CPU)
    with pytest.raises(ValueError, match=r"at row 7, column 15"):
        ops.tiled_csl_compress(masked_out, torch.zeros(8, 16, dtype=torch.bool, device="cuda"), 4, 4)
    w = torch.ones(8, 16, device="cuda")
    with pytest.raises(ValueError, match=r"`mask` must have the shape of `dense`"):
        ops.tiled_csl_compress(w, torch.ones(8, 8, dtype=torch.bool, device="cuda"), 4, 4)
    with pytest.raises(TypeError, match=r"`mask` must be Bool"):
        ops.tiled_csl_compress(w, torch.ones(8, 16, device="cuda"), 4, 4)
    with pytest.raises(ValueError, match=r"`mask` is on cpu but `x` is on cuda"):
        ops.tiled_csl_compress(w, torch.ones(8, 16, dtype=torch.bool), 4, 4)
    with pytest.raises(ValueError, match=r"more than 65536 elements"):
        ops.tiled_csl_compress(w, None, 512, 256)
    with pytest.raises(TypeError, match=r"`dense` must be float32, float16 or bfloat16"):
        ops.tiled_csl_compress(w.int(), None, 4, 4)


# ---------------------------------------------------------------------------------------------- matmul ---------
@pytest.mark.parametrize("dtype", DTYPES, ids=name)
@pytest.mark.parametrize("mk", SHAPES, ids=name)
@pytest.mark.parametrize("n", TOKENS)
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_exact_integer_inputs(dtype, mk, n, sparsity, with_bias, mm):
    w, mask, x, bias = int_case(*mk, n, dtype, sparsity, hash((mk, n, sparsity)) % 1000)
    b = bias if with_bias else None
    y = mm(x, ops.tiled_csl_compress(w, mask), mk[0], b)
    assert y.shape == (n, mk[0]) and y.dtype == dtype
    assert torch.equal(y, reference(x, w, mask, b))


@pytest.mark.parametrize("dtype", DTYPES, ids=name)
@pytest.mark.parametrize("mk", BIG_SHAPES, ids=name)
@pytest.mark.parametrize("n", [1, 8, 33, 64, 65])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.8, 0.9, 0.99])
def test_exact_real_layer_shapes(dtype, mk, n, sparsity, mm):
    w, mask, x, bias = int_case(*mk, n, dtype, sparsity, hash((mk, n, sparsity, 1)) % 1000)
    y = mm(x, ops.tiled_csl_compress(w, mask), mk[0], bias)
    assert torch.equal(y, reference(x, w, mask, bias))


@pytest.mark.parametrize("dtype", DTYPES, ids=name)
@pytest.mark.parametrize("mk", [(264, 1040), (4096, 4096), (300, 72)], ids=name)
@pytest.mark.parametrize("n", [1, 8, 33, 64, 65])
@pytest.mark.parametrize("sparsity", [0.0, 0.8, 1.0])
def test_exact_128_row_tiles(dtype, mk, n, sparsity, mm):
    w, mask, x, bias = int_case(*mk, n, dtype, sparsity, hash((mk, n, sparsity, 2)) % 1000)
    y = mm(x, ops.tiled_csl_compress(w, mask, 128, 64), mk[0], bias, tile=(128, 64))
    assert torch.equal(y, reference(x, w, mask, bias))


@pytest.mark.parametrize("dtype", DTYPES, ids=name)
@pytest.mark.parametrize("n", [1, 8, 64])
def test_fully_dense_tiles_empty_rows_and_empty_tiles(dtype, n, mm):
    """Tiles of every density in one weight: fully dense (16384 pairs: four batches of the kernel's loads), just
    over and under one batch (4096 pairs), empty rows, empty tiles, single pairs at tile corners."""
    m, k = 1024, 640  # 4 x 10 tiles of 256 x 64
    w, _, x, bias = int_case(m, k, n, dtype, 0.0, 11, nonzero=True)
    g = cuda_gen(12)
    density = torch.rand(4, 10, generator=g, device="cuda")  # per tile
    density[1, :] = 0.0  # a whole empty row tile
    density[2, 3] = 0.0
    keep = torch.rand(m, k, generator=g, device="cuda") < density.repeat_interleave(256, 0).repeat_interleave(64, 1)
    keep[:256, :256] = False
    keep[:256, :64] = True  # tile (0, 0) fully dense: 16384 pairs
    keep[:64, 64:128] = True  # tile (0, 1): 4097 pairs, one over a batch
    keep[64, 64] = True
    keep[:64, 128:192] = True  # tile (0, 2): 4096 pairs from an odd offset: 513 granules, two batches
    keep[:64, 192:256] = True  # tile (0, 3): 4095 pairs
    keep[63, 255] = False
    keep[600:700] = False  # empty rows inside a row tile
    keep[767, 639] = True  # the last element of tile (2, 9)
    keep[512, 192] = True  # the first element of the emptied tile (2, 3)
    packed = ops.tiled_csl_compress(w, keep)
    counts = (packed[2][1:] - packed[2][:-1]).tolist()
    assert counts[:4] == [16384, 4097, 4096, 4095] and counts[10:20] == [0] * 10 and counts[23] == 1
    y = mm(x, packed, m, bias)
    assert torch.equal(y, reference(x, w, keep, bias))


@pytest.mark.parametrize("dtype", DTYPES, ids=name)
def test_fully_dense_weight(dtype, mm):
    w, _, x, bias = int_case(2048, 2048, 16, dtype, 0.0, 13, nonzero=True)
    keep = torch.ones_like(w, dtype=torch.bool)
    packed = ops.tiled_csl_compress(w, keep)
    assert packed[0].numel() == 2048 * 2048
    assert torch.equal(mm(x, packed, 2048, bias), reference(x, w, keep, bias))


@pytest.mark.parametrize("dtype", DTYPES, ids=name)
@pytest.mark.parametrize("k", [1, 5, 13, 1043])
def test_k_not_a_multiple_of_8(dtype, k, mm):
    """x is zero-padded to a multiple of 8 columns; the weight has no pairs there."""
    w, mask, x, bias = int_case(200, k, 9, dtype, 0.5, k)
    assert torch.equal(mm(x, ops.tiled_csl_compress(w, mask), 200, bias), reference(x, w, mask, bias))


@pytest.mark.parametrize("dtype", DTYPES, ids=name)
@pytest.mark.parametrize("n", [1, 33, 200])
def test_real_values_within_twice_dense_error_and_deterministic(dtype, n, mm):
    g = cuda_gen(5)
    w = torch.randn(4096, 4096, generator=g, device="cuda").to(dtype)
    mask = torch.rand(4096, 4096, generator=g, device="cuda") < 0.2
    x = torch.randn(n, 4096, generator=g, device="cuda").to(dtype)
    wm = masked(w, mask)
    ref = x.double() @ wm.double().T
    dense_err = (F.linear(x, wm).double() - ref).abs().max()
    packed = ops.tiled_csl_compress(w, mask)
    y = mm(x, packed, 4096)
    assert (y.double() - ref).abs().max() <= 2 * dense_err
    assert torch.equal(y, mm(x, packed, 4096))  # split-K sums in a fixed order


def test_leading_dims_strided_and_misaligned_inputs(mm):
    w, mask, x, bias = int_case(300, 520, 12, torch.float16, 0.7, 3)
    packed = ops.tiled_csl_compress(w, mask)
    expected = reference(x, w, mask, bias)
    assert torch.equal(mm(x.reshape(3, 4, 520), packed, 300, bias), expected.reshape(3, 4, 300))
    strided = torch.stack([x, x], dim=-1).reshape(12, 1040)[:, ::2]  # x's values at a column stride of 2
    assert not strided.is_contiguous() and torch.equal(strided, x)
    assert torch.equal(mm(strided, packed, 300, bias), expected)
    shifted = torch.empty(12 * 520 + 1, dtype=x.dtype, device="cuda")[1:].view(12, 520)  # 2-byte aligned rows
    shifted.copy_(x)
    assert torch.equal(mm(shifted, packed, 300, bias), expected)
    assert torch.equal(mm(x.t().contiguous().t(), packed, 300, bias), expected)  # column-major x
    # values / locations starting at an odd element (views into larger buffers)
    values, locations, offsets = packed
    v2 = torch.cat([values[:1], values])[1:]
    l2 = torch.cat([locations[:1], locations])[1:]
    assert v2.data_ptr() % 16 != 0
    assert torch.equal(mm(x, (v2, l2, offsets), 300, bias), expected)


@pytest.mark.parametrize("n,m,k", [(0, 300, 520), (5, 0, 520), (5, 300, 0), (1, 300, 0)])
def test_empty_tensors(n, m, k, mm):
    w = torch.ones(m, k, device="cuda", dtype=torch.float16)
    x = torch.ones(n, k, device="cuda", dtype=torch.float16)
    bias = torch.arange(m, device="cuda").half()
    y = mm(x, ops.tiled_csl_compress(w), m, bias)
    assert y.shape == (n, m) and torch.equal(y, (x.float() @ w.float().T + bias.float()).half())
    assert y.numel() == 0 or y.data_ptr() != bias.data_ptr()


def test_cuda_graph_capture(mm):
    w, mask, x, bias = int_case(1024, 2048, 8, torch.float16, 0.8, 7)
    packed = ops.tiled_csl_compress(w, mask)
    static_x = x.clone()
    mm(static_x, packed, 1024, bias)  # warm-up outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = mm(static_x, packed, 1024, bias)
    for sign in (-1, 1):
        static_x.copy_(sign * x)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, reference(sign * x, w, mask, bias))


def test_opcheck():
    w, mask, x, bias = int_case(300, 200, 5, torch.float16, 0.6, 17)
    packed = ops.tiled_csl_compress(w, mask)
    torch.library.opcheck(torch.ops.spmm.tiled_csl_mm, (x, *packed, 300, 256, 64, bias))
    torch.library.opcheck(torch.ops.spmm.tiled_csl_mm, (x, *packed, 300, 256, 64, None))
    torch.library.opcheck(torch.ops.spmm.tiled_csl_compress, (w, mask, 256, 64),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_layer_packs_on_gpu_and_runs_the_kernel():
    linear = torch.nn.Linear(520, 300).half().cuda()
    mask = spmm.pruning.magnitude_mask(linear.weight, 0.8)
    layer = spmm.nn.TiledCSLLinear.from_dense(linear, mask)
    assert layer.values.is_cuda and layer.weight_format.device.type == "cuda"
    cpu_values, _, _ = ops.tiled_csl_compress(linear.weight.detach().cpu(), mask.cpu())
    assert_bitwise_equal(layer.values.cpu(), cpu_values)
    assert torch.equal(layer.to_dense_weight(), masked(linear.weight.detach(), mask))
    x = torch.randn(2, 3, 520, device="cuda", dtype=torch.half)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer.to_dense_linear()(x), rtol=2e-3, atol=2e-3)


def test_rejects_bad_input():
    w, mask, x, bias = int_case(300, 200, 4, torch.float16, 0.5, 9)
    packed = ops.tiled_csl_compress(w, mask)
    values, locations, offsets = packed
    with pytest.raises(TypeError, match=r"`x` must be float16 or bfloat16 for the CUDA Tiled-CSL kernel"):
        ops.tiled_csl_mm(x.float(), values.float(), locations, offsets, 300, 256, 64)
    with pytest.raises(TypeError, match=r"`values` must be BFloat16"):
        ops.tiled_csl_mm(x.bfloat16(), values, locations, offsets, 300, 256, 64)
    with pytest.raises(ValueError, match=r"`tile_offsets` must have 13 entries for a 600 x 200 weight"):
        ops.tiled_csl_mm(x, values, locations, offsets, 600, 256, 64)
    with pytest.raises(ValueError, match=r"`locations` must have one entry per value"):
        ops.tiled_csl_mm(x, values, locations[1:], offsets, 300, 256, 64)
    with pytest.raises(ValueError, match=r"`bias` must have out_features = 300 elements, got 7"):
        ops.tiled_csl_mm(x, values, locations, offsets, 300, 256, 64, bias[:7])
    with pytest.raises(ValueError, match=r"`values` is on cpu but `x` is on cuda"):
        ops.tiled_csl_mm(x, values.cpu(), locations, offsets, 300, 256, 64)
    small = ops.tiled_csl_compress(w, mask, 16, 32)
    with pytest.raises(NotImplementedError, match=r"`tile_m` = 16, `tile_k` = 32"):
        ops.tiled_csl_mm(x, *small, 300, 16, 32)
    with pytest.raises(NotImplementedError, match=r"tile_m"):
        stream_mm(x, ops.tiled_csl_compress(w, mask, 256, 128), 300, tile=(256, 128))


# ------------------------------------------------------------------------------------------- word layout --------
def unswizzle(offset):
    """The kernel's shared tile keeps 16-byte chunk c of row r at c ^ (r % 8); the inverse on an in-tile offset."""
    return offset ^ ((offset >> 3) & 0x38)


@pytest.mark.parametrize("tile_m", [256, 128])
def test_word_layout_holds_each_tiles_pairs_padded_to_16_bytes(tile_m):
    w, mask, _, _ = int_case(600, 330, 1, torch.float16, 0.7, 21)
    values, locations, offsets = ops.tiled_csl_compress(w, mask, tile_m, 64)
    words, word_offsets = ops.tiled_csl_words(values, locations, offsets, tile_m, 64)
    assert words.dtype == torch.float16 and words.shape[1] == 2 and words.shape[0] % 4 == 0
    bits = words.view(torch.int16).cpu().numpy().view("uint16").astype("int64")  # [capacity, 2]: value, offset
    v_bits = values.view(torch.int16).cpu().numpy().view("uint16").astype("int64")
    locs, offs, woffs = locations.cpu().numpy().view("uint16"), offsets.cpu().tolist(), word_offsets.cpu().tolist()
    assert woffs[0] == 0
    for t in range(len(offs) - 1):
        count, padded = offs[t + 1] - offs[t], woffs[t + 1] - woffs[t]
        assert padded == -(-count // 4) * 4
        run = bits[woffs[t]:woffs[t + 1]]
        assert (run[:count, 0] == v_bits[offs[t]:offs[t + 1]]).all()
        assert (unswizzle(run[:count, 1]) == locs[offs[t]:offs[t + 1]]).all()
        assert (run[count:, 1] == tile_m * 64).all()  # padding aims at the scratch slot past the tile


def test_word_layout_misaligned_words_are_copied():
    w, mask, x, bias = int_case(300, 520, 5, torch.float16, 0.7, 22)
    words, word_offsets = ops.tiled_csl_words(*ops.tiled_csl_compress(w, mask), 256, 64)
    shifted = torch.cat([words[:1], words])[1:]  # starts 4 bytes into its buffer
    assert shifted.data_ptr() % 16 != 0
    y = words_op(x, shifted, word_offsets, 300, 256, bias)
    assert torch.equal(y, reference(x, w, mask, bias))


def words_op(x, words, word_offsets, m, tile_m, bias=None):
    empty = word_offsets[:0]
    return ops.tiled_csl_mm(x, x[0, :0], empty.short(), empty, m, tile_m, 64, bias, words=words,
                            word_offsets=word_offsets)


def test_word_layout_opcheck():
    w, mask, x, bias = int_case(300, 200, 5, torch.float16, 0.6, 23)
    packed = ops.tiled_csl_compress(w, mask)
    words, word_offsets = ops.tiled_csl_words(*packed, 256, 64)
    for b in (bias, None):
        torch.library.opcheck(torch.ops.spmm.tiled_csl_mm, (x, *packed, 300, 256, 64, b, words, word_offsets))
        torch.library.opcheck(torch.ops.spmm.tiled_csl_mm, (x, *empty_stream(packed), 300, 256, 64, b, words,
                                                            word_offsets))
    torch.library.opcheck(torch.ops.spmm._tiled_csl_words, (*packed, 256, 64))


def test_word_layout_rejects_bad_input():
    w, mask, x, bias = int_case(300, 200, 4, torch.float16, 0.5, 24)
    packed = ops.tiled_csl_compress(w, mask)
    words, word_offsets = ops.tiled_csl_words(*packed, 256, 64)
    with pytest.raises(TypeError, match=r"`words` must be BFloat16"):  # the weight's dtype must be x's
        words_op(x.bfloat16(), words, word_offsets, 300, 256)
    with pytest.raises(ValueError, match=r"`word_offsets` must have 13 entries for a 600 x 200 weight"):
        words_op(x, words, word_offsets, 600, 256)
    with pytest.raises(ValueError, match=r"`words` must be \[4j, 2\]"):
        words_op(x, words[:-1], word_offsets, 300, 256)
    with pytest.raises(NotImplementedError, match=r"`tile_m` = 64"):
        words_op(x, words, word_offsets, 300, 64)
    with pytest.raises(ValueError, match=r"`bias` must have out_features = 300 elements"):
        words_op(x, words, word_offsets, 300, 256, bias[:7])
    with pytest.raises(ValueError, match=r"`words` is on cpu but `x` is on cuda"):
        words_op(x, words.cpu(), word_offsets, 300, 256)
    with pytest.raises(ValueError, match=r"the word layout needs both `words` and `word_offsets`"):
        ops.tiled_csl_mm(x, *packed, 300, 256, 64, words=words)
    with pytest.raises(ValueError, match=r"give one kernel layout"):
        ops.tiled_csl_mm(x, *packed, 300, 256, 64, words=words, word_offsets=word_offsets,
                         delta_values=words, delta_codes=word_offsets, delta_offsets=word_offsets)
    with pytest.raises(TypeError, match=r"`values` must be float16 or bfloat16"):
        ops.tiled_csl_words(packed[0].float(), *packed[1:], 256, 64)
    with pytest.raises(ValueError, match=r"`locations` must have one entry per value"):
        ops.tiled_csl_words(packed[0], packed[1][1:], packed[2], 256, 64)


def test_word_layout_decodes_back_to_the_stream():
    w, mask, _, _ = int_case(600, 330, 1, torch.bfloat16, 0.7, 27)
    weight = TiledCSLWeight.from_dense(w, mask)
    words, word_offsets = ops.tiled_csl_words(*weight.tensors().values(), 256, 64)
    back = layouts.words_to_weight(words, word_offsets, (600, 330), 256)
    for name, t in weight.tensors().items():
        assert_bitwise_equal(back.tensors()[name], t)


def test_layer_keeps_the_word_layout_in_step_with_its_weight(monkeypatch):
    """The layer's words follow every change of its weight: made on CUDA, dropped on CPU, rebuilt on a dtype change
    and on load_state_dict of a weight with another nnz."""
    monkeypatch.delenv("SPMM_TILED_CSL_DELTA", raising=False)
    g = torch.Generator().manual_seed(25)
    linear = torch.nn.Linear(520, 300, dtype=torch.half)
    layer = spmm.nn.TiledCSLLinear.from_dense(linear, spmm.pruning.magnitude_mask(linear.weight, 0.8))
    assert layer.words is None  # on CPU: the stream op
    layer = layer.cuda()
    assert layer.words is not None and layer.words.is_cuda and "words" not in layer.state_dict()
    x = torch.randn(7, 520, generator=g).half().cuda()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer.to_dense_linear()(x), rtol=2e-3, atol=2e-3)
        other = torch.nn.Linear(520, 300, dtype=torch.half)
        fresh = spmm.nn.TiledCSLLinear.from_dense(other, spmm.pruning.magnitude_mask(other.weight, 0.5)).cuda()
        layer.load_state_dict(fresh.state_dict())
        assert layer.values.numel() == fresh.values.numel() and torch.equal(layer.words, fresh.words)
        torch.testing.assert_close(layer(x), fresh.to_dense_linear()(x), rtol=2e-3, atol=2e-3)
        layer = layer.bfloat16()
        assert layer.words.dtype == torch.bfloat16
        torch.testing.assert_close(layer(x.bfloat16()), layer.to_dense_linear()(x.bfloat16()), rtol=2e-2, atol=2e-2)
        assert layer.cpu().words is None


# ------------------------------------------------------------------------------------------ delta layout --------
needs_delta = pytest.mark.skipif(not HAS_DELTA_KERNEL, reason=NO_DELTA_KERNEL)


@pytest.mark.parametrize("mk", [(300, 1000), (4096, 4096), (33, 7), (1000, 4100)], ids=name)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.8, 0.97, 1.0])
def test_delta_layout_built_on_gpu_matches_cpu_bit_for_bit(mk, sparsity):
    w, mask, _, _ = int_case(*mk, 1, torch.bfloat16, sparsity, hash((mk, sparsity, 3)) % 1000)
    weight = TiledCSLWeight.from_dense(w, mask)
    gpu = layouts.delta_layout(weight)
    cpu = layouts.delta_layout(weight.to("cpu"))
    for got, want in zip(gpu, cpu):
        assert got.is_cuda
        assert_bitwise_equal(got.cpu(), want)
    back = layouts.delta_to_weight(*gpu, mk, 256, 64)
    for n, t in weight.tensors().items():
        assert_bitwise_equal(back.tensors()[n].cpu(), t.cpu())


@needs_delta
@pytest.mark.parametrize("dtype", DTYPES, ids=name)
@pytest.mark.parametrize("mk", [(300, 1000), (4096, 4096), (513, 63), (1000, 4100)], ids=name)
@pytest.mark.parametrize("sparsity", [0.0, 0.8, 0.95])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 9, 17])
def test_delta_kernel_agrees_with_its_cpu_emulation_bit_for_bit(dtype, mk, sparsity, n):
    """Real values: the CUDA-core kernel sums in the order the CPU op emulates (per lane, entry by entry, fma; slices
    in order), so the results agree in every bit, at the rule's pass width and at every other."""
    g = cuda_gen(hash((mk, sparsity, n)) % 1000)
    w = torch.randn(*mk, generator=g, device="cuda").to(dtype)
    mask = torch.rand(*mk, generator=g, device="cuda") >= sparsity
    x = torch.randn(n, mk[1], generator=g, device="cuda").to(dtype)
    bias = torch.randn(mk[0], generator=g, device="cuda").to(dtype)
    layout = layouts.delta_layout(TiledCSLWeight.from_dense(w, mask))
    want = ops.tiled_csl_delta_mm(x.cpu(), *(t.cpu() for t in layout), mk[0], bias.cpu(), "cuda_cores")
    for tokens_per_pass in (0, 1, 2, 4, 8):
        got = ops.tiled_csl_delta_mm(x, *layout, mk[0], bias, "cuda_cores", tokens_per_pass)
        assert_bitwise_equal(got.cpu(), want)


@needs_delta
@pytest.mark.parametrize("dtype", DTYPES, ids=name)
@pytest.mark.parametrize("mk", [(264, 1040), (300, 72), (1000, 136)], ids=name)
@pytest.mark.parametrize("n", [1, 7, 8])
@pytest.mark.parametrize("sparsity", [0.0, 0.8, 0.99, 1.0])
def test_delta_tensor_cores_at_few_tokens(dtype, mk, n, sparsity):
    """The tensor-core kernel where the rule does not send it (N <= 8), exact as everywhere."""
    w, mask, x, bias = int_case(*mk, n, dtype, sparsity, hash((mk, n, sparsity, 4)) % 1000)
    assert torch.equal(delta_tc_mm(x, ops.tiled_csl_compress(w, mask), mk[0], bias), reference(x, w, mask, bias))


@needs_delta
def test_delta_opcheck_and_misaligned_values():
    w, mask, x, bias = int_case(300, 520, 5, torch.float16, 0.6, 41)
    packed = ops.tiled_csl_compress(w, mask)
    values, codes, offsets = layouts.delta_layout(TiledCSLWeight(*packed, (300, 520)))
    for b in (bias, None):
        for kernel in ("cuda_cores", "tensor_cores"):
            torch.library.opcheck(torch.ops.spmm._tiled_csl_delta_mm, (x, values, codes, offsets, 300, b, kernel, 0))
        torch.library.opcheck(torch.ops.spmm.tiled_csl_mm, (x, *empty_stream(packed), 300, 256, 64, b, None, None,
                                                            values, codes, offsets))
    shifted = torch.cat([values[:1], values])[1:]  # 2 bytes off the 16-byte alignment the kernel loads at
    assert shifted.data_ptr() % 16 != 0
    for kernel in ("cuda_cores", "tensor_cores"):
        assert torch.equal(ops.tiled_csl_delta_mm(x, shifted, codes, offsets, 300, bias, kernel),
                           reference(x, w, mask, bias))


@needs_delta
def test_delta_rejects_bad_input():
    w, mask, x, bias = int_case(300, 520, 4, torch.float16, 0.5, 42)
    values, codes, offsets = layouts.delta_layout(TiledCSLWeight.from_dense(w, mask))
    with pytest.raises(TypeError, match=r"`x` must be float16 or bfloat16 for the CUDA Tiled-CSL kernels"):
        ops.tiled_csl_delta_mm(x.float(), values.float(), codes, offsets, 300)
    with pytest.raises(TypeError, match=r"`delta_values` must be BFloat16"):
        ops.tiled_csl_mm(x.bfloat16(), x[0, :0], codes[:0].short(), codes[:0], 300, 256, 64, delta_values=values,
                         delta_codes=codes, delta_offsets=offsets)
    with pytest.raises(ValueError, match=r"`offsets` must have 301 entries for a 300 x 40 weight"):
        ops.tiled_csl_delta_mm(x[:, :40], values, codes, offsets, 300)
    with pytest.raises(ValueError, match=r"`values` is on cpu but `x` is on cuda"):
        ops.tiled_csl_delta_mm(x, values.cpu(), codes, offsets, 300)
    with pytest.raises(ValueError, match=r"`bias` must have out_features = 300 elements"):
        ops.tiled_csl_delta_mm(x, values, codes, offsets, 300, bias[:7])
    with pytest.raises(ValueError, match=r"`tokens_per_pass` must be 0"):
        ops.tiled_csl_delta_mm(x, values, codes, offsets, 300, bias, tokens_per_pass=16)
    with pytest.raises(ValueError, match=r"`kernel` must be \"auto\", \"cuda_cores\" or \"tensor_cores\""):
        ops.tiled_csl_delta_mm(x, values, codes, offsets, 300, bias, "fastest")
    with pytest.raises(ValueError, match=r"needs all of `delta_values`, `delta_codes` and `delta_offsets`"):
        ops.tiled_csl_mm(x, x[0, :0], codes[:0].short(), codes[:0], 300, 256, 64, delta_values=values)


@pytest.fixture
def delta_layer(monkeypatch):
    """TiledCSLLinear with the switch on: the layer derives the delta layout and holds it alone."""
    if not HAS_DELTA_KERNEL:
        pytest.skip(NO_DELTA_KERNEL)
    monkeypatch.setenv("SPMM_TILED_CSL_DELTA", "1")


def held_bytes(layer):
    return sum(b.numel() * b.element_size() for name, b in layer.named_buffers() if name != "bias")


@pytest.mark.parametrize("dtype", DTYPES, ids=name)
def test_delta_layer_holds_one_copy_runs_exact_and_saves_the_stream(dtype, delta_layer):
    w, mask, x, bias = int_case(1000, 2048, 9, dtype, 0.8, 43)
    linear = torch.nn.Linear(2048, 1000, dtype=dtype, device="cuda")
    with torch.no_grad():
        linear.weight.copy_(w)
        linear.bias.copy_(bias)
    layer = spmm.nn.TiledCSLLinear.from_dense(linear, mask)
    assert layer.values is None and layer.words is None and layer.delta_values.is_cuda
    layout = sum(t.numel() * t.element_size() for t in (layer.delta_values, layer.delta_codes, layer.delta_offsets))
    assert held_bytes(layer) <= 1.05 * layout  # resident bytes: the layout's, nothing else
    stream = TiledCSLWeight.from_dense(w, mask)
    assert layout < 0.8 * stream.nbytes  # 2.5 bytes per nonzero (+ overhead) against the stream's 4
    with torch.no_grad():
        assert torch.equal(layer(x), reference(x, w, mask, bias))
        assert torch.equal(layer(x[:1]), reference(x[:1], w, mask, bias))
    state = layer.state_dict()
    for n, t in stream.tensors().items():
        assert_bitwise_equal(state[n], t)
    fresh = spmm.nn.TiledCSLLinear(2048, 1000, dtype=dtype, device="cuda")
    fresh.load_state_dict(state)
    assert fresh.values is None and torch.equal(fresh.delta_codes, layer.delta_codes)
    cpu = layer.cpu()
    assert cpu.delta_values is None and cpu.values is not None and torch.equal(cpu.to_dense_weight(), masked(w, mask).cpu())


@pytest.mark.parametrize("layout", ["words", "delta"])
def test_layer_graph_capture_compile_and_backward(layout, monkeypatch):
    """Whichever kernel layout the layer holds: CUDA graph replay and torch.compile exact; gradients for x and bias."""
    if layout == "delta":
        if not HAS_DELTA_KERNEL:
            pytest.skip(NO_DELTA_KERNEL)
        monkeypatch.setenv("SPMM_TILED_CSL_DELTA", "1")
    else:
        monkeypatch.delenv("SPMM_TILED_CSL_DELTA", raising=False)
    w, mask, x, bias = int_case(1024, 2048, 8, torch.float16, 0.8, 26)
    linear = torch.nn.Linear(2048, 1024, dtype=torch.half, device="cuda")
    with torch.no_grad():
        linear.weight.copy_(w)
        linear.bias.copy_(bias)
    layer = spmm.nn.TiledCSLLinear.from_dense(linear, mask)
    assert getattr(layer, {"words": "words", "delta": "delta_values"}[layout]) is not None
    assert_exact_on_graph_and_compile(layer, x, reference(x, w, mask, bias))
    assert_backward_matches_dense(layer, masked(w, mask), bias)


def assert_exact_on_graph_and_compile(layer, x, expected):
    with torch.no_grad():
        static_x = x.clone()
        layer(static_x)  # warm-up outside capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = layer(static_x)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, expected)
        compiled = torch.compile(layer, fullgraph=True)
        assert torch.equal(compiled(x), expected)


def assert_backward_matches_dense(layer, dense_weight, bias):
    """Gradients flow to x and the bias (not the packed weight) as through nn.Linear on the dense masked weight, at
    decode and prefill sizes."""
    for n in (1, 16, 200):
        g = cuda_gen(n)
        x = torch.randint(-2, 3, (n, dense_weight.shape[1]), generator=g, device="cuda").half().requires_grad_()
        grad_out = torch.randint(-2, 3, (n, dense_weight.shape[0]), generator=g, device="cuda").half()
        layer.bias.requires_grad_(True)
        layer(x).backward(grad_out)
        x2 = x.detach().clone().requires_grad_()
        b2 = bias.detach().clone().requires_grad_()
        torch.nn.functional.linear(x2, dense_weight, b2).backward(grad_out)
        assert torch.equal(x.grad, x2.grad) and torch.equal(layer.bias.grad, b2.grad)
        layer.bias.grad = None
        layer.bias.requires_grad_(False)

