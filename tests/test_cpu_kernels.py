"""The fast CPU kernels behind sparse24_mm, tiled_csl_mm and spense_mm, on every instruction set this CPU runs
(avx512, avx2, portable: each forced in turn) and on every path (register kernels, GEMM on expanded blocks,
Tiled-CSL's token kernel: by the one rule and each forced with set_cpu_path; portable kernels for non-finite x),
against the fp64 reference ops (spmm::_*_mm_reference) and torch.matmul.

Small-integer inputs make every product and sum exact in fp32, so there the fast paths must equal the reference bit
for bit. With real values the kernels sum in fp32 in another order than the reference's fp64; the documented bound
is |y - y64| <= eps(dtype) * |y64| + K * eps(fp32) * (|x| @ |W|.T), the output's one rounding plus the worst case of
K fp32 additions. No timing here (bench/ measures speed)."""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.library import opcheck

from conftest import assert_bitwise_equal, gen, int_weight, masked, random_24_mask, random_mask, spense_args
from spmm import ops
from spmm.formats import Sparse24Weight, SpenseWeight, TiledCSLWeight
from spmm.nn import Sparse24Linear, SpenseLinear, TiledCSLLinear

ISAS = ["avx512", "avx2", "portable"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(67, 260), (5, 12), (40, 100)]  # odd M; K not a multiple of 16 or 32 (the vector widths); K % 4 == 0
TOKENS = [1, 3, 17, 200]
PATHS = ["auto", "register", "gemm", "tokens"]  # spmm.ops.set_cpu_path: the rule, then each path forced
TILE = (16, 32)


def runs_here(isa: str) -> bool:
    return ISAS.index(isa) >= ISAS.index(ops.cpu_isa_detected())


@pytest.fixture(params=ISAS)
def isa(request):
    if not runs_here(request.param):
        pytest.skip(f"this CPU runs up to {ops.cpu_isa_detected()}")
    ops.set_cpu_isa(request.param)
    assert ops.cpu_isa() == request.param
    yield request.param
    ops.set_cpu_isa("auto")
    ops.set_cpu_path("auto")


def int_x(n, k, dtype, g):
    return torch.randint(-3, 4, (n, k), generator=g).to(dtype)


class Case:
    """One packed weight of each format and the fast / reference call on it."""

    def __init__(self, fmt, w, mask, g):
        self.fmt, self.m, self.k = fmt, *w.shape
        if fmt == "sparse24":
            self.args, self.dense = ops.sparse24_compress(w, mask), masked(w, mask)
        elif fmt == "tiled_csl":
            self.args, self.dense = ops.tiled_csl_compress(w, mask, *TILE), masked(w, mask)
            self.bitmap = ops.tiled_csl_cpu_layout(self.args[1], self.args[2], self.m, self.k, *TILE)
        else:
            dense_rows = torch.randperm(self.m, generator=g)[: self.m // 4]
            self.args, self.dense = spense_args(w, mask, dense_rows)

    def stored(self):
        """Where the format stores an element (bool [M, K]): its layout with every stored value replaced by 1."""
        if self.fmt == "sparse24":
            values, meta = self.args
            return Sparse24Weight(torch.ones_like(values), meta, (self.m, self.k)).to_dense() != 0
        if self.fmt == "tiled_csl":
            values, locations, offsets = self.args
            return TiledCSLWeight(torch.ones_like(values), locations, offsets, (self.m, self.k), *TILE).to_dense() != 0
        dense_weight, values, meta, row_index = self.args
        sparse = Sparse24Weight(torch.ones_like(values), meta, (values.shape[0], self.k))
        return SpenseWeight(torch.ones_like(dense_weight), sparse, row_index).to_dense() != 0

    def fast(self, x, bias=None, with_bitmap=True):
        if self.fmt == "sparse24":
            return ops.sparse24_mm(x, *self.args, bias)
        if self.fmt == "tiled_csl":
            return ops.tiled_csl_mm(x, *self.args, self.m, *TILE, bias, cpu_bitmap=self.bitmap if with_bitmap else None)
        return ops.spense_mm(x, *self.args, bias)

    def reference(self, x, bias=None):
        if self.fmt == "sparse24":
            return ops.sparse24_mm_reference(x, *self.args, bias)
        if self.fmt == "tiled_csl":
            return ops.tiled_csl_mm_reference(x, *self.args, self.m, *TILE, bias)
        return ops.spense_mm_reference(x, *self.args, bias)


def make_case(fmt, m, k, dtype, g, density=0.3, weight=int_weight):
    w = weight(m, k, dtype, g)
    mask = random_mask(m, k, density, g) if fmt == "tiled_csl" else random_24_mask(m, k, g)
    return Case(fmt, w, mask, g)


FORMATS = ["sparse24", "tiled_csl", "spense"]


# ------------------------------------------------------------------------------------- exact on every path ------
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mk", SHAPES)
def test_fast_paths_equal_the_reference_bit_for_bit(isa, fmt, dtype, mk):
    """Every path, by the rule and forced (register kernels, GEMM on expanded blocks, Tiled-CSL's token kernel)."""
    g = gen(101)
    case = make_case(fmt, *mk, dtype, g)
    bias = int_weight(1, mk[0], dtype, g)[0]
    for n in TOKENS:
        x = int_x(n, mk[1], dtype, g)
        expected = case.reference(x, bias)
        assert torch.equal(expected.double(), (x.double() @ case.dense.double().T + bias.double()).to(dtype).double())
        for path in PATHS:
            ops.set_cpu_path(path)
            assert_bitwise_equal(case.fast(x, bias), expected)
            if fmt == "tiled_csl":  # the op derives the bitmap itself when none is given
                assert_bitwise_equal(case.fast(x, bias, with_bitmap=False), expected)
        ops.set_cpu_path("auto")


def test_the_rule_thresholds():
    """cpu_register_max_tokens is the C++ rule: fp16 always on the register kernels (torch has no fast fp16 GEMM on
    CPU), fp32 2:4 and Spense too, bf16 up to a finite count; Tiled-CSL's count shrinks as the density grows."""
    for fmt in FORMATS:
        assert ops.cpu_register_max_tokens(fmt, torch.float16) > 10**9
        assert 1 <= ops.cpu_register_max_tokens(fmt, torch.bfloat16, 0.5) < 10**9
    assert ops.cpu_register_max_tokens("sparse24", torch.float32) > 10**9
    for dtype in (torch.float32, torch.bfloat16):
        assert ops.cpu_register_max_tokens("tiled_csl", dtype, 0.9) <= ops.cpu_register_max_tokens("tiled_csl", dtype, 0.1)
    with pytest.raises(ValueError, match="autopilot"):
        ops.set_cpu_path("autopilot")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("density", [0.0, 1.0])
def test_empty_and_full_weights(isa, fmt, density):
    """0% and 100% sparsity: Tiled-CSL storing nothing / everything, 2:4 and Spense with all-zero or 2-of-4 rows."""
    g = gen(102)
    m, k = 33, 96
    w = int_weight(m, k, torch.float32, g)
    if fmt == "tiled_csl":
        mask = torch.full((m, k), bool(density))
    else:
        mask = random_24_mask(m, k, g) & bool(density)
    case = Case(fmt, w, mask, g)
    for n in (1, 9, 200):
        x = int_x(n, k, torch.float32, g)
        for path in PATHS:
            ops.set_cpu_path(path)
            assert_bitwise_equal(case.fast(x), case.reference(x))
    ops.set_cpu_path("auto")


# ------------------------------------------------------------------------------------ real values, tolerance ------
def within_fp32_bound(y, x, dense, bias=None):
    """|y - y64| <= eps(dtype) |y64| + K eps(fp32) (|x| @ |W|.T): one rounding + K fp32 additions at worst."""
    k = x.shape[-1]
    ref = x.double() @ dense.double().T + (bias.double() if bias is not None else 0)
    scale = x.double().abs() @ dense.double().abs().T + (bias.double().abs() if bias is not None else 0)
    bound = torch.finfo(y.dtype).eps * ref.abs() + k * torch.finfo(torch.float32).eps * scale
    err = (y.double() - ref).abs()
    assert bool((err <= bound).all()), f"max excess {(err - bound).max().item():.3g}"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_real_values_within_the_documented_bound(isa, fmt, dtype):
    g = gen(103)
    m, k = 96, 520
    case = make_case(fmt, m, k, dtype, g, density=0.5, weight=lambda m, k, dt, g: torch.randn(m, k, generator=g).to(dt))
    bias = torch.randn(m, generator=g).to(dtype)
    for n in (1, 5, 200):
        x = torch.randn(n, k, generator=g).to(dtype)
        for path in PATHS:
            ops.set_cpu_path(path)
            within_fp32_bound(case.fast(x, bias), x, case.dense, bias)
    ops.set_cpu_path("auto")


# ------------------------------------------------------------------------------------------- input layouts ------
@pytest.mark.parametrize("fmt", FORMATS)
def test_strided_and_batched_x(isa, fmt):
    g = gen(104)
    m, k = 48, 64
    case = make_case(fmt, m, k, torch.bfloat16, g)
    for n in (1, 7, 200):
        x = int_x(n, k, torch.bfloat16, g)
        expected = case.reference(x)
        column_strided = torch.stack([x, -x], dim=-1).reshape(n, 2 * k)[:, ::2]
        transposed = x.t().contiguous().t()
        assert not column_strided.is_contiguous() and (n == 1 or not transposed.is_contiguous())
        for view in (column_strided, transposed):
            assert_bitwise_equal(case.fast(view), expected)
        if n > 1:
            assert_bitwise_equal(case.fast(x.reshape(1, n, k)), expected.reshape(1, n, m))


# --------------------------------------------------------------------------------------------- NaN and Inf -------
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_inf_behave_as_in_the_reference(isa, fmt, dtype):
    """A NaN/Inf of x at a stored column reaches the output; at a pruned column it does not (the reference
    multiplies stored elements only); a NaN in bias reaches its output column. Same NaN/Inf positions, same finite
    values."""
    g = gen(105)
    m, k = 40, 96
    case = make_case(fmt, m, k, dtype, g)
    bias = int_weight(1, m, dtype, g)[0]
    bias[3] = float("nan")
    for n in (1, 6, 200):
        x = int_x(n, k, dtype, g)
        x[0, 5], x[-1, 7], x[n // 2, 11] = float("nan"), float("inf"), -float("inf")
        expected, got = case.reference(x, bias), case.fast(x, bias)
        assert torch.equal(got.isnan(), expected.isnan()) and torch.equal(got.isinf(), expected.isinf())
        assert torch.equal(got.nan_to_num(0.0, 0.0, 0.0), expected.nan_to_num(0.0, 0.0, 0.0))
        if n > 2:  # token 0 holds only the NaN: the rows that store column 5 (2:4 fillers too) and bias row 3
            stored = case.stored()[:, 5]
            assert torch.equal(expected[0].isnan(), stored | (torch.arange(m) == 3))


# ---------------------------------------------------------------------------------------------- layers -----------
def layers(g):
    linear = nn.Linear(64, 48)
    with torch.no_grad():
        linear.weight.copy_(int_weight(48, 64, torch.float32, g))
        linear.bias.copy_(int_weight(1, 48, torch.float32, g)[0])
    return linear, {
        "sparse24": Sparse24Linear.from_dense(linear, random_24_mask(48, 64, g)),
        "tiled_csl": TiledCSLLinear.from_dense(linear, random_mask(48, 64, 0.3, g), tile_m=16, tile_k=32),
        "spense": SpenseLinear.from_dense(linear, random_24_mask(48, 64, g), dense_rows=torch.arange(0, 48, 4)),
    }


def reference_of(layer, x):
    fmt = layer.weight_format
    if isinstance(layer, Sparse24Linear):
        return ops.sparse24_mm_reference(x, fmt.values, fmt.meta, layer.bias)
    if isinstance(layer, TiledCSLLinear):
        return ops.tiled_csl_mm_reference(x, fmt.values, fmt.locations, fmt.tile_offsets, layer.out_features,
                                          layer.tile_m, layer.tile_k, layer.bias)
    return ops.spense_mm_reference(x, layer.dense_weight, layer.values, layer.meta, layer.row_index, layer.bias)


def assert_holds_cpu_bitmap(layer):
    expected = ops.tiled_csl_cpu_layout(layer.locations, layer.tile_offsets, layer.out_features, layer.in_features,
                                        layer.tile_m, layer.tile_k)
    assert layer.cpu_bitmap is not None and torch.equal(layer.cpu_bitmap, expected)
    assert "cpu_bitmap" not in layer.state_dict()


def test_layers_built_moved_and_loaded_on_cpu_give_the_reference(isa):
    g = gen(106)
    _, built = layers(g)
    x = int_x(9, 64, torch.float32, g)
    for name, layer in built.items():
        assert_bitwise_equal(layer(x), reference_of(layer, x))
        if name == "tiled_csl":
            assert_holds_cpu_bitmap(layer)
        moved = layer.to(torch.bfloat16)
        if name == "tiled_csl":
            assert_holds_cpu_bitmap(moved)
        xb = x.bfloat16()
        assert_bitwise_equal(moved(xb), reference_of(moved, xb))
        kwargs = layer.format_kwargs()
        fresh = type(layer)(64, 48, dtype=torch.bfloat16, **kwargs)
        fresh.load_state_dict(moved.state_dict())
        if name == "tiled_csl":
            assert_holds_cpu_bitmap(fresh)
        assert_bitwise_equal(fresh(xb), reference_of(moved, xb))


def test_tiled_csl_layer_holds_one_copy_of_the_values():
    """The CPU layout adds a bitmap, never a second copy of the values: 1 bit per element of each (padded) tile."""
    g = gen(107)
    layer = TiledCSLLinear.from_dense(nn.Linear(256, 512), random_mask(512, 256, 0.2, g))
    buffers = dict(layer.named_buffers())
    assert set(buffers) == {"values", "locations", "tile_offsets", "cpu_bitmap"}  # the bias is a Parameter
    assert buffers["cpu_bitmap"].numel() * 64 == 512 * 256  # 256 x 64 tiles, 1 word per tile row


# ------------------------------------------------------------------------------------------------ errors ---------
def test_broken_layouts_raise(isa):
    g = gen(108)
    case = make_case("tiled_csl", 40, 96, torch.float32, g)
    x = int_x(3, 96, torch.float32, g)
    values, locations, offsets = case.args
    wrong = case.bitmap.clone()
    wrong[0] ^= 1  # one element more or less in tile 0 than its offsets say
    with pytest.raises(ValueError, match="cpu_bitmap` does not match"):
        ops.tiled_csl_mm(x, values, locations, offsets, 40, *TILE, None, cpu_bitmap=wrong)
    outside = case.bitmap.clone()
    col_tiles = -(-96 // TILE[1])
    last_tile = col_tiles - 1  # columns 64..95 of row tile 0: a full tile; the last row tile has 8 of 16 rows
    pad_row = ((2 * col_tiles + last_tile) * TILE[0] + 15)  # row 15 of tile (2, last): past M = 40
    outside[pad_row] = 1
    with pytest.raises(ValueError, match="cpu_bitmap` does not match"):
        ops.tiled_csl_mm(x, values, locations, offsets, 40, *TILE, None, cpu_bitmap=outside)
    with pytest.raises(ValueError, match="cpu_bitmap` must have"):
        ops.tiled_csl_mm(x, values, locations, offsets, 40, *TILE, None, cpu_bitmap=case.bitmap[1:])
    with pytest.raises(TypeError, match="cpu_bitmap"):
        ops.tiled_csl_mm(x, values, locations, offsets, 40, *TILE, None, cpu_bitmap=case.bitmap.int())
    duplicate = locations.clone()
    duplicate[1] = duplicate[0]
    with pytest.raises(ValueError):
        ops.tiled_csl_cpu_layout(duplicate, offsets, 40, 96, *TILE)
    s24 = make_case("sparse24", 40, 96, torch.float32, g)
    meta = s24.args[1].clone()
    meta[7, 3] = (meta[7, 3] & 0xF0) | 0x7  # idx0 = 3 > idx1 = 1 in group 6 of row 7
    for n in (1, 200):
        with pytest.raises(ValueError, match="row 7, group 6"):
            ops.sparse24_mm(int_x(n, 96, torch.float32, g), s24.args[0], meta)


def test_forcing_an_isa():
    with pytest.raises(ValueError, match="avx1024"):
        ops.set_cpu_isa("avx1024")
    assert ops.cpu_isa() == ops.cpu_isa_detected()
    for name in ISAS:
        if not runs_here(name):
            with pytest.raises(ValueError):
                ops.set_cpu_isa(name)
    ops.set_cpu_isa("auto")
    assert ops.cpu_isa() == ops.cpu_isa_detected()


@pytest.mark.parametrize("name", ["avx2", "portable"])
def test_environment_variable_forces_an_isa(name):
    if not runs_here(name):
        pytest.skip(f"this CPU runs up to {ops.cpu_isa_detected()}")
    env = dict(os.environ, SPMM_CPU_ISA=name)
    out = subprocess.run([sys.executable, "-c", "import spmm.ops as o; print(o.cpu_isa())"], env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == name


# ------------------------------------------------------------------------------------------------ opcheck --------
def test_opcheck_cpu_layout_and_references():
    g = gen(109)
    case = make_case("tiled_csl", 20, 64, torch.float32, g)
    x = int_x(3, 64, torch.float32, g)
    values, locations, offsets = case.args
    opcheck(torch.ops.spmm.tiled_csl_mm.default, (x, values, locations, offsets, 20, *TILE, None, case.bitmap))
    opcheck(torch.ops.spmm.tiled_csl_cpu_layout.default, (locations, offsets, 20, 64, *TILE))
    opcheck(torch.ops.spmm._tiled_csl_mm_reference.default, (x, values, locations, offsets, 20, *TILE, None))
    s24 = make_case("sparse24", 20, 64, torch.float32, g)
    opcheck(torch.ops.spmm._sparse24_mm_reference.default, (x, *s24.args, None))
    spense = make_case("spense", 20, 64, torch.float32, g)
    opcheck(torch.ops.spmm._spense_mm_reference.default, (x, *spense.args, None))
