"""The Tiled-CSL delta layout on CPU: its torch builder against a literal reading of the spec, the round trip back to
the stream, and the delta kernel's index math (the CPU op _tiled_csl_delta_mm emulates the kernel lane by lane with
the kernel's own __host__ __device__ code) exact against torch.matmul on the dense masked weight, at every sparsity
and over adversarial masks. Also the word layout's decoder, the TiledCSLLinear that holds the delta layout alone, and
the rules and fakes the C++ side exports."""

import pytest
import torch

import spmm
from conftest import assert_bitwise_equal, masked, masked_reference as reference
from spmm import _C, ops
from spmm.formats import TiledCSLWeight, tiled_csl_layouts as layouts
from spmm.nn import TiledCSLLinear

SHAPES = [(300, 1000), (33, 7), (1, 1), (257, 520), (64, 4100), (513, 63), (40, 2049)]


def int_weight(m, k, dtype, sparsity, seed, mask=None):
    """Nonzero small integers (every sum exact in fp32) kept by a random mask of density 1 - sparsity."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(1, 4, (m, k), generator=g) * (torch.randint(0, 2, (m, k), generator=g) * 2 - 1)
    if mask is None:
        mask = torch.rand(m, k, generator=g) >= sparsity
    return w.to(dtype), mask


def adversarial_mask(kind, m, k):
    r, c = torch.arange(m)[:, None], torch.arange(k)[None, :]
    rand = torch.rand(m, k, generator=torch.Generator().manual_seed(7)) < 0.3
    width = layouts.delta_slice_width(m, k)
    return {
        "empty_rows": rand & (r % 3 != 1),
        "one_dense_column": (c == k // 2) | (rand & (r % 2 == 0)),
        "empty_slices": rand & ((c // width) % 2 == 1),
        "full_rows": (r % 5 == 0) | rand,
        "long_gaps": (c * 7 + r) % 61 == 0,  # gaps of ~61 columns: fillers everywhere
        "last_column_only": (c == k - 1) & (r >= 0),
        "first_and_last": ((c == 0) | (c == k - 1)) & (r >= 0),
        "full": torch.ones(m, k, dtype=torch.bool),
    }[kind]


def layout_of(w, mask, tile=(256, 64)):
    weight = TiledCSLWeight.from_dense(w, mask, *tile)
    return weight, layouts.delta_layout(weight)


def spec_layout(weight):
    """The delta layout read literally from its definition (tiled_csl_delta_layout.h), in Python loops."""
    m, k = weight.shape
    width = layouts.delta_slice_width(m, k)
    slices = -(-k // width)
    dense = weight.to_dense()
    bits = dense.view(torch.int16) if dense.element_size() == 2 else dense.view(torch.int32)
    segments = {}
    for s in range(slices):
        for r in range(m):
            entries, previous = [], -1
            for c in range(s * width, min(k, (s + 1) * width)):
                if bits[r, c] != 0:
                    gap = c - s * width - previous - 1
                    while gap > 15:
                        entries.append((0, 15))
                        gap -= 16
                    entries.append((int(bits[r, c]), gap))
                    previous = c - s * width
            entries += [(0, 0)] * (-len(entries) % 8)
            segments[s, r] = [entries[i:i + 8] for i in range(0, len(entries), 8)]
    offsets = [0]
    for s in range(slices):
        for r in range(m):
            offsets.append(offsets[-1] + len(segments[s, r]))
    chunks = []
    for s in range(slices):
        for r0 in range(0, m, 32):
            rows = range(r0, min(m, r0 + 32))
            for j in range(max([len(segments[s, r]) for r in rows] + [0])):
                chunks += [segments[s, r][j] for r in rows if len(segments[s, r]) > j]
    shifts = [0, 8, 16, 24, 4, 12, 20, 28]
    values = [v for chunk in chunks for v, _ in chunk]
    codes = [sum(code << shifts[t] for t, (_, code) in enumerate(chunk)) for chunk in chunks]
    codes = [c - (1 << 32) if c >= 1 << 31 else c for c in codes]
    return values, codes, offsets


# ------------------------------------------------------------------------------------------- the layout ------
@pytest.mark.parametrize("mk", [(70, 300), (33, 7), (40, 2049), (1, 600)])
@pytest.mark.parametrize("sparsity", [0.0, 0.8, 0.97])
def test_builder_matches_the_spec_read_literally(mk, sparsity):
    w, mask = int_weight(*mk, torch.float16, sparsity, 1)
    weight, (values, codes, offsets) = layout_of(w, mask)
    want_values, want_codes, want_offsets = spec_layout(weight)
    assert values.dtype == torch.float16 and codes.dtype == torch.int32 and offsets.dtype == torch.int32
    assert values.view(torch.int16).tolist() == want_values
    assert codes.tolist() == want_codes
    assert offsets.tolist() == want_offsets


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("mk", SHAPES)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.8, 0.99, 1.0])
def test_round_trip_to_the_stream_bit_for_bit(dtype, mk, sparsity):
    w, mask = int_weight(*mk, dtype, sparsity, hash((mk, sparsity)) % 1000)
    for tile in [(256, 64), (16, 32)]:  # the layout follows the coordinates, whatever the stream's tiles
        weight, layout = layout_of(w, mask, tile)
        back = layouts.delta_to_weight(*layout, mk, *tile)
        for name, t in weight.tensors().items():
            assert_bitwise_equal(back.tensors()[name], t)


@pytest.mark.parametrize("kind", ["empty_rows", "one_dense_column", "empty_slices", "full_rows", "long_gaps",
                                  "last_column_only", "first_and_last", "full"])
def test_round_trip_of_adversarial_masks(kind):
    m, k = 300, 3000
    w, _ = int_weight(m, k, torch.bfloat16, 0.0, 3)
    weight, layout = layout_of(w, adversarial_mask(kind, m, k))
    assert torch.equal(layouts.delta_to_weight(*layout, (m, k), 256, 64).to_dense(), weight.to_dense())


def test_bytes_per_element_follow_the_density():
    """2.5 bytes per entry; on top, per segment (row x slice) its offset (4 bytes), the padding of its last chunk (3.5
    entries on average) and the fillers of gaps over 16 columns: ~12% at 80% in slices of 256 columns (the width a
    layer of few rows gets), ~3% at 2048. The word layout: 4 bytes per nonzero, 0.8 per element at 80%."""
    m, k = 1024, 4096
    for sparsity, low, high in [(0.5, 1.25, 1.36), (0.8, 0.5, 0.58), (0.9, 0.26, 0.36)]:
        w, mask = int_weight(m, k, torch.float16, sparsity, 5)
        _, (values, codes, offsets) = layout_of(w, mask)
        per_element = (values.numel() * 2 + codes.numel() * 4 + offsets.numel() * 4) / (m * k)
        assert low <= per_element <= high, (sparsity, per_element)


def test_slice_width_rule():
    """Slices are multiples of 64 in [256, 2048] (narrower only for a narrower K), narrow enough that every layer of
    the bench gets ~2048 (row group, slice) records."""
    width = _C.tiled_csl_delta_slice_width
    assert width(4096, 4096) == 256 and width(57344, 8192) == 2048 and width(8192, 28672) == 2048
    assert width(22016, 4096) == 1408 and width(300, 72) == 128 and width(33, 7) == 64 and width(5, 0) == 64
    for m, k in [(4096, 11008), (12288, 4096), (1, 1), (100000, 100000)]:
        w = width(m, k)
        assert w % 64 == 0 and (256 <= w <= 2048 or w >= k)
        assert (-(-m // 32)) * -(-k // w) >= min(2048, -(-m // 32) * -(-k // 256))


def test_corrupt_layout_is_refused_by_the_decoder_and_the_cpu_op():
    w, mask = int_weight(64, 300, torch.float16, 0.7, 9)
    _, (values, codes, offsets) = layout_of(w, mask)
    x = torch.ones(2, 300, dtype=torch.float16)
    bad = offsets.clone()
    bad[5] = bad[4] - 1
    with pytest.raises(ValueError, match="offsets must rise"):
        layouts.delta_coordinates(values, codes, bad, (64, 300))
    with pytest.raises(ValueError, match=r"`offsets` must not decrease \(entry 4\)"):
        ops.tiled_csl_delta_mm(x, values, codes, bad, 64)
    with pytest.raises(ValueError, match=r"`offsets` must have 129 entries for a 64 x 300 weight \(2 slices"):
        ops.tiled_csl_delta_mm(x, values, codes, offsets[:-1], 64)
    with pytest.raises(ValueError, match=r"`values` must hold 8 entries per code word"):
        ops.tiled_csl_delta_mm(x, values[:-8], codes, offsets, 64)
    with pytest.raises(TypeError, match=r"`values` must be Half, got BFloat16"):
        ops.tiled_csl_delta_mm(x, values.bfloat16(), codes, offsets, 64)
    with pytest.raises(TypeError, match=r"`codes` must be Int"):
        ops.tiled_csl_delta_mm(x, values, codes.long(), offsets, 64)
    with pytest.raises(ValueError, match=r"`tokens_per_pass` must be 0 \(the rule's\), 1, 2, 4 or 8, got 3"):
        ops.tiled_csl_delta_mm(x, values, codes, offsets, 64, tokens_per_pass=3)
    with pytest.raises(ValueError, match=r"`kernel` must be \"auto\", \"cuda_cores\" or \"tensor_cores\", got \"mma\""):
        ops.tiled_csl_delta_mm(x, values, codes, offsets, 64, kernel="mma")
    far = codes.clone()
    far[0] = -1  # every gap 15: past the last column
    with pytest.raises(ValueError, match="past the last column"):
        layouts.delta_coordinates(values.new_ones(values.shape), far, offsets, (64, 300))


# ---------------------------------------------------------------------- the kernel's math, emulated ------
KERNELS = ["cuda_cores", "tensor_cores"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mk", SHAPES)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.8, 0.95, 1.0])
@pytest.mark.parametrize("n", [1, 3, 9])
def test_emulated_kernels_exact_on_integer_inputs(dtype, mk, sparsity, n):
    m, k = mk
    w, mask = int_weight(m, k, dtype, sparsity, hash((mk, sparsity, n)) % 1000)
    _, layout = layout_of(w, mask)
    g = torch.Generator().manual_seed(n)
    x = torch.randint(-2, 3, (n, k), generator=g).to(dtype)
    bias = torch.randint(-2, 3, (m,), generator=g).to(dtype)
    for kernel in ["auto"] + KERNELS:
        y = ops.tiled_csl_delta_mm(x, *layout, m, bias, kernel)
        assert y.shape == (n, m) and y.dtype == dtype
        assert torch.equal(y, reference(x, w, mask, bias)), kernel
    assert torch.equal(ops.tiled_csl_delta_mm(x, *layout, m), reference(x, w, mask))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("kind", ["empty_rows", "one_dense_column", "empty_slices", "full_rows", "long_gaps",
                                  "last_column_only", "first_and_last", "full"])
def test_emulated_kernels_exact_on_adversarial_masks(kind, kernel):
    m, k = 300, 3000
    w, _ = int_weight(m, k, torch.float16, 0.0, 4)
    mask = adversarial_mask(kind, m, k)
    _, layout = layout_of(w, mask)
    x = torch.randint(-2, 3, (5, k), generator=torch.Generator().manual_seed(1)).half()
    assert torch.equal(ops.tiled_csl_delta_mm(x, *layout, m, None, kernel), reference(x, w, mask))


@pytest.mark.parametrize("kernel", KERNELS)
def test_emulated_kernels_leading_dims_strided_x_and_empty_products(kernel):
    m, k = 70, 600
    w, mask = int_weight(m, k, torch.float16, 0.8, 12)
    _, layout = layout_of(w, mask)
    x = torch.randint(-2, 3, (12, k), generator=torch.Generator().manual_seed(2)).half()
    bias = torch.arange(m).half()
    expected = reference(x, w, mask, bias)
    assert torch.equal(ops.tiled_csl_delta_mm(x.reshape(3, 4, k), *layout, m, bias, kernel), expected.reshape(3, 4, m))
    strided = torch.stack([x, x], dim=-1).reshape(12, 2 * k)[:, ::2]
    assert torch.equal(ops.tiled_csl_delta_mm(strided, *layout, m, bias, kernel), expected)
    assert ops.tiled_csl_delta_mm(x[:0], *layout, m, bias, kernel).shape == (0, m)
    empty = layouts.delta_layout(TiledCSLWeight.empty((m, 0), dtype=torch.float16))
    assert torch.equal(ops.tiled_csl_delta_mm(x[:, :0], *empty, m, bias, kernel), bias.expand(12, m))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_emulated_kernels_on_real_values_within_twice_dense_error(dtype):
    g = torch.Generator().manual_seed(3)
    m, k = 512, 4096
    w = torch.randn(m, k, generator=g).to(dtype)
    mask = torch.rand(m, k, generator=g) < 0.2
    x = torch.randn(3, k, generator=g).to(dtype)
    _, layout = layout_of(w, mask)
    wm = masked(w, mask)
    ref = x.double() @ wm.double().T
    dense_err = (torch.nn.functional.linear(x.float(), wm.float()).to(dtype).double() - ref).abs().max()
    for kernel in KERNELS:
        assert (ops.tiled_csl_delta_mm(x, *layout, m, None, kernel).double() - ref).abs().max() <= 2 * dense_err


# ------------------------------------------------------------------------------------------ word layout ------
def test_words_decoder_reads_the_word_layout():
    """words_to_weight inverts the documented word layout (built here by hand: the CUDA op builds it on the GPU)."""
    w, mask = int_weight(300, 130, torch.float16, 0.6, 13)
    weight = TiledCSLWeight.from_dense(w, mask, 256, 64)
    counts = (weight.tile_offsets[1:] - weight.tile_offsets[:-1]).tolist()
    loc = weight.locations.long() & 0xFFFF
    rows, offsets = [], [0]
    for t, count in enumerate(counts):
        begin = int(weight.tile_offsets[t])
        for e in range(begin, begin + count):
            swizzled = int(loc[e]) ^ ((int(loc[e]) >> 3) & 0x38)
            rows.append([int(weight.values[e].view(torch.int16)), swizzled - (1 << 16) if swizzled >= 1 << 15 else swizzled])
        rows += [[0, 256 * 64]] * (-count % 4)  # padding aims past the tile
        offsets.append(len(rows))
    rows += [[0, 0]] * (_C.tiled_csl_word_rows(weight.nnz, len(counts)) - len(rows))
    words = torch.tensor(rows, dtype=torch.int16).view(torch.float16)
    back = layouts.words_to_weight(words, torch.tensor(offsets, dtype=torch.int32), (300, 130), 256)
    for name, t in weight.tensors().items():
        assert_bitwise_equal(back.tensors()[name], t)


# --------------------------------------------------------------------- a layer holding the delta layout ------
@pytest.fixture
def delta_on_cpu(monkeypatch):
    """TiledCSLLinear's CUDA branch on CPU: the rule says "delta", so the layer holds the delta layout alone (its
    forward needs CUDA; everything else -- decoding, saving, loading, moving -- runs here)."""
    from spmm.nn import tiled_csl_linear

    monkeypatch.setattr(tiled_csl_linear.ops, "tiled_csl_layer_layout",
                        lambda tm, tk, dtype, device: "delta" if torch.device(device).type == "cpu" else "")


def test_layer_holding_the_delta_layout_alone_saves_loads_and_decodes_the_stream(delta_on_cpu):
    linear = torch.nn.Linear(300, 70, dtype=torch.float16)
    mask = spmm.pruning.magnitude_mask(linear.weight, 0.8)
    layer = TiledCSLLinear.from_dense(linear, mask)
    stream = TiledCSLWeight.from_dense(linear.weight.detach(), mask)
    assert layer.values is None and layer.locations is None and layer.tile_offsets is None
    assert layer.delta_values is not None and "delta_values" not in layer.state_dict()
    held = sum(b.numel() * b.element_size() for name, b in layer.named_buffers() if name != "bias")
    layout = sum(t.numel() * t.element_size() for t in (layer.delta_values, layer.delta_codes, layer.delta_offsets))
    assert held == layout  # one copy of the weight
    state = layer.state_dict()
    assert list(state) == ["bias", "values", "locations", "tile_offsets"]
    for name, t in stream.tensors().items():
        assert_bitwise_equal(state[name], t)
        assert_bitwise_equal(layer.weight_format.tensors()[name], t)
    assert torch.equal(layer.to_dense_weight(), masked(linear.weight.detach(), mask))
    assert "sparsity=0.800" in repr(layer) and layer.nbytes == stream.nbytes

    fresh = TiledCSLLinear(300, 70, dtype=torch.float16)
    fresh.load_state_dict(state)
    assert fresh.values is None and torch.equal(fresh.to_dense_weight(), layer.to_dense_weight())
    assert torch.equal(fresh.delta_codes, layer.delta_codes)
    other = torch.nn.Linear(300, 70, dtype=torch.float16)
    fresh.load_state_dict(TiledCSLLinear.from_dense(other, spmm.pruning.magnitude_mask(other.weight, 0.5)).state_dict())
    assert torch.equal(fresh.to_dense_weight(), masked(other.weight.detach(), spmm.pruning.magnitude_mask(other.weight, 0.5)))

    as_bf16 = layer.bfloat16()  # the layout's values convert with the layer; codes and offsets stay
    assert as_bf16.delta_values.dtype == torch.bfloat16
    assert torch.equal(as_bf16.to_dense_weight(), masked(linear.weight.detach(), mask).bfloat16())


def test_layer_without_a_kernel_layout_keeps_the_stream():
    layer = TiledCSLLinear.from_dense(torch.nn.Linear(64, 32).half())
    assert layer.values is not None and layer.words is None and layer.delta_values is None
    x = torch.randn(3, 64).half()
    torch.testing.assert_close(layer(x), layer.to_dense_linear()(x), rtol=2e-3, atol=2e-3)


# ------------------------------------------------------------------------------------- op, rules, fakes ------
def test_cpu_op_reads_the_stream_and_says_so_when_given_a_layout_alone():
    w, mask = int_weight(64, 128, torch.float16, 0.5, 14)
    weight, layout = layout_of(w, mask)
    x = torch.ones(2, 128).half()
    empty = torch.zeros(0, dtype=torch.int32)
    with pytest.raises(ValueError, match="on CPU the op reads the stream"):
        ops.tiled_csl_mm(x, x[0, :0], empty.short(), empty, 64, 256, 64, delta_values=layout[0],
                         delta_codes=layout[1], delta_offsets=layout[2])
    # with the stream given too, the CPU op uses it
    y = ops.tiled_csl_mm(x, *weight.tensors().values(), 64, 256, 64, delta_values=layout[0], delta_codes=layout[1],
                         delta_offsets=layout[2])
    assert torch.equal(y, reference(x, w, mask))


def test_layer_layout_rule():
    assert ops.tiled_csl_layer_layout(256, 64, torch.float16, torch.device("cpu")) == ""
    assert _C.tiled_csl_layer_layout(256, 64) in ("words", "delta")
    assert _C.tiled_csl_layer_layout(16, 32) in ("", "delta")


def test_layer_layout_switch(monkeypatch):
    monkeypatch.setenv("SPMM_TILED_CSL_DELTA", "1")
    assert _C.tiled_csl_layer_layout(256, 64) == "delta" and _C.tiled_csl_layer_layout(16, 32) == "delta"
    monkeypatch.setenv("SPMM_TILED_CSL_DELTA", "0")
    assert _C.tiled_csl_layer_layout(256, 64) == "words" and _C.tiled_csl_layer_layout(16, 32) == ""


def test_fakes_follow_the_cpp_sizes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(5, 7, 200, dtype=torch.float16)
        y = torch.ops.spmm._tiled_csl_delta_mm(x, torch.empty(80, dtype=torch.float16), torch.empty(10, dtype=torch.int32),
                                                torch.empty(301, dtype=torch.int32), 300)
        assert y.shape == (5, 7, 300) and y.dtype == torch.float16
        stream = (torch.empty(0, dtype=torch.float16), torch.empty(0, dtype=torch.int16), torch.empty(0, dtype=torch.int32))
        layout = dict(delta_values=torch.empty(80, dtype=torch.float16), delta_codes=torch.empty(10, dtype=torch.int32),
                      delta_offsets=torch.empty(301, dtype=torch.int32))
        assert torch.ops.spmm.tiled_csl_mm(x, *stream, 300, 256, 64, None, **layout).shape == (5, 7, 300)
    assert _C.tiled_csl_word_rows(1000, 12) == 1036 and _C.tiled_csl_word_rows(0, 0) == 4
    assert _C.tiled_csl_tile_count(300, 200, 256, 64) == 8
